"""Tests for segan_jax.annotations: label maps as GeoJSON polygons (QuPath annotations)."""

import json

import numpy as np
import pytest
from matplotlib.path import Path
from PIL import Image

from segan_jax import annotations, datasets, figures


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


CLASSES = ("background", "nucleus", "gland")


def _labels() -> np.ndarray:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (30, 44)).astype(np.uint8)
    labels[3:20, 5:30] = 1
    labels[8:12, 10:14] = 2  # an island of another class in a hole
    return labels


def test_exported_regions_read_back_give_the_label_map():
    labels = _labels()
    collection = json.loads(json.dumps(annotations.feature_collection(labels, CLASSES)))
    back, problems = annotations.label_map(collection["features"], labels.shape, CLASSES)
    assert problems == [] and back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)


def test_reading_back_follows_qupaths_conventions_and_names_problems():
    square = [[[2, 2], [6, 2], [6, 5], [2, 5], [2, 2]]]  # pixels rows 2-4, columns 2-5
    features = [
        {
            "geometry": {"type": "Polygon", "coordinates": square},
            "properties": {"classification": {"name": "gland"}},
        },
        {
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [[[[4, 4], [8, 4], [8, 8], [4, 8], [4, 4]]]],
            },
            "properties": {"classification": {"name": annotations.IGNORE_CLASS}},
        },
        {"geometry": {"type": "Polygon", "coordinates": square}, "properties": {}},
        {
            "geometry": {"type": "Point", "coordinates": [1, 1]},
            "properties": {"classification": {"name": "nucleus"}},
        },
        {
            "geometry": {"type": "Polygon", "coordinates": square},
            "properties": {"classification": {"name": "Tumor"}},
        },
    ]
    features += [  # malformed: named, not a crash
        "not an object",
        {"geometry": {"type": "Polygon"}, "properties": {"classification": {"name": "gland"}}},
        {
            "geometry": {"type": "Polygon", "coordinates": []},
            "properties": {"classification": {"name": "gland"}},
        },
        {
            "geometry": {"type": "Polygon", "coordinates": [[1, 2, 3]]},
            "properties": {"classification": {"name": "gland"}},
        },
    ]
    labels, problems = annotations.label_map(features, (10, 10), CLASSES)
    expected = np.zeros((10, 10), np.uint8)
    expected[2:5, 2:6] = 2
    expected[4:8, 4:8] = 255  # a later feature wins; Ignore* marks unlabelled pixels
    np.testing.assert_array_equal(labels, expected)
    assert [p.split(":")[0] for p in problems] == [f"feature {i}" for i in range(2, 9)]
    assert "feature 2: has no classification" in problems[0]
    assert "has no classification" in problems[3]
    assert "unreadable Polygon coordinates (KeyError" in problems[4]
    assert "without an outer ring" in problems[5] and "unreadable" in problems[6]
    assert "a Point" in problems[1]
    assert "'Tumor'" in problems[2]


def test_masks_from_annotations_writes_masks_only_when_every_file_is_good(tmp_path):
    labels = _labels()
    (tmp_path / "images").mkdir()
    (tmp_path / "corrected").mkdir()
    Image.fromarray(np.zeros((*labels.shape, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    collection = annotations.feature_collection(labels, CLASSES)
    (tmp_path / "corrected" / "a.geojson").write_text(json.dumps(collection["features"]))
    (tmp_path / "classes.json").write_text(json.dumps(dict(enumerate(CLASSES))))
    args = [tmp_path / "corrected", tmp_path / "images", tmp_path / "classes.json"]
    (mask,) = annotations.masks_from_annotations(*args, tmp_path / "masks")
    np.testing.assert_array_equal(np.asarray(Image.open(mask)), labels)
    (tmp_path / "corrected" / "b.geojson").write_text("{not json")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "images" / "b.png")
    (tmp_path / "corrected" / "c.geojson").write_text("[]")  # no image c.*
    before = (tmp_path / "masks" / "a.png").read_bytes()
    with pytest.raises(datasets.DatasetError) as err:
        annotations.masks_from_annotations(*args, tmp_path / "masks")
    assert [p.split(": ")[1][:22] for p in err.value.problems] == [
        "exists already; pass -",
        "unreadable (Expecting ",
        "no image named c.<png|",
    ]
    assert (tmp_path / "masks" / "a.png").read_bytes() == before
    assert not (tmp_path / "masks" / "b.png").exists()


def test_the_command_line_names_the_problem_without_a_traceback(tmp_path, capsys):
    message = f"error: x.json: missing; .*\n{tmp_path / 'none'}: no annotation files "
    message += r"\(.geojson or ImageScope .xml\)$"
    with pytest.raises(SystemExit, match=message):
        annotations.main(
            [f"--annotations={tmp_path / 'none'}", f"--images={tmp_path}", "--classes=x.json"]
            + [f"--output={tmp_path / 'masks'}"]
        )
    labels = _labels()
    Image.fromarray(labels).save(tmp_path / "a.png")  # any image of the size will do
    (tmp_path / "a.geojson").write_text(json.dumps(annotations.feature_collection(labels, CLASSES)))
    (tmp_path / "classes.json").write_text(json.dumps(dict(enumerate(CLASSES))))
    argv = [
        f"--geojson={tmp_path}",
        f"--images={tmp_path}",
        f"--classes={tmp_path / 'classes.json'}",
    ]
    annotations.main([*argv, f"--output={tmp_path / 'masks'}"])
    out = capsys.readouterr().out
    assert f"wrote 1 mask to {tmp_path / 'masks'}" in out
    assert "note: no annotations, so no mask, for 0" not in out and "note:" not in out
    Image.fromarray(labels).save(tmp_path / "b.png")  # an image nobody annotated
    annotations.main([*argv, f"--output={tmp_path / 'masks'}", "--overwrite"])
    assert "note: no annotations, so no mask, for 1 of the images: b" in capsys.readouterr().out
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "masks" / "a.png")), labels)


