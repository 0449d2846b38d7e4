"""Losses: hand-computed values, invariances, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segan_jax import losses


def test_class_weights_inverse_frequency_has_unit_mean_per_pixel():
    counts = np.array([600, 300, 100, 0])
    w = losses.class_weights(counts, "inverse_frequency")
    freq = counts / counts.sum()
    np.testing.assert_allclose((freq * w).sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[:3] / w[0], [1.0, 2.0, 6.0], rtol=1e-6)
    assert w[3] == 0.0  # a class with no training pixels cannot be weighted up


def test_class_weights_median_frequency_by_hand_and_none():
    """Eigen & Fergus: f_k = pixels of k / pixels of the images holding k. Two 100-pixel
    images, A (60 background, 40 of class 1) and B (90 background, 10 of class 2):
    f = (150/200, 40/100, 10/100) = (0.75, 0.4, 0.1), median 0.4."""
    counts, per_image = np.array([150, 40, 10]), np.array([200, 100, 100])
    np.testing.assert_allclose(
        losses.class_weights(counts, "median_frequency", per_image),
        [0.4 / 0.75, 1.0, 4.0],
        rtol=1e-6,
    )
    np.testing.assert_array_equal(losses.class_weights(counts, "none"), [1, 1, 1])
    # A class absent from the training set gets 0 and is not in the median of the others.
    np.testing.assert_allclose(
        losses.class_weights(np.append(counts, 0), "median_frequency", np.append(per_image, 0)),
        [0.4 / 0.75, 1.0, 4.0, 0.0],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="class_weights"):
        losses.class_weights(counts, "bogus")
    with pytest.raises(ValueError, match="median_frequency"):
        losses.class_weights(counts, "median_frequency")


def test_median_frequency_equals_inverse_frequency_only_when_every_image_holds_every_class():
    """With every class in every image the two are 1/f_k up to a constant, which the weighted
    mean divides out: the same loss; a class confined to few images is weighted less than
    inverse frequency weighs it."""
    counts = np.array([700, 200, 90, 10, 0])
    logits = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
    labels = jax.random.randint(jax.random.key(1), (2, 8, 8), 0, 4)

    def ce(kind, per_image=None):
        weights = losses.class_weights(counts, kind, per_image)
        s, w = losses.weighted_cross_entropy(logits, labels, weights)
        return s / w

    everywhere = np.full(5, counts.sum())
    np.testing.assert_allclose(
        ce("median_frequency", everywhere), ce("inverse_frequency"), rtol=1e-5
    )
    assert not np.isclose(ce("none"), ce("inverse_frequency"), rtol=1e-3)
    confined = everywhere.copy()
    confined[3] = 100  # class 3 only in one small image
    inverse = losses.class_weights(counts, "inverse_frequency")
    median = losses.class_weights(counts, "median_frequency", confined)
    assert median[3] / median[0] < inverse[3] / inverse[0]


def test_weighted_cross_entropy_hand_computed():
    logits = jnp.log(jnp.array([[[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]]))  # (1, 1, 3, 2)
    labels = jnp.array([[[0, 0, 255]]])
    s, w = losses.weighted_cross_entropy(logits, labels, jnp.array([2.0, 1.0]))
    np.testing.assert_allclose(w, 4.0)
    np.testing.assert_allclose(s, 2 * (-np.log(0.5)) + 2 * (-np.log(0.9)), rtol=1e-6)


def test_weighted_cross_entropy_invariant_to_weight_scale_and_equals_plain_mean():
    key = jax.random.key(0)
    logits = jax.random.normal(key, (2, 5, 6, 3))
    labels = jax.random.randint(jax.random.key(1), (2, 5, 6), 0, 3)
    s1, w1 = losses.weighted_cross_entropy(logits, labels, jnp.array([1.0, 2.0, 3.0]))
    s2, w2 = losses.weighted_cross_entropy(logits, labels, jnp.array([10.0, 20.0, 30.0]))
    np.testing.assert_allclose(s1 / w1, s2 / w2, rtol=1e-5)
    s, w = losses.weighted_cross_entropy(logits, labels, jnp.ones(3))
    plain = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1))
    np.testing.assert_allclose(s / w, plain, rtol=1e-5)


def test_weighted_cross_entropy_has_no_gradient_from_ignored_pixels():
    logits = jnp.zeros((1, 2, 2, 3))
    labels = jnp.array([[[0, 255], [1, 255]]])
    grad = jax.grad(lambda x: losses.weighted_cross_entropy(x, labels, jnp.ones(3))[0])(logits)
    assert jnp.all(grad[0, :, 1] == 0) and jnp.all(jnp.isfinite(grad))
    assert jnp.any(grad[0, :, 0] != 0)


def _features():
    a = [jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.array([[1.0]]), jnp.array([[0.0, 0.0, 0.0]])]
    b = [jnp.array([[1.0, 0.0], [3.0, 0.0]]), jnp.array([[4.0]]), jnp.array([[3.0, 0.0, 0.0]])]
    return a, b


def test_multiscale_l1_mean_is_the_per_layer_average():
    a, b = _features()
    # per-layer means: (0+2+0+4)/4 = 1.5, 3/1 = 3, 3/3 = 1 -> (1.5 + 3 + 1) / 3
    np.testing.assert_allclose(losses.multiscale_l1(a, b, "mean"), 5.5 / 3, rtol=1e-6)


def test_multiscale_l1_segan_is_one_mean_of_scaled_concatenation():
    a, b = _features()
    # scales for 3 maps: input 1, first block 1, last block 4: (6*1 + 3*1 + 3*4) / (4+1+3)
    np.testing.assert_allclose(losses.multiscale_l1(a, b, "segan"), 21 / 8, rtol=1e-6)
    assert losses.segan_layer_scales(7) == (1, 1, 2, 2, 2, 2, 4)


def test_multiscale_l1_is_zero_for_equal_features_and_symmetric():
    a, b = _features()
    assert losses.multiscale_l1(a, a) == 0.0
    np.testing.assert_allclose(losses.multiscale_l1(a, b), losses.multiscale_l1(b, a))
    with pytest.raises(ValueError, match="layer_weighting"):
        losses.multiscale_l1(a, b, "median")
