"""Losses as pure functions of arrays.

Cross-entropy with per-class weights (the paper's imbalance handling after Chan et al. 2019,
arXiv 1901.08394) and the SegAN multi-scale L1 distance between critic features (Xue et al. 2017,
arXiv 1706.01805; the paper's eq. 2).

The cross-entropy returns a *sum* and a *normaliser* (the normaliser differs between devices),
so a data-parallel step divides by the global normaliser and matches one device exactly; the
multi-scale L1 is a mean over equally sized per-device blocks, so its global value is the mean
of the devices' values.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

CLASS_WEIGHTINGS = ("none", "inverse_frequency", "median_frequency")
LAYER_WEIGHTINGS = ("mean", "segan")


def class_weights(
    pixel_counts: np.ndarray, kind: str, image_pixel_counts: np.ndarray | None = None
) -> np.ndarray:
    """Per-class error weights from training-set label frequencies.

    Args:
      pixel_counts: (K,) number of training pixels of each class.
      kind: "none" (all ones); "inverse_frequency" (w_k = 1 / f_k with f_k = pixel_counts_k /
        all labelled pixels, scaled so the mean weight of a training pixel is 1);
        "median_frequency" (Eigen & Fergus 2015: w_k = median(f) / f_k with f_k =
        pixel_counts_k / image_pixel_counts_k, the class's share of the images it appears in).
        A class with no training pixels gets weight 0 (it cannot be learned from this data)
        and is left out of the median.
      image_pixel_counts: (K,) labelled pixels of the training images in which each class
        appears; needed by "median_frequency".

    Returns:
      (K,) float32 weights.
    """
    if kind not in CLASS_WEIGHTINGS:
        raise ValueError(f"loss.class_weights must be one of {CLASS_WEIGHTINGS}, got {kind!r}")
    counts = np.asarray(pixel_counts, np.float64)
    if kind == "none":
        return np.ones(counts.shape, np.float32)
    if kind == "median_frequency" and image_pixel_counts is None:
        raise ValueError("median_frequency weights need the pixels of the images of each class")
    totals = counts.sum() if kind == "inverse_frequency" else image_pixel_counts
    totals = np.broadcast_to(np.asarray(totals, np.float64), counts.shape)
    present = counts > 0
    freq = np.zeros_like(counts)
    freq[present] = counts[present] / totals[present]
    weights = np.zeros_like(freq)
    weights[present] = 1.0 / freq[present]
    if kind == "inverse_frequency":
        weights /= (freq * weights).sum()
    else:
        weights *= np.median(freq[present])
    return weights.astype(np.float32)


def weighted_cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array, ignore_index: int = 255
) -> tuple[jax.Array, jax.Array]:
    """Class-weighted softmax cross-entropy, as a (sum, normaliser) pair.

    The loss is sum_p w[y_p] * ce_p / sum_p w[y_p] over pixels p whose label is not
    `ignore_index` (PyTorch's weighted-mean convention), so scaling all weights by a constant
    leaves it unchanged and weights of ones give the plain mean.

    Args:
      logits: (B, H, W, K).
      labels: (B, H, W) integer labels; `ignore_index` marks padding.
      weights: (K,) class weights.

    Returns:
      (weighted sum of per-pixel losses, sum of weights), both scalars.
    """
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    w = jnp.where(valid, weights[safe], 0.0)
    return jnp.sum(w * nll), jnp.sum(w)


def segan_layer_scales(num_layers: int) -> tuple[float, ...]:
    """Scales of the original SegAN code for the input and each critic block.

    For its six blocks SegAN used (1, 1, 2, 2, 2, 2, 4), input first: the input and the first
    block 1, the last block 4, the blocks between 2.

    Args:
      num_layers: number of feature maps including the input (blocks + 1), at least 2.
    """
    if num_layers < 2:
        raise ValueError(f"need the input and at least one block, got {num_layers} feature maps")
    if num_layers == 2:
        return (1.0, 1.0)
    return (1.0, 1.0) + (2.0,) * (num_layers - 3) + (4.0,)


def check_layer_weighting(weighting: str) -> None:
    """Raises ValueError naming critic.layer_weighting unless it is one of LAYER_WEIGHTINGS."""
    if weighting not in LAYER_WEIGHTINGS:
        raise ValueError(f"critic.layer_weighting={weighting!r} is not one of {LAYER_WEIGHTINGS}")


def multiscale_l1(
    features_a: Sequence[jax.Array], features_b: Sequence[jax.Array], weighting: str = "mean"
) -> jax.Array:
    """The SegAN multi-scale L1 distance between two lists of critic features.

    "mean" (the paper's eq. 2): (1/L) * sum_i mean|f_i(a) - f_i(b)|, one mean per layer, so every
    layer counts the same. "segan" (the original SegAN code): every layer flattened, scaled by
    `segan_layer_scales`, concatenated, and one mean of the absolute difference taken over all of
    it, so the large early layers (and the input) dominate.

    Args:
      features_a, features_b: L arrays each, matching shapes (..., h_i, w_i, c_i); the input is
        element 0.

    Returns:
      A scalar.
    """
    check_layer_weighting(weighting)
    diffs = [
        jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))
        for a, b in zip(features_a, features_b, strict=True)
    ]
    if weighting == "mean":
        return sum(jnp.mean(d) for d in diffs) / len(diffs)
    scales = segan_layer_scales(len(diffs))
    total = sum(s * jnp.sum(d) for s, d in zip(scales, diffs, strict=True))
    return total / sum(d.size for d in diffs)
