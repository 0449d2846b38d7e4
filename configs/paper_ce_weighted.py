"""Cross-entropy only, each class's error scaled by its inverse training-set pixel frequency.

python launch.py --config=configs/paper_ce_weighted.py --workdir=DIR --config.data.path=PATH
"""

import ml_collections

from configs import paper_ce


def get_config() -> ml_collections.ConfigDict:
    c = paper_ce.get_config()
    c.loss.class_weights = "inverse_frequency"
    return c
