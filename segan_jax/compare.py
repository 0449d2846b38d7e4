"""Two evaluation records of the same images compared image for image: how much the second
run (or checkpoint, or settings) changed the foreground F1 and IoU and each class's, with the
paired bootstrap interval of each change (``python -m segan_jax.compare FIRST SECOND``, each a
record or a run's workdir).

Two runs' figures on one test split differ partly by which images happen to be in it; scoring
both on the same draws of the images (`metrics.paired_bootstrap_differences`) leaves only their
difference on those images, a much narrower interval than two unpaired ones side by side. Tiles
cut from one slide (`datasets.slide_of`) are drawn together. With one run a side the interval
is over the images only: a second seed can move a run more than it says. Several runs a side
(``FIRST,FIRST2 SECOND,SECOND2``, e.g. seeds) are compared by their means, the interval drawing
the runs too (`metrics.runs_bootstrap_differences`); it is still too narrow with fewer than
three a side, and a note says so.
"""

import argparse
import pathlib
import warnings
from collections.abc import Sequence

import numpy as np

from segan_jax import datasets, evaluate, metrics
from segan_jax import workdir as workdir_lib


def find_record(
    path: pathlib.Path, split: str | None = None, data: str | None = None
) -> tuple[pathlib.Path, dict]:
    """(path, record): `path` itself when it is not a folder; for a run's workdir, its latest
    evaluation record of `split` (None: the split the run evaluates, `evaluated_split`) and,
    given ``data``, of that cohort folder (`evaluate.latest_record_file`). ValueError naming
    the file or folder when it is not a record holding per-image matrices, or there is
    none."""
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    if not path.is_dir():
        return path, read_record(path)
    split = split or evaluated_split(path)
    found = evaluate.latest_record_file(path, split, data)
    if found is None:
        have = sorted(
            {name[0] for p in path.glob("eval/*.json") if (name := evaluate.record_name(p))}
        )
        raise ValueError(
            f"{path / 'eval'}: no evaluation record of the {split!r} split (records of: "
            f"{', '.join(have) or 'none'})"
        )
    return found[0], _checked(found[1], found[0])


def evaluated_split(workdir: pathlib.Path) -> str:
    """The split a run evaluates: its saved config's eval.split (ValueError naming
    config.json when it cannot be read)."""
    path = workdir / "config.json"
    try:
        return str(workdir_lib.read_config(path)["eval"]["split"])
    except (KeyError, TypeError):
        raise ValueError(f"{path}: holds no eval.split (not a segan_jax run's config)") from None


def common_split(paths: Sequence[pathlib.Path]) -> str | None:
    """The split the workdirs among `paths` evaluate (None when no path is a folder);
    ValueError naming them when they evaluate different splits."""
    splits = {path: evaluated_split(path) for path in paths if path.is_dir()}
    if len(set(splits.values())) > 1:
        which = ", ".join(f"{path} evaluates {split!r}" for path, split in splits.items())
        raise ValueError(f"{which}: name the split to compare with --split")
    return next(iter(splits.values()), None)


def read_record(path: pathlib.Path) -> dict:
    """An evaluation record (eval/<split>_<step>.json) holding per-image matrices; ValueError
    naming the file otherwise."""
    return _checked(workdir_lib.read_json(path, "evaluation record"), path)


def _checked(record: dict, path: pathlib.Path) -> dict:
    if "confusion_matrix" not in record:
        raise ValueError(f"{path}: not an evaluation record (eval/<split>_<step>.json)")
    if "per_image" not in record:
        raise ValueError(
            f"{path}: holds no per-image confusion matrices (written before records kept "
            "them): evaluate the run again with --mode=evaluate (its latest checkpoint; best/ "
            "with --config.eval.checkpoint=best; a step still kept in checkpoints/ with "
            "--config.eval.checkpoint=STEP)"
        )
    return record


