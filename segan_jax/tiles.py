"""Images too large for the device in one piece (whole-slide regions), cut into overlapping
windows for evaluation and prediction: each window's centre is kept, the kept parts cover the
image exactly once, and every kept pixel has at least ``margin`` pixels of the window's
context on each side that has image there.

Predictions of a window depend on its context (the convolutions see ``margin`` pixels beyond
the kept part; the ASPP's image-pooling branch sees the whole window), so a tiled prediction
is close to, not equal to, the whole image's. An image no larger than the window is one window:
exactly the untiled prediction.
"""

import dataclasses
from collections.abc import Sequence

import ml_collections
import numpy as np


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Windows of ``size`` x ``size`` pixels whose kept parts lie ``margin`` pixels or more
    inside them (where the image goes on)."""

    size: int
    margin: int


@dataclasses.dataclass(frozen=True)
class Window:
    """One window of image ``owner``: rows ``[top, top + height)``, columns ``[left, left +
    width)``; of its prediction, rows ``keep_rows`` and columns ``keep_cols`` (image
    coordinates, ``(start, stop)``) are kept."""

    owner: int
    top: int
    left: int
    height: int
    width: int
    keep_rows: tuple[int, int]
    keep_cols: tuple[int, int]


def from_config(eval_config: ml_collections.ConfigDict) -> Tiling | None:
    """The tiling of ``eval.tile_size`` and ``eval.tile_margin``; None when the size is 0
    (whole images; also runs saved before the keys existed)."""
    size = eval_config.get("tile_size", 0)
    return Tiling(size, eval_config.get("tile_margin", 0)) if size else None


def check(tiling: Tiling | None, output_stride: int) -> None:
    """Raises ValueError naming the key when ``tiling`` cannot be used."""
    if tiling is None:
        return
    size = tiling.size
    if not isinstance(size, int) or size < output_stride or size % output_stride:
        below = (
            max(size // output_stride * output_stride, output_stride)
            if isinstance(size, int)
            else 0
        )
        raise ValueError(
            f"eval.tile_size={size!r} must be 0 (whole images) or a multiple of the output "
            f"stride {output_stride}"
            + (f", e.g. {below} or {below + output_stride}" if below else "")
        )
    margin = tiling.margin
    if not isinstance(margin, int) or not 0 <= margin <= size // 4:
        raise ValueError(
            f"eval.tile_margin={margin!r} must be a whole number from 0 to a quarter of "
            f"eval.tile_size ({size // 4}): each window keeps at least half its side, so no image "
            "is cut into more than about four times its area in windows"
        )


def axis_windows(length: int, size: int, margin: int) -> list[tuple[int, int, int]]:
    """``(start, keep_start, keep_stop)`` of the windows ``[start, start + size)`` along an
    axis of ``length`` pixels: starts ``size - 2 margin`` apart, the last one flush with the
    end; each boundary between kept parts mid-way in the overlap of two neighbours. One window
    ``(0, 0, length)`` when ``length <= size``."""
    if length <= size:
        return [(0, 0, length)]
    starts = [*range(0, length - size, size - 2 * margin), length - size]
    bounds = [0, *[(a + size + b) // 2 for a, b in zip(starts[:-1], starts[1:], strict=True)]]
    bounds.append(length)
    return [(s, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def windows(shapes: Sequence[tuple[int, int]], tiling: Tiling) -> list[Window]:
    """The windows of images of ``shapes`` ((H, W) each), image by image, row-major."""
    out = []
    for owner, (h, w) in enumerate(shapes):
        rows = axis_windows(h, tiling.size, tiling.margin)
        cols = axis_windows(w, tiling.size, tiling.margin)
        height, width = min(h, tiling.size), min(w, tiling.size)
        for top, *keep_rows in rows:
            for left, *keep_cols in cols:
                window = Window(owner, top, left, height, width, tuple(keep_rows), tuple(keep_cols))
                out.append(window)
    return out


def cut(images: Sequence[np.ndarray], tiling: Tiling) -> tuple[list[Window], list[np.ndarray]]:
    """The `windows` of (H, W, ...) images and each window's part of its image (views)."""
    found = windows([image.shape[:2] for image in images], tiling)
    return found, [crop(images[w.owner], w) for w in found]


def crop(array: np.ndarray, window: Window) -> np.ndarray:
    """The window's (height, width, ...) part of an (H, W, ...) array (a view)."""
    return array[window.top : window.top + window.height, window.left : window.left + window.width]


def kept_truth(mask: np.ndarray, window: Window, ignore_index: int) -> np.ndarray:
    """The window's part of an (H, W) mask, ``ignore_index`` outside its kept part: the sum of
    the windows' confusion matrices is the stitched prediction's."""
    out = np.full((window.height, window.width), ignore_index, mask.dtype)
    rows, cols = _kept(window)
    out[rows, cols] = crop(mask, window)[rows, cols]
    return out


def stitch(
    labels: Sequence[np.ndarray], windows_: Sequence[Window], shapes: Sequence[tuple[int, int]]
) -> list[np.ndarray]:
    """(H, W) label maps of images of ``shapes`` from their windows' (height, width) labels."""
    out = [np.zeros(shape, np.uint8) for shape in shapes]
    for window, part in zip(windows_, labels, strict=True):
        rows, cols = _kept(window)
        crop(out[window.owner], window)[rows, cols] = part[rows, cols]
    return out


def _kept(window: Window) -> tuple[slice, slice]:
    """The kept part as slices of the window."""
    (r0, r1), (c0, c1) = window.keep_rows, window.keep_cols
    return slice(r0 - window.top, r1 - window.top), slice(c0 - window.left, c1 - window.left)
