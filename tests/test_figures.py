"""The results figures and tables on synthetic rows, records and arrays (no training)."""

import io
import json
import math

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from configs import tiny
from segan_jax import evaluate, figures
from segan_jax import workdir as workdir_lib

matplotlib.use("Agg")  # figures.py uses no pyplot; any savefig renders with Agg

CLASSES = ("background", "cytoplasm", "nucleus")


def _eval_row(step, f1, split="test"):
    f1 = list(f1)
    fg = [v for v in f1[1:] if v is not None and not math.isnan(v)]
    return {
        "step": step,
        "split": split,
        "f1": f1,
        "iou": [None if v is None else v / 2 for v in f1],
        "f1_foreground_mean": float(np.mean(fg)) if fg else math.nan,
        "iou_foreground_mean": float(np.mean(fg)) / 2 if fg else math.nan,
    }


def _train_row(step, l_mae=True, gp=False):
    row = {"step": step, "loss": 1.0 / step, "ce": 0.9 / step, "grad_norm": 2.0, "steps_per_s": 3}
    if l_mae:
        row.update(l_mae=0.1, critic_l_mae=0.12)
    if gp:
        row["critic_gp"] = 0.5
    return row


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    return buf.getvalue()


# ----------------------------------------------------------------------------- reading a run


