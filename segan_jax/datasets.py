"""Segmentation datasets: validation, TFDS ArrayRecord builders and random-access loading.

Three datasets are selected by ``data.name``:

``folder``
    A folder ``ROOT`` laid out as::

        ROOT/classes.json              {"0": "background", "1": "nucleus", ...}, keys 0..K-1
        ROOT/train/images/<stem>.{png,jpg,jpeg,tif,tiff}
        ROOT/train/masks/<stem>.png    single-channel integer labels 0..K-1
        ROOT/test/...                  same layout, required
        ROOT/val/...                   same layout, optional

    Images are decoded to (H, W, C) uint8 or uint16 arrays (grey images get C=1). TIFFs may
    be (H, W), (H, W, S) or channels-first (C, H, W). The paper's podocyte data uses it.
``consep``
    CoNSeP (27 train / 14 test 1000x1000 RGB tiles, 5 classes) in the same layout, read from
    TFDS's manual_dir, ``data.path`` (default ``../shared/data/consep`` from the repo root).
``demo``
    The 10-frame scratch assay of the PyPI package ``ndev-sampledata``
    (``samples/scratch-assay-labeled-10T-2Ch.tiff``, CTYX uint16, 4 x 10 x 210 x 576).
    Image = channels 0 (Hoechst) and 1 (brightfield), (210, 576, 2) uint16. Mask from
    channels 2 (nuclei instances) and 3 (cytoplasm instances): 0 background, 1 cytoplasm,
    2 nucleus (nucleus wins where both are set). Split by time point: train = t00..t06
    (7 images), test = t07..t09 (3 images).

Folder and CoNSeP data are validated in full (:func:`validate_folder`) before a build
starts, so bad input leaves nothing behind in the data dir. The TFDS config name is
``<slug of the absolute path>_<sha1[:10]>`` of the path and every file's name, size and
mtime, so edited data is rebuilt and two folders never share a cache entry. Builds are
written as ArrayRecord with zlib-compressed Tensor features (no TensorFlow needed).
Images keep their dtype (uint8 or uint16, recorded in the builder config).
Dataset statistics (:class:`DatasetInfo`) are computed once at build time and stored in
TFDS's ``metadata.json`` inside the dataset version dir, written in TFDS's ``incomplete.*``
build dir before it is renamed; a version dir without them is deleted and rebuilt.
"""

import collections
import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import json
import logging
import os
import pathlib
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
import tifffile
from PIL import Image
from tensorflow_datasets.core.utils import tqdm_utils

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "test")
DEMO_PACKAGE = "ndev_sampledata"
DEMO_FILE = "samples/scratch-assay-labeled-10T-2Ch.tiff"
DEMO_CLASSES = ("background", "cytoplasm", "nucleus")
DEMO_TRAIN_FRAMES = 7
STD_FLOOR = 1e-6
# Changes whenever reading a file gives other arrays (2: an opaque alpha channel dropped; 3: an
# unnamed (H, W, C) TIFF stack kept channels-last), so folder datasets built under the old rules
# are rebuilt (it is part of their fingerprint).
READ_RULES = 3
# A TFDS incomplete.* build folder untouched this long is a killed build's, not a running one's.
STALE_BUILD_S = 6 * 3600
MAX_CLASSES = 255  # label 255 is the ignore label of the input pipeline
_CLASSES_EXAMPLE = '{"0": "background", "1": "nucleus"}'
_META_KEYS = (
    "classes",
    "splits",
    "image_dtype",
    "num_channels",
    "train_pixel_counts",
    "train_image_pixel_counts",
    "train_unlabelled_pixels",
    "scale",
    "channel_mean",
    "channel_std",
)
_PIL_CONVERT = {"P": "RGB", "PA": "RGBA", "1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB"}
_MASK_MODES = ("L", "P", "1", "I", "I;16", "I;16L", "I;16B")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALPHA_SAMPLES = (tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA)

_Example = tuple[str, np.ndarray, np.ndarray]  # (name, image (H, W, C), mask (H, W) uint8)
_ImageKind = tuple[pathlib.Path, int, int]  # (image path, channels, bits per sample)


class DatasetError(ValueError):
    """Raised before any work when input files are bad.

    ``str(err)`` lists every offending file, one per line, as ``'<path>: <problem>'``.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))


# The mask value of pixels nobody labelled (a partly annotated tile): `load_split` reads them
# as data.ignore_index, so the loss, the critic's inputs and the metrics leave them out, as
# they do padding.
UNLABELLED = 255


@dataclasses.dataclass(frozen=True)
class Split:
    """One split in memory.

    Attributes:
      images: each (H, W, C), uint8 or uint16, C >= 1.
      masks: each (H, W), uint8 label values 0..K-1, or UNLABELLED.
      names: file stems, same order.
    """

    images: list[np.ndarray]
    masks: list[np.ndarray]
    names: list[str]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Dataset-wide facts, computed once at build time.

    Attributes:
      classes: class names in label order.
      num_channels: C of every image.
      splits: split names present, in ("train", "val", "test") order.
      train_pixel_counts: (K,) int64 label frequencies of the train split.
      train_image_pixel_counts: (K,) int64 labelled pixels of the train images in which each
        class appears (median-frequency weights); None in a record from before it existed.
      train_unlabelled_pixels: pixels of the train masks marked UNLABELLED (255); None in a
        record from before it existed.
      scale: divide raw pixel values by this to get ~[0, 1] (255 for uint8 data, the max
        raw train value for uint16 data).
      channel_mean: (C,) float32 mean of image / scale over all train pixels.
      channel_std: (C,) float32 std of the same, floored at 1e-6.
      is_rgb: C == 3.
      image_dtype: "uint8" or "uint16", the pixel type of every image.
    """

    classes: tuple[str, ...]
    num_channels: int
    splits: tuple[str, ...]
    train_pixel_counts: np.ndarray
    scale: float
    channel_mean: np.ndarray
    channel_std: np.ndarray
    is_rgb: bool
    image_dtype: str = "uint8"
    train_image_pixel_counts: np.ndarray | None = None
    train_unlabelled_pixels: int | None = None


