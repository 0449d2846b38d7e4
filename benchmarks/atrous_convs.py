"""One atrous 3x3 convolution, forward + backward: lax's dilated convolution against
``models.conv_space_to_batch`` (the map's phases), at the shapes of DeepLabV3's backbone.

    python benchmarks/atrous_convs.py            # CPU: the figures in benchmarks/README.md
    python benchmarks/atrous_convs.py --dtype=bfloat16 --batch_scale=4   # e.g. on a GPU
"""

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from train_throughput import _timed_loop  # noqa: E402  (benchmarks/ is the script's folder)

from segan_jax import models  # noqa: E402

# (batch, map size, channels, rate): ResNet-18 width 16 at 128 crops (layers 3, 4) and
# ResNet-50 at 256 crops (layers 3, 4), output stride 8
SHAPES = [(8, 16, 64, 2), (8, 16, 128, 4), (4, 32, 256, 2), (4, 32, 512, 4)]


def _ms(fn, x, w, repeats: int, calls: int) -> float:
    loss = lambda x, w: jnp.sum(fn(x, w).astype(jnp.float32) ** 2)  # noqa: E731
    grad = jax.jit(jax.value_and_grad(loss, (0, 1)))  # input and kernel gradients
    jax.block_until_ready(grad(x, w))
    step = lambda state: (state, grad(x, w))  # noqa: E731
    return min(_timed_loop(step, None, calls)[2] for _ in range(repeats)) / calls * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch_scale", type=int, default=1, help="multiplies every batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calls", type=int, default=10)
    args = p.parse_args()
    print(jax.devices()[0].device_kind, jax.__version__)
    for batch, size, channels, rate in SHAPES:
        kx, kw = jax.random.split(jax.random.key(0))
        x = jax.random.normal(kx, (batch * args.batch_scale, size, size, channels), args.dtype)
        w = (0.05 * jax.random.normal(kw, (3, 3, channels, channels))).astype(args.dtype)
        dims = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
        pad = models.torch_padding(3, rate)

        def dilated(x, w, rate=rate, pad=pad, dims=dims):
            return lax.conv_general_dilated(
                x, w, (1, 1), pad, rhs_dilation=(rate, rate), dimension_numbers=dims
            )

        def phases(x, w, rate=rate, pad=pad, dims=dims):
            return models.conv_space_to_batch(x, w, rate, pad, dimension_numbers=dims)

        a, b = (_ms(f, x, w, args.repeats, args.calls) for f in (dilated, phases))
        print(
            f"b{x.shape[0]} {size}x{size} c{channels} rate {rate}: dilated {a:.2f} ms, "
            f"phases {b:.2f} ms"
        )


if __name__ == "__main__":
    main()
