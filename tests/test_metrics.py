"""Metrics: parity with scikit-learn, a hand-computed absent-class case, the table."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import f1_score, jaccard_score

from segan_jax import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_with_sklearn_on_random_label_maps(seed):
    rng = np.random.default_rng(seed)
    k = 5
    truth = rng.integers(0, k, size=(3, 17, 23))
    pred = np.where(rng.random(truth.shape) < 0.6, truth, rng.integers(0, k, size=truth.shape))
    cm = metrics.confusion_matrix(jnp.asarray(truth), jnp.asarray(pred), k)
    result = metrics.scores(np.asarray(cm))
    labels = list(range(k))
    np.testing.assert_allclose(
        result["f1"], f1_score(truth.ravel(), pred.ravel(), labels=labels, average=None)
    )
    np.testing.assert_allclose(
        result["iou"], jaccard_score(truth.ravel(), pred.ravel(), labels=labels, average=None)
    )
    np.testing.assert_allclose(
        result["f1_foreground_mean"],
        f1_score(truth.ravel(), pred.ravel(), labels=labels[1:], average="macro"),
    )


@pytest.mark.parametrize("k", [17, 200])
def test_confusion_of_uint8_masks_with_many_classes_matches_sklearn(k):
    """uint8 masks (as datasets stores them): label * K + prediction must not wrap at 256."""
    rng = np.random.default_rng(k)
    truth = rng.integers(0, k, size=(40, 50)).astype(np.uint8)
    truth[rng.random(truth.shape) < 0.1] = 255
    pred = np.where(rng.random(truth.shape) < 0.5, truth, rng.integers(0, k, truth.shape))
    pred = np.where(truth == 255, 0, pred).astype(np.uint8)
    cm = np.asarray(metrics.confusion_matrix(jnp.asarray(truth), jnp.asarray(pred), k))
    keep = truth != 255
    oracle = sk_confusion_matrix(truth[keep], pred[keep], labels=range(k))
    np.testing.assert_array_equal(cm, oracle)
    np.testing.assert_array_equal(metrics.host_confusion_matrix(truth, pred, k), oracle)


def test_confusion_ignores_the_ignore_label_and_accumulates():
    truth = jnp.array([[0, 1, 255], [2, 2, 1]])
    pred = jnp.array([[0, 2, 1], [2, 1, 1]])
    cm = np.asarray(metrics.confusion_matrix(truth, pred, 3))
    expected = np.array([[1, 0, 0], [0, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == 5


def test_hand_computed_absent_class_is_nan_and_skipped_by_the_means():
    # Class 2 appears in neither truth nor prediction; class 3 only in a wrong prediction.
    cm = np.array(
        [
            [8, 1, 0, 1],
            [2, 4, 0, 0],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ]
    )
    result = metrics.scores(cm)
    # background: tp 8, fp 2, fn 2 -> F1 16/20, IoU 8/12; class 1: tp 4, fp 1, fn 2 -> 8/11, 4/7
    np.testing.assert_allclose(result["f1"][:2], [16 / 20, 8 / 11])
    np.testing.assert_allclose(result["iou"][:2], [8 / 12, 4 / 7])
    assert np.isnan(result["f1"][2]) and np.isnan(result["iou"][2])
    assert result["f1"][3] == 0.0 and result["iou"][3] == 0.0  # predicted, never true: 0, not NaN
    np.testing.assert_allclose(result["f1_foreground_mean"], (8 / 11 + 0.0) / 2)
    np.testing.assert_allclose(result["iou_foreground_mean"], (4 / 7 + 0.0) / 2)


def test_all_foreground_absent_gives_nan_mean_and_table_says_n_a():
    result = metrics.scores(np.array([[5, 0], [0, 0]]))
    assert np.isnan(result["f1_foreground_mean"])
    table = metrics.format_table(("background", "nucleus"), result)
    assert "n/a" in table and "background" in table and "1.000" in table


def _image(tp_fg: int, fp_fg: int, fn_fg: int, background: int = 100) -> np.ndarray:
    """A (2, 2) confusion matrix: background right, and the foreground's counts."""
    return np.array([[background, fp_fg], [fn_fg, tp_fg]])


