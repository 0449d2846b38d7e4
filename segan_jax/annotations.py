"""Predicted label maps as GeoJSON annotations, for an expert to correct in QuPath (File >
Import objects, or drag the file onto the image) instead of drawing every region anew, and the
corrected annotations back as label masks for retraining (`masks_from_annotations`, also
``python -m segan_jax.annotations``): the paper's human-in-the-loop cycle.

Coordinates are the image's pixels, x to the right and y down, with pixel (row r, column c)
covering [c, c + 1] x [r, r + 1] (QuPath's convention). Each connected region of a foreground
class becomes one Polygon feature: its outer ring, then its holes. The rings run between pixel
centres (marching squares at level 0.5, via contourpy), so a pixel belongs to the region
exactly when its centre lies inside the polygon: straight edges lie on pixel edges and corners
are cut by half a pixel.
"""

import argparse
import json
import pathlib
from collections.abc import Sequence

import contourpy
import numpy as np

from segan_jax import datasets, evaluate, figures, imagescope
from segan_jax import workdir as workdir_lib


def class_polygons(labels: np.ndarray, label: int) -> list[list[np.ndarray]]:
    """The connected regions of ``labels == label`` as polygons.

    Args:
      labels: (H, W) integer label map.

    Returns:
      One list per region: its closed rings, each (N, 2) float64 (x, y) with the first point
      repeated last, the outer ring first, then its holes; points on a straight line between
      their neighbours left out.
    """
    inside = np.pad(np.asarray(labels) == label, 1).astype(np.float64)  # closes border regions
    generator = contourpy.contour_generator(
        z=inside, fill_type=contourpy.FillType.OuterOffset, name="serial", corner_mask=False
    )
    points, offsets = generator.filled(0.5, 1.5)
    # Padded grid index i is pixel i - 1, whose centre is at i - 1 + 0.5.
    return [
        [_without_straight_points(ring[a:b] - 0.5) for a, b in zip(o[:-1], o[1:], strict=True)]
        for ring, o in zip(points, offsets, strict=True)
    ]


def _without_straight_points(ring: np.ndarray) -> np.ndarray:
    """A closed (N, 2) ring less the points where it runs straight on (coordinates are
    multiples of 0.5: the cross products are exact)."""
    points = ring[:-1]
    before, after = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
    turns = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0
    kept = points[turns]
    return np.concatenate([kept, kept[:1]])


def regions(
    labels: np.ndarray, num_classes: int, min_area: float = 0.0
) -> list[tuple[int, list[np.ndarray]]]:
    """(class, rings) of every connected region of the (H, W) label map's classes 1 to
    ``num_classes - 1`` (not the background, 0), class by class (`class_polygons`), but those
    whose polygon `area` is under ``min_area`` (specks: a lone pixel's is 0.5)."""
    return [
        (k, rings)
        for k in range(1, num_classes)
        for rings in class_polygons(labels, k)
        if area(rings) >= min_area
    ]


def area(rings: list[np.ndarray]) -> float:
    """Area in pixels of a polygon (`class_polygons`' rings: the outer ring, then holes). The
    rings cut corners by half a pixel, so a lone pixel's is 0.5 and a 3x3 square's 8.5."""
    return _ring_area(rings[0]) - sum(_ring_area(hole) for hole in rings[1:])


def _ring_area(ring: np.ndarray) -> float:
    """Unsigned shoelace area of a closed (N, 2) ring."""
    x, y = ring[:, 0], ring[:, 1]
    return abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))) / 2


def feature(
    rings: list[np.ndarray],
    name: str,
    colour: Sequence[int],
    origin: tuple[float, float] = (0, 0),
    scale: np.ndarray | None = None,
) -> dict:
    """One GeoJSON Polygon annotation of class ``name`` (RGB ``colour``) with coordinates
    ``((x, y) + origin) * scale`` of the rings' (N, 2) (x, y) points (`class_polygons`)."""
    rings = [r + origin for r in rings]
    rings = rings if scale is None else [r * scale for r in rings]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [r.tolist() for r in rings]},
        "properties": {
            "objectType": "annotation",
            "classification": {"name": name, "color": list(colour)},
        },
    }


