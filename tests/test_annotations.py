"""Tests for segan_jax.annotations: label maps as GeoJSON polygons (QuPath annotations)."""

import json

import numpy as np
from matplotlib.path import Path

from segan_jax import annotations, figures


def rasterise(polygons: list[list[np.ndarray]], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels whose centres lie inside a polygon (its outer ring, not a hole)."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    centres = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], -1)
    out = np.zeros(shape[0] * shape[1], bool)
    for outer, *holes in polygons:
        inside = Path(outer).contains_points(centres)
        for hole in holes:
            inside &= ~Path(hole).contains_points(centres)
        out |= inside
    return out.reshape(shape)


def test_a_rectangle_runs_along_pixel_edges_with_half_pixel_corners():
    labels = np.zeros((5, 6), np.uint8)
    labels[1:3, 1:4] = 2  # rows 1-2, columns 1-3: [1, 4] x [1, 3] in pixel edges
    (polygon,) = annotations.class_polygons(labels, 2)
    (ring,) = polygon
    assert np.array_equal(ring[0], ring[-1])  # closed
    corners = {(1, 1.5), (1.5, 1), (3.5, 1), (4, 1.5), (4, 2.5), (3.5, 3), (1.5, 3), (1, 2.5)}
    assert {tuple(p) for p in ring[:-1].tolist()} == corners and len(ring) == 9


def test_polygons_hold_exactly_the_pixels_of_their_class():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (40, 50)).astype(np.uint8)  # many small regions, touching edges
    labels[5:25, 5:30] = 1
    labels[10:15, 10:15] = 0  # a hole, with an island of class 1 inside it
    labels[12, 12] = 1
    labels[30, 30] = labels[31, 31] = 2  # touching only at a corner
    for k in range(3):
        polygons = annotations.class_polygons(labels, k)
        np.testing.assert_array_equal(rasterise(polygons, labels.shape), labels == k)
    polygons = annotations.class_polygons(labels[5:25, 5:30], 1)
    (with_hole,) = [p for p in polygons if len(p) > 1]
    assert len(with_hole) == 2  # one outer ring, one hole (the island is its own polygon)
    assert annotations.class_polygons(np.zeros((4, 4), np.uint8), 1) == []


def test_the_feature_collection_classifies_each_foreground_region():
    labels = np.zeros((20, 20), np.uint8)
    labels[2:5, 2:5] = 1
    labels[10:12, 3:9] = 1
    labels[14:18, 14:18] = 2
    classes = ("background", "nucleus", "gland")
    collection = json.loads(json.dumps(annotations.feature_collection(labels, classes)))
    assert collection["type"] == "FeatureCollection"
    names = [f["properties"]["classification"]["name"] for f in collection["features"]]
    assert sorted(names) == ["gland", "nucleus", "nucleus"]  # no background
    colours = figures.label_palette(3, "classes")
    for feature in collection["features"]:
        assert feature["geometry"]["type"] == "Polygon"
        assert feature["properties"]["objectType"] == "annotation"
        classification = feature["properties"]["classification"]
        k = classes.index(classification["name"])
        np.testing.assert_allclose(
            np.array(classification["color"]) / 255, colours[k], atol=0.5 / 255
        )
    for k in (1, 2):  # the regions of a class, read back from the JSON, are its pixels
        polygons = [
            [np.array(ring) for ring in f["geometry"]["coordinates"]]
            for f in collection["features"]
            if f["properties"]["classification"]["name"] == classes[k]
        ]
        np.testing.assert_array_equal(rasterise(polygons, labels.shape), labels == k)
