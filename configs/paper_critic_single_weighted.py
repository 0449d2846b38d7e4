"""One critic, with inverse-frequency class weights on the cross-entropy.

  python launch.py --config=configs/paper_critic_single_weighted.py --workdir=DIR \
      --config.data.path=PATH
"""

import ml_collections

from configs import paper_critic_single


def get_config() -> ml_collections.ConfigDict:
    c = paper_critic_single.get_config()
    c.loss.class_weights = "inverse_frequency"
    return c
