"""How often `metrics.runs_bootstrap_differences`' 95 % interval holds 0 when two configs are
equally good but each run (seed) is a little better or worse than another: a simulation, not
a measurement of segan_jax's networks.

Each trial draws one split of --images images of --classes classes (true pixels per class
200-600 an image) and 2 x R runs of one config: a run finds each class's pixels with a
recall of 0.6 + --seed_sd x a normal draw (its seed's luck), each image moving it by 0.1 x
another; a missed pixel goes to another class at random. The interval of the second R runs'
mean foreground F1 minus the first's should hold 0 in 95 % of trials.

    python benchmarks/bootstrap_coverage.py --runs 1 2 3 5 --trials 200
"""

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from segan_jax import metrics  # noqa: E402


def simulated_run(truth: np.ndarray, rng: np.random.Generator, seed_sd: float) -> np.ndarray:
    """(N, K, K) confusion matrices of one run on images of (N, K) true pixels per class."""
    n, k = truth.shape
    recall = np.clip(0.6 + seed_sd * rng.standard_normal(k), 0.05, 0.95)
    counts = np.zeros((n, k, k), np.int64)
    for i in range(n):
        found = np.clip(recall + 0.1 * rng.standard_normal(k), 0.01, 0.99)
        for c in range(k):
            hit = rng.binomial(truth[i, c], found[c])
            counts[i, c, c] = hit
            others = [j for j in range(k) if j != c]
            counts[i, c, others] = rng.multinomial(truth[i, c] - hit, np.ones(k - 1) / (k - 1))
    return counts


def coverage(runs: int, trials: int, args) -> tuple[float, float]:
    """(share of trials whose interval holds 0, mean interval width) for ``runs`` a side."""
    held, widths = 0, []
    for trial in range(trials):
        rng = np.random.default_rng([runs, trial])
        truth = rng.integers(200, 600, (args.images, args.classes))
        a, b = (
            np.stack([simulated_run(truth, rng, args.seed_sd) for _ in range(runs)])
            for _ in range(2)
        )
        found = metrics.runs_bootstrap_differences(a, b, samples=args.samples, seed=trial)
        low, high = found["f1_foreground_mean"]
        held += low <= 0 <= high
        widths.append(high - low)
    return held / trials, float(np.mean(widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--images", type=int, default=14)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--seed_sd", type=float, default=0.15)
    args = parser.parse_args()
    for runs in args.runs:
        held, width = coverage(runs, args.trials, args)
        print(
            f"{runs} run(s) a side: interval held 0 in {held:.0%} of {args.trials} trials, "
            f"mean width {width:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
