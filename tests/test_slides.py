"""Tests for segan_jax.slides: slides read band by band, label TIFFs and GeoJSON streamed."""

import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest
import tifffile
from PIL import Image

from segan_jax import annotations, datasets, evaluate, input_pipeline, models, slides, tiles

CLASSES = ("background", "nucleus", "gland")
NORMALIZER = input_pipeline.Normalizer(255.0, (0.5,) * 3, (0.25,) * 3, True)


@pytest.fixture(scope="module")
def slide(tmp_path_factory, write_slide) -> tuple[pathlib.Path, np.ndarray]:
    """A 300x410 RGB slide of two levels whose red channel holds class labels 0-2 in blobs."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
    image[..., 0] = np.kron(rng.integers(0, 3, (30, 41)), np.ones((10, 10), int))
    path = tmp_path_factory.mktemp("slides") / "slide.tif"
    write_slide(path, image)
    return path, image


def _red(rows: np.ndarray) -> np.ndarray:
    """A stand-in network: the red channel as labels, (H, W, C) -> (H, W)."""
    return rows[..., 0].astype(np.uint8)


def _read_back(geojson: pathlib.Path, shape, downsample=1.0) -> tuple[np.ndarray, int]:
    """The label map of a slide's GeoJSON on a level ``downsample`` ((x, y) or both) times
    smaller, and its number of features."""
    features = json.loads(geojson.read_text())["features"]
    for f in features:
        rings = f["geometry"]["coordinates"]
        f["geometry"]["coordinates"] = [(np.asarray(r) / downsample).tolist() for r in rings]
    back, problems = annotations.label_map(features, shape, CLASSES)
    assert problems == []
    return back, len(features)


def test_a_level_is_described_from_its_header(slide):
    path, image = slide
    assert slides.full_size(path) == ((300, 410), 2)
    info = slides.slide_info(path, 1)
    assert (info.shape, info.channels, info.dtype) == ((150, 205), 3, np.uint8)
    assert info.downsample == (2.0, 2.0)
    assert slides.full_size(path.with_suffix(".png")) is None  # not TIFF-based: an image


APERIO = (
    "Aperio Image Library v12.0.15\r\n410x300 (256x256) J2K/YUV16 Q=70|AppMag = 40|MPP = 0.2520"
)


@pytest.mark.parametrize(
    "level0,microns",
    [
        ({"description": APERIO}, (0.252, 0.252)),
        (  # an Aperio MPP that is no number: the resolution tags say it
            {
                "description": "Aperio Image |MPP = .",
                "resolution": (40000, 40000),
                "resolutionunit": "CENTIMETER",
            },
            (0.25, 0.25),
        ),
        ({"ome": True, "metadata": {"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.26}}, (0.26, 0.25)),
        ({"resolution": (40000, 20000), "resolutionunit": "CENTIMETER"}, (0.5, 0.25)),  # (x, y)
        ({"resolution": (101600, 101600), "resolutionunit": "INCH"}, (0.25, 0.25)),
        (
            {
                "ome": True,
                "metadata": {
                    "PhysicalSizeX": 500,
                    "PhysicalSizeXUnit": "nm",
                    "PhysicalSizeY": 500,
                    "PhysicalSizeYUnit": "nm",
                },
            },
            (0.5, 0.5),
        ),
        ({"resolution": (72, 72), "resolutionunit": "INCH"}, None),  # a writer's default
        ({"resolution": (600, 600), "resolutionunit": "INCH"}, None),  # 42 µm: one too
        ({"resolution": (40000, 40000), "resolutionunit": "NONE"}, None),
        ({"resolution": (7, 7), "resolutionunit": "CENTIMETER"}, None),  # made 0/0 below
        ({}, None),
    ],
    ids=[
        "aperio",
        "aperio-no-mpp",
        "ome",
        "centimetre",
        "inch",
        "ome-nm",
        "72dpi",
        "600dpi",
        "no-unit",
        "0/0",
        "none",
    ],
)
def test_a_slides_pixel_size_is_read_from_its_header(tmp_path, write_slide, level0, microns):
    path = tmp_path / "s.tif"
    write_slide(path, np.zeros((300, 410, 3), np.uint8), levels=3, **level0)
    if level0.get("resolution") == (7, 7):  # 0/0, "unknown" to some writers
        with tifffile.TiffFile(path) as tif:
            offsets = [tif.pages.first.tags[t].valueoffset for t in ("XResolution", "YResolution")]
        with open(path, "r+b") as file:
            for offset in offsets:
                file.seek(offset)
                file.write(bytes(8))
    level = slides.slide_info(path, 1)
    assert level.microns == (pytest.approx(microns) if microns else None)
    assert level.downsamples == (1.0, 410 / 205, 410 / 103)
    if microns:
        assert level.level_microns() == pytest.approx(microns[1] * 2)
        assert level.level_microns(0) == pytest.approx(microns[1])


def test_the_level_closest_to_a_pixel_size_is_opened(tmp_path, write_slide):
    path = tmp_path / "s.tif"
    microns = {"resolution": (40000, 40000), "resolutionunit": "CENTIMETER"}  # 0.25 µm
    write_slide(path, np.zeros((300, 410, 3), np.uint8), levels=3, **microns)
    assert slides.slide_info_closest(path, 0.5).level == 1
    assert slides.slide_info_closest(path, 0.9).level == 2  # 1.0 (by ratio; 0.5 by difference)
    assert slides.slide_info_closest(path, 0.2).level == 0
    write_slide(path, np.zeros((300, 410, 3), np.uint8), levels=3)
    with pytest.raises(datasets.FormatError, match="says no usable pixel size .* 72 dpi"):
        slides.slide_info_closest(path, 0.5)


def test_a_slide_level_of_other_pixels_than_the_runs_gets_a_note_naming_the_closest():
    info = slides.SlideInfo(pathlib.Path("s.svs"), 0, (8, 8), 3, np.uint8, (1.0, 1.0))
    info = dataclasses.replace(info, microns=(0.25, 0.25), downsamples=(1.0, 2.0, 4.0))
    assert slides.resolution_note(info, 0.27) == ""  # within 10 %
    assert slides.resolution_note(info, 0.0) == ""  # the run's not known
    assert slides.resolution_note(dataclasses.replace(info, microns=None), 0.5) == ""
    note = slides.resolution_note(info, 0.5)
    assert note.startswith("note: s.svs level 0 has pixels of 0.25 µm, the run's images 0.5 µm")
    assert "level 1 has 0.5 µm (predict.slide_level)" in note
    note = slides.resolution_note(info, 0.75)  # no level has it: level 0 in 3x3 blocks does
    assert "level 2 has 1 µm (predict.slide_level); level 0 in 3x3 blocks would match (" in note
    assert "level 2 has 1 µm" in slides.resolution_note(info, 1.8)
    assert "level 1 has 0.5 µm" in slides.resolution_note(info, 0.36)  # by ratio: 0.25 is nearer
    level2 = dataclasses.replace(info, level=2)
    assert "level 0 has 0.25 µm" in slides.resolution_note(level2, 0.1)
    assert "no level is closer" in slides.resolution_note(level2, 3.0)


@pytest.mark.parametrize("size,margin", [(128, 16), (64, 0), (512, 64)])
def test_bands_cover_the_level_once_and_the_label_tiff_holds_them(slide, tmp_path, size, margin):
    path, image = slide
    with slides.open_level(path, 0) as (info, array):
        bands = list(slides.band_labels(array, info, tiles.Tiling(size, margin), _red))
        tops = [top for top, _ in bands]
        assert tops[0] == 0 and all(
            a + len(b) == c for (a, b), c in zip(bands[:-1], tops[1:], strict=True)
        )
        np.testing.assert_array_equal(np.concatenate([b for _, b in bands]), image[..., 0])
        slides.write_label_tiff(tmp_path / "labels.tif", iter(bands), info.shape)
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        assert (
            tif.pages[0].is_tiled and tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        )
        np.testing.assert_array_equal(tif.asarray(), image[..., 0])
    assert not (tmp_path / "labels.tif.tmp").exists()


def test_a_slide_predicted_band_by_band_equals_the_whole_image_in_windows(slide, tmp_path):
    """The bands' windows are the tiling's windows of the whole image: the same labels."""
    path, image = slide
    model = models.DeepLabV3(num_classes=3, depth=18, width=8, aspp_features=16)
    variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
    tiling = tiles.Tiling(128, 16)

    def predict(rows):
        return evaluate.predict_all(model, variables, [rows], NORMALIZER, tiling=tiling)[0]

    slides.predict_slide(path, 0, tiling, predict, tmp_path / "slide.tif")
    whole = evaluate.predict_all(model, variables, [image], NORMALIZER, tiling=tiling)[0]
    assert len(np.unique(whole)) > 1  # something to compare
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "slide.tif"), whole)


@pytest.mark.parametrize("level", [0, 1])
def test_slide_geojson_is_in_full_resolution_pixels_and_reads_back(
    slide, tmp_path, monkeypatch, level
):
    """Regions cut where runs of columns meet come as several polygons; every pixel centre
    still lies in the one of its class, so reading the annotations back (at level 0 scaled
    down to the level) gives the label TIFF."""
    monkeypatch.setattr(slides, "GEOJSON_COLUMNS", 96)
    path, _ = slide
    target, geojson = tmp_path / "slide.tif", tmp_path / "slide.geojson"
    kept: list[dict] = []  # the features written, also handed back (predict.imagescope)
    info = slides.predict_slide(
        path, level, tiles.Tiling(64, 8), _red, target, (geojson, CLASSES), features=kept
    )
    labels = tifffile.imread(target)
    assert labels.shape == info.shape and len(np.unique(labels)) == 3
    assert json.loads(geojson.read_text())["features"] == kept
    back, count = _read_back(geojson, labels.shape, 2**level)
    np.testing.assert_array_equal(back, labels)
    assert count > len(annotations.feature_collection(labels, CLASSES)["features"])  # cut


def test_a_failed_prediction_leaves_no_label_map_or_geojson(slide, tmp_path):
    path, _ = slide
    calls = []

    def failing(rows):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return _red(rows)

    target, geojson = tmp_path / "slide.tif", tmp_path / "slide.geojson"
    with pytest.raises(RuntimeError, match="device lost"):
        slides.predict_slide(path, 0, tiles.Tiling(64, 8), failing, target, (geojson, CLASSES))
    assert sorted(tmp_path.iterdir()) == []  # neither outputs nor their .tmp files


def test_progress_is_reported_band_by_band_and_the_label_tiff_names_its_source(slide, tmp_path):
    path, _ = slide
    done = []
    info = slides.predict_slide(
        path, 1, tiles.Tiling(64, 8), _red, tmp_path / "s.tif", report=lambda i, r: done.append(r)
    )
    assert done == sorted(done) and done[-1] == info.shape[0] == 150 and len(done) > 2
    with tifffile.TiffFile(tmp_path / "s.tif") as tif:
        described = json.loads(tif.pages[0].description)
    assert described | {"source": "slide.tif", "level": 1, "downsample": [2.0, 2.0]} == described


def test_unusable_slides_are_named_with_the_problem(slide, tmp_path):
    path, image = slide
    with pytest.raises(
        datasets.FormatError, match=r"has 2 level\(s\) \(0: 300x410, 1: 150x205\); level 2 was"
    ):
        slides.slide_info(path, 2)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(image, -1, 0), photometric="minisblack")
    assert slides.full_size(tmp_path / "planar.tif") == ((300, 410), 1)  # large: a slide, then
    with pytest.raises(datasets.FormatError, match="layout"):
        slides.slide_info(tmp_path / "planar.tif", 0)
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", tile=(64, 64))
    with pytest.raises(datasets.FormatError, match="alpha"):
        slides.slide_info(tmp_path / "rgba.tif", 0)
    (tmp_path / "bad.svs").write_bytes(b"not a TIFF")
    with pytest.raises(datasets.FormatError, match="not a readable"):
        slides.slide_info(tmp_path / "bad.svs", 0)
    data = path.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) * 2 // 3])  # a copy cut short
    with pytest.raises(datasets.FormatError, match="truncated: level 0's image data end at"):
        slides.slide_info(tmp_path / "cut.tif", 0)


def test_a_damaged_tile_is_named_with_the_file_and_its_rows(slide, tmp_path):
    """Complete but corrupt image data: found when its band is decoded, named with the rows."""
    path, _ = slide
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[-1]  # the last tile of level 0
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = b"\xff" * 64  # not zlib any more
    (tmp_path / "damaged.tif").write_bytes(bytes(data))
    message = r"damaged.tif: rows 236 to 299 of level 0 unreadable"
    with pytest.raises(datasets.DatasetError, match=message):
        slides.predict_slide(
            tmp_path / "damaged.tif", 0, tiles.Tiling(64, 8), _red, tmp_path / "o.tif"
        )
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "o.tif.tmp").exists()


def test_geojson_scales_columns_and_rows_by_their_own_downsample(tmp_path):
    """A level 4 times narrower and 2 times shorter than level 0: x scaled by 4, y by 2."""
    labels = np.kron(np.random.default_rng(1).integers(0, 3, (6, 5)), np.ones((7, 9), int))
    labels = labels.astype(np.uint8)  # 42 x 45
    with slides.GeoJSONWriter(tmp_path / "a.geojson", CLASSES, (2.0, 4.0)) as writer:
        writer.add(0, labels[:20])
        writer.add(20, labels[20:])
    features = json.loads((tmp_path / "a.geojson").read_text())["features"]
    xs = np.concatenate([np.asarray(f["geometry"]["coordinates"][0])[:, 0] for f in features])
    assert xs.max() > 2 * labels.shape[1]  # x in level-0 pixels
    back, _ = _read_back(tmp_path / "a.geojson", labels.shape, np.array([4.0, 2.0]))
    np.testing.assert_array_equal(back, labels)


def test_an_uncompressed_slide_is_memory_mapped_not_read_whole(slide, tmp_path):
    path, image = slide
    tifffile.imwrite(tmp_path / "plain.tif", image, photometric="rgb")  # one strip
    with slides.open_level(tmp_path / "plain.tif", 0) as (info, array):
        assert isinstance(array, np.memmap) and info.shape == (300, 410)
        window = slides.read_window(array, info, (100, 20), (50, 30))
        np.testing.assert_array_equal(window, image[100:150, 20:50])


def test_regions_across_bands_come_whole(slide, tmp_path):
    """Held back at a band's last row and traced with the next, every region is one polygon:
    as many as the whole map's, reading back to it."""
    path, image = slide
    geojson = tmp_path / "s.geojson"
    slides.predict_slide(path, 0, tiles.Tiling(64, 8), _red, tmp_path / "s.tif", (geojson, CLASSES))
    back, count = _read_back(geojson, image.shape[:2])
    np.testing.assert_array_equal(back, image[..., 0])
    assert count == len(annotations.feature_collection(image[..., 0], CLASSES)["features"])


