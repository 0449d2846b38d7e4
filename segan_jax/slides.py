"""Whole-slide images (Aperio SVS, Hamamatsu NDPI, pyramidal or tiled TIFF) predicted region by
region: a slide of 100,000 x 80,000 pixels (24 GB as RGB) is never read whole.

The slide is read one band of rows at a time (a window's height, the whole width; through
tifffile's Zarr store, which decodes only the TIFF tiles a region touches), each band predicted
in overlapping windows (`tiles`, the same windows as for a whole image, so the labels are
those of `evaluate.predict_all` with that tiling), and its kept rows written out at once:

- a label map as a tiled, zlib-compressed single-channel TIFF (``<stem>.tif``, the class index
  of each pixel of the level predicted);
- with GeoJSON, each band's regions as QuPath annotations (`annotations`), in the slide's
  full-resolution (level 0) pixels, so they land on the slide in QuPath. A region reaching
  into the next band is held back until it ends (`GeoJSONWriter`); one taller than
  `MAX_CARRY_ROWS`, or across two runs of `GEOJSON_COLUMNS` columns, comes as several
  polygons, cut between pixels (in QuPath, Objects > Annotations > Merge selected joins
  them); each pixel still lies in exactly one.

Both are written to ``NAME.tmp`` and renamed when complete: a stopped run leaves no file a later
run takes for a prediction.

Also the pixel sizes files say (`microns_of`, `image_microns`) and the f x f block means a level
or an image finer than the run's pixels is read in (`BlockMeans`; for images
`image_block_means`, their labels put back by `expand_labels`).
"""

import contextlib
import dataclasses
import json
import math
import pathlib
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tifffile
import zarr
from PIL import Image

from segan_jax import annotations, datasets, figures, tiles
from segan_jax import workdir as workdir_lib

# Suffixes of the TIFF-based formats read here (datasets read .tif and .tiff whole).
SLIDE_SUFFIXES = (".svs", ".ndpi")
TIFF_SUFFIXES = (".tif", ".tiff", *SLIDE_SUFFIXES)
# Tiles of the label TIFF.
LABEL_TILE = 256
# Columns of a band traced for GeoJSON at a time: tracing takes about 29 bytes a pixel
# (benchmarks/annotations_trace.py), so a band of 1024 rows below at most MAX_CARRY_ROWS held
# back, 8192 columns wide, about 0.5 GB.
GEOJSON_COLUMNS = 8192
# Rows of one class's regions held back for the next band at most (GeoJSONWriter): held
# regions that would span more are written cut there.
MAX_CARRY_ROWS = 1024


@dataclasses.dataclass(frozen=True)
class SlideInfo:
    """One level of a slide: (H, W) pixels of ``channels`` channels of ``dtype``;
    ``downsample`` is (rows, columns) of level 0 per pixel of this level; ``microns`` the
    (height, width) of a level-0 pixel in micrometres where the file says (`microns_of`),
    else None; ``downsamples`` each level's column ``downsample``; ``factor`` > 1 when the
    level is read in ``factor`` x ``factor`` blocks, each one pixel (`BlockMeans`: ``shape``
    and ``downsample`` are then the blocks'); ``full_shape`` level 0's (H, W)."""

    path: pathlib.Path
    level: int
    shape: tuple[int, int]
    channels: int
    dtype: np.dtype
    downsample: tuple[float, float]
    microns: tuple[float, float] | None = None
    downsamples: tuple[float, ...] = (1.0,)
    factor: int = 1
    full_shape: tuple[int, int] = (0, 0)

    def level_microns(self, level: int | None = None) -> float | None:
        """The width in micrometres of a pixel of ``level``, or by default of this view (a
        block when ``factor`` > 1); None when the file does not say."""
        if self.microns is None:
            return None
        if level is None:
            return self.pixel_microns()[1]
        return self.microns[1] * self.downsamples[level]

    def pixel_microns(self) -> tuple[float, float] | None:
        """(height, width) in micrometres of a pixel of this view; None when the file does
        not say."""
        if self.microns is None:
            return None
        return (self.microns[0] * self.downsample[0], self.microns[1] * self.downsample[1])

    def view(self) -> str:
        """ "level 1", or "level 0 in 2x2 blocks"."""
        blocks = f" in {self.factor}x{self.factor} blocks" if self.factor > 1 else ""
        return f"level {self.level}{blocks}"

    def tag(self) -> str:
        """ "1", or "0b2" for level 0 in 2x2 blocks (in `slide_tiles`' tile names)."""
        return f"{self.level}b{self.factor}" if self.factor > 1 else str(self.level)