class FormatError(ValueError):
    """A file that decodes but is not in a supported format (e.g. an RGB mask)."""


# ----------------------------------------------------------------------------- file reading


def read_image(path: pathlib.Path) -> np.ndarray:
    """Fully decodes an image file to (H, W, C) uint8 or uint16; raises on bad files."""
    if path.suffix.lower() in (".tif", ".tiff"):
        array = _read_tiff(path)
    else:
        array = _read_pil_image(path)
    if array.ndim == 2:
        array = array[..., None]
    array = array.astype(array.dtype.newbyteorder("="), copy=False)
    check_pixel_type(array.dtype)
    return np.ascontiguousarray(array)


def check_pixel_type(dtype: np.dtype) -> None:
    """FormatError unless 8- or 16-bit unsigned, the pixel types read (images and slides)."""
    if dtype not in (np.uint8, np.uint16):
        raise FormatError(f"pixel type {dtype} not supported (use 8- or 16-bit unsigned)")


def read_mask(path: pathlib.Path) -> np.ndarray:
    """Fully decodes a single-channel PNG mask to (H, W) int32 labels; raises on bad files."""
    with Image.open(path) as image:
        image.load()
        if image.format != "PNG":
            raise FormatError(f"mask is a {image.format} file, not a PNG")
        if image.mode not in _MASK_MODES:
            bands = len(image.getbands())
            raise FormatError(f"mask is not single-channel ({image.mode}, {bands} channels)")
        return np.asarray(image).astype(np.int32)


def _read_tiff(path: pathlib.Path) -> np.ndarray:
    """Reads the first TIFF series as (H, W) or (H, W, C); channels-first input is moved.

    A 3-D series without samples axes is channels-first when its metadata says so (CYX, ZYX,
    ...); an unnamed one (QYX, as ``tifffile.imwrite`` stores (H, W, 2)) when its first
    dimension is no larger than its last."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        array, axes = series.asarray(), series.axes
        extra = getattr(tif.pages[0], "extrasamples", ())
    if axes.endswith("S") and extra and extra[-1] in ALPHA_SAMPLES:
        array = _without_alpha(array)
    channels_first = axes[0] != "Q" or array.shape[0] <= array.shape[-1]
    if array.ndim == 3 and not axes.endswith("S") and channels_first:
        array = np.moveaxis(array, 0, -1)
    if array.ndim not in (2, 3):
        raise FormatError(f"unsupported TIFF layout: axes {axes}, shape {array.shape}")
    return array


def _read_pil_image(path: pathlib.Path) -> np.ndarray:
    """Decodes a PNG/JPEG with Pillow to (H, W) or (H, W, C), without an opaque alpha channel
    (slide-scanner and OpenSlide tiles are RGBA)."""
    _reject_16bit_colour_png(path)
    with Image.open(path) as image:
        image.load()
        mode = _PIL_CONVERT.get(image.mode)
        if image.mode == "P" and "transparency" in image.info:
            mode = "RGBA"
        image = image.convert(mode) if mode else image
        array, bands = np.asarray(image), image.getbands()
    return _without_alpha(array) if bands[-1] == "A" else array


def _without_alpha(array: np.ndarray) -> np.ndarray:
    """(..., C) less its last channel, an alpha channel opaque everywhere; FormatError if it
    makes any pixel transparent."""
    alpha = array[..., -1]
    if alpha.min() < np.iinfo(alpha.dtype).max:
        raise FormatError("image has transparent pixels (an alpha channel); save it opaque")
    return array[..., :-1]


def _reject_16bit_colour_png(path: pathlib.Path) -> None:
    """Pillow silently reduces 16-bit colour PNGs to 8 bits: refuse them instead."""
    with open(path, "rb") as file:
        header = file.read(26)
    is_png = header[:8] == _PNG_SIGNATURE and header[12:16] == b"IHDR"
    if is_png and header[24] == 16 and header[25] in (2, 4, 6):
        raise FormatError("16-bit colour PNG would lose precision; save it as a 16-bit TIFF")


def read_classes(path: pathlib.Path) -> tuple[str, ...]:
    """Reads classes.json ``{"0": name, ...}`` into names in label order; raises ValueError."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err}); expected e.g. {_CLASSES_EXAMPLE}") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"must be a JSON object like {_CLASSES_EXAMPLE}")
    if not all(re.fullmatch(r"\d+", str(key)) for key in raw):
        raise ValueError(f"keys must be label values 0, 1, ..., got {sorted(raw)}")
    by_label = {int(key): value for key, value in raw.items()}
    if sorted(by_label) != list(range(len(raw))):
        raise ValueError(f"keys must be 0..{len(raw) - 1} without gaps, got {sorted(by_label)}")
    names = tuple(by_label[label] for label in range(len(raw)))
    _check_class_names(names)
    return names


