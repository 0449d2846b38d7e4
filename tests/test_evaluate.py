"""Tests for segan_jax.evaluate: whole images batched by shape over the local devices."""

import functools
import json

import jax
import ml_collections
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
        evaluate.image_confusions(model, variables, split, NORMALIZER, IGNORE, devices)
    mesh = parallel.make_mesh(devices)
    program = evaluate._program(model, mesh, "confusions", IGNORE, "none")
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
        model, variables, split, NORMALIZER, IGNORE, tiling=tiling
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
        evaluate.image_confusions(model, variables, split, NORMALIZER, IGNORE, tiling=big),
        evaluate.image_confusions(model, variables, split, NORMALIZER, IGNORE),
    )


@pytest.mark.parametrize("tta", sorted(evaluate.TTA_VIEWS))
def test_tta_views_are_a_group_of_distinct_transforms_each_undone(tta):
    """Each view is undone by `_unview`; the views are distinct transforms of an image with no
    symmetry, and closed under composition (so their average is equivariant under each)."""
    x = np.arange(2 * 6 * 6).reshape(2, 6, 6, 1)
    views = evaluate.TTA_VIEWS[tta]
    seen = {np.asarray(evaluate._view(x, k, f)).tobytes() for k, f in views}
    assert len(seen) == len(views)
    for k, flip in views:
        np.testing.assert_array_equal(evaluate._unview(evaluate._view(x, k, flip), k, flip), x)
        for k2, flip2 in views:
            twice = evaluate._view(evaluate._view(x, k, flip), k2, flip2)
            assert np.asarray(twice).tobytes() in seen


@functools.cache
def _compiled(model, tta):
    if tta == "plain":
        return jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False), axis=-1))
    return jax.jit(functools.partial(evaluate.tta_probabilities, model, tta=tta))


def _probabilities(model, variables, images, tta):
    """Compiled, as evaluation runs them: at XLA's optimisation level 0 (conftest) the tiny
    network's op-by-op probabilities differ from its compiled ones by up to 4e-3 on one view."""
    x = input_pipeline.normalize_host(images, NORMALIZER)
    return np.asarray(_compiled(model, tta)(variables, x))


def test_tta_probabilities_are_equivariant_under_their_views_and_plain_ones_are_not(trained_like):
    """Averaged over "flips", the probabilities of a flipped image are the flipped
    probabilities; over "d4" also for quarter turns. The network alone (and "flips" for a
    quarter turn) is not equivariant, so the comparison can fail."""
    model, variables, _ = trained_like
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 48, 3)).astype(np.uint8)
    flips = [lambda a: a[:, :, ::-1], lambda a: a[:, ::-1], lambda a: a[:, ::-1, ::-1]]
    turn = [lambda a: np.rot90(a, 1, axes=(1, 2)), lambda a: np.rot90(a, 3, axes=(1, 2))]
    cases = {"flips": (flips, turn), "d4": (flips + turn, []), "plain": ([], flips + turn)}
    for tta, (equivariant, not_equivariant) in cases.items():
        probs = _probabilities(model, variables, images, tta)
        assert probs.shape == (2, 32, 48, NUM_CLASSES)
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
        for g in equivariant:
            moved = _probabilities(model, variables, np.ascontiguousarray(g(images)), tta)
            np.testing.assert_allclose(moved, g(probs), atol=2e-6)
        for g in not_equivariant:
            moved = _probabilities(model, variables, np.ascontiguousarray(g(images)), tta)
            assert np.abs(moved - g(probs)).max() > 1e-3, tta


def test_tta_labels_are_the_argmax_of_the_averaged_probabilities(trained_like):
    """With views, each label map is the argmax of `tta_probabilities` on the padded image,
    cropped back, differs from the plain prediction, and the confusion matrices are those of
    these labels (sklearn), whole or in windows."""
    model, variables, split = trained_like
    plain = evaluate.predict_all(model, variables, split.images, NORMALIZER)
    labels = evaluate.predict_all(model, variables, split.images, NORMALIZER, tta="d4")
    for image, got in zip(split.images, labels, strict=True):
        padded, _ = input_pipeline.pad_for_eval(image, None, model.output_stride, IGNORE)
        probs = _probabilities(model, variables, padded[None], "d4")[0, : len(got), : got.shape[1]]
        top2 = np.sort(probs, axis=-1)[..., -2:]
        clear = (
            top2[..., 1] - top2[..., 0] > 1e-5
        )  # not a tie up to the compiled program's rounding
        assert clear.mean() > 0.95
        np.testing.assert_array_equal(got[clear], probs.argmax(-1)[clear])
    assert any((a != b).any() for a, b in zip(labels, plain, strict=True))
    tiling = tiles.Tiling(24, 4)  # windows' confusions come from `_outputs` as whole images'
    labels = evaluate.predict_all(
        model, variables, split.images, NORMALIZER, tiling=tiling, tta="flips"
    )
    confusions = evaluate.image_confusions(
        model, variables, split, NORMALIZER, IGNORE, tiling=tiling, tta="flips"
    )
    for cm, truth, pred in zip(confusions, split.masks, labels, strict=True):
        keep = truth != IGNORE
        oracle = confusion_matrix(truth[keep], pred[keep], labels=range(NUM_CLASSES))
        np.testing.assert_array_equal(cm, oracle)


