"""What a training run's evaluation step costs in checkpointing: the latest checkpoint (the
whole train state) and `best/` (the network alone: step, params, batch_stats), each saved
asynchronously with orbax as the training loop saves them, the latest first.

For each of --repeats evaluation steps it prints the seconds each save blocked the caller
(device-to-host copy and orbax's synchronous part) and the seconds until both were written,
first with best/ holding the whole state (as before 2026-11-27), then the network alone. The
state has the shapes of --config's model and optimizer (zeros; 3 classes, RGB).

    python benchmarks/checkpoint_save.py                  # paper_ce: ResNet-50 OS8 + AdamW
    python benchmarks/checkpoint_save.py --config=configs/demo.py
"""

import argparse
import importlib.util
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # configs/


def _state(config_path: str):
    """A zero train state of the config's model and optimizers (3 classes, 3 channels)."""
    import jax
    import jax.numpy as jnp
    from train_throughput import synthetic_data

    from segan_jax import train

    spec = importlib.util.spec_from_file_location("config", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    info, _ = synthetic_data(1, 8, 3)
    ctx = train.step_context(config, info, 1, axis_name=None)
    shapes = jax.eval_shape(lambda: train.create_train_state(ctx, jax.random.key(0), 3))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _mib(tree) -> float:
    import jax

    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)) / 2**20


def time_saves(state, best_tree, repeats: int) -> list[tuple[float, float, float]]:
    """(latest blocked s, best/ blocked s, s until both written) per evaluation step."""
    from segan_jax import checkpoints

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        latest = checkpoints.latest_manager(workdir, keep=3)
        best = checkpoints.best_manager(workdir)
        for i in range(1, repeats + 1):
            start = time.perf_counter()
            checkpoints.save(latest, 1000 * i, state)
            saved_latest = time.perf_counter()
            checkpoints.save(best, 1000 * i, best_tree, {"f1_foreground_mean": i / 100})
            saved_best = time.perf_counter()
            latest.wait_until_finished()
            best.wait_until_finished()
            done = time.perf_counter()
            rows.append((saved_latest - start, saved_best - saved_latest, done - saved_best))
        latest.close()
        best.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "paper_ce.py"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from segan_jax import checkpoints

    state = _state(args.config)
    network = checkpoints.network(state)
    print(f"{args.config}: train state {_mib(state):.1f} MiB, network {_mib(network):.1f} MiB")
    for name, tree in (("whole state", state), ("network", network)):
        rows = time_saves(state, tree, args.repeats)
        for latest, best, rest in rows:
            print(
                f"best/ holds the {name}: latest blocked {latest:.2f} s, best/ blocked "
                f"{best:.2f} s, both written {rest:.2f} s later"
            )
        median = statistics.median(r[1] for r in rows)
        print(f"best/ holds the {name}: median best/ blocking {median:.2f} s")


if __name__ == "__main__":
    main()
