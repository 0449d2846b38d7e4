"""Test-time augmentation (eval.tta) on finished runs: the figures and seconds of each choice.

Evaluates each run's latest checkpoint on its evaluation split (eval.split) with every choice
of views ("none", "flips", "d4"), and prints one markdown table (per-class F1, foreground
means, the seconds of each evaluation, compiling included); it writes nothing into the runs.

  python benchmarks/tta.py --workdirs=runs/demo,runs/consep [--out=tta.json]
"""

import argparse
import json
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import saved  # noqa: E402
from segan_jax import evaluate, inference  # noqa: E402


def measure(workdir: str, tta: str) -> dict:
    """The evaluation record of `workdir`'s latest checkpoint with `tta`, and its seconds."""
    config = saved.get_config(workdir)
    config.eval.tta = tta
    start = time.perf_counter()
    record, count = inference.evaluate_trained(config, pathlib.Path(workdir))
    return {"workdir": workdir, "images": count, "s": time.perf_counter() - start, **record}


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdirs", required=True, help="comma-separated run folders")
    p.add_argument("--tta", default=",".join(evaluate.TTA_VIEWS))
    p.add_argument("--out", default="", help="also write every record here (JSON)")
    args = p.parse_args()
    results = []
    for workdir in args.workdirs.split(","):
        for tta in args.tta.split(","):
            results.append(measure(workdir, tta))
            if len(results) == 1 or results[-2]["workdir"] != workdir:
                names = " | ".join(f"F1 {c}" for c in results[-1]["classes"])
                print(f"\n| run | views | step | {names} | F1 fg | IoU fg | images | s |")
                print("|---" * (7 + len(results[-1]["classes"])) + "|")
            print(row(results[-1]), flush=True)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
