"""Annotations as Aperio ImageScope XML, the format the paper's human-in-the-loop cycle corrected
its predictions in (Lutnick et al. 2019), converted to and from this package's GeoJSON features
(`annotations`), so that whatever reads GeoJSON reads XML too.

Each class is one annotation layer (``<Annotation Name="<class>" Id="<label value>">``), each
region one polygon ``<Region>`` of ``<Vertex X= Y=/>`` (the first repeated last), and a
region's holes are regions of its layer marked ``NegativeROA="1"``. A negative region takes its
area out of every region of its layer, as ImageScope draws it: so a region lying in a hole of
another of its class goes in a further layer of that class (Id + 1000). Coordinates are those
of the GeoJSON: the slide's full-resolution pixels, pixel edges at whole numbers.

Reading: a layer's class is its ``Name``, or, when it has none, the class whose label value is
its ``Id`` (the cycle's original convention); a negative region cuts every region of its
layer; rectangles (Type 1) are read as polygons, other shapes (ellipses, arrows, rulers) are
named as problems.
"""

import pathlib
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

import numpy as np
from matplotlib.path import Path

from segan_jax import datasets, figures
from segan_jax import workdir as workdir_lib

POLYGON, RECTANGLE = "0", "1"  # ImageScope's Region Type of a freehand polygon, a rectangle
SHAPES = {"2": "an ellipse", "3": "an arrow", "4": "a ruler", "5": "a point"}


def save_xml(
    features: Sequence[dict],
    classes: Sequence[str],
    path: pathlib.Path,
    microns_per_pixel: float | None = None,
) -> None:
    """Writes GeoJSON Polygon features classified by name in ``classes`` (`annotations`'
    features; others left out) as ImageScope XML, atomically: one layer per class that has any,
    and a further one of that class for each depth of regions lying in another's hole
    (`_depths`), so that no hole, a negative region of its layer, cuts them. With
    ``microns_per_pixel`` (a level-0 pixel's width, the coordinates' unit) the Annotations
    element says it as ImageScope's MicronsPerPixel (its lengths and areas in micrometres)."""
    layers: dict[tuple[str, int], list[list]] = {}
    for name in classes:
        polygons = [
            f["geometry"]["coordinates"]
            for f in features
            if f["properties"]["classification"]["name"] == name
        ]
        for polygon, depth in zip(polygons, _depths(polygons), strict=True):
            layers.setdefault((name, depth), []).append(polygon)
    colours = figures.class_colours(len(classes))
    with workdir_lib.atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as file:
        scale = f' MicronsPerPixel="{microns_per_pixel:.6g}"' if microns_per_pixel else ""
        file.write(f'<?xml version="1.0" encoding="utf-8"?>\n<Annotations{scale}>\n')
        for (name, depth), polygons in sorted(layers.items(), key=lambda kv: kv[0][1]):
            k = classes.index(name)
            _write_layer(file, (k + LAYER_STRIDE * depth, name, colours[k]), polygons)
        file.write("</Annotations>\n")


# Layer Ids: a class's label value, plus this for each depth of regions in another's hole.
LAYER_STRIDE = 1000


def _depths(polygons: Sequence[list]) -> list[int]:
    """For each polygon (rings as nested lists, outer first) how many holes of the others it
    lies in (its first vertex does): 0 for all but islands in a hole of their own class. Hole
    by hole, over the first vertices in its bounding box."""
    if not polygons:
        return []
    depths = np.zeros(len(polygons), int)
    firsts = np.array([rings[0][0] for rings in polygons], np.float64)
    order = np.argsort(firsts[:, 0], kind="stable")
    xs = firsts[order, 0]
    for rings in polygons:
        for ring in rings[1:]:
            hole = np.asarray(ring, np.float64)
            (x0, y0), (x1, y1) = hole.min(0), hole.max(0)
            near = order[np.searchsorted(xs, x0) : np.searchsorted(xs, x1, "right")]
            near = near[(firsts[near, 1] >= y0) & (firsts[near, 1] <= y1)]
            if near.size:
                depths[near] += Path(hole).contains_points(firsts[near])
    return depths.tolist()


def _write_layer(file, layer: tuple[int, str, list[int]], polygons: list[list]) -> None:
    """One layer ((Id, class name, RGB colour)): each polygon's outer ring a region, its holes
    negative ones."""
    value, name, (r, g, b) = layer
    colour = r + 256 * g + 65536 * b  # a Windows COLORREF, 0x00BBGGRR
    attributes = f'Id="{value}" Name={quoteattr(name)} Type="4" Visible="1" LineColor="{colour}"'
    file.write(f"<Annotation {attributes}>\n")
    file.write("<Regions>\n")
    region = 0
    for rings in polygons:
        for j, ring in enumerate(rings):
            region += 1
            file.write(f'<Region Id="{region}" Type="0" NegativeROA="{int(j > 0)}"><Vertices>')
            file.write("".join(f'<Vertex X="{float(x)!r}" Y="{float(y)!r}"/>' for x, y in ring))
            file.write("</Vertices></Region>\n")
    file.write("</Regions>\n</Annotation>\n")


