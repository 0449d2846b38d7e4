"""The paper's experiments, baseline: DeepLabV3 trained with cross-entropy only.

25,000 iterations on 256x256 crops as in the paper (Lad; Sec. IV). Where the paper is silent:
DeepLabV3-ResNet50 at output stride 8 from scratch, global batch 16, AdamW lr 1e-3 with a
cosine decay after 500 warm-up steps, weight decay 1e-4; evaluation every 1,000 iterations.
Siblings: paper_ce_weighted, paper_critic_single[_weighted], paper_critic_per_class[_weighted].

Run on any folder dataset (the podocyte data uses this layout):
  python launch.py --config=configs/paper_ce.py --workdir=runs/ce --config.data.path=PATH
or on CoNSeP: add --config.data.name=consep (and no data.path).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.data.name = "folder"
    c.data.crop_size = 256
    c.model.depth = 50
    c.model.output_stride = 8
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 500
    c.train.num_steps = 25_000
    c.train.batch_size = 16
    c.loss.class_weights = "none"
    c.critic.num = 0
    return c