def paired(
    first: dict, second: dict, paths: Sequence[pathlib.Path]
) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """((N, K, K), (N, K, K), names or None) of two records' images, paired by name (by
    order where a record has no names). ValueError naming the files when they are not of the
    same classes, images and masks (each image's true pixels per class must agree)."""
    where = f"{paths[0]} and {paths[1]}"
    if first["classes"] != second["classes"]:
        raise ValueError(f"{where}: other classes ({first['classes']}, {second['classes']})")
    (a, names_a), (b, names_b) = _images(first), _images(second)
    if (names_a is None) != (names_b is None):
        raise ValueError(f"{where}: one names its images, the other does not")
    if names_a is not None:
        if len(set(names_a)) < len(names_a) or len(set(names_b)) < len(names_b):
            raise ValueError(f"{where}: an image name appears twice in one record")
        if sorted(names_a) != sorted(names_b):
            only = [sorted(set(x) - set(y)) for x, y in ((names_a, names_b), (names_b, names_a))]
            raise ValueError(
                f"{where}: not the same images ({len(only[0])} only in the first, e.g. "
                f"{only[0][:3]}; {len(only[1])} only in the second, e.g. {only[1][:3]})"
            )
        order = np.argsort(names_a)
        a, b, names_a = a[order], b[np.argsort(names_b)], [names_a[i] for i in order]
    if a.shape != b.shape or not len(a):
        raise ValueError(f"{where}: {len(a)} and {len(b)} images: not the same images")
    truth = (a.sum(2) != b.sum(2)).any(1)  # each image's true pixels per class
    if truth.any():
        which = names_a[int(np.argmax(truth))] if names_a else f"image {int(np.argmax(truth))}"
        raise ValueError(f"{where}: other masks (or images) for {truth.sum()} images, e.g. {which}")
    return a, b, names_a


def _images(record: dict) -> tuple[np.ndarray, list[str] | None]:
    per_image = record["per_image"]
    k = len(record["classes"])
    confusions = np.asarray(per_image["confusions"], np.int64).reshape(-1, k, k)
    return confusions, per_image.get("names")


def comparison(first: dict, second: dict, paths: Sequence[pathlib.Path]) -> dict:
    """{"images", "slides" (None when each image is its own), "runs" ((1, 1)), per foreground
    mean (F1, IoU): (first's, second's, lower and upper bound of second minus first), "f1" and
    "iou": a list of those per class} of two records of the same images (`paired`)."""
    return runs_comparison([first], [second], [[paths[0]], [paths[1]]])


def runs_comparison(
    firsts: Sequence[dict], seconds: Sequence[dict], paths: Sequence[Sequence[pathlib.Path]]
) -> dict:
    """`comparison` of two sets of runs' records of the same images (e.g. seeds of two
    configs; ``paths``: each set's files): the scores are the means of each set's runs, the
    interval `metrics.runs_bootstrap_differences`' (over the runs as well as the images)."""
    records, files = [*firsts, *seconds], [*paths[0], *paths[1]]
    # each record checked against the first and put in the order of its names (sorted)
    pairs = [paired(records[0], r, (files[0], f)) for r, f in zip(records, files, strict=True)]
    aligned, names = [p[1] for p in pairs], pairs[0][2]  # names: the first's, as every one's
    groups, slides = datasets.slide_groups(names)
    a, b = np.stack(aligned[: len(firsts)]), np.stack(aligned[len(firsts) :])
    bounds = metrics.runs_bootstrap_differences(a, b, groups=groups)
    result = {"images": a.shape[1], "slides": slides, "runs": (len(firsts), len(seconds))}
    for key in (*metrics.MEAN_KEYS, "f1", "iou"):
        scores = [_mean_score(side, key) for side in (firsts, seconds)]
        rows = np.column_stack([*scores, bounds[key].reshape(-1, 2)])  # (K or 1, 4)
        result[key] = [tuple(row) for row in rows.tolist()]
        if key in metrics.MEAN_KEYS:
            result[key] = result[key][0]
    return result


