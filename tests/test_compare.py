"""Tests for segan_jax.compare: two evaluation records compared image for image."""

import json
import pathlib

import numpy as np
import pytest

from segan_jax import compare, evaluate, metrics

CLASSES = ["background", "nucleus", "gland"]


def _confusions(seed: int, n: int = 8) -> np.ndarray:
    """(n, 3, 3) matrices of n images whose true pixels per class depend on the image only."""
    rng = np.random.default_rng(100)
    truth = rng.integers(50, 400, (n, 3))
    predicted = np.random.default_rng(seed).dirichlet(np.ones(3) * 2, (n, 3))
    counts = np.floor(predicted * truth[..., None]).astype(int)
    counts[:, np.arange(3), np.arange(3)] += truth - counts.sum(2)  # rows sum to the truth
    return counts


NAMES = [f"slide{i % 3}_L0_x{i}_y0" for i in range(8)]  # tiles of three slides


def _record(confusions, names=NAMES, step=100):
    return evaluate.result_record(step, "test", CLASSES, confusions, names=names)


def test_the_change_is_the_paired_bootstrap_over_slides_whatever_the_order():
    a, b = _confusions(1), _confusions(2)
    b[:, 1, 1] += b[:, 1, 0]  # the second finds the nuclei it called background
    b[:, 1, 0] = 0
    paths = ("a.json", "b.json")
    found = compare.comparison(_record(a), _record(b), paths)
    slides = [n.split("_")[0] for n in NAMES]
    order = np.argsort(NAMES)
    expected = metrics.paired_bootstrap_difference(
        a[order], b[order], groups=np.array(slides)[order]
    )
    assert found["f1_foreground_mean"][2:] == pytest.approx(expected.tolist())
    one, two = (metrics.scores(x.sum(0))["f1_foreground_mean"] for x in (a, b))
    assert found["f1_foreground_mean"][:2] == pytest.approx([one, two])
    assert found["f1_foreground_mean"][2] > 0  # better on every draw
    every = metrics.paired_bootstrap_differences(a[order], b[order], groups=np.array(slides)[order])
    for key in ("f1", "iou"):  # each class: both scores, then the change's interval
        scores = [metrics.scores(x.sum(0))[key] for x in (a, b)]
        expected_rows = np.column_stack([*scores, every[key]])
        np.testing.assert_allclose(found[key], expected_rows)
    assert found["f1"][1][2] > 0  # the nuclei's own F1: better on every draw
    assert (found["images"], found["slides"]) == (8, 3)
    # The second record's images in another order (written so by hand): paired by name.
    shuffled = np.random.default_rng(0).permutation(8)
    other = _record(b)
    other["per_image"] = {
        "names": [NAMES[i] for i in shuffled],
        "confusions": b[shuffled].tolist(),
    }
    assert other["per_image"]["names"] != sorted(NAMES)
    assert compare.comparison(_record(a), other, paths) == found
    text = compare.report(_record(a), other, paths)
    assert "paired bootstrap interval over the 3 slides of the 8 images:" in text
    assert f"foreground F1: {one:.3f} -> {two:.3f}, {two - one:+.3f} (" in text
    low, high = found["iou"][1][2:]
    assert f"  IoU nucleus: {found['iou'][1][0]:.3f} -> " in text
    assert f"({low:+.3f} to {high:+.3f})\n  IoU gland" in text
    # The same predictions: no change, an interval of 0.
    same = compare.comparison(_record(a), _record(a), paths)
    assert list(same["iou_foreground_mean"][2:]) == [0.0, 0.0]


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda r: {**r, "classes": ["background", "nucleus", "other"]}, "other classes"),
        (
            lambda r: _record(_confusions(2), [*NAMES[:-1], "z"]),
            r"not the same images \(1 only in the first, e.g. \['slide1_L0_x7_y0'\]; 1 only in "
            r"the second, e.g. \['z'\]\)",
        ),
        (lambda r: _record(_confusions(2)[:7], NAMES[:7]), "not the same images"),
        (lambda r: _record(_confusions(2, 8) * 2), "other masks .* for 8 images, e.g. slide0"),
        (lambda r: _record(_confusions(1), None), "one names its images, the other does not"),
        (lambda r: _record(_confusions(1), [*NAMES[:-1], NAMES[0]]), "an image name appears twice"),
    ],
    ids=["classes", "names", "count", "masks", "unnamed", "twice"],
)
def test_records_of_other_images_or_masks_are_refused_naming_both(change, message):
    first = _record(_confusions(1))
    with pytest.raises(ValueError, match=f"a.json and b.json: {message}"):
        compare.comparison(first, change(first), ("a.json", "b.json"))