def _check_class_names(names: tuple[str, ...]) -> None:
    """Raises ValueError unless there are 2..256 distinct non-empty string names."""
    if not all(isinstance(name, str) and name.strip() for name in names):
        raise ValueError("class names must be non-empty strings")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be distinct, got {list(names)}")
    if not 2 <= len(names) <= MAX_CLASSES:
        raise ValueError(f"need 2..{MAX_CLASSES} classes, got {len(names)}")


# ----------------------------------------------------------------------------- folder layout


# Files the operating system writes into folders of pictures (Windows' thumbnail cache and
# folder settings); like hidden files (macOS's .DS_Store and ._ files), not the user's data.
SYSTEM_FILES = ("thumbs.db", "desktop.ini")


def _is_visible_file(path: pathlib.Path) -> bool:
    """A file of the user's: not hidden, not one of ``SYSTEM_FILES``."""
    name = path.name
    return path.is_file() and not name.startswith(".") and name.lower() not in SYSTEM_FILES


def visible_files(folder: pathlib.Path, suffixes: Sequence[str]) -> list[pathlib.Path]:
    """Sorted visible files of ``folder`` whose suffix (any case) is in ``suffixes``."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _is_visible_file(p) and p.suffix.lower() in suffixes]
    return sorted(found)


def _not_utf8(path: pathlib.Path) -> bool:
    """A name the file system holds as bytes that are not UTF-8 (which TFDS cannot store)."""
    try:
        path.name.encode()
    except UnicodeEncodeError:
        return True
    return False


def _shown(path: pathlib.Path) -> str:
    """``path`` printable, its undecodable bytes as \\xNN."""
    return os.fsencode(path).decode(errors="backslashreplace")


def _by_stem(paths: Sequence[pathlib.Path]) -> dict[str, list[pathlib.Path]]:
    grouped: dict[str, list[pathlib.Path]] = collections.defaultdict(list)
    for path in paths:
        grouped[path.stem].append(path)
    return dict(grouped)


def images_by_stem(folder: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """The visible image files of ``folder`` (`IMAGE_SUFFIXES`, any case) by stem, sorted."""
    return files_by_stem(folder, IMAGE_SUFFIXES)


# The names `slide_tiles` gives the tiles it cuts from a slide: <slide>_L<level>_x<X>_y<Y>,
# the level read in FxF blocks <slide>_L<level>b<F>_x<X>_y<Y>.
TILE_NAME = re.compile(r"(?P<slide>.+)_L(?P<level>\d+(b\d+)?)_x(?P<x>\d+)_y(?P<y>\d+)")


def slide_of(name: str) -> str:
    """The slide an image named `name` was cut from (`TILE_NAME`), else the name itself."""
    match = TILE_NAME.fullmatch(name)
    return match["slide"] if match else name


def slide_groups(names: Sequence[str] | None) -> tuple[list[str] | None, int | None]:
    """(each image's slide, `slide_of` its name; the number of slides where fewer than the
    images, else None); (None, None) without names."""
    if names is None:
        return None, None
    groups = [slide_of(name) for name in names]
    count = len(set(groups))
    return groups, (count if count < len(groups) else None)


def files_by_stem(folder: pathlib.Path, suffixes: Sequence[str]) -> dict[str, list[pathlib.Path]]:
    """The visible files of ``folder`` whose suffix (any case) is in ``suffixes``, by stem."""
    return _by_stem(visible_files(folder, suffixes))


def _present_splits(root: pathlib.Path) -> tuple[str, ...]:
    """Required splits plus those whose folder exists, in ("train", "val", "test") order."""
    return tuple(s for s in SPLITS if s in REQUIRED_SPLITS or (root / s).is_dir())


def _split_pairs(split_dir: pathlib.Path) -> list[tuple[str, pathlib.Path, pathlib.Path]]:
    """(stem, image path, mask path) of a validated split, sorted by stem."""
    images = images_by_stem(split_dir / "images")
    masks = files_by_stem(split_dir / "masks", (".png",))
    return [(stem, images[stem][0], masks[stem][0]) for stem in sorted(images)]


def fingerprint(root: pathlib.Path) -> str:
    """sha1 hex of ``root``'s absolute path, every dataset file's name, size and mtime, and
    `READ_RULES` (names as bytes: any the file system holds); hidden and system files, which
    are not data, are left out."""
    digest = hashlib.sha1(os.fsencode(root) + f"|{READ_RULES}\n".encode())
    candidates = [root / "classes.json"]
    for split in SPLITS:
        for sub in ("images", "masks"):
            folder = root / split / sub
            candidates += sorted(folder.iterdir()) if folder.is_dir() else []
    for path in candidates:
        if _is_visible_file(path):  # not hidden or system files, which are not data
            stat = path.stat()
            name = os.fsencode(path.relative_to(root))
            digest.update(name + f"|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def config_name(root: pathlib.Path) -> str:
    """TFDS config name ``<slug of path>_<sha1[:10]>`` for the folder ``root``."""
    slug = re.sub(r"[^a-z0-9]+", "_", str(root).lower()).strip("_")[-40:]
    return f"{slug.strip('_') or 'root'}_{fingerprint(root)[:10]}"


# ----------------------------------------------------------------------------- validation


def validate_folder(root: pathlib.Path) -> None:
    """Checks a folder dataset completely (decoding every file).

    Raises:
      DatasetError: listing every problem found, one '<path>: <problem>' line each.
    """
    problems = _folder_problems(pathlib.Path(root).expanduser().absolute())
    if problems:
        raise DatasetError(problems)


def _folder_problems(root: pathlib.Path) -> list[str]:
    if not root.is_dir():
        return [f"{root}: dataset folder not found (set --config.data.path to it)"]
    classes, problems = classes_problems(root / "classes.json")
    decoded: list[_ImageKind] = []
    for split in _present_splits(root):
        problems += _split_problems(root / split, len(classes) if classes else 0, decoded)
    problems += _mixed_problems(decoded, 1, "{} channel(s)")
    problems += _mixed_problems(decoded, 2, "{}-bit pixels")
    return problems


def classes_problems(path: pathlib.Path) -> tuple[tuple[str, ...] | None, list[str]]:
    """(class names, []) of a classes.json, or (None, [its problem]) when it is missing or
    invalid."""
    if not path.is_file():
        return None, [f"{path}: missing; it maps label values to names, e.g. {_CLASSES_EXAMPLE}"]
    try:
        return read_classes(path), []
    except (OSError, ValueError) as err:
        return None, [f"{path}: {err}"]


def _split_problems(
    split_dir: pathlib.Path, num_classes: int, decoded: list[_ImageKind]
) -> list[str]:
    """Problems of one split; appends (path, channels, bits) of readable images to ``decoded``."""
    images, masks, problems = _split_listing(split_dir)
    for stem in sorted(images.keys() | masks.keys()):
        image, _ = _read_pair(images.get(stem, []), masks.get(stem, []), num_classes, problems)
        if image is not None:
            decoded.append((images[stem][0], image.shape[2], image.dtype.itemsize * 8))
    return problems


_Listing = dict[str, list[pathlib.Path]]  # stem -> files of that stem


def _split_listing(split_dir: pathlib.Path) -> tuple[_Listing, _Listing, list[str]]:
    """(images by stem, masks by stem, problems of the listing) of a split folder."""
    if not split_dir.is_dir():
        return {}, {}, [f"{split_dir}: missing split folder (needs images/ and masks/ inside)"]
    folders = (split_dir / "images", split_dir / "masks")
    missing = [f"{folder}: missing folder" for folder in folders if not folder.is_dir()]
    if missing:
        return {}, {}, missing
    images = images_by_stem(folders[0])
    masks = files_by_stem(folders[1], (".png",))
    return images, masks, _listing_problems(folders, images, masks)


def _listing_problems(
    folders: tuple[pathlib.Path, pathlib.Path],
    images: dict[str, list[pathlib.Path]],
    masks: dict[str, list[pathlib.Path]],
) -> list[str]:
    """Empty split, duplicate stems, non-PNG masks, images without masks and vice versa."""
    images_dir, masks_dir = folders
    problems = [] if images else [f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})"]
    for paths in list(images.values()) + list(masks.values()):
        problems += [f"{p}: same name as {paths[0].name}; rename one" for p in paths[1:]]
        problems += [
            f"{_shown(p)}: file name is not UTF-8; rename it" for p in paths if _not_utf8(p)
        ]
    others = [p for p in masks_dir.iterdir() if _is_visible_file(p) and p.suffix.lower() != ".png"]
    problems += [f"{p}: masks must be single-channel .png files" for p in others]
    for stem in sorted(images.keys() - masks.keys()):
        problems.append(f"{images[stem][0]}: no mask; expected {masks_dir / (stem + '.png')}")
    for stem in sorted(masks.keys() - images.keys()):
        problems.append(
            f"{masks[stem][0]}: no image {images_dir / stem}.<png|jpg|tif> for this mask"
        )
    return problems


def _read_pair(
    image_paths: list[pathlib.Path],
    mask_paths: list[pathlib.Path],
    num_classes: int,
    problems: list[str],
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(image, mask) of one stem, each None when absent or unreadable; appends their problems
    (unreadable, sizes that differ, label values beyond the classes) to ``problems``."""
    image = try_read(read_image, image_paths[:1], "image", problems)
    mask = try_read(read_mask, mask_paths[:1], "mask", problems)
    if image is not None and mask is not None and image.shape[:2] != mask.shape:
        problems.append(
            f"{mask_paths[0]}: mask is {_size(mask)} but image {image_paths[0].name} "
            f"is {_size(image)} (width x height)"
        )
    if mask is not None and num_classes:
        problems += _label_problems(mask_paths[0], mask, num_classes)
    return image, mask


