"""The config a run saved: ``--config=configs/saved.py:DIR`` is exactly the run in DIR's
resolved config (DIR/config.json), so evaluating, predicting or resuming needs none of the
overrides it was started with typed again; further --config.key=value flags apply on top.

  python launch.py --config=configs/saved.py:runs/x --workdir=runs/x --mode=predict \\
      --config.predict.input=slides/ --config.predict.output=labels/
"""

import ml_collections

from segan_jax import figures
from segan_jax.workdir import ConfigMismatchError


def get_config(workdir: str = "") -> ml_collections.ConfigDict:
    if not workdir:
        raise ConfigMismatchError(
            "configs/saved.py needs the run's folder: --config=configs/saved.py:DIR"
        )
    return figures.load_config(workdir)
