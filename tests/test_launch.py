"""launch.py's compilation-cache rules (the end-to-end launch runs are in test_workflow.py)."""

import jax
import pytest

import launch


def test_compilation_cache_dir_precedence():
    env = {"JAX_COMPILATION_CACHE_DIR": "/env"}
    assert launch.compilation_cache_dir("/flag", env, "/home/u", "node1") == "/flag"
    assert launch.compilation_cache_dir("", env, "/home/u", "node1") == ""  # off
    assert launch.compilation_cache_dir(None, env, "/home/u", "node1") is None  # JAX reads env
    default = launch.compilation_cache_dir(None, {}, "/home/u", "node1")
    assert default == "/home/u/.cache/segan_jax/xla/node1"  # one folder per host


@pytest.fixture
def jax_cache_config():
    keys = ("jax_compilation_cache_dir", "jax_enable_compilation_cache")
    saved = {k: jax.config.values[k] for k in keys}
    yield
    for k, v in saved.items():
        jax.config.update(k, v)


def test_unwritable_cache_folder_turns_the_cache_off_with_a_note(
    tmp_path, capsys, jax_cache_config
):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    launch.enable_compilation_cache(str(blocker / "xla"))  # a folder inside a file
    assert "compilation cache off" in capsys.readouterr().err
    assert not jax.config.values["jax_enable_compilation_cache"]
    launch.enable_compilation_cache(str(tmp_path / "xla"))
    assert jax.config.values["jax_compilation_cache_dir"] == str(tmp_path / "xla")
    assert jax.config.values["jax_enable_compilation_cache"]
    assert (tmp_path / "xla").is_dir()
