"""Tests for segan_jax.inference's pure parts (whole runs: tests/test_workflow.py)."""

import pathlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from segan_jax import inference, slides


def test_input_files_are_the_folders_visible_images_sorted(tmp_path: pathlib.Path):
    for name in ("b.TIF", "a.png", "._a.png", ".hidden.png", "notes.txt", "Thumbs.db"):
        (tmp_path / name).write_bytes(b"not read here")
    (tmp_path / "c.png").mkdir()
    assert inference.input_files(tmp_path) == [tmp_path / "a.png", tmp_path / "b.TIF"]
    assert inference.input_files(tmp_path / "._a.png") == [tmp_path / "._a.png"]  # named


def test_a_folder_of_hidden_files_alone_has_no_images(tmp_path: pathlib.Path):
    (tmp_path / "._a.png").write_bytes(b"AppleDouble")
    with pytest.raises(FileNotFoundError, match="no images"):
        inference.input_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither an image file nor a folder"):
        inference.input_files(tmp_path / "absent")


def test_slides_are_large_tiffs_or_the_pyramid_level_asked_for(tmp_path: pathlib.Path):
    """A small TIFF with a reduced-resolution page (a thumbnail) is an image at level 0 and
    a slide only when predict.slide_level asks for that level; a large TIFF is a slide."""
    image = np.zeros((64, 96, 3), np.uint8)
    with tifffile.TiffWriter(tmp_path / "small.tif") as tif:
        tif.write(image, subifds=1, photometric="rgb")
        tif.write(image[::2, ::2], subfiletype=1, photometric="rgb")
    assert not inference._is_slide(tmp_path / "small.tif", 10_000, 0)
    assert inference._is_slide(tmp_path / "small.tif", 10_000, 1)
    assert not inference._is_slide(tmp_path / "small.tif", 10_000, 2)  # no such level
    assert inference._is_slide(tmp_path / "small.tif", 1_000, 0)  # 6,144 pixels: large
    (tmp_path / "a.svs").write_bytes(b"any")
    assert inference._is_slide(tmp_path / "a.svs", 10_000, 0)
    assert not inference._is_slide(tmp_path / "a.png", 1, 1)


def test_the_fallbacks_of_later_predict_keys_are_the_default_configs_values():
    """A config that lacks a predict.* key added later behaves as configs/default.py."""
    from configs import default

    config = default.get_config()
    for key, value in inference.PREDICT_FALLBACKS.items():
        assert config.predict[key] == value and type(config.predict[key]) is type(value), key


def _resampled():
    """configs/default.py's config with predict.resample at predict.slide_level -1, 0.5 µm."""
    from configs import default

    config = default.get_config()
    config.predict.slide_level, config.predict.resample = -1, True
    config.predict.microns_per_pixel = 0.5
    return config


def test_images_of_other_pixels_than_the_runs_are_noted_in_one_line_each_kind(tmp_path):
    """Images (not slides) over 10 % off predict.microns_per_pixel are named with their pixel
    width (with predict.resample those read in blocks apart); those whose files do not say,
    as not checked."""
    pixels = np.zeros((8, 8, 3), np.uint8)
    for name, dpi in (("a.png", 50800), ("b.png", 101600), ("c.png", 55000), ("d.png", None)):
        Image.fromarray(pixels).save(tmp_path / name, **({"dpi": (dpi, dpi)} if dpi else {}))
    widths = {f.name: slides.image_microns(f) for f in sorted(tmp_path.iterdir())}
    other, unknown = inference._image_resolution_notes(widths, 0.5)
    assert other.startswith("note: 1 of 4 image(s) have pixels other than the run's images' 0.5")
    assert "magnification than it learned: b.png 0.25 µm; rescale them to the run's" in other
    assert other.endswith(
        "(with predict.slide_level=-1 a pyramidal TIFF is predicted at its closest level, "
        "and with predict.resample=True too an image 2 to 8 times finer in blocks)"
    )
    assert unknown.endswith(
        "say no usable pixel size: not checked against predict.microns_per_pixel: d.png"
    )
    assert inference._image_resolution_notes({"a.png": 0.5}, 0.5) == []  # nothing to say
    # With predict.resample: b (0.25 µm) is read in 2x2 blocks; c (0.46 µm) is within 10 %.
    Image.fromarray(pixels).save(tmp_path / "e.png", dpi=(36000, 36000))  # 0.706 µm: wider
    widths = {f.name: slides.image_microns(f) for f in sorted(tmp_path.iterdir())}
    blocks = {n: inference._blocks(_resampled(), w) for n, w in widths.items()}  # b: 2
    read, other, unknown = inference._image_resolution_notes(widths, 0.5, blocks)
    assert read == (
        "note: 1 of 5 image(s) are read in blocks, each block's mean one pixel, as the run's "
        "images' 0.5 µm (predict.resample); their label maps keep the images' size: "
        "b.png 0.25 µm in 2x2"
    )
    assert "than it learned: e.png 0.706 µm; rescale them" in other
    assert other.endswith("(predict.resample reads in blocks only images 2 to 8 times finer)")
    # Without it, blocks are suggested only where they would match: not for e alone.
    (other,) = inference._image_resolution_notes({"e.png": widths["e.png"]}, 0.5)
    assert other.endswith(
        "(with predict.slide_level=-1 a pyramidal TIFF is predicted at its closest level)"
    )
