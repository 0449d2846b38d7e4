"""Predicted label maps as GeoJSON annotations, for an expert to correct in QuPath (File >
Import objects, or drag the file onto the image) instead of drawing every region anew: the
annotation step of the paper's human-in-the-loop cycle.

Coordinates are the image's pixels, x to the right and y down, with pixel (row r, column c)
covering [c, c + 1] x [r, r + 1] (QuPath's convention). Each connected region of a foreground
class becomes one Polygon feature: its outer ring, then its holes. The rings run between pixel
centres (marching squares at level 0.5, via contourpy), so a pixel belongs to the region
exactly when its centre lies inside the polygon: straight edges lie on pixel edges and corners
are cut by half a pixel.
"""

import pathlib
from collections.abc import Sequence

import contourpy
import numpy as np

from segan_jax import figures
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


def feature_collection(labels: np.ndarray, classes: Sequence[str]) -> dict:
    """A GeoJSON FeatureCollection of the (H, W) label map's regions of every class but the
    background (label 0): one Polygon annotation each, classified by class name in the colour
    the figures give it (``figures.label_palette(K, "classes")``)."""
    colours = np.rint(figures.label_palette(len(classes), "classes") * 255).astype(int).tolist()
    features = []
    for k in range(1, len(classes)):
        classification = {"name": classes[k], "color": colours[k]}
        for rings in class_polygons(labels, k):
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [r.tolist() for r in rings]},
                    "properties": {"objectType": "annotation", "classification": classification},
                }
            )
    return {"type": "FeatureCollection", "features": features}


def save_geojson(labels: np.ndarray, classes: Sequence[str], path: pathlib.Path) -> None:
    """Writes `feature_collection` of an (H, W) label map to ``path``, atomically."""
    workdir_lib.write_json(path, feature_collection(labels, classes))
