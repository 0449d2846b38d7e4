"""CoNSeP nuclei (5 classes, strongly imbalanced), read from ../shared/data/consep by default.

Run: python launch.py --config=configs/consep.py --workdir=runs/consep
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.data.name = "consep"
    c.model.output_stride = 8
    return c