def test_bootstrap_of_two_images_spans_their_three_possible_draws():
    """Two images give three draws (A+A, A+B, B+B, with chances 1/4, 1/2, 1/4): the 95 %
    interval runs from the lowest of their scores to the highest, computed by hand."""
    a, b = _image(10, 0, 0), _image(2, 6, 2)  # foreground F1 1 and 4/12; IoU 1 and 2/10
    both = metrics.scores(a + b)["f1_foreground_mean"]  # 24 / (24 + 8) = 0.75
    assert both == pytest.approx(0.75)
    bounds = metrics.bootstrap_intervals(np.stack([a, b]))
    np.testing.assert_allclose(bounds["f1_foreground_mean"], [1 / 3, 1.0])
    np.testing.assert_allclose(bounds["f1"][1], [1 / 3, 1.0])
    np.testing.assert_allclose(bounds["iou_foreground_mean"], [2 / 10, 1.0])
    assert bounds["f1"].shape == bounds["iou"].shape == (2, 2)


def test_bootstrap_of_alike_images_is_a_point_and_ignores_their_order():
    same = np.stack([_image(5, 1, 2)] * 4)
    point = metrics.scores(same.sum(0))["f1_foreground_mean"]
    np.testing.assert_allclose(metrics.bootstrap_intervals(same)["f1_foreground_mean"], point)
    np.testing.assert_allclose(metrics.bootstrap_intervals(same[:1])["f1"][1], [point, point])
    rng = np.random.default_rng(0)
    many = rng.integers(0, 50, (9, 3, 3))
    shuffled = many[rng.permutation(9)]
    for key, bounds in metrics.bootstrap_intervals(many).items():
        np.testing.assert_array_equal(bounds, metrics.bootstrap_intervals(shuffled)[key])
        if key.endswith("mean"):  # the split's own figure lies inside, the bounds apart
            low, high = bounds
            assert low < metrics.scores(many.sum(0))[key] < high


def test_bootstrap_of_a_class_absent_everywhere_is_nan():
    absent = np.zeros((3, 3, 3), np.int64)
    absent[:, 0, 0], absent[:, 1, 1] = 40, [3, 5, 7]  # class 2 never there
    bounds = metrics.bootstrap_intervals(absent)
    assert np.isnan(bounds["f1"][2]).all() and np.isfinite(bounds["f1"][:2]).all()
    np.testing.assert_allclose(bounds["f1_foreground_mean"], 1.0)  # class 1 alone, always 1


def test_bootstrap_skips_draws_without_a_class_and_averages_each_draw():
    """A class in one image of three has bounds from the draws that hold it (NaN in the
    others is skipped, not spread); the foreground mean is taken within each draw, so two
    classes doing well in opposite images give a narrower mean interval than their own."""
    images = np.zeros((3, 4, 4), np.int64)
    images[:, 0, 0] = 100
    images[0, 1, 1], images[0, 1, 0] = 9, 1  # class 1 good in image 0
    images[0, 2, 2], images[0, 2, 0] = 1, 9  # class 2 poor in image 0
    images[1, 1, 1], images[1, 1, 0] = 1, 9  # and the other way round in image 1
    images[1, 2, 2], images[1, 2, 0] = 9, 1
    images[2, 3, 3], images[2, 3, 0] = 5, 5  # class 3 in image 2 alone
    bounds = metrics.bootstrap_intervals(images)
    assert np.isfinite(bounds["f1"][3]).all() and bounds["f1"][3][0] == bounds["f1"][3][1]
    widths = np.diff(bounds["f1"][1:3], axis=1).mean()
    assert np.diff(bounds["f1_foreground_mean"])[0] < 0.5 * widths
    empty = metrics.bootstrap_intervals(np.zeros((0, 4, 4), np.int64))
    assert all(np.isnan(v).all() for v in empty.values())


