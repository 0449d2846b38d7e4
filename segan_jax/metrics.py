"""The paper's evaluation metrics from one accumulated confusion matrix.

Per-class F1 and IoU; the overall figures are means over the foreground classes (background,
class 0, excluded as in the paper). A class absent from both truth and prediction has no F1 or
IoU (NaN), and averages skip it (nanmean).
"""

import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(
    labels: jax.Array, predictions: jax.Array, num_classes: int, ignore_index: int = 255
) -> jax.Array:
    """Counts of (truth, prediction) pairs.

    Args:
      labels: (...) integer truth (any integer dtype, uint8 masks included); pixels equal to
        `ignore_index` are not counted.
      predictions: (...) integer predictions, same shape.

    Returns:
      (K, K) int32, rows truth, columns prediction.
    """
    valid = (labels != ignore_index).ravel()
    # int32 first: uint8 masks would wrap label * K + prediction once K > 16.
    labels, predictions = labels.astype(jnp.int32), predictions.astype(jnp.int32)
    index = jnp.where(valid, labels.ravel() * num_classes + predictions.ravel(), 0)
    counts = jnp.bincount(index, weights=valid.astype(jnp.int32), length=num_classes**2)
    return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def host_confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """`confusion_matrix` in numpy, for label maps already on the host: no compile per image
    shape, no transfer to a device. Returns (K, K) int64, rows truth."""
    valid = labels != ignore_index
    index = labels[valid].astype(np.int64) * num_classes + predictions[valid]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def scores(confusion: np.ndarray) -> dict[str, np.ndarray | float]:
    """Per-class F1 and IoU and their foreground means.

    Args:
      confusion: (K, K) counts, rows truth, columns prediction, summed over a whole split.

    Returns:
      {"f1": (K,), "iou": (K,), "f1_foreground_mean": float, "iou_foreground_mean": float};
      NaN where a class is absent from truth and prediction.
    """
    found = _all_scores(confusion)
    return {**found, **{key: float(found[key]) for key in MEAN_KEYS}}