def try_read(
    reader: Callable[[pathlib.Path], np.ndarray],
    paths: list[pathlib.Path],
    kind: str,
    problems: list[str],
) -> np.ndarray | None:
    """``reader(paths[0])``, or None (appending a problem) if absent or unreadable."""
    if not paths:
        return None
    try:
        return reader(paths[0])
    except FormatError as err:
        problems.append(f"{paths[0]}: {err}")
    except Exception as err:  # any decoder failure means a bad file
        problems.append(f"{paths[0]}: unreadable or corrupt {kind} ({err})")
    return None


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"


def _label_problems(path: pathlib.Path, mask: np.ndarray, num_classes: int) -> list[str]:
    outside = ((mask < 0) | (mask >= num_classes)) & (mask != UNLABELLED)
    if not outside.any():
        return []
    bad = np.unique(mask[outside]).tolist()
    shown = str(bad) if len(bad) <= 10 else f"[{', '.join(map(str, bad[:10]))}, ...]"
    return [
        f"{path}: label values {shown} outside the classes (0..{num_classes - 1}; "
        f"{UNLABELLED} marks unlabelled pixels)"
    ]


def _mixed_problems(decoded: list[_ImageKind], field: int, describe: str) -> list[str]:
    """One problem per image whose ``kind[field]`` differs from the most common value."""
    counts = collections.Counter(kind[field] for kind in decoded)
    if len(counts) < 2:
        return []
    common = counts.most_common(1)[0][0]
    return [
        f"{kind[0]}: {describe.format(kind[field])}, but most images have {describe.format(common)}"
        for kind in decoded
        if kind[field] != common
    ]


