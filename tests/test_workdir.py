"""Workdir rules: which config changes a rerun may make, and notes on options added later."""

import json

from configs import tiny
from segan_jax import workdir


def test_tap_options_may_change_but_not_the_model():
    saved = workdir.config_dict(tiny.get_config())
    current = tiny.get_config()
    current.model.drop_untrained_taps = not current.model.drop_untrained_taps
    current.model.padding_taps = "keep"
    current.model.atrous = "space_to_batch"
    assert workdir.config_differences(saved, workdir.config_dict(current)) == []
    current.model.depth = 34
    assert [
        d.split(":")[0] for d in workdir.config_differences(saved, workdir.config_dict(current))
    ] == ["model.depth"]


def test_check_notes_the_keys_an_older_run_lacks(tmp_path):
    path = tmp_path / "config.json"
    config = tiny.get_config()
    assert workdir.check(tmp_path, config) is None  # no earlier run
    saved = workdir.config_dict(config)
    path.write_text(json.dumps(saved))
    assert workdir.check(tmp_path, config) is None
    del saved["model"]["drop_untrained_taps"], saved["augment"]["hue"]
    path.write_text(json.dumps(saved))
    note = workdir.check(tmp_path, config)
    assert str(path) in note
    assert "augment.hue=0.0" in note and "model.drop_untrained_taps=True" in note
    assert "model.depth" not in note