def _f1_iou(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., K, K) counts (rows truth) -> per-class (F1, IoU), each (..., K); NaN where a class
    is absent from truth and prediction."""
    cm = np.asarray(confusion, np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    fp = cm.sum(axis=-2) - tp
    fn = cm.sum(axis=-1) - tp
    return _safe_ratio(2 * tp, 2 * tp + fp + fn), _safe_ratio(tp, tp + fp + fn)


# A split's figures are of its images: resampling them (percentile bootstrap) says how far the
# figures could move on another sample of images like them.
BOOTSTRAP_SAMPLES = 1000
INTERVAL_LEVEL = 0.95
MEAN_KEYS = ("f1_foreground_mean", "iou_foreground_mean")


def bootstrap_intervals(
    confusions: np.ndarray,
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = INTERVAL_LEVEL,
    seed: int = 0,
    groups: Sequence | None = None,
) -> dict[str, np.ndarray]:
    """Percentile bootstrap intervals of `scores` over images: the N images drawn N times with
    replacement, `samples` times, each draw's matrices summed and scored. The images' order
    does not matter (they are sorted first), so any split of them over processes agrees.
    Images cut from one slide are not independent: with `groups` (N labels, e.g. each tile's
    slide) whole groups are drawn instead, G times from the G groups.

    Args:
      confusions: (N, K, K) counts of each image (N = 0: every bound NaN).
      groups: None, or (N,) hashable labels: images of one label are drawn together.

    Returns:
      {"f1": (K, 2), "iou": (K, 2), "f1_foreground_mean": (2,), "iou_foreground_mean": (2,)}:
      the bounds of the central `level` interval; NaN where a class (or every foreground
      class) is absent from truth and prediction in every draw.
    """
    totals = _drawn_totals(_group_sums(confusions, groups), samples, seed)  # (S, K, K)
    return {k: _central(v, level) for k, v in _all_scores(totals).items()}


def paired_bootstrap_differences(
    first: np.ndarray,
    second: np.ndarray,
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = INTERVAL_LEVEL,
    seed: int = 0,
    groups: Sequence | None = None,
) -> dict[str, np.ndarray]:
    """Bounds of the central `level` interval of each of `second`'s `scores` minus `first`'s,
    both scored on the same draws of the images (a paired bootstrap: two predictions of one
    split compared image for image; with `groups`, as in `bootstrap_intervals`, group for
    group): `runs_bootstrap_differences` of one run each.

    Args:
      first, second: (N, K, K) counts of the same N images, in the same order.

    Returns:
      {"f1": (K, 2), "iou": (K, 2), "f1_foreground_mean": (2,), "iou_foreground_mean": (2,)};
      NaN where a class is absent from truth and prediction of one record or the other in
      every draw.
    """
    if np.shape(first) != np.shape(second):
        raise ValueError(f"{np.shape(first)} and {np.shape(second)}: not the same images")
    return runs_bootstrap_differences(
        np.asarray(first)[None], np.asarray(second)[None], samples, level, seed, groups
    )


def runs_bootstrap_differences(
    first: np.ndarray,
    second: np.ndarray,
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = INTERVAL_LEVEL,
    seed: int = 0,
    groups: Sequence | None = None,
) -> dict[str, np.ndarray]:
    """Like `paired_bootstrap_differences` for two sets of runs (e.g. seeds of two configs):
    each draw takes the images (groups) as there, the same for every run, and each set's runs
    with replacement (as many as it has; with one run, that run), and compares the mean of
    the second set's drawn runs' scores with the first's. So the interval holds the spread
    over runs as well as over images. A mean of R runs drawn from R varies (R - 1) / R as
    much as a new set of R runs would, so each draw's mean is moved from the mean of all the
    set's runs by sqrt(R / (R - 1)) times its own distance (the unbiased variance). Even so,
    with few runs the interval is narrower than it should be (`benchmarks/bootstrap_coverage.py`,
    two equal configs whose seeds matter: 95 % intervals held 0 in 84 % of trials with 2 runs
    a side, 92 % with 3, 94 % with 5; with 1, the paired interval, 27 %). The runs' order does
    not matter (each set is sorted first).

    Args:
      first, second: (R1, N, K, K) and (R2, N, K, K) counts of R1 and R2 runs' predictions of
        the same N images, in the same order.

    Returns:
      As `paired_bootstrap_differences`.
    """
    first, second = (_sorted_runs(np.asarray(x, np.int64)) for x in (first, second))
    if first.shape[1:] != second.shape[1:] or not len(first) or not len(second):
        raise ValueError(f"{first.shape} and {second.shape}: not runs of the same images")
    runs = np.concatenate([first, second]).swapaxes(0, 1)  # (N, R1 + R2, K, K)
    totals = _drawn_totals(_group_sums(runs, groups), samples, seed)  # (S, R1 + R2, K, K)
    per_run = _all_scores(totals)
    rng = np.random.default_rng([seed, 1])  # the runs' draws, apart from the images'
    sides = [(0, len(first)), (len(first), len(second))]  # (first run, runs) of each set
    drawn = [start + _run_draws(rng, runs, samples) for start, runs in sides]
    values = {
        key: _mean_of_runs(value, drawn[1], *sides[1]) - _mean_of_runs(value, drawn[0], *sides[0])
        for key, value in per_run.items()
    }
    return {key: _central(value, level) for key, value in values.items()}


def _sorted_runs(runs: np.ndarray) -> np.ndarray:
    """(R, ...) counts of R runs in a canonical order (lexicographic), so that the order they
    were given in changes no draw."""
    flat = runs.reshape(len(runs), -1)
    return runs[np.lexsort(flat.T[::-1])] if len(runs) > 1 else runs


def _all_scores(confusions: np.ndarray) -> dict[str, np.ndarray]:
    """`scores`' keys of (..., K, K) counts: "f1" and "iou" (..., K), their foreground
    means (...)."""
    f1, iou = _f1_iou(confusions)
    return {
        "f1": f1,
        "iou": iou,
        "f1_foreground_mean": _nanmeans(f1[..., 1:]),
        "iou_foreground_mean": _nanmeans(iou[..., 1:]),
    }


def _run_draws(rng: np.random.Generator, runs: int, samples: int) -> np.ndarray:
    """(S, runs) indices of ``runs`` runs drawn with replacement ``samples`` times (one run:
    itself, every time)."""
    if runs == 1:
        return np.zeros((samples, 1), np.intp)
    return rng.integers(0, runs, (samples, runs))


def _mean_of_runs(values: np.ndarray, drawn: np.ndarray, start: int, runs: int) -> np.ndarray:
    """(S, R[, K]) scores of every run on each draw of the images -> (S[, K]) mean of the
    runs ``drawn`` ((S, runs) indices into the set of ``runs`` runs from ``start``), NaN
    skipped, moved from the mean of all the set's runs by sqrt(runs / (runs - 1)) times its
    distance from it (`runs_bootstrap_differences`)."""
    index = drawn.reshape(*drawn.shape, *(1,) * (values.ndim - 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from every run
        means = np.nanmean(np.take_along_axis(values, index, axis=1), axis=1)
        if runs == 1:
            return means
        every = np.nanmean(values[:, start : start + runs], axis=1)
    return every + np.sqrt(runs / (runs - 1)) * (means - every)


def paired_bootstrap_difference(
    first: np.ndarray,
    second: np.ndarray,
    key: str = "f1_foreground_mean",
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = INTERVAL_LEVEL,
    seed: int = 0,
    groups: Sequence | None = None,
) -> np.ndarray:
    """(2,) bounds of `paired_bootstrap_differences`' foreground mean `key` (F1 or IoU).

    Args:
      first, second: (N, K, K) counts of the same N images, in the same order.
    """
    if key not in MEAN_KEYS:
        raise ValueError(f"{key!r} is not one of {MEAN_KEYS}")
    return paired_bootstrap_differences(first, second, samples, level, seed, groups)[key]


def _group_sums(confusions: np.ndarray, groups: Sequence | None) -> np.ndarray:
    """(G, K, K) sums of the (N, K, K) `confusions` by label of `groups` ((N,); None: each
    image its own group)."""
    confusions = np.asarray(confusions, np.int64)
    if groups is None:
        return confusions
    if len(groups) != len(confusions):
        raise ValueError(f"{len(groups)} group labels for {len(confusions)} images")
    index: dict = {}  # label -> group number, in first-seen order (the draws sort them anyway)
    ids = np.array([index.setdefault(label, len(index)) for label in groups], np.intp)
    sums = np.zeros((len(index), *confusions.shape[1:]), np.int64)
    np.add.at(sums, ids, confusions)
    return sums


def _drawn_totals(rows: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """(S, ...) sums of `samples` draws of the N `rows` ((N, ...) counts) with replacement,
    N each, sorted first (a canonical order); float64, exact (checked) below 2**53."""
    rows = np.asarray(rows, np.int64)
    n, shape = len(rows), rows.shape[1:]
    flat = rows.reshape(n, int(np.prod(shape)))
    flat = flat[np.lexsort(flat.T[::-1])]  # rows sorted lexicographically
    if n and flat.sum(0).max() * n >= 2**53:
        raise ValueError(f"{flat.sum(0).max()} pixels x {n} images: too many to resample exactly")
    if not n:
        return np.zeros((1, *shape))  # scores NaN
    rng, chunk = np.random.default_rng(seed), max(1, 2**22 // n)  # draws of <= 32 MiB
    draws = (
        rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, samples - i)) @ flat.astype(float)
        for i in range(0, samples, chunk)
    )
    return np.concatenate(list(draws)).reshape(samples, *shape)


def _nanmeans(values: np.ndarray) -> np.ndarray:
    """(..., K') -> (...) nanmean over the last axis; NaN where it holds NaN only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=-1)


def _central(values: np.ndarray, level: float) -> np.ndarray:
    """(S, ...) -> (..., 2): the bounds of the central `level` of each column, NaN skipped
    (NaN where a column is NaN only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        bounds = np.nanpercentile(values, (50 * (1 - level), 50 * (1 + level)), axis=0)
    return np.moveaxis(bounds, 0, -1)


def format_table(classes: list[str] | tuple[str, ...], result: dict) -> str:
    """The per-class table of the paper's Table I: Label | Type | F1 | IoU."""
    lines = [f"{'Label':>5} | {'Type':<20} | {'F1':>6} | {'IoU':>6}", "-" * 46]
    for k, name in enumerate(classes):
        lines.append(f"{k:>5} | {name:<20} | {_fmt(result['f1'][k])} | {_fmt(result['iou'][k])}")
    lines.append("-" * 46)
    lines.append(
        f"{'':>5} | {'foreground mean':<20} | {_fmt(result['f1_foreground_mean'])} | "
        f"{_fmt(result['iou_foreground_mean'])}"
    )
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return f"{x:6.3f}" if np.isfinite(x) else f"{'n/a':>6}"
