"""Tests for segan_jax.imagescope: annotations as Aperio ImageScope XML, to and from GeoJSON."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from segan_jax import annotations, datasets, figures, imagescope

CLASSES = ("background", "nucleus", "gland")


def _labels() -> np.ndarray:
    """A gland ring whose hole holds a nucleus and a gland island (a region of the ring's class
    inside its hole), beside random blobs of both classes."""
    labels = np.kron(np.random.default_rng(3).integers(0, 3, (6, 4)), np.ones((5, 5), int))
    labels = np.pad(labels.astype(np.uint8), ((0, 0), (0, 30)))
    labels[2:26, 24:48] = 2
    labels[6:22, 28:44] = 0
    labels[8:12, 30:34] = 1
    labels[15:19, 36:40] = 2  # inside the ring's hole: must not be cut by it
    return labels


def test_a_label_map_reads_back_from_its_xml_pixel_for_pixel(tmp_path):
    labels = _labels()
    features = annotations.features(labels, CLASSES)
    imagescope.save_xml(features, CLASSES, tmp_path / "a.xml")
    back, problems = annotations.label_map(
        imagescope.read_xml(tmp_path / "a.xml", CLASSES), labels.shape, CLASSES
    )
    assert problems == []
    np.testing.assert_array_equal(back, labels)


def test_a_slides_pixel_size_is_imagescopes_microns_per_pixel(tmp_path):
    features = annotations.features(_labels(), CLASSES)
    imagescope.save_xml(features, CLASSES, tmp_path / "a.xml", microns_per_pixel=0.252)
    imagescope.save_xml(features, CLASSES, tmp_path / "b.xml")
    assert ET.parse(tmp_path / "a.xml").getroot().attrib == {"MicronsPerPixel": "0.252"}
    assert ET.parse(tmp_path / "b.xml").getroot().attrib == {}  # not known: not said
    read = [imagescope.read_xml(tmp_path / f"{n}.xml", CLASSES) for n in "ab"]
    assert read[0] == read[1]


def test_each_class_is_a_layer_and_each_hole_a_negative_region(tmp_path):
    labels = np.zeros((10, 12), np.uint8)
    labels[1:8, 1:8] = 2
    labels[3:5, 3:5] = 0  # the gland's hole
    imagescope.save_xml(annotations.features(labels, CLASSES), CLASSES, tmp_path / "a.xml")
    root = ET.parse(tmp_path / "a.xml").getroot()
    (layer,) = root.findall("Annotation")  # no nucleus: no layer
    assert (layer.get("Name"), layer.get("Id")) == ("gland", "2")
    r, g, b = figures.class_colours(3)[2]
    assert layer.get("LineColor") == str(r + 256 * g + 65536 * b)
    regions = layer.findall("Regions/Region")
    assert [region.get("NegativeROA") for region in regions] == ["0", "1"]
    vertices = regions[1].findall("Vertices/Vertex")
    xs = [float(v.get("X")) for v in vertices]
    assert min(xs) == 3 and max(xs) == 5 and vertices[0].attrib == vertices[-1].attrib


def _xml(layers: str) -> str:
    return f'<?xml version="1.0"?><Annotations>{layers}</Annotations>'


def _region(points, negative=0, kind=0) -> str:
    vertices = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in points)
    return (
        f'<Region Type="{kind}" NegativeROA="{negative}"><Vertices>{vertices}</Vertices></Region>'
    )


def test_reading_follows_imagescopes_conventions_and_names_other_shapes(tmp_path):
    square = [(1, 1), (7, 1), (7, 7), (1, 7)]  # not closed: ImageScope's own files are not
    hole = [(3, 3), (5, 3), (5, 5), (3, 5)]
    elsewhere = [(8, 8), (10, 8), (10, 10), (8, 10)]  # a negative region in no positive one
    layers = f'<Annotation Id="2"><Regions>{_region(square)}{_region(hole, 1)}'
    layers += f"{_region(elsewhere, 1)}</Regions></Annotation>"
    rectangle = _region([(0, 0), (2, 0), (2, 1), (0, 1)], kind=1)
    ellipse = _region([(0, 0), (3, 3)], kind=2)
    broken = '<Region Type="0"><Vertices><Vertex X="a" Y="1"/></Vertices></Region>'
    layers += f'<Annotation Id="7" Name="nucleus"><Regions>{rectangle}{ellipse}{broken}'
    layers += "</Regions></Annotation>"
    layers += f'<Annotation Id="9"><Regions>{rectangle}</Regions></Annotation>'
    (tmp_path / "a.xml").write_text(_xml(layers))
    features = imagescope.read_xml(tmp_path / "a.xml", CLASSES)
    labels, problems = annotations.label_map(features, (12, 12), CLASSES)
    expected = np.zeros((12, 12), np.uint8)
    expected[1:7, 1:7] = 2  # unnamed layer of Id 2: the gland
    expected[3:5, 3:5] = 0
    expected[0, 0:2] = 1  # a rectangle is a polygon; the layer's Name wins over its Id
    np.testing.assert_array_equal(labels, expected)
    assert len(problems) == 3  # each named by its layer and region
    assert problems[0].startswith("layer 'nucleus' (Id 7), Region number 2: a Region of Type 2")
    assert "(an ellipse), not a Polygon" in problems[0]
    assert problems[1].startswith("layer 'nucleus' (Id 7), Region number 3: a Region with unr")
    assert problems[2].startswith("layer '' (Id 9), Region number 1: class '(unnamed layer of")


def test_a_negative_region_across_a_region_cuts_it(tmp_path):
    """A negative strip across a positive one, no vertex inside it, and far coordinates kept
    to the pixel (a slide over 100,000 pixels wide)."""
    x = 123456.5
    strip = [(x, 2), (x + 10, 2), (x + 10, 4), (x, 4)]  # rows 2-3
    across = [(x + 4, 0), (x + 6, 0), (x + 6, 6), (x + 4, 6)]  # columns x + 4, x + 5
    layers = f'<Annotation Id="1"><Regions>{_region(strip)}{_region(across, 1)}</Regions>'
    (tmp_path / "a.xml").write_text(_xml(layers + "</Annotation>"))
    features = imagescope.read_xml(tmp_path / "a.xml", CLASSES)
    for f in features:
        f["geometry"]["coordinates"] = [
            (np.asarray(r) - (x, 0)).tolist() for r in f["geometry"]["coordinates"]
        ]
    labels, problems = annotations.label_map(features, (6, 12), CLASSES)
    expected = np.zeros((6, 12), np.uint8)
    expected[2:4, 0:10] = 1
    expected[2:4, 4:6] = 0
    assert problems == []
    np.testing.assert_array_equal(labels, expected)
    features[0]["geometry"]["coordinates"][0][0][0] = x  # written as exactly as read
    imagescope.save_xml(features, CLASSES, tmp_path / "b.xml")
    again = imagescope.read_xml(tmp_path / "b.xml", CLASSES)
    assert again[0]["geometry"]["coordinates"][0][0][0] == x


def test_files_that_are_not_imagescope_xml_are_named(tmp_path):
    (tmp_path / "a.xml").write_text("<Annotations><Annotation>")
    (tmp_path / "b.xml").write_text('<?xml version="1.0"?><svg></svg>')
    with pytest.raises(datasets.FormatError, match="unreadable XML"):
        imagescope.read_xml(tmp_path / "a.xml", CLASSES)
    with pytest.raises(datasets.FormatError, match="its root is <svg>, not <Annotations>"):
        imagescope.read_xml(tmp_path / "b.xml", CLASSES)


def test_masks_come_from_xml_as_from_geojson_and_one_file_per_image(tmp_path):
    labels = _labels()
    for folder in ("images", "corrected"):
        (tmp_path / folder).mkdir()
    Image.fromarray(labels).save(tmp_path / "images" / "a.png")
    features = annotations.features(labels, CLASSES)
    imagescope.save_xml(features, CLASSES, tmp_path / "corrected" / "a.xml")
    (tmp_path / "classes.json").write_text(json.dumps(dict(enumerate(CLASSES))))
    args = [tmp_path / "corrected", tmp_path / "images", tmp_path / "classes.json"]
    (mask,) = annotations.masks_from_annotations(*args, tmp_path / "masks")
    np.testing.assert_array_equal(np.asarray(Image.open(mask)), labels)
    (tmp_path / "corrected" / "a.geojson").write_text(json.dumps(features))
    with pytest.raises(datasets.DatasetError, match="a.geojson and a.xml annotate the same image"):
        annotations.masks_from_annotations(*args, tmp_path / "masks", overwrite=True)


def test_degenerate_regions_are_named_or_left_out_not_a_crash(tmp_path):
    """A positive region of one point is a problem; a negative one of none cuts nothing."""
    layers = f'<Annotation Name="gland"><Regions>{_region([(1, 1)])}'
    layers += f"{_region([(0, 0), (6, 0), (6, 6), (0, 6)])}{_region([], 1)}</Regions></Annotation>"
    (tmp_path / "a.xml").write_text(_xml(layers))
    features = imagescope.read_xml(tmp_path / "a.xml", CLASSES)
    labels, problems = annotations.label_map(features, (8, 8), CLASSES)
    assert len(problems) == 1 and "without an outer ring of 3 points or more" in problems[0]
    assert (labels[:6, :6] == 2).all() and labels.sum() == 2 * 36


def test_a_region_in_a_hole_of_its_class_goes_in_a_further_layer(tmp_path):
    """ImageScope takes a negative region out of every region of its layer: the gland island
    in the ring's hole is written in a second gland layer, which the hole does not cut."""
    imagescope.save_xml(annotations.features(_labels(), CLASSES), CLASSES, tmp_path / "a.xml")
    layers = ET.parse(tmp_path / "a.xml").getroot().findall("Annotation")
    assert [(a.get("Name"), a.get("Id")) for a in layers][-1] == ("gland", "1002")
    (island,) = layers[-1].findall("Regions/Region")
    xs = [float(v.get("X")) for v in island.findall("Vertices/Vertex")]
    assert 36 <= min(xs) and max(xs) <= 40  # columns 36-39
    for layer in layers:  # read by Id alone, as the cycle's own scripts name layers
        del layer.attrib["Name"]
    root = ET.Element("Annotations")
    root.extend(layers)
    ET.ElementTree(root).write(tmp_path / "b.xml")
    features = imagescope.read_xml(tmp_path / "b.xml", CLASSES)
    back, problems = annotations.label_map(features, _labels().shape, CLASSES)
    assert problems == []
    np.testing.assert_array_equal(back, _labels())


def test_a_negative_region_erases_every_region_of_its_layer_under_it(tmp_path):
    """An expert's negative rectangle over two nuclei, one wholly inside, one across its edge."""
    inside, across = [(2, 2), (4, 2), (4, 4), (2, 4)], [(6, 2), (10, 2), (10, 4), (6, 4)]
    erase = [(1, 1), (8, 1), (8, 6), (1, 6)]
    regions = _region(inside) + _region(across) + _region(erase, 1)
    (tmp_path / "a.xml").write_text(
        _xml(f'<Annotation Id="1"><Regions>{regions}</Regions></Annotation>')
    )
    features = imagescope.read_xml(tmp_path / "a.xml", CLASSES)
    labels, problems = annotations.label_map(features, (8, 12), CLASSES)
    expected = np.zeros((8, 12), np.uint8)
    expected[2:4, 8:10] = 1
    assert problems == []  # the nucleus erased whole is no problem
    np.testing.assert_array_equal(labels, expected)
