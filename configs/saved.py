"""The config a run saved: ``--config=configs/saved.py:DIR`` is exactly the run in DIR's
resolved config (DIR/config.json), so evaluating, predicting or resuming needs none of the
overrides it was started with typed again; further --config.key=value flags apply on top.
``eval.*`` and ``predict.*`` keys added to segan_jax after the run started get their defaults,
so they can be set on an older run too.

  python launch.py --config=configs/saved.py:runs/x --workdir=runs/x --mode=predict \\
      --config.predict.input=slides/ --config.predict.output=labels/
"""

import ml_collections

from configs import default
from segan_jax import figures
from segan_jax.workdir import ConfigMismatchError

USE_GROUPS = ("eval", "predict")  # keys of a trained run's use, not of its training


def get_config(workdir: str = "") -> ml_collections.ConfigDict:
    if not workdir:
        raise ConfigMismatchError(
            "configs/saved.py needs the run's folder: --config=configs/saved.py:DIR"
        )
    config = figures.load_config(workdir)
    defaults = default.get_config()
    for group in USE_GROUPS:
        if group not in config:
            config[group] = ml_collections.ConfigDict()
        for key, value in defaults[group].items():
            if key not in config[group]:
                config[group][key] = value
    return config
