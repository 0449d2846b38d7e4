"""Two evaluation records of the same images compared image for image: how much the second
run (or checkpoint, or settings) changed the foreground F1 and IoU, with the paired bootstrap
interval of the change (``python -m segan_jax.compare FIRST.json SECOND.json``).

Two runs' figures on one test split differ partly by which images happen to be in it; scoring
both on the same draws of the images (`metrics.paired_bootstrap_difference`) leaves only their
difference on those images, a much narrower interval than two unpaired ones side by side. Tiles
cut from one slide (`datasets.slide_of`) are drawn together. The interval is over the images,
not over training runs: a second seed can move a run more than its interval says.
"""

import argparse
import pathlib
from collections.abc import Sequence

import numpy as np

from segan_jax import datasets, evaluate, metrics
from segan_jax import workdir as workdir_lib

MEANS = ("f1_foreground_mean", "iou_foreground_mean")


def read_record(path: pathlib.Path) -> dict:
    """An evaluation record (eval/<split>_<step>.json) holding per-image matrices; ValueError
    naming the file otherwise."""
    record = workdir_lib.read_json(path, "evaluation record")  # ValueError naming the file
    if "confusion_matrix" not in record:
        raise ValueError(f"{path}: not an evaluation record (eval/<split>_<step>.json)")
    if "per_image" not in record:
        raise ValueError(
            f"{path}: holds no per-image confusion matrices (written before records kept "
            "them): evaluate the run again with --mode=evaluate (its latest checkpoint, or "
            "best/ with --config.eval.checkpoint=best; other steps cannot be evaluated again)"
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
    """{"images", "slides" (None when each image is its own), per foreground mean (F1, IoU):
    (first's, second's, lower and upper bound of second minus first), "f1": per class
    (first's, second's)} of two records of the same images (`paired`)."""
    a, b, names = paired(first, second, paths)
    groups, slides = datasets.slide_groups(names)
    result = {"images": len(a), "slides": slides}
    for key in MEANS:
        bounds = metrics.paired_bootstrap_difference(a, b, key, groups=groups)
        scores = [workdir_lib.null_to_nan(r[key]) for r in (first, second)]
        result[key] = (*scores, *bounds.tolist())
    f1 = [workdir_lib.null_to_nan(r["f1"]) for r in (first, second)]
    result["f1"] = list(zip(*f1, strict=True))
    return result


def report(first: dict, second: dict, paths: Sequence[pathlib.Path]) -> str:
    """`comparison` as text: the foreground means' change and interval, then per class F1."""
    found = comparison(first, second, paths)
    over = f"the {found['images']} images"
    if found["slides"]:
        over = f"the {found['slides']} slides of {over}"
    lines = [
        f"first:  {paths[0]} ({evaluate.describe(first)})",
        f"second: {paths[1]} ({evaluate.describe(second)})",
        f"second - first, {metrics.INTERVAL_LEVEL:.0%} paired bootstrap interval over {over}:",
    ]
    for key, label in zip(MEANS, ("F1", "IoU"), strict=True):
        one, two = (_shown(x) for x in found[key][:2])
        low, high = (_shown(x, "+") for x in found[key][2:])
        change = _shown(found[key][1] - found[key][0], "+")
        lines.append(f"  foreground {label}: {one} -> {two}, {change} ({low} to {high})")
    for name, (one, two) in zip(first["classes"], found["f1"], strict=True):
        lines.append(f"  F1 {name}: {_shown(one)} -> {_shown(two)}")
    return "\n".join(lines)


def _shown(value: float, sign: str = "") -> str:
    """A score or change to 3 decimals, "n/a" for NaN (a class absent from both)."""
    return "n/a" if np.isnan(value) else f"{value:{sign}.3f}"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m segan_jax.compare FIRST SECOND``: prints `report`."""
    parser = argparse.ArgumentParser(
        prog="python -m segan_jax.compare",
        description="Compares two evaluation records of the same images (e.g. two runs' "
        "eval/test_<step>.json) image for image: the change of the foreground F1 and IoU and "
        "its paired bootstrap interval.",
    )
    parser.add_argument("first", type=pathlib.Path, help="evaluation record (the baseline)")
    parser.add_argument("second", type=pathlib.Path, help="evaluation record (the change)")
    args = parser.parse_args(argv)
    paths = (args.first, args.second)
    if args.first.resolve() == args.second.resolve():
        print("note: the same record twice: there is no change to find")
    try:
        print(report(*(read_record(p) for p in paths), paths))
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