def read_xml(path: pathlib.Path, classes: Sequence[str]) -> list[dict]:
    """The GeoJSON features (Polygons classified by name) of an ImageScope XML file, layer by
    layer (`save_xml`'s format; the module's reading rules). Parsed as a stream, each region
    let go once read: a slide's file of millions of vertices is never held as XML elements.
    Raises datasets.FormatError when the file is not ImageScope XML."""
    features, regions, root = [], [], None
    try:
        for event, element in ET.iterparse(path, events=("start", "end")):
            if root is None:
                root = element
                if root.tag != "Annotations":
                    raise datasets.FormatError(
                        f"not ImageScope XML: its root is <{root.tag}>, not <Annotations>"
                    )
            elif event == "start" and element.tag == "Annotation":
                regions = []
            elif event == "end" and element.tag == "Region":
                regions.append(_region(element, len(regions) + 1))
                element.clear()
            elif event == "end" and element.tag == "Annotation":
                features += _layer_features(element, regions, classes)
                element.clear()
    except (ET.ParseError, OSError) as err:
        raise datasets.FormatError(f"unreadable XML ({err})") from err
    return features


# A region read: (its name, its Type, whether it is negative, its closed (N, 2) ring or None).
Region = tuple[str, str, bool, np.ndarray | None]


def _region(element: ET.Element, number: int) -> Region:
    """The `Region` of a <Region> element, the ``number``-th of its layer (its name where it
    has no Id)."""
    name = f"Id {element.get('Id')}" if element.get("Id") else f"number {number}"
    negative = element.get("NegativeROA") == "1"
    return name, element.get("Type", POLYGON), negative, _vertices(element)


def _layer_features(
    layer: ET.Element, regions: Sequence[Region], classes: Sequence[str]
) -> list[dict]:
    """The features of one layer's regions: the positive ones, each with the negative ones it
    cuts; regions of other shapes or unreadable vertices as features of that kind
    (problems)."""
    name = layer.get("Name") or _class_of_id(layer.get("Id"), classes)
    positive, negative, features = [], [], []
    for region, kind, is_negative, ring in regions:
        where = f"layer {layer.get('Name') or ''!r} (Id {layer.get('Id')}), Region {region}"
        if kind not in (POLYGON, RECTANGLE):
            shape = SHAPES.get(kind, "an unknown shape")
            features.append(_feature(name, f"Region of Type {kind} ({shape})", [], where))
        elif ring is None:
            features.append(_feature(name, "Region with unreadable vertices", [], where))
        elif is_negative:
            negative.append(ring)
        else:
            positive.append((ring, where))
    negative = [ring for ring in negative if len(ring) > 3]  # 3 points or more, and closed
    boxes = np.array([[*r.min(0), *r.max(0)] for r in negative]).reshape(-1, 4)
    for outer, where in positive:
        holes = _holes(outer, negative, boxes) if len(outer) > 3 else []
        features.append(_feature(name, "Polygon", [outer, *holes], where))
    return features


def _holes(outer: np.ndarray, negative: list[np.ndarray], boxes: np.ndarray) -> list[np.ndarray]:
    """The negative rings (bounding ``boxes``, (N, 4) x0, y0, x1, y1) whose box meets
    ``outer``'s: every one that may cut it (one that misses it cuts nothing)."""
    (x0, y0), (x1, y1) = outer.min(0), outer.max(0)
    near = (boxes[:, 0] <= x1) & (boxes[:, 2] >= x0) & (boxes[:, 1] <= y1) & (boxes[:, 3] >= y0)
    return [negative[j] for j in np.flatnonzero(near)]


def _class_of_id(value: str | None, classes: Sequence[str]) -> str:
    """The class whose label value is a layer's Id; else a name no class has, for the
    problem message."""
    if value is not None and value.isdigit() and 0 < int(value) % LAYER_STRIDE < len(classes):
        return classes[int(value) % LAYER_STRIDE]  # a further layer's too (`save_xml`)
    return f"(unnamed layer of Id {value})"


def _vertices(region: ET.Element) -> np.ndarray | None:
    """(N, 2) float64 (x, y) of a region's vertices, closed (first repeated last); None when
    one is missing or not a finite number."""
    try:
        points = [(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")]
    except (TypeError, ValueError):
        return None
    ring = np.array(points, np.float64).reshape(-1, 2)
    if not np.isfinite(ring).all():
        return None
    if len(ring) and not np.array_equal(ring[0], ring[-1]):
        ring = np.concatenate([ring, ring[:1]])
    return ring


def _feature(name: str, kind: str, rings: list[np.ndarray], where: str) -> dict:
    """A GeoJSON feature of class ``name``; ``where`` (its layer and region) names it in
    problems (`annotations.feature_name`)."""
    return {
        "type": "Feature",
        "geometry": {"type": kind, "coordinates": [r.tolist() for r in rings]},
        "properties": {"classification": {"name": name}, "source": where},
    }
