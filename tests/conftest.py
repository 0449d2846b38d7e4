"""Test set-up: two simulated CPU devices, and the dataset cache inside pytest's temp dirs."""

import atexit
import os
import shutil
import tempfile

# Must precede the first jax import: every test sees 2 CPU devices.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same tiny model (and launch.py subprocesses inherit this): JAX's
# persistent compilation cache, in a folder of this session's own, saves most recompiles.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="segan_jax_test_jit_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import pathlib  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """One TFDS data dir for the whole session (the demo dataset is built once)."""
    return tmp_path_factory.mktemp("tfds")
