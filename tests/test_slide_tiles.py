"""Tests for segan_jax.slide_tiles: corrected slide annotations cut into training tiles."""

import json
import pathlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from segan_jax import annotations, datasets, imagescope, slide_tiles, slides, workdir

CLASSES = ("background", "nucleus", "gland")


@pytest.fixture
def slide(tmp_path, write_slide) -> tuple[pathlib.Path, np.ndarray]:
    """slides/s.tif, a 300x410 RGB slide of two levels whose red channel holds class labels
    0-2 in 10x10 blobs, its GeoJSON of those labels (corrected/s.geojson) and classes.json."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
    image[..., 0] = np.kron(rng.integers(0, 3, (30, 41)), np.ones((10, 10), int))
    for folder in ("slides", "corrected"):
        (tmp_path / folder).mkdir()
    write_slide(tmp_path / "slides" / "s.tif", image)
    annotations.save_geojson(image[..., 0], CLASSES, tmp_path / "corrected" / "s.geojson")
    workdir.write_json(tmp_path / "classes.json", dict(enumerate(CLASSES)))
    return tmp_path, image


def _cut(root: pathlib.Path, **options) -> list[str]:
    return slide_tiles.tiles_from_slides(
        root / "slides", root / "corrected", root / "classes.json", root / "train", **options
    )


def _read(root: pathlib.Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(root / "train" / "images" / f"{name}.png"))
    return image, np.asarray(Image.open(root / "train" / "masks" / f"{name}.png"))


def _features(labels: np.ndarray, extra: list[dict] = ()) -> dict:
    return {
        "type": "FeatureCollection",
        "features": [*annotations.features(labels, CLASSES), *extra],
    }


def _rectangle(name: str, x0: float, y0: float, x1: float, y1: float) -> dict:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"classification": {"name": name}},
    }


def test_tiles_are_the_slide_and_its_annotations_on_a_grid_ending_at_its_edges(slide):
    root, image = slide
    names = _cut(root, tile_size=128)
    rows, cols = (0, 128, 172), (0, 128, 256, 282)  # the last square ends at the edge
    assert names == [f"s_L0_x{c}_y{r}" for r in rows for c in cols]
    assert {datasets.slide_of(name) for name in names} == {"s"}  # evaluation's slide groups
    for r in rows:
        for c in cols:
            tile, mask = _read(root, f"s_L0_x{c}_y{r}")
            np.testing.assert_array_equal(tile, image[r : r + 128, c : c + 128])
            np.testing.assert_array_equal(mask, image[r : r + 128, c : c + 128, 0])
    assert sorted(p.name for p in (root / "train").iterdir()) == ["images", "masks"]  # no staging


def test_a_lower_level_is_cut_in_its_own_pixels_and_named_in_full_resolution_ones(slide):
    root, image = slide
    names = _cut(root, level=1, tile_size=64)  # level 1: 150x205
    assert names[:2] == ["s_L1_x0_y0", "s_L1_x128_y0"] and len(names) == 3 * 4
    tile, mask = _read(root, "s_L1_x282_y172")  # level pixels (86, 141)
    np.testing.assert_array_equal(tile, image[::2, ::2][86:150, 141:205])
    np.testing.assert_array_equal(mask, image[::2, ::2, 0][86:150, 141:205])


def test_only_squares_an_annotation_reaches_are_cut(slide):
    root, image = slide
    labels = np.zeros(image.shape[:2], np.uint8)
    labels[140:150, 300:320] = 2  # rows of the square at 128 only; columns of 256's and 282's
    (root / "corrected" / "s.geojson").write_text(json.dumps(_features(labels)))
    assert _cut(root, tile_size=128) == ["s_L0_x256_y128", "s_L0_x282_y128"]
    _, mask = _read(root, "s_L0_x282_y128")
    np.testing.assert_array_equal(mask, labels[128:256, 282:410])


def test_with_region_annotations_only_the_reviewed_area_is_cut_and_labelled(slide, capsys):
    root, image = slide
    region = _rectangle(annotations.REGION_CLASS, 20, 30, 100, 140)  # x 20-99, y 30-139
    collection = _features(image[..., 0], [region])
    (root / "corrected" / "s.geojson").write_text(json.dumps(collection))
    assert _cut(root, tile_size=128) == ["s_L0_x0_y0", "s_L0_x0_y128"]
    in_tiles = [  # the regions with a pixel in rows 0-255, columns 0-127
        annotations.label_map([f], image.shape[:2], CLASSES)[0][:256, :128].any()
        for f in collection["features"]
    ]
    out = capsys.readouterr().out
    total, unused = len(in_tiles), len(in_tiles) - sum(in_tiles)
    assert f"note: {unused} of the {total} annotations of s.geojson hold no pixel" in out
    _, mask = _read(root, "s_L0_x0_y128")
    expected = np.full((128, 128), datasets.UNLABELLED, np.uint8)
    expected[:12, 20:100] = image[128:140, 20:100, 0]
    np.testing.assert_array_equal(mask, expected)


def test_every_problem_is_named_before_anything_is_written(slide):
    root, image = slide
    bad = _features(image[..., 0], [_rectangle("Tumour", 1, 1, 5, 5)])
    bad["features"].append(_rectangle("gland", 5000, 100, 5010, 110))
    (root / "corrected" / "s.geojson").write_text(json.dumps(bad))
    (root / "corrected" / "lost.geojson").write_text("{}")
    (root / "corrected" / "broken.geojson").write_text("{")
    tifffile.imwrite(root / "slides" / "broken.tif", image[:8, :8], photometric="rgb")
    with pytest.raises(datasets.DatasetError) as err:
        _cut(root, level=1, tile_size=0)
    text = str(err.value)
    assert "tile size must be a whole number of pixels above 0, not 0" in text
    assert "lost.geojson: no slide named lost.<svs|ndpi|tif|tiff>" in text
    assert "broken.geojson: unreadable" in text and "broken.tif: has 1 level(s)" in text
    assert "'Tumour' is not one of" in text
    assert f"feature {len(bad['features']) - 1}: lies outside the 410x300 slide (x 5000" in text
    assert not (root / "train").exists()


def test_tiles_already_there_are_kept_unless_overwrite_replaces_them_all(slide):
    root, image = slide
    assert len(_cut(root, tile_size=128)) == 12
    labels = np.zeros(image.shape[:2], np.uint8)
    labels[:10, :10] = 1
    (root / "corrected" / "s.geojson").write_text(json.dumps(_features(labels)))
    with pytest.raises(datasets.DatasetError, match="holds 12 tiles of s.tif at level 0"):
        _cut(root, tile_size=128)
    assert len(list((root / "train" / "masks").iterdir())) == 12
    assert _cut(root, tile_size=128, overwrite=True) == ["s_L0_x0_y0"]
    for sub in ("images", "masks"):  # none stale is left
        assert [p.name for p in (root / "train" / sub).iterdir()] == ["s_L0_x0_y0.png"]


def test_a_damaged_tile_stops_the_cut_and_leaves_the_output_as_it_was(slide):
    root, _ = slide
    Image.new("L", (4, 4)).save(root / "keep.png")
    (root / "train" / "masks").mkdir(parents=True)
    (root / "keep.png").rename(root / "train" / "masks" / "other.png")
    path = root / "slides" / "s.tif"
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[-1]  # level 0's last tile: rows 256-299, cols 384-409
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(datasets.DatasetError, match="rows 172 to 299, columns 282 to 409"):
        _cut(root, tile_size=128)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["masks"]
    assert [p.name for p in (root / "train" / "masks").iterdir()] == ["other.png"]


def test_the_tiles_make_a_folder_dataset_and_the_command_says_what_it_wrote(slide, capsys):
    root, _ = slide
    argv = [f"--slides={root / 'slides'}", f"--geojson={root / 'corrected'}"]
    argv += [f"--classes={root / 'classes.json'}", "--tile_size=150"]
    for split in ("train", "test"):
        slide_tiles.main([*argv, f"--output={root / split}"])
    out = capsys.readouterr().out
    assert "s.tif: 6 tile(s) of 150x150 at level 0" in out
    assert f"wrote 6 tiles (images/ and masks/) to {root / 'test'}" in out
    datasets.validate_folder(root)  # raises on any problem
    with pytest.raises(SystemExit, match="holds 6 tiles of s.tif"):
        slide_tiles.main([*argv, f"--output={root / 'test'}"])


def test_slides_of_other_magnifications_at_the_level_are_noted(slide, write_slide, capsys):
    root, image = slide
    cm = {"resolutionunit": "CENTIMETER"}
    write_slide(root / "slides" / "s.tif", image, resolution=(40000, 40000), **cm)  # 0.25 µm
    write_slide(root / "slides" / "t.tif", image, resolution=(20000, 20000), **cm)  # 0.5 µm
    (root / "corrected" / "t.geojson").write_text((root / "corrected" / "s.geojson").read_text())
    _cut(root, tile_size=150, level=1)
    out = capsys.readouterr().out
    assert "s.tif: 2 tile(s) of 150x150 at level 1, 0.5 µm per pixel" in out
    assert "t.tif: 2 tile(s) of 150x150 at level 1, 1 µm per pixel" in out
    said = "note: the slides' pixels as cut differ (s.tif 0.5 µm, t.tif 1 µm): one split"
    assert said in out


def test_slides_of_several_magnifications_cut_at_one_pixel_size(slide, write_slide, capsys):
    """--microns: each slide's level closest to the pixel width, or a level read in blocks
    where no level has it (their tiles named L<level>b<blocks>)."""
    root, image = slide
    cm = {"resolutionunit": "CENTIMETER"}
    write_slide(root / "slides" / "s.tif", image, resolution=(40000, 40000), **cm)  # 0.25 µm
    write_slide(root / "slides" / "t.tif", image, resolution=(20000, 20000), **cm)  # 0.5 µm
    (root / "corrected" / "t.geojson").write_text((root / "corrected" / "s.geojson").read_text())
    names = _cut(root, tile_size=150, microns=0.5)
    assert {n.rsplit("_x", 1)[0] for n in names} == {"s_L1", "t_L0"}
    out = capsys.readouterr().out
    assert "s.tif: 2 tile(s) of 150x150 at level 1, 0.5 µm per pixel" in out
    assert "t.tif: 6 tile(s) of 150x150 at level 0, 0.5 µm per pixel" in out
    assert "differ" not in out
    names = _cut(root, tile_size=64, microns=1.0)  # s: level 1 in 2x2 blocks; t: level 1
    assert {n.rsplit("_x", 1)[0] for n in names} == {"s_L1b2", "t_L1"}
    assert "s_L1b2_x152_y0" in names and datasets.slide_of("s_L1b2_x152_y0") == "s"
    tile, mask = _read(root, "s_L1b2_x152_y0")  # blocks 38-101 of 75x102: level-0 x 152
    level1 = image[::2, ::2]  # the slide's level 1, 150x205
    np.testing.assert_array_equal(tile, slides.block_means(level1[:128, 76:204], 2))
    assert tile.shape == (64, 64, 3) and mask.shape == (64, 64)
    said = "s.tif: 4 tile(s) of 64x64 at level 1 in 2x2 blocks, 1 µm per pixel"
    assert said in capsys.readouterr().out
    # An annotation in level 0's last two columns, beyond level 1's last 2x2 block: no pixel
    # of a tile, not outside the slide.
    edge = {"type": "Polygon", "coordinates": [[[408, 0], [410, 0], [410, 5], [408, 5], [408, 0]]]}
    geojson = json.loads((root / "corrected" / "s.geojson").read_text())
    geojson["features"].append(
        {"type": "Feature", "geometry": edge, "properties": {"classification": {"name": "gland"}}}
    )
    (root / "corrected" / "s.geojson").write_text(json.dumps(geojson))
    _cut(root, tile_size=64, microns=1.0, overwrite=True)
    assert "note: 1 of the " in capsys.readouterr().out
    write_slide(root / "slides" / "t.tif", image)  # says no pixel size
    with pytest.raises(datasets.DatasetError, match="t.tif: says no usable pixel size .* --level"):
        _cut(root, tile_size=64, microns=1.0, overwrite=True)
    for bad in (-1.0, float("nan")):
        with pytest.raises(datasets.DatasetError, match="--microns must be a pixel width") as err:
            _cut(root, tile_size=64, microns=bad)
        assert "holds" not in str(err.value)  # no level checked: only that problem
    with pytest.raises(datasets.DatasetError, match="--microns=100.0: over 10 µm a pixel"):
        _cut(root, tile_size=64, microns=100.0)  # nanometres, say
    write_slide(root / "slides" / "t.tif", image, resolution=(20000, 20000), **cm)  # 0.5 µm
    _cut(root, tile_size=64, microns=10.0, overwrite=True)  # 8x8 blocks of level 1: 8 µm
    said = "note: no level of these slides, whole or in blocks of up to 8x8, is within 10 % of"
    assert f"{said} --microns=10: s.tif 4 µm, t.tif 8 µm" in capsys.readouterr().out


def test_imagescope_xml_annotations_cut_the_same_tiles(slide):
    root, image = slide
    geojson = root / "corrected" / "s.geojson"
    features = json.loads(geojson.read_text())["features"]
    imagescope.save_xml(features, CLASSES, root / "corrected" / "s.xml")
    geojson.unlink()
    assert len(_cut(root, tile_size=128)) == 12
    _, mask = _read(root, "s_L0_x282_y172")
    np.testing.assert_array_equal(mask, image[172:300, 282:410, 0])


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_swap_stopped_halfway_is_undone(slide, monkeypatch, overwrite):
    """Ctrl-C while the tiles are moved into place: the output is as it was."""
    root, image = slide
    if overwrite:
        _cut(root, tile_size=128)
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("train/*/*")}
    replace, calls = pathlib.Path.replace, []

    def stopped(self, target):
        calls.append(self)
        if len(calls) == 15:  # old tiles set aside (with overwrite), some new ones moved in
            raise KeyboardInterrupt
        return replace(self, target)

    monkeypatch.setattr(pathlib.Path, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        _cut(root, tile_size=128, overwrite=overwrite)
    monkeypatch.undo()
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("train/*/*")}
    assert after == before and len(calls) > 15
    assert (root / "train").exists() == overwrite  # made for the cut, removed with it


def test_a_square_the_bounds_reach_but_no_pixel_is_not_cut(slide):
    """A diagonal of pixels (c, c), c = 100..156: its bounding box reaches four squares, its
    pixels lie in two."""
    root, image = slide
    ring = [[100, 99.5], [157, 156.5], [157, 157.5], [100, 100.5], [100, 99.5]]
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"classification": {"name": "gland"}},
    }
    (root / "corrected" / "s.geojson").write_text(json.dumps([feature]))
    assert _cut(root, tile_size=128) == ["s_L0_x0_y0", "s_L0_x128_y128"]


@pytest.mark.parametrize("channels, dtype", [(2, np.uint8), (3, np.uint16), (1, np.uint16)])
def test_other_pixel_types_and_channels_give_tiff_tiles_the_datasets_read(
    tmp_path, write_slide, channels, dtype
):
    rng = np.random.default_rng(1)
    image = rng.integers(0, np.iinfo(dtype).max, (200, 150, channels)).astype(dtype)
    for folder in ("slides", "corrected"):
        (tmp_path / folder).mkdir()
    tifffile.imwrite(
        tmp_path / "slides" / "s.tif",
        image if channels > 1 else image[..., 0],
        photometric="rgb" if channels == 3 else "minisblack",
        planarconfig="contig",
        tile=(64, 64),
    )
    labels = np.zeros((200, 150), np.uint8)
    labels[10:20, 10:20] = 1
    annotations.save_geojson(labels, CLASSES, tmp_path / "corrected" / "s.geojson")
    workdir.write_json(tmp_path / "classes.json", dict(enumerate(CLASSES)))
    assert _cut(tmp_path, tile_size=64) == ["s_L0_x0_y0"]
    tile = datasets.read_image(tmp_path / "train" / "images" / "s_L0_x0_y0.tif")
    np.testing.assert_array_equal(tile.reshape(64, 64, channels), image[:64, :64])


def test_a_slide_of_floats_is_refused_before_anything_is_cut(slide):
    root, image = slide
    tifffile.imwrite(root / "slides" / "s.tif", image.astype(np.float32), photometric="rgb")
    with pytest.raises(datasets.DatasetError, match="s.tif: pixel type float32 not supported"):
        _cut(root, tile_size=128)
    assert not (root / "train").exists()


def test_another_slides_annotations_give_a_few_lines_not_one_per_feature(slide):
    root, image = slide
    features = annotations.features(image[..., 0], CLASSES)
    for f in features:  # every coordinate 5000 pixels off: another slide's
        f["geometry"]["coordinates"] = [
            (np.asarray(r) + 5000).tolist() for r in f["geometry"]["coordinates"]
        ]
    (root / "corrected" / "s.geojson").write_text(json.dumps(features))
    with pytest.raises(datasets.DatasetError) as err:
        _cut(root, tile_size=128)
    assert len(err.value.problems) == annotations.MAX_FILE_PROBLEMS + 1
    more = len(features) - annotations.MAX_FILE_PROBLEMS
    assert err.value.problems[-1].endswith(f"s.geojson: ... and {more} more")


def test_notes_and_progress_say_what_the_cut_leaves_out_and_how_far_it_is(
    slide, capsys, monkeypatch
):
    root, image = slide
    tifffile.imwrite(root / "slides" / "bare.tif", image[:10, :10], photometric="rgb")
    _cut(root, level=1, tile_size=64)
    monkeypatch.setattr(slide_tiles, "PROGRESS_S", 0.0)
    _cut(root, tile_size=128)
    out = capsys.readouterr().out
    assert out.count("note: no annotations, so no tiles, for 1 of the slides: bare") == 2
    assert "holds tiles of s.tif at level 1 too: with these of level 0, one split of two" in out
    assert "s.tif: squares 11/12 | 11 tiles | ETA" in out


def test_ctrl_c_says_the_output_is_as_it_was(slide, capsys, monkeypatch):
    root, _ = slide

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(slide_tiles, "tiles_from_slides", interrupted)
    argv = [f"--slides={root / 'slides'}", f"--annotations={root / 'corrected'}"]
    argv += [f"--classes={root / 'classes.json'}", f"--output={root / 'train'}"]
    with pytest.raises(SystemExit) as stop:
        slide_tiles.main(argv)
    assert stop.value.code == 130
    assert f"stopped (Ctrl-C): {root / 'train'} is as it was" in capsys.readouterr().err


def test_a_square_inside_a_regions_hole_is_not_cut(slide):
    """A Region* ring: the square wholly in its hole holds none of its pixels."""
    root, image = slide
    outer = [[0, 0], [410, 0], [410, 300], [0, 300], [0, 0]]
    hole = [[120, 120], [270, 120], [270, 270], [120, 270], [120, 120]]  # holds x/y 128-255
    region = _rectangle(annotations.REGION_CLASS, 0, 0, 1, 1)
    region["geometry"]["coordinates"] = [outer, hole]
    (root / "corrected" / "s.geojson").write_text(json.dumps([region]))
    names = _cut(root, tile_size=128)
    assert "s_L0_x128_y128" not in names and len(names) == 11


def test_ctrl_c_after_the_swap_keeps_the_tiles_it_put_in_place(slide, monkeypatch):
    root, _ = slide
    rmtree, calls = slide_tiles.shutil.rmtree, []

    def stopped(path, ignore_errors=False):
        calls.append(path)
        if len(calls) == 1:  # removing the hidden folder once the tiles are in place
            raise KeyboardInterrupt
        rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(slide_tiles.shutil, "rmtree", stopped)
    assert len(_cut(root, tile_size=128)) == 12
    assert len(list((root / "train" / "masks").iterdir())) == 12
    assert sorted(p.name for p in (root / "train").iterdir()) == ["images", "masks"]