def test_no_images_are_refused_and_an_absent_class_shown_as_not_available():
    empty = _record(np.zeros((0, 3, 3), int), [])
    with pytest.raises(ValueError, match="0 and 0 images"):
        compare.comparison(empty, empty, ("a.json", "b.json"))
    confusions = _confusions(1)
    confusions[:, 2, :] = 0  # no gland in truth
    confusions[:, :, 2] = 0  # nor predicted
    text = compare.report(_record(confusions), _record(confusions), ("a.json", "b.json"))
    assert "  F1 gland: n/a -> n/a, n/a (n/a to n/a)" in text


def test_the_command_reads_two_records_and_names_a_file_it_cannot_use(tmp_path, capsys):
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, seed in zip(paths, (1, 2), strict=True):
        path.write_text(json.dumps(_record(_confusions(seed))))
    compare.main([str(p) for p in paths])
    assert f"first:  {paths[0]} (test split, step 100)" in capsys.readouterr().out
    compare.main([str(paths[0]), str(paths[0])])
    assert capsys.readouterr().out.startswith("note: a record on both sides")
    old = _record(_confusions(1))
    del old["per_image"]  # written before records kept them
    paths[1].write_text(json.dumps(old))
    with pytest.raises(SystemExit, match=f"error: {paths[1]}: holds no per-image confusion"):
        compare.main([str(p) for p in paths])
    paths[1].write_text("{}")
    with pytest.raises(SystemExit, match="not an evaluation record"):
        compare.main([str(p) for p in paths])


def _run(folder, records, split="test"):
    """A run's workdir: config.json evaluating `split`, records {(split, step): matrices}."""
    (folder / "eval").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"eval": {"split": split}}))
    for (name, step), confusions in records.items():
        record = evaluate.result_record(step, name, CLASSES, confusions, names=NAMES)
        evaluate.write_record(folder, record)
    return folder


def test_the_command_takes_workdirs_and_compares_their_latest_records(tmp_path, capsys):
    records = {("test", 100): _confusions(5), ("test", 200): _confusions(1)}
    first = _run(tmp_path / "a", records)
    second = _run(tmp_path / "b", {("test", 300): _confusions(2), ("val", 300): _confusions(3)})
    compare.main([str(first), str(second)])  # the split both runs evaluate: test
    out = capsys.readouterr().out
    assert f"first:  {first / 'eval' / 'test_200.json'} (test split, step 200)" in out
    assert f"second: {second / 'eval' / 'test_300.json'} (test split, step 300)" in out
    found = compare.comparison(_record(_confusions(1)), _record(_confusions(2)), ("a", "b"))
    assert f"foreground F1: {compare._change(found['f1_foreground_mean'])}" in out
    compare.main([str(second / "eval" / "test_300.json"), str(second)])
    assert capsys.readouterr().out.startswith("note: a record on both sides")
    with pytest.raises(
        SystemExit, match=r"no evaluation record of the 'val' split \(records of: test\)"
    ):
        compare.main([str(first), str(second), "--split=val"])
    with pytest.raises(SystemExit, match=f"error: {tmp_path / 'absent'}: no such file or folder"):
        compare.main([str(first), str(tmp_path / "absent")])
    (second / "config.json").write_text(json.dumps({"eval": {"split": "val"}}))
    with pytest.raises(SystemExit, match="evaluates 'test', .* evaluates 'val': name the split"):
        compare.main([str(first), str(second)])
    compare.main([str(first), str(second), "--split=test"])
    assert "test_300.json (test split, step 300)" in capsys.readouterr().out
    (second / "config.json").unlink()
    with pytest.raises(SystemExit, match=f"error: {second / 'config.json'}: unreadable"):
        compare.main([str(first), str(second)])


