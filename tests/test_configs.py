"""Every config file builds a working model and optimiser (no config names dead code)."""

import importlib
import json
import pathlib

import jax
import numpy as np
import pytest

from segan_jax import datasets, losses, optim, train

SAVED = "saved"  # configs/saved.py:DIR, a run's own config (tests/test_workflow.py)
CONFIGS = sorted(
    p.stem
    for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
    if p.stem[0] != "_" and p.stem != SAVED
)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    assert config.data.name in ("folder", "consep", "demo")
    k = 4
    info = datasets.DatasetInfo(
        classes=tuple(f"c{i}" for i in range(k)),
        num_channels=3,
        splits=("train", "test"),
        train_pixel_counts=np.array([60, 25, 10, 5]),
        scale=255.0,
        channel_mean=np.zeros(3, np.float32),
        channel_std=np.ones(3, np.float32),
        is_rgb=True,
    )
    ctx = train.step_context(config, info, num_devices=1)
    state = jax.eval_shape(lambda key: train.create_train_state(ctx, key, 3), jax.random.key(0))
    assert state.params and (ctx.critics is None) == (config.critic.num == 0)
    losses.class_weights(info.train_pixel_counts, config.loss.class_weights)
    optim.critic_optimizer(config.critic, config.train.num_steps)
    assert config.critic.layer_weighting in losses.LAYER_WEIGHTINGS
    for every in ("checkpoint_every", "eval_every"):
        assert config.train[every] % config.train.log_every == 0


def test_paper_configs_follow_the_paper():
    get = lambda n: importlib.import_module(f"configs.{n}").get_config()  # noqa: E731
    for name in ("paper_ce", "paper_critic_single", "paper_critic_per_class_weighted"):
        c = get(name)
        assert c.train.num_steps == 25_000 and c.data.crop_size == 256
    assert get("paper_critic_single").critic.num == 1
    assert get("paper_critic_per_class").critic.num == -1
    assert get("paper_ce_weighted").loss.class_weights == "inverse_frequency"


def test_a_saved_config_gets_the_use_keys_added_since_the_run_started(tmp_path):
    from configs import saved, tiny
    from segan_jax import workdir

    config = tiny.get_config()
    config.train.num_steps = 7
    written = workdir.config_dict(config)
    del written["eval"]["cohort"], written["predict"]["overwrite"]
    (tmp_path / "config.json").write_text(json.dumps(written))
    loaded = saved.get_config(str(tmp_path))
    assert loaded.eval.cohort == "" and loaded.predict.overwrite is False
    assert loaded.train.num_steps == 7 and "hue" in loaded.augment
    del written["predict"]  # a whole group too
    (tmp_path / "config.json").write_text(json.dumps(written))
    assert saved.get_config(str(tmp_path)).predict.output == ""
    del written["augment"]["hue"]  # a training key the run lacks stays absent
    (tmp_path / "config.json").write_text(json.dumps(written))
    assert "hue" not in saved.get_config(str(tmp_path)).augment