def test_read_metrics_splits_kinds_and_turns_null_into_nan(tmp_path):
    lines = [
        {"kind": "train", "step": 2, "loss": 1.5, "ce": 1.5, "grad_norm": None},
        {"kind": "eval", **_eval_row(2, [0.9, None, 0.5])},
        {"kind": "train", "step": 4, "loss": 1.2, "ce": 1.1, "grad_norm": 3.0},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n\n" + '{"kind": "tr'  # torn
    (tmp_path / "metrics.jsonl").write_text(text)
    train_rows, eval_rows = figures.read_metrics(tmp_path)
    assert [r["step"] for r in train_rows] == [2, 4]
    assert math.isnan(train_rows[0]["grad_norm"])
    assert "kind" not in train_rows[0]
    (row,) = eval_rows
    assert row["f1"][0] == 0.9 and math.isnan(row["f1"][1]) and row["split"] == "test"


def test_read_metrics_of_a_workdir_without_metrics(tmp_path):
    assert figures.read_metrics(tmp_path) == ([], [])


def test_load_config_restores_tuples(tmp_path):
    config = tiny.get_config()
    workdir_lib.write_json(tmp_path / "config.json", workdir_lib.config_dict(config))
    loaded = figures.load_config(tmp_path)
    assert loaded.critic.features == tuple(config.critic.features)
    assert loaded.data.name == config.data.name and loaded.train.num_steps == 4


def test_load_config_names_a_file_that_is_not_a_config(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(workdir_lib.ConfigMismatchError, match="config.json: holds no config"):
        figures.load_config(tmp_path)


def test_latest_record_takes_the_highest_step_of_the_split(tmp_path):
    assert figures.latest_record(tmp_path) is None
    for step, split in ((10, "test"), (200, "test"), (30, "val"), (40, "val")):
        record = {**_eval_row(step, [0.1, 0.2, 0.3], split), "classes": list(CLASSES)}
        evaluate.write_record(tmp_path, record)
    assert figures.latest_record(tmp_path, "test")["step"] == 200
    assert figures.latest_record(tmp_path, "val")["step"] == 40
    assert figures.latest_record(tmp_path)["step"] == 200
    assert figures.latest_record(tmp_path, "train") is None
    # Two cohort folders of one name share a split name: `data` tells their records apart.
    for n, (step, data) in enumerate([(5, "/a/lab_b"), (5, "/b/lab_b")], start=1):
        record = {"step": step, "split": "cohort-lab-b", "data": data}
        evaluate.write_record(tmp_path, record, n)
    assert figures.latest_record(tmp_path, "cohort-lab-b", "/a/lab_b")["data"] == "/a/lab_b"
    assert figures.latest_record(tmp_path, "cohort-lab-b")["data"] == "/b/lab_b"
    # Records are picked by name: another split's (unreadable here) is not read at all.
    (tmp_path / "eval" / "val_900.json").write_text("{")
    assert figures.latest_record(tmp_path, "test")["step"] == 200


# ----------------------------------------------------------------------------- curves


def test_training_curves_has_class_lines_and_a_thick_mean():
    rows = [_eval_row(s, [0.5, 0.2 + s / 1000, math.nan]) for s in (300, 100, 200)]
    fig = figures.training_curves(rows, CLASSES)
    assert len(fig.axes) == 2
    for ax, label in zip(fig.axes, ("F1", "IoU"), strict=True):
        assert ax.get_ylabel() == label and ax.get_xlabel() == "Iteration"
        lines = ax.get_lines()
        assert len(lines) == len(CLASSES) + 1
        mean = lines[-1]
        assert mean.get_label() == "foreground mean"
        assert mean.get_linewidth() > max(line.get_linewidth() for line in lines[:-1])
        assert list(mean.get_xdata()) == [100, 200, 300]  # sorted by step
    assert _png_bytes(fig).startswith(b"\x89PNG")
    few = figures.training_curves([_eval_row(3, [0.5, 0.2, 0.1])], CLASSES)
    few.canvas.draw()
    ticks = few.axes[0].get_xticks()
    assert len(ticks) and all(float(t).is_integer() for t in ticks)  # iterations, not 2.85
    two = figures.training_curves([_eval_row(s, [0.5, 0.2, 0.1]) for s in (20, 40)], CLASSES)
    assert list(two.axes[0].get_xticks()) == [20, 40]  # the evaluations, not 21, 24, ...
    assert not two.axes[0].collections  # rows without intervals: no band
    banded = [_eval_row(s, [0.5, 0.2, 0.1]) for s in (20, 40)]
    for row, low in zip(banded, (0.05, 0.1), strict=True):
        row["f1_foreground_mean_interval"] = [low, 0.3]
        row["iou_foreground_mean_interval"] = [low / 2, None]  # a bound may be missing (NaN)
    (band,) = figures.training_curves(banded, CLASSES).axes[0].collections
    assert band.get_label() == "95% bootstrap interval"
    np.testing.assert_allclose(band.get_paths()[0].vertices.min(0), [20, 0.05])
    close = [_eval_row(s, [0.5, 0.2, 0.1]) for s in (100, 1000, 1010)]  # a final odd step
    assert list(figures.training_curves(close, CLASSES).axes[0].get_xticks()) != [100, 1000, 1010]


def test_training_curves_filters_the_split_and_keeps_the_last_row_per_step():
    rows = [
        _eval_row(100, [0.5, 0.1, 0.1]),
        _eval_row(100, [0.5, 0.2, 0.2]),  # a resumed run logged step 100 again
        _eval_row(100, [0.5, 0.9, 0.9], split="val"),
    ]
    fig = figures.training_curves(rows, CLASSES, split="test")
    (y,) = fig.axes[0].get_lines()[-1].get_ydata()
    assert y == pytest.approx(0.2)
    assert "test" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="no evaluation rows"):
        figures.training_curves(rows, CLASSES, split="train")


@pytest.mark.parametrize(
    ("l_mae", "gp", "num_axes"), [(True, True, 4), (True, False, 3), (False, False, 2)]
)
def test_loss_curves_panels(l_mae, gp, num_axes):
    fig = figures.loss_curves([_train_row(s, l_mae, gp) for s in (2, 4, 6)])
    assert len(fig.axes) == num_axes
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["total", "cross-entropy"]
    if l_mae:  # both sides of the critic's L1 in one panel
        labels = [line.get_label() for line in fig.axes[1].get_lines()]
        assert labels == [figures.CURVE_LABELS[k] for k in ("l_mae", "critic_l_mae")]
    if gp:
        assert [line.get_label() for line in fig.axes[2].get_lines()] == ["critic_gp"]
    assert fig.axes[-1].get_yscale() == "log"  # gradient norm
    for ax in fig.axes:
        assert ax.get_xlabel() == "Iteration" and ax.get_title()
    assert _png_bytes(fig).startswith(b"\x89PNG")


def test_loss_curves_needs_rows():
    with pytest.raises(ValueError):
        figures.loss_curves([])


# ----------------------------------------------------------------------------- label maps


def test_class_shades_distinct_and_ordered():
    k = 5
    labels = np.array([[0, 1, 2], [3, 4, 255]], np.uint8)
    shades = figures.class_shades(labels, k)
    assert shades.shape == labels.shape
    values = shades.ravel()[:k]
    assert len(set(values.tolist())) == k
    assert np.all(np.diff(values) > 0)
    assert values[0] == 0.0 and values[-1] == 1.0
    assert math.isnan(shades[1, 2])  # the ignore index


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_display_image_is_rgb_in_unit_range(channels, dtype):
    rng = np.random.default_rng(0)
    image = rng.integers(0, np.iinfo(dtype).max, (12, 20, channels)).astype(dtype)
    shown = figures.display_image(image)
    assert shown.shape == (12, 20, 3)
    assert shown.min() >= 0.0 and shown.max() <= 1.0
    grey = figures.display_image(image, channel=channels - 1)
    assert np.array_equal(grey[..., 0], grey[..., 2])


def test_display_image_keeps_the_colours_of_rgb():
    """H&E colour is data: 8-bit RGB is shown as it is; 16-bit RGB gets one stretch for all
    three channels, so their ratios (the hue) stay."""
    rng = np.random.default_rng(0)
    pink = np.stack([rng.integers(180, 240, (16, 16)), rng.integers(90, 150, (16, 16))], -1)
    pink = np.concatenate([pink, rng.integers(150, 220, (16, 16, 1))], -1)
    np.testing.assert_array_equal(figures.display_image(pink.astype(np.uint8)), pink / 255.0)
    deep = (pink * 200).astype(np.uint16)
    shown = figures.display_image(deep, percentiles=(0.0, 100.0))
    np.testing.assert_allclose(shown, (deep - deep.min()) / (deep.max() - deep.min()))
    # Fluorescence channels are each stretched: a dim channel is still seen.
    two = np.stack([rng.integers(0, 100, (16, 16)), rng.integers(0, 5000, (16, 16))], -1)
    shown = figures.display_image(two.astype(np.uint16))
    assert shown[..., 0].max() == shown[..., 1].max() == 1.0


def test_display_image_of_a_constant_image():
    shown = figures.display_image(np.full((4, 4, 2), 7, np.uint16))
    assert np.all(np.isfinite(shown))


def _split(n, h=24, w=40, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 4000, (h, w, 2)).astype(np.uint16) for _ in range(n)]
    truths = [rng.integers(0, len(CLASSES), (h, w)).astype(np.uint8) for _ in range(n)]
    predictions = [rng.integers(0, len(CLASSES), (h, w)).astype(np.uint8) for _ in range(n)]
    return images, truths, predictions, [f"img{i}" for i in range(n)]