def features(
    labels: np.ndarray,
    classes: Sequence[str],
    origin: tuple[float, float] = (0, 0),
    scale: np.ndarray | None = None,
    min_area: float = 0.0,
) -> list[dict]:
    """GeoJSON Polygon annotations (`feature`) of the (H, W) label map's `regions`, classified
    by class name in the colour the figures give it. Coordinates are ``((x, y) + origin) *
    scale``: the map's pixels by default; a part of a larger map gives its (x, y) position
    there as ``origin``, and a map at a lower resolution its (x, y) pixel size as ``scale``.
    Regions of a polygon `area` under ``min_area`` are left out."""
    colours = figures.class_colours(len(classes))
    return [
        feature(rings, classes[k], colours[k], origin, scale)
        for k, rings in regions(labels, len(classes), min_area)
    ]


def feature_collection(labels: np.ndarray, classes: Sequence[str], min_area: float = 0.0) -> dict:
    """A GeoJSON FeatureCollection of the (H, W) label map's `features` (of polygon area at
    least ``min_area``)."""
    return {
        "type": "FeatureCollection",
        "features": features(labels, classes, min_area=min_area),
    }


def save_geojson(
    labels: np.ndarray, classes: Sequence[str], path: pathlib.Path, min_area: float = 0.0
) -> list[dict]:
    """Writes `feature_collection` of an (H, W) label map to ``path``, atomically; returns its
    features."""
    collection = feature_collection(labels, classes, min_area)
    workdir_lib.write_json(path, collection)
    return collection["features"]


# ----------------------------------------------------------------------------- reading back

IGNORE_CLASS = "Ignore*"  # QuPath's class for regions to leave out: unlabelled pixels
# QuPath's class for an area of interest: here the area an expert reviewed. With any, the
# pixels outside them are unlabelled (not background).
REGION_CLASS = "Region*"
REGION = -1  # the label value of a REGION_CLASS annotation (`read_features`)

# A feature read: (its index among the file's features, its label value, its polygons: each a
# list of (N, 2) (x, y) rings, the outer one first).
Annotation = tuple[int, int, list[list[np.ndarray]]]


def label_map(features: Sequence[dict], shape: tuple[int, int], classes: Sequence[str]):
    """(H, W) uint8 label map of GeoJSON features (a corrected `feature_collection`) and the
    problems found, one line each.

    Each Polygon or MultiPolygon feature fills the pixels whose centres lie inside it (outside
    its holes) with the label of its classification's name in ``classes``; QuPath's
    ``IGNORE_CLASS`` marks them unlabelled (``datasets.UNLABELLED``); a later feature
    overwrites an earlier one; pixels in no feature are background (label 0), or unlabelled
    when there are ``REGION_CLASS`` features and they lie outside all of them. Features
    without a class, of another class or another geometry, or holding no pixel are problems
    (and left out).
    """
    read, problems = read_features(features, classes)
    labels, outside, _ = rasterise(read, shape)
    polygons = {i: p for i, _, p in read}
    problems += [(i, _outside(polygons[i], shape)) for i in outside]
    return labels, named_problems(features, problems)


def named_problems(features: Sequence[dict], problems: Sequence[tuple[int, str]]) -> list[str]:
    """``<feature_name>: <problem>`` of (index, problem) pairs, in the features' order."""
    return [f"{feature_name(features, i)}: {text}" for i, text in sorted(problems)]


def feature_name(features: Sequence[dict], i: int) -> str:
    """How problems name ``features[i]``: its ``properties.source`` where a converted file
    gave one (`imagescope`: its layer and region), else ``feature i``."""
    source = _get(_get(features[i], "properties"), "source")
    return source if isinstance(source, str) else f"feature {i}"


def read_features(
    features: Sequence[dict], classes: Sequence[str]
) -> tuple[list[Annotation], list[tuple[int, str]]]:
    """The `Annotation` of each usable GeoJSON feature (label values: the index of its class
    name in ``classes``, ``datasets.UNLABELLED`` for ``IGNORE_CLASS``, ``REGION`` for
    ``REGION_CLASS``) and (index, problem) of the others."""
    values = {name: k for k, name in enumerate(classes)}
    values |= {IGNORE_CLASS: datasets.UNLABELLED, REGION_CLASS: REGION}
    read, problems = [], []
    for i, feature in enumerate(features):
        problem, value, polygons = _read_feature(feature, values)
        if problem:
            problems.append((i, problem))
        else:
            read.append((i, value, polygons))
    return read, problems