def test_paired_bootstrap_of_two_images_spans_their_three_draws_differences():
    """The second prediction mends image B only: the draws A+A, A+B, B+B differ by 0, by
    F1(A+B') - F1(A+B) and by F1(B') - F1(B), so the 95 % interval runs from 0 to the
    largest, computed by hand; a prediction against itself differs by 0 exactly."""
    a, b, mended = _image(10, 0, 0), _image(2, 6, 2), _image(6, 2, 2)
    first, second = np.stack([a, b]), np.stack([a, mended])
    f1 = lambda cm: metrics.scores(cm)["f1_foreground_mean"]  # noqa: E731
    gains = [0.0, f1(a + mended) - f1(a + b), f1(mended) - f1(b)]
    bounds = metrics.paired_bootstrap_difference(first, second)
    np.testing.assert_allclose(bounds, [min(gains), max(gains)])
    np.testing.assert_allclose(metrics.paired_bootstrap_difference(second, first), -bounds[::-1])
    np.testing.assert_array_equal(metrics.paired_bootstrap_difference(first, first), [0, 0])
    iou = metrics.paired_bootstrap_difference(first, second, "iou_foreground_mean")
    assert iou[0] == 0 and iou[1] == pytest.approx(6 / 10 - 2 / 10)
    with pytest.raises(ValueError, match="not the same images"):
        metrics.paired_bootstrap_difference(first, second[:1])
    # Per class: the one foreground class's F1 is the mean's; background's by hand too.
    every = metrics.paired_bootstrap_differences(first, second)
    np.testing.assert_array_equal(every["f1"][1], bounds)
    background = lambda cm: metrics.scores(cm)["f1"][0]  # noqa: E731
    gains = [0.0, background(a + mended) - background(a + b), background(mended) - background(b)]
    np.testing.assert_allclose(every["f1"][0], [min(gains), max(gains)])
    assert every["f1"][0][1] > 0  # mending foreground pixels called background mends it too
    padded = [np.pad(x, ((0, 0), (0, 1), (0, 1))) for x in (first, second)]  # a class never seen
    assert np.isnan(metrics.paired_bootstrap_differences(*padded)["iou"][2]).all()


def test_runs_bootstrap_of_one_image_spans_the_draws_of_the_runs_by_hand():
    """One image (every image draw the same): the first config's two runs score F1 a and b,
    the second's one run c; drawing two of {a, b} with replacement gives means a, m = (a +
    b)/2 and b, moved from m by sqrt(2) times their distance (the unbiased variance), so the
    interval of c minus them runs from c - m - |a - b| / sqrt(2) to c - m + |a - b| / sqrt(2);
    the runs' order changes nothing."""
    a, b, c = _image(10, 0, 0), _image(2, 6, 2), _image(6, 2, 2)
    f1 = [metrics.scores(x)["f1_foreground_mean"] for x in (a, b, c)]
    found = metrics.runs_bootstrap_differences(np.stack([a, b])[:, None], c[None, None])
    mean, spread = (f1[0] + f1[1]) / 2, abs(f1[0] - f1[1]) / np.sqrt(2)
    expected = [f1[2] - mean - spread, f1[2] - mean + spread]
    np.testing.assert_allclose(found["f1_foreground_mean"], expected)
    np.testing.assert_allclose(found["f1"][1], expected)  # the one foreground class
    swapped = metrics.runs_bootstrap_differences(np.stack([b, a])[:, None], c[None, None])
    for key, bounds in found.items():
        np.testing.assert_array_equal(swapped[key], bounds)
    with pytest.raises(ValueError, match="not runs of the same images"):
        metrics.runs_bootstrap_differences(np.stack([a, b])[:, None], np.stack([c, c])[None])


