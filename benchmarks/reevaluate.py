"""Re-evaluates finished ablation runs with and without the ASPP taps their crops never trained.

The runs of benchmarks/ablation.py were trained on 128x128 crops at output stride 8 (16x16
features), where the off-centre taps of ASPP rates 24 and 36 read only padding and never get a
gradient; whole 1000x1000 images (125x125 features) then used them with their initial weights.
This evaluates the same checkpoints both ways (model.drop_untrained_taps False / True) and
prints one markdown table; it writes nothing into the runs.

  python benchmarks/reevaluate.py --workdir=runs/ablation1000 --steps=1000
"""

import argparse
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import ablation  # noqa: E402

from segan_jax import inference  # noqa: E402


def foreground_f1(config, workdir: pathlib.Path, drop: bool) -> float:
    """Foreground-mean F1 of the run's latest checkpoint on its evaluation split."""
    config.model.drop_untrained_taps = drop
    return inference.evaluate_trained(config, workdir)[0]["f1_foreground_mean"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="runs/ablation")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--experiments", default="paper_ce,paper_ce_weighted,paper_critic_single")
    args = p.parse_args()
    ablation_args = argparse.Namespace(
        data="consep", path="", scale="cpu", steps=args.steps, workdir=args.workdir
    )
    ablation_args.report_only = True  # ablation.run_one only reads finished runs
    print("| experiment | seed | recorded | F1 fg, untrained taps kept | dropped | change |")
    print("|---|---|---|---|---|---|")
    changes, summary = [], []
    for name in args.experiments.split(","):
        pairs = []
        for seed in map(int, args.seeds.split(",")):
            workdir = pathlib.Path(args.workdir) / name / f"seed{seed}"
            config = ablation.experiment_config(name, ablation_args, seed)
            record = ablation.run_one(name, ablation_args, seed)
            kept, dropped = (foreground_f1(config, workdir, drop) for drop in (False, True))
            pairs.append((kept, dropped))
            print(
                f"| {name} | {seed} | {record['f1_foreground_mean']:.3f} | {kept:.3f} "
                f"| {dropped:.3f} | {dropped - kept:+.3f} |",
                flush=True,
            )
        kept, dropped = np.array(pairs).T
        changes += list(dropped - kept)
        summary.append(
            f"| {name} | {kept.mean():.3f} ± {kept.std():.3f} | {dropped.mean():.3f} ± "
            f"{dropped.std():.3f} | {len(pairs)} |"
        )
    print(
        f"\nchange: mean {np.mean(changes):+.3f}, min {min(changes):+.3f}, max {max(changes):+.3f}"
    )
    print("\n| experiment | F1 fg mean, untrained taps kept | dropped | seeds |\n|---|---|---|---|")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
