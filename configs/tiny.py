"""A tiny CPU config for tests: seconds per run, on the demo data unless overridden."""

import ml_collections

from configs import demo


def get_config() -> ml_collections.ConfigDict:
    c = demo.get_config()
    c.data.crop_size = 64
    c.model.width = 8
    c.model.aspp_features = 16
    c.model.dropout_rate = 0.0
    c.critic.features = (8, 16, 16)
    c.optimizer.warmup_steps = 0
    c.train.num_steps = 4
    c.train.batch_size = 2
    c.train.log_every = 2
    c.train.eval_every = 4
    c.train.checkpoint_every = 2
    return c
