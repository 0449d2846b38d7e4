"""The built-in demo: a real labelled scratch-assay time-lapse (ndev-sampledata), 3 classes.

Trains a small DeepLabV3-ResNet18 from scratch on 2 CPU cores in a few minutes.
Run: python launch.py --config=configs/demo.py --workdir=runs/demo
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.data.name = "demo"
    c.data.crop_size = 128
    c.model.depth = 18
    c.model.width = 16
    c.model.aspp_features = 64
    c.model.output_stride = 8  # small nuclei: F1 0.75 on them at OS8 (README), 0.10 at OS16
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 30
    c.train.num_steps = 600
    c.train.batch_size = 8
    c.train.log_every = 25
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    return c