def test_a_region_taller_than_the_carry_is_cut_there_alone(tmp_path, monkeypatch):
    """A 100-row stripe of class 1 with MAX_CARRY_ROWS 30: cut into pieces, which still read
    back; the class-2 blobs across every band edge beside it come whole."""
    monkeypatch.setattr(slides, "MAX_CARRY_ROWS", 30)
    labels = np.zeros((100, 20), np.uint8)
    labels[:, 5:9] = 1
    for edge in range(10, 100, 10):
        labels[edge - 2 : edge + 2, 12:15] = 2
    with slides.GeoJSONWriter(tmp_path / "a.geojson", CLASSES, (1.0, 1.0)) as writer:
        for top in range(0, 100, 10):
            writer.add(top, labels[top : top + 10])
    back, _ = _read_back(tmp_path / "a.geojson", labels.shape)
    np.testing.assert_array_equal(back, labels)
    features = json.loads((tmp_path / "a.geojson").read_text())["features"]
    names = [f["properties"]["classification"]["name"] for f in features]
    assert 2 <= names.count("nucleus") <= 5 and names.count("gland") == 9


def test_specks_are_left_out_of_a_slides_geojson_once_whole(tmp_path):
    """The minimum area applies to whole regions: a 4-pixel region split over two bands (each
    half 1.5 in area) is kept at a minimum of 2, a lone pixel is not."""
    labels = np.zeros((10, 10), np.uint8)
    labels[4:6, 2:4] = 1  # rows 4-5: across the bands' edge at row 5
    labels[8, 8] = 2
    with slides.GeoJSONWriter(tmp_path / "a.geojson", CLASSES, (1.0, 1.0), 2.0) as writer:
        writer.add(0, labels[:5])
        writer.add(5, labels[5:])
    features = json.loads((tmp_path / "a.geojson").read_text())["features"]
    assert [f["properties"]["classification"]["name"] for f in features] == ["nucleus"]