def test_result_grid_layout_and_legend():
    images, truths, predictions, names = _split(2)
    truths[0][0, 0] = 255
    fig = figures.result_grid(images, truths, predictions, names, CLASSES, title="t")
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:3]] == list(figures.COLUMN_TITLES)
    assert [fig.axes[3 * i].get_ylabel() for i in range(2)] == names
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        *[f"{k}: {c}" for k, c in enumerate(CLASSES)],
        "unlabelled",  # the red of truths[0]'s pixel 255
    ]
    clean = figures.result_grid(images[1:], truths[1:], predictions[1:], names[1:], CLASSES)
    assert "unlabelled" not in [t.get_text() for t in clean.legends[0].get_texts()]
    truth_image = np.asarray(fig.axes[1].get_images()[0].get_array())
    shades = figures.class_shades(truths[0], len(CLASSES))
    np.testing.assert_allclose(truth_image[1:, :, 0], shades[1:])  # grey: R = G = B = shade
    np.testing.assert_allclose(truth_image[1:, :, 0], truth_image[1:, :, 2])
    np.testing.assert_allclose(truth_image[0, 0], to_rgb(figures.IGNORE_COLORS["grey"]))
    assert _png_bytes(fig).startswith(b"\x89PNG")


def test_result_grid_rejects_mismatched_lengths():
    images, truths, predictions, names = _split(2)
    with pytest.raises(ValueError, match="equally many"):
        figures.result_grid(images, truths, predictions[:1], names, CLASSES)
    with pytest.raises(ValueError):
        figures.result_grid([], [], [], [], CLASSES)


# ----------------------------------------------------------------------------- failures


