"""Test-time augmentation (eval.tta) on finished runs: the figures and seconds of each choice.

Evaluates each run's latest checkpoint on its evaluation split (eval.split) with every choice
of views ("none", "flips", "d4"), and prints one markdown table (per-class F1, foreground
means, the seconds of each evaluation, compiling included) and, for each choice against
"none", the paired bootstrap interval of the foreground-mean F1's change (the same draws of
the images for both); it writes nothing into the runs.

  python benchmarks/tta.py --workdirs=runs/demo,runs/consep [--out=tta.json]
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import saved  # noqa: E402
from segan_jax import evaluate, inference, metrics  # noqa: E402


def measure(workdir: str, tta: str) -> dict:
    """The evaluation record of `workdir`'s latest checkpoint with `tta`, its seconds, and
    its images' (N, K, K) confusion matrices (``confusions``, split order)."""
    config = saved.get_config(workdir)
    config.eval.tta = tta
    start = time.perf_counter()
    record, confusions = inference.evaluate_trained(config, pathlib.Path(workdir))
    seconds = time.perf_counter() - start
    extra = {"images": len(confusions), "s": seconds, "confusions": confusions}
    return {"workdir": workdir, **record, **extra}


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"  # None: a class in neither truth nor labels


def row(result: dict) -> str:
    """One markdown table row of a `measure` result."""
    f1 = " | ".join(map(_figure, result["f1"]))
    means = (_figure(result[k]) for k in ("f1_foreground_mean", "iou_foreground_mean"))
    return (
        f"| {result['workdir']} | {result.get('tta', 'none')} | {result['step']} | {f1} "
        f"| {' | '.join(means)} | {result['images']} | {result['s']:.1f} |"
    )


def paired(plain: dict, views: dict) -> str:
    """The change of foreground-mean F1 from `plain` to `views` (two `measure` results of one
    run), with its paired bootstrap interval."""
    change = views["f1_foreground_mean"] - plain["f1_foreground_mean"]
    low, high = metrics.paired_bootstrap_difference(plain["confusions"], views["confusions"])
    interval = f"95% paired interval {low:+.3f} to {high:+.3f}"
    return f"{views['tta']} - none: F1 {change:+.3f} ({interval})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdirs", required=True, help="comma-separated run folders")
    p.add_argument("--tta", default=",".join(evaluate.TTA_VIEWS), help="'none' first")
    p.add_argument("--out", default="", help="also write every record here (JSON)")
    args = p.parse_args()
    results = []
    for workdir in args.workdirs.split(","):
        runs = [measure(workdir, tta) for tta in args.tta.split(",")]
        names = " | ".join(f"F1 {c}" for c in runs[0]["classes"])
        print(f"\n| run | views | step | {names} | F1 fg | IoU fg | images | s |")
        print("|---" * (7 + len(runs[0]["classes"])) + "|")
        print("\n".join(map(row, runs)))
        for views in runs[1:]:
            print(paired(runs[0], views), flush=True)
        results += runs
    if args.out:
        for result in results:
            result["confusions"] = np.asarray(result["confusions"]).tolist()
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