def _mean_score(records: Sequence[dict], key: str) -> np.ndarray:
    """(K or 1,) mean over ``records`` of their ``key`` score, NaN skipped."""
    values = np.array([np.ravel(workdir_lib.null_to_nan(r[key])) for r in records], float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from every run
        return np.nanmean(values, axis=0)


def report(first: dict, second: dict, paths: Sequence[pathlib.Path]) -> str:
    """`comparison` as text: the foreground means' change and interval, then per class."""
    return runs_report([first], [second], [[paths[0]], [paths[1]]])


def runs_report(
    firsts: Sequence[dict], seconds: Sequence[dict], paths: Sequence[Sequence[pathlib.Path]]
) -> str:
    """`runs_comparison` as text: each set's records (with several, each one's foreground F1),
    the foreground means' change and interval, then per class."""
    found = runs_comparison(firsts, seconds, paths)
    over = f"the {found['images']} images"
    if found["slides"]:
        over = f"the {found['slides']} slides of {over}"
    lines = []
    for label, records, files in (("first: ", firsts, paths[0]), ("second:", seconds, paths[1])):
        if len(records) == 1:
            lines.append(f"{label} {files[0]} ({evaluate.describe(records[0])})")
            continue
        lines.append(f"{label} {len(records)} runs, their scores averaged:")
        for record, path in zip(records, files, strict=True):
            score = _shown(workdir_lib.null_to_nan(record["f1_foreground_mean"]))
            lines.append(f"  {path} ({evaluate.describe(record)}): foreground F1 {score}")
    if found["runs"] == (1, 1):
        lines.append(
            f"second - first, {metrics.INTERVAL_LEVEL:.0%} paired bootstrap interval over {over}:"
        )
    else:
        runs = " and ".join(map(str, found["runs"]))
        lines.append(
            f"second - first, {metrics.INTERVAL_LEVEL:.0%} bootstrap interval over the runs "
            f"({runs}, drawn with replacement) and {over} (paired):"
        )
    lines[-1:-1] = _runs_notes(found["runs"])
    for key, label in zip(metrics.MEAN_KEYS, ("F1", "IoU"), strict=True):
        lines.append(f"  foreground {label}: {_change(found[key])}")
    for key, label in (("f1", "F1"), ("iou", "IoU")):
        for name, row in zip(firsts[0]["classes"], found[key], strict=True):
            lines.append(f"  {label} {name}: {_change(row)}")
    return "\n".join(lines)


def _runs_notes(runs: tuple[int, int]) -> list[str]:
    """What the interval leaves out for these numbers of runs a side."""
    if runs == (1, 1):
        return []
    notes = []
    if 1 in runs:
        side = "first" if runs[0] == 1 else "second"
        notes.append(f"note: the {side} side is one run, so its seeds' spread is not counted")
    if min(runs) < 3:
        notes.append(
            "note: with fewer than 3 runs a side the interval is too narrow (in a simulation "
            "of two equal configs, 2 a side held 0 in 84 % of trials, not 95 %: "
            "benchmarks/bootstrap_coverage.py)"
        )
    return notes


def _change(row: Sequence[float]) -> str:
    """(first, second, low, high) as "0.500 -> 0.600, +0.100 (+0.020 to +0.180)"."""
    one, two, low, high = row
    bounds = f"{_shown(low, '+')} to {_shown(high, '+')}"
    return f"{_shown(one)} -> {_shown(two)}, {_shown(two - one, '+')} ({bounds})"


def _shown(value: float, sign: str = "") -> str:
    """A score or change to 3 decimals, "n/a" for NaN (a class absent from both)."""
    return "n/a" if np.isnan(value) else f"{value:{sign}.3f}"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m segan_jax.compare FIRST[,FIRST2...] SECOND[,SECOND2...] [--split=S]``:
    prints `runs_report`."""
    parser = argparse.ArgumentParser(
        prog="python -m segan_jax.compare",
        description="Compares two evaluation records of the same images (e.g. two runs' "
        "eval/test_<step>.json) image for image: the change of the foreground F1 and IoU and "
        "of each class's, with paired bootstrap intervals. Several runs a side (e.g. seeds of "
        "two configs), comma-separated, are compared by their means, the interval then over "
        "the runs as well as the images.",
    )
    where = (
        "an evaluation record, or a run's workdir (its latest record of --split); or "
        "several, comma-separated"
    )
    parser.add_argument("first", help=f"{where}: the baseline")
    parser.add_argument("second", help=f"{where}: the change")
    parser.add_argument(
        "--split",
        help="for a workdir, the split whose latest record is compared (default: the split "
        "the runs evaluate, their configs' eval.split; e.g. test, or cohort-<folder>)",
    )
    args = parser.parse_args(argv)
    names = [arg.split(",") for arg in (args.first, args.second)]
    sides = [[pathlib.Path(p) for p in side] for side in names]
    try:
        if not all(all(side) for side in names):
            raise ValueError(
                f"{args.first} {args.second}: an empty name in a list (a stray comma?)"
            )
        split = args.split or common_split([*sides[0], *sides[1]])
        found = [[find_record(path, split) for path in side] for side in sides]
        files = [[path for path, _ in side] for side in found]
        for side in files:
            if len({p.resolve() for p in side}) < len(side):
                raise ValueError(f"{', '.join(map(str, side))}: a record twice on one side")
        if {p.resolve() for p in files[0]} & {p.resolve() for p in files[1]}:
            print("note: a record on both sides: there is no change to find in it")
        records = [[record for _, record in side] for side in found]
        print(runs_report(*records, files))
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