def read_labelled_folder(
    folder: pathlib.Path,
    num_classes: int,
    image_problems: Callable[[pathlib.Path, np.ndarray], list[str]],
    ignore_index: int = UNLABELLED,
    shard: slice = slice(None),
) -> Split:
    """The images and masks of a folder laid out as one split of a folder dataset
    (``images/<stem>.*``, ``masks/<stem>.png``), e.g. another cohort's labelled tiles for a
    trained model, every file checked before any is returned: the listing as a dataset's
    split (masks for images and images for masks, names), each file decoded once (sizes, labels
    0..num_classes-1 or UNLABELLED) and ``image_problems(path, image)`` of each image (e.g.
    against the model's inputs).

    Args:
      shard: the stems (sorted) to decode and return, e.g. one process's share; the listing is
        checked whole.

    Returns:
      The shard's images (H, W, C), masks (H, W) uint8 (unlabelled pixels as ``ignore_index``)
      and names (stems), sorted by stem.

    Raises:
      DatasetError: naming every problem, one '<path>: <problem>' line each.
    """
    if not folder.is_dir():
        raise DatasetError([f"{folder}: folder not found (it needs images/ and masks/ inside)"])
    splits = [s for s in SPLITS if (folder / s / "images").is_dir()]
    if splits and not (folder / "images").is_dir():
        raise DatasetError([f"{folder}: a folder dataset; name one of its splits: {splits}"])
    images, masks, problems = _split_listing(folder)
    split = Split([], [], [])
    for stem in sorted(images.keys() | masks.keys())[shard]:
        image, mask = _read_pair(images.get(stem, []), masks.get(stem, []), num_classes, problems)
        if image is not None:
            problems += image_problems(images[stem][0], image)
        if image is not None and mask is not None:
            split.images.append(image)
            split.masks.append(_unlabelled_as(mask, ignore_index))
            split.names.append(stem)
    if problems:
        raise DatasetError(problems)
    return split


# ----------------------------------------------------------------------------- sources