def rasterise(
    read: Sequence[Annotation], shape: tuple[int, int], origin: tuple[float, float] = (0, 0)
) -> tuple[np.ndarray, list[int], list[int]]:
    """The (H, W) uint8 label map of annotations (`label_map`'s rules) whose (x, y) point
    ``origin`` is the map's top-left corner; the indices of those whose outline holds no pixel
    of it (beyond it, say), and of those that set none (their holes may take every pixel)."""
    labels = np.zeros(shape, np.uint8)
    reviewed = np.zeros(shape, bool) if any(v == REGION for _, v, _ in read) else None
    outside, unset = [], []
    for i, value, polygons in read:
        target, fill = (reviewed, True) if value == REGION else (labels, value)
        done = [_fill(target, [ring - origin for ring in rings], fill) for rings in polygons]
        if not any(holds for holds, _ in done):
            outside.append(i)
        if not any(set_any for _, set_any in done):
            unset.append(i)
    if reviewed is not None:
        labels[~reviewed] = datasets.UNLABELLED
    return labels, outside, unset


def _outside(polygons: list[list[np.ndarray]], shape: tuple[int, int]) -> str:
    """The problem of polygons that hold no pixel centre of an (H, W) image."""
    x0, y0, x1, y1 = outer_box(polygons)
    return (
        f"holds no pixel of the {shape[1]}x{shape[0]} image (x {x0:g}..{x1:g}, y {y0:g}..{y1:g}; "
        "coordinates are the image's pixels: for a tile of a slide, subtract its position)"
    )


def outer_box(polygons: list[list[np.ndarray]]) -> np.ndarray:
    """(x0, y0, x1, y1) bounding the outer rings of polygons (each a list of (N, 2) rings)."""
    points = np.concatenate([rings[0] for rings in polygons])
    return np.concatenate([points.min(0), points.max(0)])


def _read_feature(feature, values: dict[str, int]) -> tuple[str, int, list[list[np.ndarray]]]:
    """(problem or "", label value, polygons: each its (N, 2) rings) of a GeoJSON feature;
    no polygons when there is a problem."""
    name = _get(_get(_get(feature, "properties"), "classification"), "name")
    geometry = _get(feature, "geometry")
    kind = _get(geometry, "type")
    if name is None:
        return f"has no classification; give it one of {list(values)}", 0, []
    if name not in values:
        return f"class {name!r} is not one of {list(values)}", 0, []
    if kind not in ("Polygon", "MultiPolygon"):
        return f"a {kind}, not a Polygon or MultiPolygon", 0, []
    try:
        coordinates = geometry["coordinates"]
        polygons = coordinates if kind == "MultiPolygon" else [coordinates]
        rings = [[np.asarray(r, np.float64).reshape(-1, 2) for r in p] for p in polygons]
    except (KeyError, TypeError, ValueError) as err:
        return f"unreadable {kind} coordinates ({err!r})", 0, []
    if not rings or any(not p or len(p[0]) < 3 for p in rings):
        return f"a {kind} without an outer ring of 3 points or more", 0, []
    if not all(np.isfinite(ring).all() for p in rings for ring in p):
        return f"a {kind} with coordinates that are not finite numbers", 0, []
    return "", values[name], rings


def _get(obj, key: str):
    """``obj[key]`` of a JSON object, else None."""
    return obj.get(key) if isinstance(obj, dict) else None


