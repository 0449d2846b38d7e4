"""Any folder dataset: train/{images,masks}, test/..., optional val/..., classes.json.

Run: python launch.py --config=configs/folder.py --workdir=runs/mydata --config.data.path=PATH
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.data.name = "folder"
    return c
