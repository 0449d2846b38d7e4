"""The paper's evaluation metrics from one accumulated confusion matrix.

Per-class F1 and IoU; the overall figures are means over the foreground classes (background,
class 0, excluded as in the paper). A class absent from both truth and prediction has no F1 or
IoU (NaN), and averages skip it (nanmean).
"""

import warnings

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
    f1, iou = _f1_iou(confusion)
    return {
        "f1": f1,
        "iou": iou,
        "f1_foreground_mean": _nanmean(f1[1:]),
        "iou_foreground_mean": _nanmean(iou[1:]),
    }


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


def bootstrap_intervals(
    confusions: np.ndarray,
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = INTERVAL_LEVEL,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Percentile bootstrap intervals of `scores` over images: the N images drawn N times with
    replacement, `samples` times, each draw's matrices summed and scored. The images' order
    does not matter (they are sorted first), so any split of them over processes agrees.

    Images cut from one slide are not independent: over such tiles the intervals come out too
    narrow.

    Args:
      confusions: (N, K, K) counts of each image (N = 0: every bound NaN).

    Returns:
      {"f1": (K, 2), "iou": (K, 2), "f1_foreground_mean": (2,), "iou_foreground_mean": (2,)}:
      the bounds of the central `level` interval; NaN where a class (or every foreground
      class) is absent from truth and prediction in every draw.
    """
    confusions = np.asarray(confusions, np.int64)
    n, shape = len(confusions), confusions.shape[1:]
    flat = confusions.reshape(n, int(np.prod(shape)))
    flat = flat[np.lexsort(flat.T[::-1])]  # a canonical order: rows sorted lexicographically
    # float64 products (BLAS) are exact while every sum stays below 2**53
    if n and flat.sum(0).max() * n >= 2**53:
        raise ValueError(f"{flat.sum(0).max()} pixels x {n} images: too many to resample exactly")
    rng, chunk = np.random.default_rng(seed), max(1, 2**22 // max(n, 1))  # draws of <= 32 MiB
    draws = (
        rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, samples - i)) @ flat.astype(float)
        for i in range(0, samples, chunk)
    )
    totals = np.concatenate(list(draws)).reshape(samples, *shape) if n else np.zeros((1, *shape))
    f1, iou = _f1_iou(totals)
    with warnings.catch_warnings():  # all-NaN slices: classes absent from every draw
        warnings.simplefilter("ignore", RuntimeWarning)
        values = {
            "f1": f1,
            "iou": iou,
            "f1_foreground_mean": np.nanmean(f1[:, 1:], axis=1),
            "iou_foreground_mean": np.nanmean(iou[:, 1:], axis=1),
        }
        q = (50 * (1 - level), 50 * (1 + level))
        return {k: np.moveaxis(np.nanpercentile(v, q, axis=0), 0, -1) for k, v in values.items()}


def _nanmean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.any(np.isfinite(x)) else float("nan")


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