def _fill(labels: np.ndarray, rings: list[np.ndarray], value: int) -> tuple[bool, bool]:
    """Sets the pixels of (H, W) ``labels`` whose centres lie inside the first ring and outside
    the others (its holes) to ``value``, searching the first ring's bounding box only; returns
    whether the first ring holds any pixel, and whether any was set (the holes may take them
    all: a region an expert erased with ImageScope's negative regions). Parts outside the
    image are left out."""
    (x0, y0), (x1, y1) = rings[0].min(0), rings[0].max(0)
    h, w = labels.shape
    rows = np.arange(max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), h))
    cols = np.arange(max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), w))
    if not rows.size or not cols.size:
        return False, False
    inside = inside_centres(rings[0], rows, cols)
    holds = bool(inside.any())
    for hole in rings[1:]:
        inside &= ~inside_centres(hole, rows, cols)
    labels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1][inside] = value
    return holds, bool(inside.any())


def inside_centres(ring: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(R, C) bool: whether the centre of pixel (rows[i], cols[j]) lies inside a closed (N, 2)
    (x, y) ring, by the even-odd rule (``rows`` and ``cols`` consecutive): each row's centre
    line is crossed by the ring's edges at some x, and a centre is inside when an odd number of
    those lie left of it. Time and memory grow with rows x edges, not with pixels x edges as a
    point-in-polygon test's do (a 5,000-vertex outline over a 512x512 tile)."""
    (xa, ya), (xb, yb) = ring[:-1].T, ring[1:].T
    out = np.zeros((rows.size, cols.size), bool)
    step = max(1, 2**21 // max(xa.size, 1))  # rows at a time: about 2M (row, edge) pairs
    for start in range(0, rows.size, step):
        y = rows[start : start + step, None] + 0.5
        r, e = np.nonzero((ya <= y) != (yb <= y))  # edges across the line, ends half-open
        x = xa[e] + (y[r, 0] - ya[e]) * (xb[e] - xa[e]) / (yb[e] - ya[e])
        first = np.clip(np.floor(x - 0.5 - cols[0]).astype(int) + 1, 0, cols.size)  # centre > x
        toggles = np.zeros((y.shape[0], cols.size + 1), np.int32)
        np.add.at(toggles, (r, first), 1)
        out[start : start + step] = np.cumsum(toggles, axis=1)[:, :-1] % 2 == 1
    return out


def masks_from_annotations(
    annotations_dir: pathlib.Path,
    images_dir: pathlib.Path,
    classes_file: pathlib.Path,
    output: pathlib.Path,
    overwrite: bool = False,
) -> list[pathlib.Path]:
    """Writes ``output/<stem>.png``, the `label_map` of each annotation file of
    ``annotations_dir`` (`annotation_files`: QuPath GeoJSON or ImageScope XML) at the size of
    the image ``images_dir/<stem>.*``, with the label values of ``classes_file``
    (classes.json): masks for a folder dataset's ``masks/``. Everything is read and checked
    first: DatasetError naming every problem (and nothing written) otherwise. Returns the PNGs'
    paths."""
    problems: list[str] = []
    classes, missing = datasets.classes_problems(classes_file)
    problems += missing
    files = annotation_files(annotations_dir, problems)
    images = datasets.images_by_stem(images_dir)
    masks = {}
    for path in files:
        target = output / f"{path.stem}.png"
        if target.exists() and not overwrite:
            problems.append(f"{target}: exists already; pass --overwrite to replace it")
        image = images.get(path.stem, [])
        if len(image) != 1:
            found = "no image" if not image else f"{len(image)} images ({[p.name for p in image]})"
            problems.append(f"{path}: {found} named {path.stem}.<png|jpg|tif> in {images_dir}")
            continue
        features = read_annotations(path, classes, problems)
        shape = datasets.try_read(datasets.read_image, image, "image", problems)
        if features is not None and shape is not None and classes:
            labels, bad = label_map(features, shape.shape[:2], classes)
            problems += file_problems(path, bad)
            masks[target] = labels
    if problems:
        raise datasets.DatasetError(problems)
    output.mkdir(parents=True, exist_ok=True)
    for target, labels in masks.items():
        evaluate.save_label_png(labels, target)
    return list(masks)


# Problems listed per annotation file at most: a file of another image's coordinates would
# otherwise give one line per feature (thousands).
MAX_FILE_PROBLEMS = 10


def file_problems(path: pathlib.Path, lines: Sequence[str]) -> list[str]:
    """``<path>: <line>`` for a file's first `MAX_FILE_PROBLEMS` problem lines, then one
    saying how many more there are."""
    shown = [f"{path}: {line}" for line in lines[:MAX_FILE_PROBLEMS]]
    more = len(lines) - MAX_FILE_PROBLEMS
    return shown + ([f"{path}: ... and {more} more"] if more > 0 else [])


# Annotation files read back: QuPath's GeoJSON, Aperio ImageScope's XML (`imagescope`).
ANNOTATION_SUFFIXES = (".geojson", ".xml")


def annotation_files(folder: pathlib.Path, problems: list[str]) -> list[pathlib.Path]:
    """The visible annotation files (`ANNOTATION_SUFFIXES`) of ``folder``, by stem; a stem
    with two, or a folder with none, is a problem (appended)."""
    found = datasets.files_by_stem(folder, ANNOTATION_SUFFIXES)
    if not found:
        problems.append(f"{folder}: no annotation files (.geojson or ImageScope .xml)")
    for paths in found.values():
        if len(paths) > 1:
            names = " and ".join(p.name for p in paths)
            problems.append(f"{folder}: {names} annotate the same image; keep one")
    return [paths[0] for _, paths in sorted(found.items()) if len(paths) == 1]


def read_annotations(
    path: pathlib.Path, classes: Sequence[str] | None, problems: list[str]
) -> list[dict] | None:
    """The features of an annotation file, GeoJSON (`read_geojson`) or ImageScope XML
    (`imagescope.read_xml`, as GeoJSON features), or None (appending the problem)."""
    if path.suffix.lower() != ".xml":
        return read_geojson(path, problems)
    try:
        return imagescope.read_xml(path, classes or ())
    except datasets.FormatError as err:
        problems.append(f"{path}: {err}")
        return None


def read_geojson(path: pathlib.Path, problems: list[str]) -> list[dict] | None:
    """The features of a GeoJSON file (a FeatureCollection, or the list of features QuPath
    may export), or None (appending the problem)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problems.append(f"{path}: unreadable ({err})")
        return None
    features = data.get("features") if isinstance(data, dict) else data
    if not isinstance(features, list):
        problems.append(f"{path}: neither a FeatureCollection nor a list of features")
        return None
    return features


DESCRIPTION = """Turns corrected annotations into label masks: for each <stem>.geojson
(QuPath) or <stem>.xml (ImageScope) in --annotations, writes --output/<stem>.png at the size of
the image --images/<stem>.*, label values from --classes (a folder dataset's masks/). Every
file is checked before any mask is written; existing masks are kept unless --overwrite."""


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m segan_jax.annotations``: corrected annotations to label masks."""
    parser = argparse.ArgumentParser(
        prog="python -m segan_jax.annotations", description=DESCRIPTION
    )
    parser.add_argument("--images", required=True, type=pathlib.Path, help="folder of the images")
    add_arguments(parser, "folder for the masks", "replace existing masks")
    args = parser.parse_args(argv)
    try:
        written = masks_from_annotations(
            args.annotations, args.images, args.classes, args.output, args.overwrite
        )
    except datasets.DatasetError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {len(written)} mask{'s' * (len(written) != 1)} to {args.output}")
    unannotated = sorted(datasets.images_by_stem(args.images).keys() - {p.stem for p in written})
    if unannotated:
        shown = workdir_lib.first_names(unannotated)
        print(f"note: no annotations, so no mask, for {len(unannotated)} of the images: {shown}")


def add_arguments(parser: argparse.ArgumentParser, output: str, overwrite: str) -> None:
    """The arguments of the commands that read corrected annotations back: --annotations
    (also --geojson), --classes, --output (``output`` its help), --overwrite."""
    parser.add_argument(
        "--annotations",
        "--geojson",
        required=True,
        type=pathlib.Path,
        help="folder of <stem>.geojson (QuPath) or <stem>.xml (ImageScope) files",
    )
    parser.add_argument("--classes", required=True, type=pathlib.Path, help="classes.json")
    parser.add_argument("--output", required=True, type=pathlib.Path, help=output)
    parser.add_argument("--overwrite", action="store_true", help=overwrite)


if __name__ == "__main__":
    main()