def test_several_runs_a_side_are_compared_by_their_means_over_runs_and_images(tmp_path, capsys):
    """Comma-separated records a side: their scores averaged, the interval
    `metrics.runs_bootstrap_differences`' of the records paired by name; one run a side is
    the two-record comparison; a record twice on one side is refused."""
    a1, a2, b1, b2 = (_confusions(seed) for seed in (1, 5, 2, 6))
    shuffled = _record(a2)
    order = np.random.default_rng(0).permutation(8)
    shuffled["per_image"] = {"names": [NAMES[i] for i in order], "confusions": a2[order].tolist()}
    paths = [[pathlib.Path("a1"), pathlib.Path("a2")], [pathlib.Path("b1"), pathlib.Path("b2")]]
    found = compare.runs_comparison([_record(a1), shuffled], [_record(b1), _record(b2)], paths)
    sort = np.argsort(NAMES)
    slides = np.array([n.split("_")[0] for n in NAMES])[sort]
    bounds = metrics.runs_bootstrap_differences(
        np.stack([a1, a2])[:, sort], np.stack([b1, b2])[:, sort], groups=slides
    )
    for key in ("f1", "iou"):
        means = [
            np.mean([metrics.scores(x.sum(0))[key] for x in side], 0)
            for side in ((a1, a2), (b1, b2))
        ]
        np.testing.assert_allclose(found[key], np.column_stack([*means, bounds[key]]))
    assert found["runs"] == (2, 2) and found["images"] == 8
    one = compare.runs_comparison([_record(a1)], [_record(b1)], [paths[0][:1], paths[1][:1]])
    assert one == compare.comparison(_record(a1), _record(b1), ("a1", "b1"))
    files = []
    for name, confusions in (("a1", a1), ("a2", a2), ("b1", b1), ("b2", b2)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(_record(confusions)))
    compare.main([f"{files[0]},{files[1]}", f"{files[2]},{files[3]}"])
    out = capsys.readouterr().out
    assert out.startswith("first:  2 runs, their scores averaged:\n  " + str(files[0]))
    assert "interval over the runs (2 and 2, drawn with replacement) and the 3 slides" in out
    assert "note: with fewer than 3 runs a side the interval is too narrow" in out
    assert "is one run" not in out
    compare.main([str(files[0]), f"{files[2]},{files[3]}"])
    out = capsys.readouterr().out
    assert "note: the first side is one run, so its seeds' spread is not counted" in out
    with pytest.raises(SystemExit, match="a record twice on one side"):
        compare.main([f"{files[0]},{files[0]}", str(files[2])])
    with pytest.raises(SystemExit, match=r"an empty name in a list \(a stray comma\?\)"):
        compare.main([f"{files[0]},", str(files[2])])


def test_a_class_one_run_predicts_and_no_image_holds_is_scored_as_each_record_scores_it():
    """A class absent from every image's truth scores F1 0 for a run that predicts it and
    none (NaN) for one that does not: a side's mean skips the NaN, and its foreground mean
    is the mean of the records' own foreground means."""
    a1, a2, b = _confusions(1), _confusions(5), _confusions(2)
    for x in (a1, a2, b):
        x[:, 1, :] += x[:, 2, :]  # no gland in truth: its pixels become nuclei
        x[:, 2, :] = 0
    a2[:, :, 1] += a2[:, :, 2]  # the second run never predicts gland either
    a2[:, :, 2] = 0
    records = [_record(x) for x in (a1, a2, b)]
    assert records[0]["f1"][2] == 0.0 and records[1]["f1"][2] is None  # NaN as null
    paths = [[pathlib.Path("a1"), pathlib.Path("a2")], [pathlib.Path("b")]]
    found = compare.runs_comparison(records[:2], records[2:], paths)
    assert found["f1"][2][0] == 0.0  # the mean of 0 and "none": 0
    means = [r["f1_foreground_mean"] for r in records[:2]]
    assert found["f1_foreground_mean"][0] == pytest.approx(np.mean(means))
    assert np.isfinite(found["f1_foreground_mean"][2:]).all()
