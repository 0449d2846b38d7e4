"""Tests for segan_jax.evaluate: whole images batched by shape over the local devices."""

import jax
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from segan_jax import datasets, evaluate, input_pipeline, metrics, models, parallel, tiles

NUM_CLASSES = 3
IGNORE = 255
NORMALIZER = input_pipeline.Normalizer(255.0, (0.5,) * 3, (0.25,) * 3, True)


@pytest.fixture(scope="module")
def trained_like():
    """A tiny DeepLabV3 (random weights) and a split of 5 images of 3 sizes, 2 of them not
    multiples of the output stride, 10 % of their pixels ignored."""
    model = models.DeepLabV3(num_classes=NUM_CLASSES, depth=18, width=8, aspp_features=16)
    variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
    rng = np.random.default_rng(0)
    shapes = [(40, 48), (33, 29), (40, 48), (40, 48), (40, 41)]
    images = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]
    masks = [rng.integers(0, NUM_CLASSES, s).astype(np.uint8) for s in shapes]
    for m in masks:
        m[rng.random(m.shape) < 0.1] = IGNORE
    split = datasets.Split(images, masks, [f"im{i}" for i in range(len(shapes))])
    return model, variables, split


def test_shape_batches_groups_equal_padded_shapes_in_order():
    shapes = [(210, 576), (100, 100), (210, 570), (210, 576), (97, 100)]
    # padded to multiples of 8: (216, 576) x3 at 0, 2, 3 and (104, 104) at 1 and 4
    assert evaluate.shape_batches(shapes, 8, 2) == [[0, 2], [3], [1, 4]]
    assert evaluate.shape_batches(shapes, 8, 1) == [[0], [2], [3], [1], [4]]
    assert evaluate.shape_batches([], 8, 2) == []


def test_confusions_match_sklearn_on_the_predicted_labels(trained_like):
    model, variables, split = trained_like
    labels = evaluate.predict_all(model, variables, split.images, NORMALIZER)
    assert [x.shape for x in labels] == [m.shape for m in split.masks]
    assert all(x.dtype == np.uint8 for x in labels)
    assert len(np.unique(np.concatenate([x.ravel() for x in labels]))) > 1  # not constant
    confusions = evaluate.image_confusions(model, variables, split, NORMALIZER, IGNORE)
    assert confusions.shape == (5, NUM_CLASSES, NUM_CLASSES) and confusions.dtype == np.int64
    for cm, truth, pred in zip(confusions, split.masks, labels, strict=True):
        keep = truth != IGNORE
        oracle = confusion_matrix(truth[keep], pred[keep], labels=range(NUM_CLASSES))
        np.testing.assert_array_equal(cm, oracle)
    total = evaluate.split_confusion(model, variables, split, NORMALIZER, IGNORE)
    np.testing.assert_array_equal(total, confusions.sum(0))


def test_batched_labels_equal_the_model_applied_to_each_padded_image(trained_like):
    model, variables, split = trained_like
    labels = evaluate.predict_all(model, variables, split.images, NORMALIZER)
    for image, got in zip(split.images, labels, strict=True):
        padded, _ = input_pipeline.pad_for_eval(image, None, model.output_stride, IGNORE)
        x = input_pipeline.normalize_host(padded, NORMALIZER)[None]
        logits = model.apply(variables, x, train=False)[0, : image.shape[0], : image.shape[1]]
        np.testing.assert_array_equal(got, np.argmax(logits, axis=-1))


def test_each_padded_shape_compiles_once(trained_like):
    model, variables, split = trained_like
    devices = jax.local_devices()[:2]
    for _ in range(2):
        evaluate.split_confusion(model, variables, split, NORMALIZER, IGNORE, devices)
    program = evaluate._program(model, parallel.make_mesh(devices), "confusions", IGNORE)
    # (40, 48), (40, 41) pad to 40x48 and (33, 29) to 40x32: two shapes, whatever the order
    assert program._cache_size() == 2


def test_two_devices_give_what_one_device_gives(trained_like):
    model, variables, split = trained_like
    if len(jax.local_devices()) < 2:
        pytest.skip("needs 2 devices (conftest asks XLA for 2 CPU devices)")
    one, two = jax.local_devices()[:1], jax.local_devices()[:2]
    np.testing.assert_array_equal(
        evaluate.image_confusions(model, variables, split, NORMALIZER, IGNORE, one),
        evaluate.image_confusions(model, variables, split, NORMALIZER, IGNORE, two),
    )
    for a, b in zip(
        evaluate.predict_all(model, variables, split.images, NORMALIZER, one),
        evaluate.predict_all(model, variables, split.images, NORMALIZER, two),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_one_image_and_per_image_scores_agree_with_the_batched_path(trained_like):
    model, variables, split = trained_like
    batched = evaluate.predict_all(model, variables, split.images, NORMALIZER)
    one = evaluate.predict_labels(model, variables, split.images[1], NORMALIZER)
    np.testing.assert_array_equal(one, batched[1])
    confusions = evaluate.image_confusions(model, variables, split, NORMALIZER, IGNORE)
    # Scores counted on the host from the predictions: those of the devices' matrices.
    rows = evaluate.prediction_scores(batched, split, NUM_CLASSES, IGNORE)
    assert [r["name"] for r in rows] == split.names
    for row, cm, labels, mask in zip(rows, confusions, batched, split.masks, strict=True):
        host = metrics.host_confusion_matrix(mask, labels, NUM_CLASSES, IGNORE)
        np.testing.assert_array_equal(host, cm)
        expected = metrics.scores(cm)["f1_foreground_mean"]
        np.testing.assert_equal(row["f1_foreground_mean"], expected)


def test_tiled_evaluation_scores_the_stitched_tiled_prediction(trained_like):
    """With windows smaller than the images, each image's confusion matrix is that of its
    stitched prediction (sklearn), each window's prediction is the model's on that window, and
    windows no smaller than the images change nothing."""
    model, variables, split = trained_like
    tiling = tiles.Tiling(24, 4)  # 40x48 images: 2 x 3 windows
    labels = evaluate.predict_all(model, variables, split.images, NORMALIZER, tiling=tiling)
    confusions = evaluate.image_confusions(
        model, variables, split, NORMALIZER, IGNORE, None, tiling
    )
    for cm, truth, pred in zip(confusions, split.masks, labels, strict=True):
        keep = truth != IGNORE
        oracle = confusion_matrix(truth[keep], pred[keep], labels=range(NUM_CLASSES))
        np.testing.assert_array_equal(cm, oracle)
    (window, *_) = tiles.windows([split.images[0].shape[:2]], tiling)
    alone = evaluate.predict_labels(
        model, variables, tiles.crop(split.images[0], window), NORMALIZER
    )
    np.testing.assert_array_equal(labels[0][:20, :20], alone[:20, :20])  # the first kept part
    whole = evaluate.predict_all(model, variables, split.images, NORMALIZER)
    assert any((a != b).any() for a, b in zip(labels, whole, strict=True))  # context differs
    big = tiles.Tiling(48, 8)
    for a, b in zip(
        evaluate.predict_all(model, variables, split.images, NORMALIZER, tiling=big),
        whole,
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        evaluate.split_confusion(model, variables, split, NORMALIZER, IGNORE, None, big),
        evaluate.split_confusion(model, variables, split, NORMALIZER, IGNORE),
    )