# A full-resolution pixel said to be wider than this is a writer's default print resolution
# (72 dpi: 353 micrometres; 2400 dpi: 10.6), not a microscope's (under about 2).
MAX_PIXEL_MICRONS = 10.0
# Micrometres per unit of TIFF's ResolutionUnit: inch, centimetre, millimetre, micrometre.
_UNIT_MICRONS = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}


def microns_of(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    """(height, width) of a level-0 pixel in micrometres: an Aperio description's MPP, else
    OME-XML's PhysicalSizeY/X (in micrometres), else the first page's Y/XResolution in pixels
    per inch, centimetre, millimetre or micrometre (NDPI's), all of the full-resolution
    page; None where none says, or says more than `MAX_PIXEL_MICRONS` (a TIFF writer's
    default 72 dpi)."""
    page = tif.series[0].levels[0].keyframe
    found = (
        _aperio_microns(page.description)
        or _ome_microns(tif.ome_metadata)
        or _resolution_microns(page)
    )
    if found is None or not all(0 < v <= MAX_PIXEL_MICRONS for v in found):
        return None
    return float(found[0]), float(found[1])


def image_microns(path: pathlib.Path) -> float | None:
    """The width in micrometres of an image file's pixel: a TIFF's `microns_of`, else the
    print resolution Pillow reads (a PNG's pHYs, a JPEG's JFIF density), in dots per inch;
    None where the file does not say, says more than `MAX_PIXEL_MICRONS`, or is
    unreadable (reading it names it)."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                found = microns_of(tif)
            return None if found is None else found[1]
        with Image.open(path) as image:
            dpi = image.info.get("dpi")
    except Exception:  # any decoder failure: an unreadable file (reading it names it)
        return None
    width = 25400.0 / float(dpi[0]) if dpi and float(dpi[0]) > 0 else None
    return width if width is not None and width <= MAX_PIXEL_MICRONS else None


def _resolution_microns(page: tifffile.TiffPage) -> tuple[float, float] | None:
    """A page's (height, width) in micrometres from its resolution tags, None where their
    unit is none (1) or a value is 0 or unreadable (0/0: "unknown", to some writers)."""
    unit = _UNIT_MICRONS.get(int(page.resolutionunit))
    try:
        x, y = page.resolution
    except (ZeroDivisionError, ValueError, TypeError):
        return None
    return (unit / y, unit / x) if unit and x > 0 and y > 0 else None


def microns_problem(microns: float) -> str:
    """``"<value>: why"`` for a pixel width asked for (predict.microns_per_pixel, slide_tiles'
    --microns) over `MAX_PIXEL_MICRONS`, which no scan has (nanometres given, say); "" for
    one within it (0 included: not known). Reading it as a number is the caller's check."""
    if microns <= MAX_PIXEL_MICRONS:
        return ""
    return (
        f"{microns!r}: over {MAX_PIXEL_MICRONS:g} µm a pixel, no scan's: give the training "
        "images' pixel width in micrometres (about 0.5 at 20x, 0.25 at 40x)"
    )


# Pixel widths within this fraction of each other count as one magnification.
MICRONS_TOLERANCE = 0.1


def same_magnification(a: float, b: float) -> bool:
    """Whether pixel widths ``a`` and ``b`` lie within `MICRONS_TOLERANCE` of each other (by
    ratio, whichever is larger)."""
    return abs(math.log(a / b)) <= math.log1p(MICRONS_TOLERANCE)


def resolution_note(info: SlideInfo, microns: float) -> str:
    """A note when the pixels of the slide's view are over `MICRONS_TOLERANCE` wider or
    narrower than ``microns`` (the training images', predict.microns_per_pixel), naming the
    level closest to them, or the level in blocks that matches (predict.resample); "" when
    they agree, or ``microns`` or the file does not say."""
    have = info.level_microns()
    if not microns or have is None or same_magnification(have, microns):
        return ""
    best = closest_level(info, microns)
    closer = f"level {best} has {info.level_microns(best):.3g} µm"
    hint = (closer if best != info.level else "no level is closer") + " (predict.slide_level)"
    level, factor = closest_view(info, microns, MAX_FACTOR)
    if factor > 1 and same_magnification(info.level_microns(level) * factor, microns):
        hint += (
            f"; level {level} in {factor}x{factor} blocks would match (predict.slide_level=-1 "
            "with predict.resample=True)"
        )
    return (
        f"note: {info.path.name} {info.view()} has pixels of {have:.3g} µm, the run's "
        f"images {microns:.3g} µm (predict.microns_per_pixel); {hint}: a network finds "
        "structures at the size it was trained on"
    )


def closest_level(info: SlideInfo, microns: float) -> int:
    """`closest_view`'s level read whole: one within `MICRONS_TOLERANCE` of ``microns`` (the
    smallest), else the closest by ratio (0.36 is closer to 0.5 than to 0.25); the slide's
    file must say its pixel size."""
    return closest_view(info, microns)[0]


# The widest blocks a level is read in (predict.resample): a slide's levels are usually 2 or 4
# apart, so 4 covers them; 8 leaves room.
MAX_FACTOR = 8


def closest_view(info: SlideInfo, microns: float, most: int = 1) -> tuple[int, int]:
    """(level, factor): of the slide's levels, each read whole or in factor x factor blocks
    (factor up to ``most``), the one whose pixels are within `MICRONS_TOLERANCE` of
    ``microns`` reading the fewest pixels (the smallest level); when none is, the closest by
    ratio (0.36 is closer to 0.5 than to 0.25). The slide's file must say its pixel size."""
    levels = range(len(info.downsamples))
    factors = {k: block_factor(info.level_microns(k), microns, most) for k in levels}
    near = [  # each level whole or in its blocks (`block_factor`), where that matches
        (k, f) for k, f in factors.items() if same_magnification(info.level_microns(k) * f, microns)
    ]
    if near:
        return max(near, key=lambda v: info.downsamples[v[0]])
    views = [(k, f) for k in levels for f in range(1, most + 1)]
    width = {(k, f): info.level_microns(k) * f for k, f in views}
    # ties (one width from several views): the one reading the fewest pixels
    return min(
        views,
        key=lambda v: (round(abs(math.log(width[v] / microns)), 9), -info.downsamples[v[0]]),
    )


def slide_info_closest(path: pathlib.Path, microns: float, most: int = 1) -> SlideInfo:
    """`slide_info` of the slide's `closest_view` to ``microns`` (blocks of up to ``most``
    pixels a side); datasets.FormatError when its file does not say its pixel size."""
    with open_level(path, 0) as (info, _):
        pass
    if info.microns is None:
        raise datasets.FormatError(
            "says no usable pixel size (an Aperio MPP, OME-XML PhysicalSizeX or TIFF "
            f"resolution of at most {MAX_PIXEL_MICRONS:g} µm a pixel; 72 dpi, say, is a "
            "writer's default), so its level closest to the pixel size asked for is not "
            "known: name a level instead (predict.slide_level, slide_tiles' --level), or "
            "treat it apart"
        )
    return slide_info(path, *closest_view(info, microns, most))


def _aperio_microns(description: str) -> tuple[float, float] | None:
    """An Aperio SVS description's ``|MPP = 0.2520|`` as (height, width), else None."""
    description = description or ""
    found = re.search(r"\|\s*MPP\s*=\s*([0-9.]+)", description)
    if not description.startswith("Aperio") or not found or _number(found[1]) <= 0:
        return None
    return _number(found[1]), _number(found[1])


# Micrometres per OME length unit (its default: µm, micro sign or Greek mu).
_OME_MICRONS = {"µm": 1.0, "μm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}


def _ome_microns(ome: str | None) -> tuple[float, float] | None:
    """OME-XML's first Pixels' PhysicalSizeY and PhysicalSizeX in micrometres (from µm, nm
    or mm), else None."""
    pixels = re.search(r"<(?:\w+:)?Pixels\s[^>]*>", ome or "")
    if not pixels:
        return None
    attributes = dict(re.findall(r"""(\w+)\s*=\s*["']([^"']*)["']""", pixels[0]))
    scales = [_OME_MICRONS.get(attributes.get(f"PhysicalSize{a}Unit", "µm")) for a in "YX"]
    sizes = [_number(attributes.get(f"PhysicalSize{a}", "")) for a in "YX"]
    if not all(scales) or not all(sizes):
        return None
    return sizes[0] * scales[0], sizes[1] * scales[1]


def _number(text: str) -> float:
    """``text`` as a float, 0.0 where it is not a number."""
    try:
        return float(text)
    except ValueError:
        return 0.0


def full_size(path: pathlib.Path) -> tuple[tuple[int, int], int] | None:
    """((H, W) of its full-resolution image, number of pyramid levels) of a TIFF-based file,
    read from its header; None for other files. Raises datasets.FormatError when a TIFF cannot
    be parsed."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            levels = tif.series[0].levels
            axes, shape = levels[0].axes, levels[0].shape
            height, width = shape[axes.index("Y")], shape[axes.index("X")]
    except (tifffile.TiffFileError, OSError, IndexError, ValueError) as err:
        raise datasets.FormatError(f"not a readable TIFF ({err})") from err
    return (int(height), int(width)), len(levels)


def _yx(series) -> tuple[int, int]:
    """(H, W) of a series of axes YX or YXS (RGB); FormatError for any other layout."""
    if series.axes not in ("YX", "YXS"):
        raise datasets.FormatError(
            f"slide layout {series.axes} {series.shape} not supported: slides must be RGB "
            "(YXS) or single-channel (YX) images"
        )
    return int(series.shape[0]), int(series.shape[1])


def _check_complete(tif: tifffile.TiffFile, series) -> None:
    """FormatError when a level's image data lie beyond the end of the file (a truncated copy:
    found now, not after an hour of predicting)."""
    size = tif.filehandle.size
    for level, part in enumerate(series.levels):
        for page in part.pages:
            ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)]
            if ends and max(ends) > size:
                raise datasets.FormatError(
                    f"truncated: level {level}'s image data end at byte {max(ends):,}, the file "
                    f"at {size:,} (copy it again)"
                )


def slide_info(path: pathlib.Path, level: int, factor: int = 1) -> SlideInfo:
    """The ``level`` (0: full resolution; in ``factor`` x ``factor`` blocks, `BlockMeans`) of a
    slide, from its header, after decoding one pixel (a codec missing for its tiles is found
    before any work), its pixel type checked as an image's (`datasets.check_pixel_type`).
    Raises datasets.FormatError."""
    with open_level(path, level, factor) as (info, array):
        _ = array[:1, :1]
    datasets.check_pixel_type(info.dtype)
    return info


@contextlib.contextmanager
def open_level(
    path: pathlib.Path, level: int, factor: int = 1
) -> Iterator[tuple[SlideInfo, "zarr.Array | np.ndarray | BlockMeans"]]:
    """Opens a slide's ``level`` as a read-only array of (H, W) or (H, W, C) that reads only
    the TIFF tiles a region touches (`_open`), with ``factor`` > 1 its `BlockMeans`; yields
    (its `SlideInfo`, the array). Raises datasets.FormatError when the file cannot be opened
    so (errors in the block go on as they are)."""
    with contextlib.ExitStack() as stack:
        try:
            info, array = _open(stack, path, level)
        except datasets.FormatError:
            raise
        except (tifffile.TiffFileError, ValueError, KeyError) as err:
            raise datasets.FormatError(f"not a readable slide ({err})") from err
        if factor > 1:
            info, array = _in_blocks(info, array, factor)
        yield info, array


def _in_blocks(
    info: SlideInfo, array: zarr.Array | np.ndarray, factor: int
) -> tuple[SlideInfo, "BlockMeans"]:
    """The level's `SlideInfo` and array read in ``factor`` x ``factor`` blocks."""
    (height, width), (rows, columns) = info.shape, info.downsample
    datasets.check_pixel_type(info.dtype)  # before any sum of pixels
    if height < factor or width < factor:
        raise datasets.FormatError(
            f"level {info.level} ({height}x{width}) is smaller than one {factor}x{factor} block"
        )
    blocks = BlockMeans(array, factor)
    downsample = (rows * factor, columns * factor)  # a block covers factor pixels a side
    info = dataclasses.replace(info, shape=blocks.shape[:2], downsample=downsample, factor=factor)
    return info, blocks


# Columns of the level a `BlockMeans` window reads at a time: a band of 1024 blocks of 4x4
# pixels, 3 channels, then reads 4096 x 2048 x 3 uint8 values (24 MiB) into 512 x 1024 x 3
# uint32 sums (6 MiB).
BLOCK_COLUMNS = 2048


class BlockMeans:
    """A slide level (an array of (H, W) or (H, W, C)) seen as (H // f, W // f[, C]) blocks of
    f x f pixels, each the mean of its pixels rounded to the level's integer type (the
    rows and columns beyond the last whole block left out): a coarser level that a slide
    lacks (40x read as 20x). Indexing by two slices reads only the pixels the blocks cover,
    `BLOCK_COLUMNS` columns at a time."""

    def __init__(self, array: zarr.Array | np.ndarray, factor: int):
        self.array, self.factor = array, factor
        height, width, *channels = array.shape
        self.shape = (height // factor, width // factor, *channels)
        self.dtype, self.ndim = array.dtype, array.ndim

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        rows, columns = key
        top, bottom, _ = rows.indices(self.shape[0])
        left, right, _ = columns.indices(self.shape[1])
        f, bottom, right = self.factor, max(top, bottom), max(left, right)
        out = np.empty((bottom - top, right - left, *self.shape[2:]), self.dtype)
        step = max(1, BLOCK_COLUMNS // f)
        for start in range(left, right, step):
            stop = min(right, start + step)
            pixels = np.asarray(self.array[top * f : bottom * f, start * f : stop * f])
            out[:, start - left : stop - left] = block_means(pixels, f)
        return out


def block_means(pixels: np.ndarray, factor: int) -> np.ndarray:
    """(H, W[, C]) 8- or 16-bit pixels, H and W multiples of ``factor`` -> (H / f, W / f[, C])
    means of f x f blocks, rounded half up, of the same dtype (summed exactly in uint32, one
    phase of the blocks at a time: 5x faster than a float mean over a reshape)."""
    h, w = pixels.shape[0] // factor, pixels.shape[1] // factor
    sums = np.zeros((h, w, *pixels.shape[2:]), np.uint32)
    for row in range(factor):
        for column in range(factor):
            sums += pixels[row::factor, column::factor][:h, :w]
    area = factor * factor
    return ((sums + area // 2) // area).astype(pixels.dtype)


def block_factor(width: float, microns: float, most: int = MAX_FACTOR) -> int:
    """The f in 2..``most`` whose f x f blocks of pixels ``width`` µm wide come within
    `MICRONS_TOLERANCE` of ``microns`` (the smallest where two do; `closest_view` reads a
    slide's levels by it too); 1 when ``width`` itself does or no such f exists (pixels wider than
    ``microns``, or no whole ratio)."""
    if same_magnification(width, microns):
        return 1
    return min((f for f in range(2, most + 1) if same_magnification(width * f, microns)), default=1)


def image_block_means(pixels: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, C) 8- or 16-bit pixels -> (ceil(H / f), ceil(W / f), C) `block_means`, the last
    row and column repeated to fill the last blocks, so every pixel is in one."""
    pad = [(0, -pixels.shape[0] % factor), (0, -pixels.shape[1] % factor)]
    pad += [(0, 0)] * (pixels.ndim - 2)
    return block_means(np.pad(pixels, pad, mode="edge"), factor)


def expand_labels(labels: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) labels of f x f blocks (`image_block_means`) -> ``shape`` (H, W), each block's
    label on each of its pixels."""
    return np.repeat(np.repeat(labels, factor, 0), factor, 1)[: shape[0], : shape[1]]


def _open(
    stack: contextlib.ExitStack, path: pathlib.Path, level: int
) -> tuple[SlideInfo, zarr.Array | np.ndarray]:
    """`open_level`'s (SlideInfo, array), the files it opens closed by ``stack``. An
    uncompressed level is memory-mapped; others are read through tifffile's Zarr store, one
    TIFF tile or strip at a time (a compressed image stored as one strip is decoded whole
    for every band: save slides tiled)."""
    tif = stack.enter_context(tifffile.TiffFile(path))
    series = tif.series[0]
    _check_complete(tif, series)
    sizes = [_yx(part) for part in series.levels]
    if not 0 <= level < len(sizes):
        listed = ", ".join(f"{i}: {h}x{w}" for i, (h, w) in enumerate(sizes))
        raise datasets.FormatError(
            f"has {len(sizes)} level(s) ({listed}); level {level} was asked for"
        )
    page = series.levels[level].keyframe
    extra = getattr(page, "extrasamples", ())
    if extra and extra[-1] in datasets.ALPHA_SAMPLES:
        raise datasets.FormatError("has an alpha channel: save the slide without it")
    array = None
    if page.is_memmappable:  # uncompressed, contiguous: a single strip would be read whole
        array = tifffile.memmap(path, series=0, level=level, mode="r")
    if array is None or not array.dtype.isnative:  # the Zarr store swaps bytes (ImageJ's)
        array = zarr.open_array(stack.enter_context(series.aszarr(level=level)), mode="r")
    channels = array.shape[2] if array.ndim == 3 else 1
    (h0, w0), (h, w) = sizes[0], sizes[level]
    downsamples = tuple(w0 / width for _, width in sizes)
    downsample = (h0 / h, w0 / w)
    info = SlideInfo(
        path,
        level,
        (h, w),
        channels,
        array.dtype,
        downsample,
        microns_of(tif),
        downsamples,
        full_shape=(h0, w0),
    )
    return info, array


def band_labels(
    array: zarr.Array | np.ndarray,
    info: SlideInfo,
    tiling: tiles.Tiling,
    predict: Callable[[np.ndarray], np.ndarray],
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (first row, (rows, W) uint8 labels) of consecutive bands that together cover the
    level (``info.shape``, (H, W)) once, top to bottom.

    Each band is the kept rows of one row of windows: its ``tiling.size`` rows (fewer on a
    shorter level) are read and given to ``predict`` ((size, W, C) raw -> (size, W) labels,
    e.g. `evaluate.predict_all` with ``tiling`` on that one image). A band that cannot be
    decoded raises datasets.DatasetError naming the file and the rows.
    """
    height, width = min(info.shape[0], tiling.size), info.shape[1]
    for top, keep_start, keep_stop in tiles.axis_windows(info.shape[0], tiling.size, tiling.margin):
        rows = read_window(array, info, (top, 0), (height, width))
        yield keep_start, predict(rows)[keep_start - top : keep_stop - top]


def read_window(
    array: zarr.Array | np.ndarray,
    info: SlideInfo,
    corner: tuple[int, int],
    size: tuple[int, int],
) -> np.ndarray:
    """The (height, width, C) window of an opened level whose top-left pixel is ``corner``
    (row, column) and whose (height, width) is ``size``. A window that cannot be decoded
    raises datasets.DatasetError naming the file, the rows and (when not all) the columns."""
    (top, left), (height, width) = corner, size
    try:
        window = np.asarray(array[top : top + height, left : left + width])
    except MemoryError:
        raise
    except Exception as err:  # any decoder's failure: a damaged tile
        where = f"rows {top} to {top + height - 1}"
        if width < info.shape[1]:
            where += f", columns {left} to {left + width - 1}"
        problem = f"{info.path}: {where} of {info.view()} unreadable ({err!r})"
        raise datasets.DatasetError([problem]) from err
    return window[..., None] if window.ndim == 2 else window


def label_tiles(bands: Iterator[tuple[int, np.ndarray]], width: int) -> Iterator[np.ndarray]:
    """The `LABEL_TILE`-square tiles, row-major, of the label map the consecutive ``bands``
    cover (uint8, zero beyond the map's edges): what tifffile writes as a tiled TIFF."""
    t = LABEL_TILE
    columns = -(-width // t) * t
    pending = np.zeros((0, columns), np.uint8)
    for _, band in bands:
        pending = np.concatenate([pending, np.pad(band, ((0, 0), (0, columns - width)))])
        while len(pending) >= t:
            yield from _row_of_tiles(pending[:t])
            pending = pending[t:]
    if len(pending):
        yield from _row_of_tiles(np.pad(pending, ((0, t - len(pending)), (0, 0))))


def _row_of_tiles(rows: np.ndarray) -> Iterator[np.ndarray]:
    """The `LABEL_TILE`-square tiles of (LABEL_TILE, k * LABEL_TILE) rows, left to right."""
    for left in range(0, rows.shape[1], LABEL_TILE):
        yield np.ascontiguousarray(rows[:, left : left + LABEL_TILE])


def write_label_tiff(
    path: pathlib.Path,
    bands: Iterator[tuple[int, np.ndarray]],
    shape: tuple[int, int],
    metadata: dict | None = None,
    microns: tuple[float, float] | None = None,
) -> None:
    """Writes the (H, W) label map of consecutive ``bands`` as a tiled zlib TIFF (``metadata``
    in its JSON ImageDescription; ``microns``, a pixel's (height, width) in micrometres, as
    its resolution tags), atomically: as ``NAME.tmp``, renamed when complete, removed on any
    error."""
    resolution = {}
    if microns is not None:  # pixels per centimetre, as NDPI writes them
        resolution = {"resolution": (1e4 / microns[1], 1e4 / microns[0]), "resolutionunit": 3}
    with workdir_lib.atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            label_tiles(bands, shape[1]),
            shape=shape,
            dtype=np.uint8,
            tile=(LABEL_TILE, LABEL_TILE),
            compression="zlib",
            photometric="minisblack",
            bigtiff=shape[0] * shape[1] >= 2**31,
            metadata=metadata,
            **resolution,
        )


class GeoJSONWriter:
    """Streams the regions of consecutive bands to a GeoJSON FeatureCollection file, in level-0
    pixels (``downsample``: level-0 pixels per pixel, (rows, columns)). A context manager: the
    file appears under its name on leaving it, complete, and never after an error.

    Class by class, a region that reaches a band's last row is held back and traced again with
    the next band, so it comes whole; only when the regions of one class held back would span
    over `MAX_CARRY_ROWS` rows are they written cut there, and a region is cut where the runs
    of `GEOJSON_COLUMNS` columns meet."""

    def __init__(
        self,
        path: pathlib.Path,
        classes: Sequence[str],
        downsample: tuple[float, float],
        min_area: float = 0.0,
        features: list[dict] | None = None,
    ):
        self.path, self.classes, self.min_area = path, classes, min_area
        self.features = features  # when given, each feature written is appended to it too
        self.colours = figures.class_colours(len(classes))
        self.scale = np.array([downsample[1], downsample[0]])  # (x, y)
        self.count = 0
        # class -> (first row, its rows of the class's mask, how many of them hold only
        # regions written already, besides the held ones)
        self.carry: dict[int, tuple[int, np.ndarray, int]] = {}

    def __enter__(self) -> "GeoJSONWriter":
        self.files = contextlib.ExitStack()  # the file, then its rename (workdir.atomic_path)
        tmp = self.files.enter_context(workdir_lib.atomic_path(self.path))
        self.file = self.files.enter_context(tmp.open("w"))
        self.file.write('{"type": "FeatureCollection", "features": [')
        return self

    def add(self, top: int, band: np.ndarray) -> None:
        """Writes the regions of (rows, W) labels whose first row is ``top``, but those that
        reach its last row: held back, with the rows from their first one down, and traced
        again with the next band (then the regions that lay in those rows alone, and so were
        written, are left out)."""
        for k in range(1, len(self.classes)):
            first, rows, done = self.carry.pop(k, (top, band[:0] == k, 0))
            self._add_class(k, first, np.concatenate([rows, band == k]), done, hold=True)

    def _add_class(self, k: int, top: int, mask: np.ndarray, done: int, hold: bool) -> None:
        """Writes class ``k``'s regions of a (rows, W) bool ``mask`` whose first row is
        ``top`` that reach its row ``done - 1`` or below; with ``hold`` holds back those that
        reach its last row (`add`)."""
        held = []
        for left in range(0, mask.shape[1], GEOJSON_COLUMNS):
            for rings in annotations.class_polygons(mask[:, left : left + GEOJSON_COLUMNS], 1):
                bottom = rings[0][:, 1].max()  # the lowest pixel's lower edge
                rings = [r + (left, 0) for r in rings]
                if bottom < done:  # not in row done - 1 (where held ones reach): written
                    continue
                if hold and bottom == len(mask):  # a pixel in the last row
                    held.append(rings)
                else:
                    self._write(k, top, rings)
        if held:
            first = int(min(rings[0][:, 1].min() for rings in held))  # their first row
            if len(mask) - first <= MAX_CARRY_ROWS:
                self.carry[k] = top + first, mask[first:], len(mask) - first
                return
            for rings in held:  # too tall to hold: written cut
                self._write(k, top, rings)

    def _write(self, k: int, top: int, rings: list[np.ndarray]) -> None:
        """Writes one class-``k`` region, rings in the pixels of a band starting at ``top``,
        unless its `annotations.area` is under ``min_area``."""
        if annotations.area(rings) < self.min_area:
            return
        feature = annotations.feature(rings, self.classes[k], self.colours[k], (0, top), self.scale)
        self.file.write((",\n" if self.count else "\n") + json.dumps(feature))
        self.count += 1
        if self.features is not None:
            self.features.append(feature)

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is not None:  # the block's error: the file closed and removed, it goes on
            self.files.__exit__(error_type, error, traceback)
            return
        with self.files:  # closes the file and renames it (removes it if this fails)
            for k, (top, mask, done) in sorted(self.carry.items()):  # nothing follows
                self._add_class(k, top, mask, done, hold=False)
            self.file.write("\n]}\n")


def predict_slide(
    path: pathlib.Path,
    level: int,
    tiling: tiles.Tiling,
    predict: Callable[[np.ndarray], np.ndarray],
    label_path: pathlib.Path,
    geojson: tuple[pathlib.Path, Sequence[str]] | None = None,
    report: Callable[[SlideInfo, int], None] | None = None,
    min_area: float = 0.0,
    features: list[dict] | None = None,
    factor: int = 1,
) -> SlideInfo:
    """Predicts a slide's ``level`` (in ``factor`` x ``factor`` blocks, `BlockMeans`) band by
    band (`band_labels`), writing its label TIFF to ``label_path`` and, with ``geojson``
    (path, class names), its regions of polygon area at least ``min_area`` (`GeoJSONWriter`;
    appended to ``features`` too when given); ``report`` gets the rows done after each
    band."""
    with open_level(path, level, factor) as (info, array), contextlib.ExitStack() as stack:
        bands = band_labels(array, info, tiling, predict)
        if geojson is not None:
            writer = GeoJSONWriter(*geojson, info.downsample, min_area, features)
            stack.enter_context(writer)
            bands = _tee(bands, lambda top, band: writer.add(top, band))
        if report is not None:
            bands = _tee(bands, lambda top, band: report(info, top + len(band)))
        metadata = {"source": path.name, "level": level, "downsample": list(info.downsample)}
        if factor > 1:
            metadata["blocks"] = factor
        write_label_tiff(label_path, bands, info.shape, metadata, info.pixel_microns())
    return info


def _tee(
    bands: Iterator[tuple[int, np.ndarray]], consume: Callable[[int, np.ndarray], None]
) -> Iterator[tuple[int, np.ndarray]]:
    """``bands`` passed on, each given to ``consume`` first."""
    for top, band in bands:
        consume(top, band)
        yield top, band
