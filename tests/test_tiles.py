"""Tests for segan_jax.tiles: windows whose kept parts cover an image exactly once."""

import ml_collections
import numpy as np
import pytest

from segan_jax import tiles


@pytest.mark.parametrize("length", [1, 63, 64, 65, 100, 128, 129, 250, 1000])
@pytest.mark.parametrize("size,margin", [(64, 0), (64, 8), (64, 16), (128, 32)])
def test_kept_parts_cover_the_axis_once_with_margin_inside_each_window(length, size, margin):
    windows = tiles.axis_windows(length, size, margin)
    assert windows[0][1] == 0 and windows[-1][2] == length
    for (_, _, stop), (_, start, _) in zip(windows[:-1], windows[1:], strict=True):
        assert stop == start  # contiguous, no pixel twice
    for start, keep_start, keep_stop in windows:
        span = min(size, length)
        assert 0 <= start and start + span <= length and keep_start < keep_stop
        assert keep_start == 0 or keep_start - start >= margin
        assert keep_stop == length or start + span - keep_stop >= margin
    if length > size:  # no more windows than needed: each new one adds at least one step
        assert len(windows) == -(-(length - 2 * margin) // (size - 2 * margin))


def test_an_image_no_larger_than_a_window_is_one_window():
    (window,) = tiles.windows([(40, 48)], tiles.Tiling(64, 16))
    assert (window.top, window.left, window.height, window.width) == (0, 0, 40, 48)
    assert window.keep_rows == (0, 40) and window.keep_cols == (0, 48)


def test_stitching_the_windows_of_label_maps_gives_them_back():
    rng = np.random.default_rng(0)
    shapes = [(130, 70), (64, 200), (30, 200), (9, 9)]  # larger than a window: both, one, none
    maps = [rng.integers(0, 5, shape).astype(np.uint8) for shape in shapes]
    tiling = tiles.Tiling(48, 8)
    windows = tiles.windows([m.shape for m in maps], tiling)
    parts = [tiles.crop(maps[w.owner], w).copy() for w in windows]
    for part, w in zip(parts, windows, strict=True):  # what stitching must not keep
        (r0, r1), (c0, c1) = [v - w.top for v in w.keep_rows], [v - w.left for v in w.keep_cols]
        outside = np.ones(part.shape, bool)
        outside[r0:r1, c0:c1] = False
        part[outside] = 99
    stitched = tiles.stitch(parts, windows, [m.shape for m in maps])
    for got, want in zip(stitched, maps, strict=True):
        np.testing.assert_array_equal(got, want)
    truths = [tiles.kept_truth(maps[w.owner], w, 255) for w in windows]
    kept = sum(int((t != 255).sum()) for t in truths)
    assert kept == sum(m.size for m in maps)  # every pixel's truth in exactly one window


def test_the_config_keys_are_checked():
    eval_config = ml_collections.ConfigDict({"tile_size": 0, "tile_margin": 64})
    assert tiles.from_config(eval_config) is None
    assert tiles.from_config(ml_collections.ConfigDict()) is None  # a run saved before the keys
    eval_config.tile_size = 512
    tiling = tiles.from_config(eval_config)
    tiles.check(tiling, 8)
    for size, margin, message in [
        (
            500,
            64,
            "eval.tile_size=500 must be 0 .* multiple of the output stride 8, e.g. 496 or 504",
        ),
        (4, 0, "eval.tile_size=4 must be 0 .* stride 8, e.g. 8 or 16"),
        (256, 127, "eval.tile_margin=127 must be a whole number from 0 to a quarter of .*64"),
        (512, -1, "eval.tile_margin=-1 must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            tiles.check(tiles.Tiling(size, margin), 8)
