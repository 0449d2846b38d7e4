"""One critic per class (critic k sees the image masked by class k's map only).

critic.num = -1 means one per class, whatever the dataset's number of classes.
  python launch.py --config=configs/paper_critic_per_class.py --workdir=DIR \
      --config.data.path=PATH
"""

import ml_collections

from configs import paper_critic_single


def get_config() -> ml_collections.ConfigDict:
    c = paper_critic_single.get_config()
    c.critic.num = -1
    return c