def test_paired_bootstrap_keeps_the_figures_of_the_implementation_before_runs():
    """`paired_bootstrap_differences` (one run a side) gives the bounds that its own
    implementation gave before it became `runs_bootstrap_differences` of one run each
    (computed with segan_jax/metrics.py of 690af5e~1)."""
    rng = np.random.default_rng(7)
    first, second = rng.integers(0, 60, (2, 10, 3, 3))
    found = metrics.paired_bootstrap_differences(
        first, second, samples=200, groups=[i % 4 for i in range(10)]
    )
    np.testing.assert_allclose(found["f1_foreground_mean"], [-0.006069356717, 0.070317792001])
    np.testing.assert_allclose(found["iou_foreground_mean"], [0.002245164325, 0.047171505449])
    np.testing.assert_allclose(found["f1"][0], [0.034727925036, 0.189920924895])
    np.testing.assert_allclose(found["iou"][2], [-0.035656778546, 0.086756730426])


def test_runs_bootstrap_of_repeated_runs_is_the_paired_bootstrap():
    """A run given twice a side changes nothing: the same image draws, the same means (so
    one run a side is `paired_bootstrap_differences` exactly); runs that differ widen it."""
    rng = np.random.default_rng(3)
    first, second = rng.integers(0, 80, (2, 9, 3, 3))
    slides = [i % 4 for i in range(9)]
    paired = metrics.paired_bootstrap_differences(first, second, groups=slides)
    twice = metrics.runs_bootstrap_differences(
        np.stack([first, first]), np.stack([second, second, second]), groups=slides
    )
    for key, bounds in paired.items():  # up to the rounding of a mean of equal values
        np.testing.assert_allclose(twice[key], bounds, rtol=1e-12, atol=1e-15)
    other = rng.integers(0, 80, (9, 3, 3))  # another seed of the first config
    spread = metrics.runs_bootstrap_differences(np.stack([first, other]), second[None])
    alone = metrics.paired_bootstrap_differences(first, second)
    width = lambda bounds: bounds[1] - bounds[0]  # noqa: E731
    assert width(spread["f1_foreground_mean"]) > width(alone["f1_foreground_mean"])


def test_bootstrap_by_groups_draws_each_groups_images_together():
    """With group labels (the slides tiles were cut from) a group's images are drawn as one:
    the same as bootstrapping the groups' summed matrices; one label per image changes
    nothing; labels of another length are refused."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 60, (6, 3, 3))
    slides = ["b", "a", "b", "c", "a", "b"]
    sums = np.stack([images[[1, 4]].sum(0), images[[0, 2, 5]].sum(0), images[3]])
    grouped = metrics.bootstrap_intervals(images, groups=slides)
    for key, bounds in metrics.bootstrap_intervals(sums).items():
        np.testing.assert_array_equal(grouped[key], bounds)
    alone = metrics.bootstrap_intervals(images, groups=[str(i) for i in range(6)])
    np.testing.assert_array_equal(alone["f1"], metrics.bootstrap_intervals(images)["f1"])
    with pytest.raises(ValueError, match="5 group labels for 6 images"):
        metrics.bootstrap_intervals(images, groups=slides[:5])
    mixed = metrics.bootstrap_intervals(images[:4], groups=[1, "1", 2, 2])  # 3 labels
    three = np.stack([images[0], images[1], images[2] + images[3]])
    np.testing.assert_array_equal(mixed["f1"], metrics.bootstrap_intervals(three)["f1"])
    second = images[:, ::-1]  # another "prediction" of the same images, paired slide by slide
    paired = metrics.paired_bootstrap_difference(images, second, groups=slides)
    summed = [np.stack([m[[1, 4]].sum(0), m[[0, 2, 5]].sum(0), m[3]]) for m in (images, second)]
    np.testing.assert_array_equal(paired, metrics.paired_bootstrap_difference(*summed))
