"""Cross-entropy + one SegAN critic on all classes (the image masked by each class's map,
concatenated on channels): L = lambda_ce * CE + lambda_mae * l_mae (the paper's eq. 1).

The paper gives no lambdas: lambda_ce = 1, lambda_mae = 0.1 here. The critic is SegAN's (six
4x4 stride-2 blocks, Adam lr 2e-4, beta1 0.5, weights clipped to +-0.05), one update per
segmentor update.
  python launch.py --config=configs/paper_critic_single.py --workdir=DIR --config.data.path=PATH
"""

import ml_collections

from configs import paper_ce


def get_config() -> ml_collections.ConfigDict:
    c = paper_ce.get_config()
    c.critic.num = 1
    c.loss.lambda_ce = 1.0
    c.loss.lambda_mae = 0.1
    return c
