"""Compile and run seconds of test-time augmentation's views, as segan_jax runs them (the
views of one orientation through one traced network, `lax.map`) and unrolled (a copy of the
network per view, as at 844ac4a): the demo's network on one 1000x1000 image, one device.

  python benchmarks/tta_compile.py
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from segan_jax import evaluate, models

model = models.DeepLabV3(num_classes=5, depth=18, width=16, aspp_features=64, output_stride=8)
v = model.init(jax.random.key(0), np.zeros((1, 128, 128, 3), np.float32), train=False)
x = jax.ShapeDtypeStruct((1, 1000, 1000, 3), jnp.float32)


def unrolled(v, images, tta):
    """`evaluate.tta_probabilities` with a copy of the network per view."""
    total = 0.0
    for k, flip in evaluate.TTA_VIEWS[tta]:
        logits = model.apply(v, evaluate._view(images, k, flip), train=False)
        total = total + evaluate._unview(jax.nn.softmax(logits.astype(jnp.float32), -1), k, flip)
    return total / len(evaluate.TTA_VIEWS[tta])


for tta in evaluate.TTA_VIEWS:
    for name, fn in [
        ("lax.map", functools.partial(evaluate.tta_probabilities, model, tta=tta)),
        ("unrolled", functools.partial(unrolled, tta=tta)),
    ]:
        t = time.perf_counter()
        c = jax.jit(fn).lower(v, x).compile()
        tc = time.perf_counter() - t
        xx = np.zeros((1, 1000, 1000, 3), np.float32)
        c(v, xx).block_until_ready()
        t = time.perf_counter()
        c(v, xx).block_until_ready()
        tr = time.perf_counter() - t
        print(f"{tta:6s} {name:9s} compile {tc:5.1f} s  run {tr:5.2f} s", flush=True)