class _FolderSource:
    """Examples of a validated folder dataset."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.classes = read_classes(root / "classes.json")
        self.splits = _present_splits(root)

    def examples(self, split: str) -> Iterator[_Example]:
        for stem, image_path, mask_path in _split_pairs(self.root / split):
            yield stem, read_image(image_path), read_mask(mask_path).astype(np.uint8)


class _DemoSource:
    """Examples of the ndev-sampledata scratch assay, split by time point."""

    classes = DEMO_CLASSES
    splits = ("train", "test")

    def __init__(self, path: pathlib.Path) -> None:
        stack = tifffile.imread(path)  # (4, T, H, W): Hoechst, brightfield, nuclei, cytoplasm
        if stack.ndim != 4 or stack.shape[0] != 4:
            raise DatasetError([f"{path}: expected CTYX with 4 channels, got {stack.shape}"])
        self.images = np.ascontiguousarray(np.moveaxis(stack[:2], 0, -1))  # (T, H, W, 2)
        nuclei, cytoplasm = stack[2] > 0, stack[3] > 0
        self.masks = np.where(nuclei, 2, np.where(cytoplasm, 1, 0)).astype(np.uint8)

    def examples(self, split: str) -> Iterator[_Example]:
        frames = range(len(self.images))
        chosen = frames[:DEMO_TRAIN_FRAMES] if split == "train" else frames[DEMO_TRAIN_FRAMES:]
        for t in chosen:
            yield f"t{t:02d}", self.images[t], self.masks[t]


def demo_path() -> pathlib.Path:
    """Path of the demo TIFF inside the installed ndev-sampledata package.

    The package is located with ``importlib.util.find_spec``, not imported: its
    ``__init__`` needs bioio, which ``pip install --no-deps`` leaves out.
    """
    hint = "demo data not installed; run `make demo` or "
    hint += "`pip install --no-deps ndev-sampledata==0.0.3`"
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    paths = [pathlib.Path(folder) / DEMO_FILE for folder in folders]
    found = [path for path in paths if path.is_file()]
    if not found:
        raise DatasetError([f"{paths[0] if paths else DEMO_PACKAGE + '/' + DEMO_FILE}: {hint}"])
    return found[0]


# ----------------------------------------------------------------------------- statistics


class _Moments:
    """Accumulates label counts and per-channel value histograms over a split."""

    def __init__(self, num_classes: int) -> None:
        self.counts = np.zeros(num_classes, np.int64)
        self.image_pixels = np.zeros(num_classes, np.int64)  # of the images holding each class
        self.unlabelled = 0
        self.histograms: np.ndarray | None = None  # (C, 2**bits) int64
        self.dtype = np.dtype(np.uint8)

    def add(self, image: np.ndarray, mask: np.ndarray) -> None:
        """image: (H, W, C) uint8/uint16; mask: (H, W) uint8."""
        counts = np.bincount(mask.ravel(), minlength=len(self.counts))[: len(self.counts)]
        self.counts += counts
        self.image_pixels += np.where(counts > 0, counts.sum(), 0)
        self.unlabelled += int(np.count_nonzero(mask == UNLABELLED))
        bins = 1 << (8 * image.dtype.itemsize)
        channels = image.reshape(-1, image.shape[-1]).T
        histograms = np.stack([np.bincount(c, minlength=bins) for c in channels])
        if self.histograms is None or self.histograms.shape != histograms.shape:
            self.histograms = np.zeros_like(histograms)
        self.histograms += histograms
        self.dtype = image.dtype

    def metadata(self) -> dict[str, object]:
        """JSON-ready stats: counts, scale, and mean and std of image / scale per channel."""
        assert self.histograms is not None, "no train images"
        peak = int(np.flatnonzero(self.histograms.sum(axis=0)).max())
        scale = 255.0 if self.dtype == np.uint8 else float(max(peak, 1))
        values = np.arange(self.histograms.shape[1]) / scale
        weights = self.histograms / self.histograms.sum(axis=1, keepdims=True)
        mean = weights @ values
        std = np.sqrt((weights * np.square(values[None] - mean[:, None])).sum(axis=1))
        return {
            "image_dtype": self.dtype.name,
            "num_channels": int(mean.shape[0]),
            "train_pixel_counts": self.counts.tolist(),
            "train_image_pixel_counts": self.image_pixels.tolist(),
            "train_unlabelled_pixels": self.unlabelled,
            "scale": scale,
            "channel_mean": mean.tolist(),
            "channel_std": np.maximum(std, STD_FLOOR).tolist(),
        }


def _source_metadata(source: "_FolderSource | _DemoSource") -> dict[str, object]:
    moments = _Moments(len(source.classes))
    for _, image, mask in source.examples("train"):
        moments.add(image, mask)
    return {"classes": list(source.classes), "splits": list(source.splits), **moments.metadata()}


# ----------------------------------------------------------------------------- TFDS builders


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
    """Builder config of one folder dataset.

    Attributes:
      root: absolute path of the folder.
      image_dtype: "uint8" or "uint16", the dtype all its images share.
    """

    root: str = ""
    image_dtype: str = "uint8"


class _SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes (image, mask, name) examples in source order with the train stats as metadata."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    DESCRIPTION = "Semantic segmentation images with integer label masks."
    CITATION = ""
    # TFDS 4.9.10's code_path needs the uninstalled `importlib_resources` backport for
    # builders defined in a package; it only locates a checksums file, which we lack.
    code_path = None

    def _image_dtype(self) -> np.dtype:
        return np.dtype(self.builder_config.image_dtype)

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                "image": _zlib_tensor((None, None, None), self._image_dtype()),
                "mask": _zlib_tensor((None, None), np.dtype(np.uint8)),
                "name": tfds.features.Tensor(shape=(), dtype=np.str_),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=features,
            citation=self.CITATION,
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _source(self, dl_manager: tfds.download.DownloadManager) -> "_FolderSource | _DemoSource":
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        source = self._source(dl_manager)
        self.info.metadata.update(_source_metadata(source))
        return {split: self._generate_examples(source, split) for split in source.splits}

    def _generate_examples(
        self, source: "_FolderSource | _DemoSource", split: str
    ) -> Iterator[tuple[int, dict]]:
        for index, (name, image, mask) in enumerate(source.examples(split)):
            yield index, {"image": image, "mask": mask, "name": name}


def _zlib_tensor(shape: tuple[None, ...], dtype: np.dtype) -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.ZLIB)


class SeganFolder(_SegmentationBuilder, skip_registration=True):
    """A folder dataset; needs ``config=FolderConfig(name=config_name(root), root=...)``."""

    name = "segan_folder"

    def _source(self, dl_manager: tfds.download.DownloadManager) -> _FolderSource:
        return _FolderSource(pathlib.Path(self.builder_config.root))


class SeganConsep(SeganFolder, skip_registration=True):
    """CoNSeP in the folder layout, read from TFDS's manual_dir."""

    name = "segan_consep"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place CoNSeP in the folder layout (classes.json, train/images, train/masks, "
        "test/images, test/masks) in the manual_dir; see ../shared/data/consep/README.md."
    )
    DESCRIPTION = "CoNSeP colorectal H&E tiles, 4 merged nucleus types + background."
    CITATION = (
        "@article{graham2019hovernet, title={HoVer-Net: Simultaneous segmentation and "
        "classification of nuclei in multi-tissue histology images}, author={Graham, Simon "
        "and others}, journal={Medical Image Analysis}, volume={58}, pages={101563}, year={2019}}"
    )

    def _source(self, dl_manager: tfds.download.DownloadManager) -> _FolderSource:
        return _FolderSource(pathlib.Path(os.fspath(dl_manager.manual_dir)))