def test_a_region_outside_the_image_is_named_not_dropped_silently():
    far = [[[20000, 30000], [20010, 30000], [20010, 30010], [20000, 30000]]]
    edge = [[[-5, -5], [3, -5], [3, 2], [-5, 2], [-5, -5]]]  # partly outside: clipped
    features = [
        {
            "geometry": {"type": "Polygon", "coordinates": c},
            "properties": {"classification": {"name": "gland"}},
        }
        for c in (far, edge)
    ]
    two = [[[[5, 5], [7, 5], [7, 7], [5, 7], [5, 5]]], [[[8, 8], [10, 8], [10, 9], [8, 9], [8, 8]]]]
    features.append(
        {
            "geometry": {"type": "MultiPolygon", "coordinates": two},
            "properties": {"classification": {"name": "nucleus"}},
        }
    )
    labels, problems = annotations.label_map(features, (10, 12), CLASSES)
    assert len(problems) == 1 and problems[0].startswith("feature 0: holds no pixel of the 12x10")
    assert (labels == 1).sum() == 4 + 2  # both parts of the MultiPolygon
    assert "x 20000..20010, y 30000..30010" in problems[0]
    assert (labels == 2).sum() == 6 and labels[:2, :3].all()


def test_specks_under_the_minimum_area_are_left_out():
    """Polygon areas by hand: a lone pixel 0.5 (a diamond), a 3x3 square 9 - 4 corners of 1/8
    = 8.5, less its centre pixel's diamond 8.0; only the speck falls under 1."""
    labels = np.zeros((9, 9), np.uint8)
    labels[1, 1] = 1
    labels[4:7, 4:7] = 2
    labels[5, 5] = 0
    areas = sorted(annotations.area(r) for _, r in annotations.regions(labels, 3))
    assert areas == [0.5, 8.0]
    kept = annotations.feature_collection(labels, CLASSES, min_area=1.0)["features"]
    assert [f["properties"]["classification"]["name"] for f in kept] == ["gland"]
    assert len(annotations.feature_collection(labels, CLASSES)["features"]) == 2


def test_region_annotations_mark_the_reviewed_area_the_rest_unlabelled():
    """With QuPath's Region*, pixels outside every region are unlabelled, not background;
    inside them the classes' rules hold (a region sets no class)."""

    def square(name: str, x0: int, y0: int, x1: int, y1: int) -> dict:
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        geometry = {"type": "Polygon", "coordinates": [ring]}
        return {"geometry": geometry, "properties": {"classification": {"name": name}}}

    features = [square("gland", 2, 2, 6, 5), square(annotations.REGION_CLASS, 0, 0, 5, 8)]
    features.append(square(annotations.REGION_CLASS, 8, 8, 10, 10))
    labels, problems = annotations.label_map(features, (10, 10), CLASSES)
    expected = np.full((10, 10), datasets.UNLABELLED, np.uint8)
    expected[:8, :5] = 0
    expected[8:, 8:] = 0
    expected[2:5, 2:5] = 2  # the gland's column 5 lies outside the regions
    assert problems == []
    np.testing.assert_array_equal(labels, expected)
    without, _ = annotations.label_map(features[:1], (10, 10), CLASSES)
    assert (without == datasets.UNLABELLED).sum() == 0


def test_coordinates_that_are_not_numbers_are_named():
    """Python's json reads NaN and Infinity: named, not a crash while filling."""
    features = json.loads(
        '[{"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [NaN, 0], [2, 2], [0, 0]]]},'
        ' "properties": {"classification": {"name": "gland"}}}]'
    )
    labels, problems = annotations.label_map(features, (4, 4), CLASSES)
    assert problems == ["feature 0: a Polygon with coordinates that are not finite numbers"]
    assert not labels.any()


def test_inside_centres_agrees_with_matplotlibs_point_in_polygon():
    """Random self-crossing rings (even-odd rule both), centres off their edges."""
    rng = np.random.default_rng(5)
    rows, cols = np.arange(3, 40), np.arange(-2, 50)
    yy, xx = np.meshgrid(rows + 0.5, cols + 0.5, indexing="ij")
    centres = np.stack([xx.ravel(), yy.ravel()], -1)
    for n in (3, 4, 7, 30, 200):
        ring = rng.uniform(-5, 55, (n, 2))
        ring = np.concatenate([ring, ring[:1]])
        expected = Path(ring).contains_points(centres).reshape(yy.shape)
        np.testing.assert_array_equal(annotations.inside_centres(ring, rows, cols), expected)