def test_worst_images_orders_lowest_first_and_nan_last():
    rows = [
        {"name": "a", "f1_foreground_mean": 0.8},
        {"name": "b", "f1_foreground_mean": math.nan},
        {"name": "c", "f1_foreground_mean": 0.1},
        {"name": "d", "f1_foreground_mean": None},
        {"name": "e", "f1_foreground_mean": 0.5},
        {"name": "f", "f1_foreground_mean": 0.1},
    ]
    names = [r["name"] for r in figures.worst_images(rows, 10)]
    assert names == ["c", "f", "e", "a", "b", "d"]
    assert [r["name"] for r in figures.worst_images(rows, 2)] == ["c", "f"]
    assert figures.worst_images(rows, 0) == []


def test_failure_grid_shows_the_worst_images_by_name():
    images, truths, predictions, names = _split(4)
    scores = [
        {"name": "img3", "f1_foreground_mean": 0.9},
        {"name": "img0", "f1_foreground_mean": 0.4},
        {"name": "img2", "f1_foreground_mean": 0.2},
        {"name": "img1", "f1_foreground_mean": 0.7},
    ]
    fig = figures.failure_grid(images, truths, predictions, names, CLASSES, scores, n=2)
    assert len(fig.axes) == 6
    labels = [fig.axes[0].get_ylabel(), fig.axes[3].get_ylabel()]
    assert labels == ["img2\nF1 0.200", "img0\nF1 0.400"]
    shown = fig.axes[4].get_images()[0].get_array()  # truth of the second row: img0
    np.testing.assert_allclose(shown, figures.label_colours(truths[0], len(CLASSES)))


def test_the_class_palette_tells_classes_apart_in_their_curves_colours():
    k = 5
    labels = np.array([[0, 1, 2], [3, 4, 255]], np.uint8)
    rgb = figures.label_colours(labels, k, "classes")
    assert rgb.shape == (2, 3, 3) and rgb.min() >= 0.0 and rgb.max() <= 1.0
    colours = [tuple(c) for c in rgb.reshape(-1, 3)]
    assert len(set(colours)) == k + 1  # every class and the unlabelled pixels differ
    assert colours[0] == (0.0, 0.0, 0.0) and colours[-1] == (1.0, 1.0, 1.0)
    rows = [_eval_row(step, [0.5, 0.2, 0.1, 0.3, 0.4]) for step in (10, 20)]
    fig = figures.training_curves(rows, [f"c{i}" for i in range(k)])
    curve_colours = [to_rgb(line.get_color()) for line in fig.axes[0].get_lines()[1:k]]
    assert curve_colours == colours[1:k]
    images, truths, predictions, names = _split(1)
    fig = figures.result_grid(images, truths, predictions, names, CLASSES, palette="classes")
    np.testing.assert_allclose(
        fig.axes[2].get_images()[0].get_array(),
        figures.label_colours(predictions[0], len(CLASSES), "classes"),
    )
    with pytest.raises(ValueError, match="palette='rainbow' must be one of"):
        figures.result_grid(images, truths, predictions, names, CLASSES, palette="rainbow")


# ----------------------------------------------------------------------------- tables


def test_per_class_table_reuses_the_evaluate_table():
    confusion = np.array([[50, 2, 0], [3, 30, 1], [0, 4, 10]])
    record = evaluate.result_record(120, "test", CLASSES, confusion[None])
    table = figures.per_class_table(record)
    assert table.splitlines()[0] == "test split, step 120"
    tiled = figures.per_class_table({**record, "tiling": {"size": 256, "margin": 32}})
    assert tiled.splitlines()[0] == "test split, step 120, in 256-pixel windows (margin 32)"
    assert table.endswith(evaluate.table_from_record(record))
    for name in (*CLASSES, "foreground mean"):
        assert name in table


def test_ablation_table(tmp_path):
    path = tmp_path / "ablation.md"
    assert figures.ablation_table(path) is None
    path.write_text("| run | F1 |\n|---|---|\n| baseline | 0.5 |\n")
    assert figures.ablation_table(path) == path.read_text()


def test_save_figure_writes_a_png(tmp_path):
    fig = figures.loss_curves([_train_row(s) for s in (2, 4)])
    out = figures.save_figure(fig, tmp_path / "figures", "loss")
    assert out == tmp_path / "figures" / "loss.png"
    assert out.read_bytes().startswith(b"\x89PNG")
