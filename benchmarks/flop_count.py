"""Forward FLOPs of DeepLabV3-ResNet50 per image, with every convolution tap and with the taps
segan_jax runs (model.padding_taps 'skip' and 'regions'; ASPP taps untrained at the crop size
dropped).

Traced only (jax.make_jaxpr, no compile), so it runs in seconds on a CPU:

  python benchmarks/flop_count.py
"""

import pathlib
import sys

import jax
import jax.numpy as jnp

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import train_throughput  # noqa: E402

from segan_jax import models  # noqa: E402


def forward_gflop(output_stride: int, size: int, crop: int | None, taps: str = "skip") -> float:
    """GFLOP of one size x size inference-mode forward (jaxpr count, 2 per multiply-add):
    every tap without ``crop``; with it, a model trained on crops of that size (train_size)
    with ``model.padding_taps=taps``."""
    model = models.DeepLabV3(
        num_classes=5,
        depth=50,
        output_stride=output_stride,
        train_size=crop,
        impl=models.Implementation(padding_taps="keep" if crop is None else taps),
    )
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    return train_throughput.jaxpr_flops(jaxpr) / 1e9


def main() -> None:
    print("| OS | input | every tap | padding_taps=skip (default) | fewer | =regions | fewer |")
    print("|---|---|---|---|---|---|---|")
    for output_stride in (8, 16):
        for size in (256, -(-1000 // output_stride) * output_stride):  # 1000 padded as evaluate
            full = forward_gflop(output_stride, size, None)
            cells = [f"| {output_stride} | {size}x{size} | {full:.1f} "]
            for taps in ("skip", "regions"):
                live = forward_gflop(output_stride, size, 256, taps)
                cells.append(f"| {live:.1f} | {100 * (1 - live / full):.1f} % ")
            print("".join(cells) + "|")


if __name__ == "__main__":
    main()
