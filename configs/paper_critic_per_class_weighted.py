"""One critic per class, with inverse-frequency class weights on the cross-entropy.

  python launch.py --config=configs/paper_critic_per_class_weighted.py --workdir=DIR \
      --config.data.path=PATH
"""

import ml_collections

from configs import paper_critic_per_class


def get_config() -> ml_collections.ConfigDict:
    c = paper_critic_per_class.get_config()
    c.loss.class_weights = "inverse_frequency"
    return c