class SeganDemo(_SegmentationBuilder, skip_registration=True):
    """The ndev-sampledata scratch assay (see the module docstring)."""

    name = "segan_demo"
    DESCRIPTION = "ndev-sampledata scratch assay: Hoechst + brightfield, 3 classes."

    def _image_dtype(self) -> np.dtype:
        return np.dtype(np.uint16)

    def _source(self, dl_manager: tfds.download.DownloadManager) -> _DemoSource:
        return _DemoSource(demo_path())


_BUILDERS: dict[str, type[_SegmentationBuilder]] = {
    "demo": SeganDemo,
    "folder": SeganFolder,
    "consep": SeganConsep,
}


# ----------------------------------------------------------------------------- public API


def data_dir(data: ml_collections.ConfigDict) -> pathlib.Path:
    """TFDS data dir: data.data_dir, else $SEGAN_JAX_DATA_DIR, else ~/.cache/segan_jax/..."""
    default = os.environ.get("SEGAN_JAX_DATA_DIR") or "~/.cache/segan_jax/tensorflow_datasets"
    return pathlib.Path(data.get("data_dir", "") or default).expanduser().absolute()


def source_root(data: ml_collections.ConfigDict) -> pathlib.Path | None:
    """Absolute input folder for 'folder' and 'consep' (None for 'demo')."""
    if data.name not in _BUILDERS:
        raise DatasetError([f"unknown data.name {data.name!r}; use one of {sorted(_BUILDERS)}"])
    if data.name == "demo":
        if data.get("path", ""):
            raise DatasetError(
                [
                    f"{data.path}: data.path is set but data.name='demo' reads the built-in demo; "
                    "add --config.data.name=folder to train on this folder"
                ]
            )
        return None
    path = data.get("path", "")
    if data.name == "consep" and not path:
        return pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "consep"
    if not path:
        raise DatasetError(["data.path must name the dataset folder for data.name='folder'"])
    return pathlib.Path(path).expanduser().absolute()


def dataset_dir(data: ml_collections.ConfigDict) -> pathlib.Path:
    """TFDS version dir of ``data``: <data_dir>/<builder>/[<config>/]<version>."""
    root = source_root(data)
    base = data_dir(data) / _BUILDERS[data.name].name
    base = base if root is None else base / config_name(root)
    return base / str(_SegmentationBuilder.VERSION)


def _built_metadata(version_dir: pathlib.Path) -> dict | None:
    """Our metadata if TFDS finished ``version_dir`` and it holds every key, else None."""
    if not (version_dir / "dataset_info.json").is_file():
        return None
    try:
        metadata = json.loads((version_dir / "metadata.json").read_text())
    except (OSError, ValueError):
        return None
    return metadata if all(key in metadata for key in _META_KEYS) else None


def _make_builder(data: ml_collections.ConfigDict) -> _SegmentationBuilder:
    """A builder for a validated ``data`` source (reads one image for the folder dtype)."""
    kwargs: dict = {"data_dir": os.fspath(data_dir(data)), "file_format": "array_record"}
    root = source_root(data)
    if root is not None:
        dtype = read_image(_split_pairs(root / "train")[0][1]).dtype.name
        kwargs["config"] = FolderConfig(name=config_name(root), root=str(root), image_dtype=dtype)
    return _BUILDERS[data.name](**kwargs)


def _build(data: ml_collections.ConfigDict) -> None:
    """Validates the source of ``data``, then builds it with TFDS (atomically)."""
    root = source_root(data)
    if root is None:
        demo_path()
    else:
        validate_folder(root)
    version_dir = dataset_dir(data)
    shutil.rmtree(version_dir, ignore_errors=True)  # a version dir without our metadata
    for stale in version_dir.parent.glob(f"incomplete.*_{version_dir.name}"):
        if time.time() - stale.stat().st_mtime > STALE_BUILD_S:  # killed, not running
            shutil.rmtree(stale, ignore_errors=True)
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(root) if root else None)
    print(f"Building the dataset into {version_dir} (once: later runs read it)...", flush=True)
    start = time.perf_counter()
    try:
        with _tfds_quietly():
            _make_builder(data).download_and_prepare(download_config=config)
    except OSError:  # another process may have finished the same build first
        if _built_metadata(dataset_dir(data)) is None:
            raise
    else:
        print(f"Built in {time.perf_counter() - start:.1f} s", flush=True)


