"""Per-class SegAN critics, forward + backward: the former ``nn.vmap`` of them (each layer's N
convolutions one grouped convolution) against ``models.Critics`` (one after another).

    python benchmarks/critics.py                 # CPU: the ablation's critics, the README's figures
    python benchmarks/critics.py --dtype=bfloat16 --batch=32 --crop=256 --width=64  # e.g. a GPU
"""

import argparse
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from train_throughput import _timed_loop  # noqa: E402  (benchmarks/ is the script's folder)

from segan_jax import models  # noqa: E402


def vmapped(num: int, features: tuple[int, ...], dtype: str) -> nn.Module:
    """``num`` critics as ``models.Critics`` stacked them before 2026-11-28: ``nn.vmap``."""
    return nn.vmap(
        models.Critic,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        axis_size=num,
    )(features=features, dtype=dtype)


def ms(module: nn.Module, variables: dict, x: jax.Array, repeats: int, calls: int) -> float:
    """Best of ``repeats`` mean milliseconds of ``calls`` jitted calls of the parameter and
    input gradients of a sum over every layer's features."""
    loss = lambda v, x: sum(jnp.sum(o) for o in module.apply(v, x))  # noqa: E731
    grad = jax.jit(jax.value_and_grad(loss, (0, 1)))
    jax.block_until_ready(grad(variables, x))
    step = lambda state: (state, grad(variables, x))  # noqa: E731
    return min(_timed_loop(step, None, calls)[2] for _ in range(repeats)) / calls * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--critics", default="1,5", help="numbers of critics (classes) to time")
    p.add_argument("--batch", type=int, default=16, help="both passes': 2 x the train batch")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--channels", type=int, default=3, help="each critic's input channels")
    p.add_argument("--width", type=int, default=16, help="the first layer's features")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calls", type=int, default=5)
    args = p.parse_args()
    features = tuple(args.width * m for m in (1, 2, 4, 8, 8, 8))
    print(jax.devices()[0].device_kind, jax.__version__, f"critic features {features}")
    for num in map(int, args.critics.split(",")):
        shape = (num, args.batch, args.crop, args.crop, args.channels)
        x = jax.random.normal(jax.random.key(0), shape, args.dtype)
        ours = models.Critics(num=num, features=features, dtype=args.dtype)
        params = ours.init(jax.random.key(1), x)["params"]
        theirs = vmapped(num, features, args.dtype)
        a = ms(theirs, {"params": params["critic"]}, x, args.repeats, args.calls)
        b = ms(ours, {"params": params}, x, args.repeats, args.calls)
        print(f"{num} critic(s), input {shape}: vmap {a:.1f} ms, models.Critics {b:.1f} ms")


if __name__ == "__main__":
    main()