def test_an_images_pixel_size_is_read_from_its_tiff_tags_or_print_resolution(tmp_path):
    """TIFF resolution tags (as slides'), a PNG's pHYs and a JPEG's density in dpi; a
    writer's default (72 dpi), none, or an unreadable file: not known."""
    pixels = np.zeros((20, 30, 3), np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", pixels, resolution=(40000, 40000), resolutionunit=3)
    Image.fromarray(pixels).save(tmp_path / "b.png", dpi=(50800, 50800))  # 0.5 µm
    Image.fromarray(pixels).save(tmp_path / "c.jpg", dpi=(25400, 25400))  # 1 µm
    Image.fromarray(pixels).save(tmp_path / "d.png", dpi=(72, 72))
    Image.fromarray(pixels).save(tmp_path / "e.png")
    (tmp_path / "f.png").write_bytes(b"not an image")
    found = [slides.image_microns(tmp_path / n) for n in ("a.tif", "b.png", "c.jpg")]
    assert found == pytest.approx([0.25, 0.5, 1.0], rel=1e-3)  # PNG's pHYs: whole dots a metre
    assert [slides.image_microns(tmp_path / n) for n in ("d.png", "e.png", "f.png")] == [None] * 3


def test_block_means_are_hand_computed_and_any_window_of_them_reads_the_same(
    tmp_path, write_slide, monkeypatch
):
    """Each block is the mean of its f x f pixels rounded half up (rows and columns past
    the last whole block left out); a window of a level opened in blocks equals that window
    of the whole level's block means, read a few columns at a time."""
    pixels = np.array([[0, 1, 2, 9], [3, 5, 250, 255], [7, 7, 7, 7]], np.uint8)[..., None]
    assert slides.block_means(pixels[:2], 2)[..., 0].tolist() == [[2, 129]]  # 2.25, 129.0
    assert slides.block_means(pixels[:1, :2], 1).tolist() == [[[0], [1]]]
    assert slides.block_means(np.array([[1, 2], [1, 2]], np.uint8), 2).tolist() == [[2]]  # 1.5
    deep = np.full((4, 4), 60_000, np.uint16)
    deep[0, 0] = 0
    assert slides.block_means(deep, 4).tolist() == [[56250]] and deep.dtype == np.uint16
    image = np.random.default_rng(0).integers(0, 256, (203, 301, 3), np.uint8)
    path = tmp_path / "s.tif"
    write_slide(path, image, levels=2, resolution=(40000, 40000), resolutionunit="CENTIMETER")
    monkeypatch.setattr(slides, "BLOCK_COLUMNS", 7)  # 2 blocks of 3 a read
    whole = slides.block_means(image[:201, :300], 3)  # (67, 100, 3)
    with slides.open_level(path, 0, 3) as (info, array):
        assert (info.shape, info.downsample, info.factor) == ((67, 100), (3.0, 3.0), 3)
        assert info.level_microns() == pytest.approx(0.75) and info.level_microns(0) == 0.25
        assert info.view() == "level 0 in 3x3 blocks"
        np.testing.assert_array_equal(slides.read_window(array, info, (0, 0), (67, 100)), whole)
        window = slides.read_window(array, info, (5, 11), (20, 40))
        np.testing.assert_array_equal(window, whole[5:25, 11:51])
    with pytest.raises(datasets.FormatError, match=r"level 1 \(102x151\) is smaller than one"):
        slides.slide_info(path, 1, 103)
    write_slide(path, image.astype(np.int16), levels=1)
    with pytest.raises(datasets.FormatError, match="pixel type int16 not supported"):
        slides.slide_info(path, 0, 2)  # named before any sum of its pixels


def test_the_closest_view_reads_a_level_in_blocks_only_where_no_level_matches():
    """A 40x scan (0.25 µm) of levels 4x apart: 20x (0.5) is level 0 in 2x2 blocks; 10x is
    level 1 itself, not level 0 in 4x4 blocks (fewer pixels read); 0.7 µm is level 0 in
    3x3 blocks (0.75, within 10 %); without blocks, the closest level by ratio."""
    info = slides.SlideInfo(pathlib.Path("s.svs"), 0, (8, 8), 3, np.uint8, (1.0, 1.0))
    info = dataclasses.replace(info, microns=(0.25, 0.25), downsamples=(1.0, 4.0, 16.0))
    assert slides.closest_view(info, 0.5, most=8) == (0, 2)
    assert slides.closest_view(info, 1.0, most=8) == (1, 1)
    assert slides.closest_view(info, 0.7, most=8) == (0, 3)
    assert slides.closest_view(info, 40.0, most=8) == (2, 8)  # 32 µm: none near, the closest
    assert slides.closest_view(info, 0.7) == (1, 1)  # 1.0 is closer than 0.25 by ratio
    # 2.3 µm: none near; 2 µm both as level 1 in 2x2 and level 0 in 8x8: the fewer pixels
    assert slides.closest_view(info, 2.3, most=8) == (1, 2)
    assert slides.closest_level(info, 0.36) == 0


def test_an_image_is_read_in_the_blocks_whose_pixels_match_the_runs():
    """f x f blocks within 10 % of the run's pixel (the smaller where two are); 1 where the
    pixels match already, are wider, or no whole f is near."""
    assert slides.block_factor(0.25, 0.5) == 2 and slides.block_factor(0.125, 0.5) == 4
    assert slides.block_factor(0.17, 0.5) == 3  # 0.51 µm
    # 7 (0.462, -7.6 %) and 8 (0.528, +5.6 %) both match: the smaller, as closest_view's
    assert slides.block_factor(0.066, 0.5) == 7 and slides.block_factor(0.07, 0.5) == 7
    assert slides.block_factor(0.062, 0.5) == 8 and slides.block_factor(0.062, 0.5, most=7) == 1
    for width in (0.5, 0.53, 1.0, 0.35, 0.01):
        assert slides.block_factor(width, 0.5) == 1, width


def test_an_images_blocks_cover_every_pixel_and_expand_back_to_its_size():
    """The last row and column are repeated to fill the last blocks (a 5x3 image in 2x2:
    3x2 blocks); each block's label lands on each of its pixels, cut to the image's size."""
    pixels = np.arange(15, dtype=np.uint8).reshape(5, 3, 1) * 10
    blocks = slides.image_block_means(pixels, 2)
    padded = np.pad(pixels[..., 0], ((0, 1), (0, 1)), mode="edge").astype(float)
    means = padded.reshape(3, 2, 2, 2).mean(axis=(1, 3))
    np.testing.assert_array_equal(blocks[..., 0], np.floor(means + 0.5))
    assert blocks.dtype == np.uint8 and blocks[2, 1, 0] == 140  # one pixel, four times
    labels = np.array([[1, 2], [3, 4], [5, 6]], np.uint8)
    expanded = slides.expand_labels(labels, 2, (5, 3))
    assert expanded.tolist() == [[1, 1, 2], [1, 1, 2], [3, 3, 4], [3, 3, 4], [5, 5, 6]]
    deep = np.random.default_rng(0).integers(0, 65536, (16, 24, 3), np.uint16)
    assert slides.image_block_means(deep, 4).shape == (4, 6, 3)  # whole blocks: as block_means
    np.testing.assert_array_equal(slides.image_block_means(deep, 4), slides.block_means(deep, 4))