@contextlib.contextmanager
def _tfds_quietly() -> Iterator[None]:
    """TFDS's build messages off: its "Downloading and preparing dataset" and "downloaded and
    prepared" lines (printed to stdout; nothing is downloaded), its progress bars and its
    "Using custom data configuration" warning. Errors still raise. Afterwards the bars are as
    the caller had them (TFDS keeps that in a private flag; without it they are switched on)."""
    absl = logging.getLogger("absl")
    level = absl.level
    bars = bool(getattr(tqdm_utils, "_active", True))
    absl.setLevel(logging.ERROR)
    tfds.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(bars)
        absl.setLevel(level)


def _prepared(data: ml_collections.ConfigDict) -> tuple[pathlib.Path, dict]:
    """(version dir, metadata) of ``data``, validating and building it first if needed."""
    version_dir = dataset_dir(data)
    metadata = _built_metadata(version_dir)
    if metadata is None:
        _build(data)
        metadata = _built_metadata(version_dir)
    if metadata is None:
        raise RuntimeError(f"{version_dir}: TFDS build finished without our metadata")
    return version_dir, metadata


def info_metadata(info: DatasetInfo) -> dict[str, object]:
    """``info`` as the JSON-ready metadata it is read from (``info_from_metadata``'s inverse)."""
    return {
        "classes": list(info.classes),
        "splits": list(info.splits),
        "image_dtype": info.image_dtype,
        "num_channels": info.num_channels,
        "train_pixel_counts": np.asarray(info.train_pixel_counts).tolist(),
        "scale": info.scale,
        "channel_mean": np.asarray(info.channel_mean).tolist(),
        "channel_std": np.asarray(info.channel_std).tolist(),
    } | _newer_facts(info)


def _newer_facts(info: DatasetInfo) -> dict[str, object]:
    """The facts builds record since 2026-11-27, where ``info`` has them."""
    out: dict[str, object] = {}
    if info.train_image_pixel_counts is not None:
        out["train_image_pixel_counts"] = np.asarray(info.train_image_pixel_counts).tolist()
    if info.train_unlabelled_pixels is not None:
        out["train_unlabelled_pixels"] = int(info.train_unlabelled_pixels)
    return out


def info_from_metadata(metadata: dict) -> DatasetInfo:
    """The ``DatasetInfo`` of metadata a build wrote (or ``info_metadata``'s)."""
    num_channels = int(metadata["num_channels"])
    return DatasetInfo(
        classes=tuple(metadata["classes"]),
        num_channels=num_channels,
        splits=tuple(metadata["splits"]),
        train_pixel_counts=np.asarray(metadata["train_pixel_counts"], np.int64),
        scale=float(metadata["scale"]),
        channel_mean=np.asarray(metadata["channel_mean"], np.float32),
        channel_std=np.asarray(metadata["channel_std"], np.float32),
        is_rgb=num_channels == 3,
        image_dtype=str(metadata["image_dtype"]),
        train_image_pixel_counts=(
            np.asarray(metadata["train_image_pixel_counts"], np.int64)
            if "train_image_pixel_counts" in metadata
            else None
        ),
        train_unlabelled_pixels=metadata.get("train_unlabelled_pixels"),
    )


def load_info(data: ml_collections.ConfigDict) -> DatasetInfo:
    """Dataset facts of ``data`` (building the dataset on first use)."""
    return info_from_metadata(_prepared(data)[1])


def load_split(
    data: ml_collections.ConfigDict, split: str, process_index: int = 0, process_count: int = 1
) -> Split:
    """Reads one split into memory via TFDS's random-access ArrayRecord data source.

    Builds the dataset on first use (validation first). With ``process_count > 1`` only
    examples ``i`` with ``i % process_count == process_index`` are returned.
    Returns images (H, W, C) uint8/uint16, masks (H, W) uint8 (unlabelled pixels as
    data.ignore_index) and names (file stems).
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index}")
    version_dir, metadata = _prepared(data)
    if split not in metadata["splits"]:
        raise ValueError(f"split {split!r} not in dataset; it has {metadata['splits']}")
    source = tfds.builder_from_directory(os.fspath(version_dir)).as_data_source(split=split)
    records = [source[i] for i in range(process_index, len(source), process_count)]
    return Split(
        images=[np.asarray(r["image"]) for r in records],
        masks=[_unlabelled_as(r["mask"], data.get("ignore_index", UNLABELLED)) for r in records],
        names=[_text(r["name"]) for r in records],
    )


def _unlabelled_as(mask: np.ndarray, ignore_index: int) -> np.ndarray:
    """(H, W) uint8 mask with its UNLABELLED pixels set to ``ignore_index``."""
    mask = np.asarray(mask, np.uint8)
    if ignore_index == UNLABELLED:
        return mask
    return np.where(mask == UNLABELLED, np.uint8(ignore_index), mask)


def _text(value: bytes | str | np.ndarray) -> str:
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