def test_tta_is_checked_and_recorded(tmp_path):
    with pytest.raises(ValueError, match=r"eval.tta='d8' must be one of \('none', 'flips', 'd4'\)"):
        evaluate.settings(ml_collections.ConfigDict({"tile_size": 0, "tta": "d8"}), 8)
    old_run = ml_collections.ConfigDict({"tile_size": 0, "tile_margin": 64})  # saved before tta
    assert evaluate.settings(old_run, 8) == (None, "none")
    confusion = np.array([[[5, 1], [2, 3]]])  # one image's
    plain = evaluate.result_record(7, "test", ["bg", "fg"], confusion)
    views = evaluate.result_record(7, "test", ["bg", "fg"], confusion, tta="d4")
    assert "tta" not in plain and views["tta"] == "d4"
    assert evaluate.describe(views) == "test split, step 7, views averaged: d4"
    assert evaluate.record_settings(plain) == (None, "none")
    windows = {**views, "tiling": {"size": 256, "margin": 32}}
    assert evaluate.record_settings(windows) == (tiles.Tiling(256, 32), "d4")
    evaluate.save_record(tmp_path, plain)
    said = evaluate.save_record(tmp_path, views)  # the same matrix, but another prediction
    assert said.endswith("test_7-2.json (its figures or settings differ from test_7.json's)")
    assert "already there" in evaluate.save_record(tmp_path, views)


def test_a_record_from_before_the_intervals_gets_them_and_tables_show_them(tmp_path):
    """The same figures saved again: an older record (no intervals) gets them added, nothing
    else changed; the table prints the means' bounds for two images or more, "n/a" for a
    missing bound, and nothing for one image or an older record."""
    confusions = np.array([[[50, 2], [3, 30]], [[40, 9], [6, 10]]])
    record = evaluate.result_record(7, "test", ["bg", "fg"], confusions)
    older = {k: v for k, v in record.items() if k not in ("intervals", "per_image")}
    path = evaluate.write_record(tmp_path, older)
    said = evaluate.save_record(tmp_path, record)
    added = "its bootstrap intervals added and per-image matrices added"
    assert said.endswith(f"(already there: the same figures; {added})")
    assert json.loads(path.read_text()) == json.loads(json.dumps(record))
    assert "already there: the same figures)" in evaluate.save_record(tmp_path, record)
    low, high = record["intervals"]["f1_foreground_mean"]
    line = evaluate.table_from_record(record).splitlines()[-1]
    assert line.startswith("foreground mean, 95% interval (bootstrap over the 2 images): F1 ")
    assert f"F1 {low:.3f}-{high:.3f}, IoU " in line
    missing = {**record, "intervals": {**record["intervals"], "iou_foreground_mean": [None, 0.5]}}
    assert evaluate.table_from_record(missing).endswith("IoU n/a-0.500")
    table = evaluate.table_from_record(older)
    assert table.splitlines()[-1].endswith(f"{record['iou_foreground_mean']:6.3f}")
    one = evaluate.result_record(7, "test", ["bg", "fg"], confusions[:1])
    assert "interval" not in evaluate.table_from_record(one)


def test_intervals_draw_the_tiles_of_one_slide_together(tmp_path):
    """Tiles named as slide_tiles names them are resampled by slide; the table says so."""
    confusions = np.array([[[50, 2], [3, 30]], [[40, 9], [6, 10]], [[45, 1], [1, 20]]] * 2)
    names = ["s1_L0_x0_y0", "s1_L0_x512_y0", "s2_L1_x0_y0", "s2_L1_x0_y512", "s3_L0_x0_y0", "x"]
    record = evaluate.result_record(3, "test", ["bg", "fg"], confusions, names=names)
    assert record["intervals"]["images"] == 6 and record["intervals"]["slides"] == 4
    slides = ["s1", "s1", "s2", "s2", "s3", "x"]
    expected = metrics.bootstrap_intervals(confusions, groups=slides)["f1_foreground_mean"]
    np.testing.assert_allclose(record["intervals"]["f1_foreground_mean"], expected)
    assert "(bootstrap over the 4 slides of the 6 images)" in evaluate.table_from_record(record)
    own = evaluate.result_record(3, "test", ["bg", "fg"], confusions, names=list("abcdef"))
    assert "slides" not in own["intervals"]
    assert "(bootstrap over the 6 images)" in evaluate.table_from_record(own)
    # A record of the same figures whose intervals were drawn per image gets these instead.
    evaluate.save_record(tmp_path, own)
    said = evaluate.save_record(tmp_path, record)
    again = "its bootstrap intervals drawn again and per-image matrices written again"
    assert said.endswith(f"(already there: the same figures; {again})")  # the images' names
    kept = json.loads((tmp_path / "eval" / "test_3.json").read_text())
    assert kept["intervals"] == json.loads(json.dumps(record["intervals"]))
