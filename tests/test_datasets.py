"""Tests of segan_jax.datasets on tiny synthetic folders (and CoNSeP / demo data if present)."""

import importlib.util
import json
import os
import pathlib
import sys
from collections.abc import Callable

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
import tifffile
from PIL import Image
from tensorflow_datasets.core.utils import tqdm_utils

from segan_jax import datasets

CLASSES = ("background", "cell", "nucleus")
# Sizes deliberately not multiples of 16/32: (H, W).
SIZES = [(37, 53), (29, 41), (45, 23)]
CONSEP = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "consep"
CONSEP_TRAIN_COUNTS = [22575926, 46798, 717975, 2333703, 1325598]  # from its README.md


def _image(rng: np.random.Generator, size: tuple[int, int], kind: str) -> np.ndarray:
    """A random image: 'rgb'/'jpeg' (H, W, 3) uint8, 'grey16' (H, W) uint16."""
    if kind == "grey16":
        return rng.integers(0, 4000, size, dtype=np.uint16)
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def _write_image(folder: pathlib.Path, stem: str, image: np.ndarray, kind: str) -> pathlib.Path:
    if kind == "grey16":
        path = folder / f"{stem}.tif"
        tifffile.imwrite(path, image)
    else:
        path = folder / (f"{stem}.jpg" if kind == "jpeg" else f"{stem}.png")
        Image.fromarray(image).save(path, quality=90)
    return path


def _write_split(
    root: pathlib.Path, split: str, count: int, kind: str, rng: np.random.Generator
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writes ``count`` image/mask pairs; returns {stem: (image as written, mask)}."""
    (root / split / "images").mkdir(parents=True)
    (root / split / "masks").mkdir(parents=True)
    written = {}
    for i in range(count):
        stem, size = f"{split}_{i}", SIZES[i % len(SIZES)]
        image, mask = _image(rng, size, kind), rng.integers(0, len(CLASSES), size, dtype=np.uint8)
        _write_image(root / split / "images", stem, image, kind)
        Image.fromarray(mask).save(root / split / "masks" / f"{stem}.png")
        written[stem] = (image, mask)
    return written


def make_folder(
    root: pathlib.Path, kind: str = "rgb", counts: dict[str, int] | None = None, seed: int = 0
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A folder dataset; returns {split: {stem: (image, mask)}}."""
    rng = np.random.default_rng(seed)
    counts = counts or {"train": 3, "test": 2}
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(dict(enumerate(CLASSES))))
    return {split: _write_split(root, split, n, kind, rng) for split, n in counts.items()}


def config(root: pathlib.Path, data_dir: pathlib.Path, name: str = "folder"):
    return ml_collections.ConfigDict({"name": name, "path": str(root), "data_dir": str(data_dir)})


def built_dirs(data_dir: pathlib.Path) -> list[pathlib.Path]:
    """Dataset version dirs that TFDS finished (those holding dataset_info.json)."""
    return [p.parent for p in data_dir.rglob("dataset_info.json")]


@pytest.fixture
def folder(tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict]:
    root = tmp_path / "data"
    return root, make_folder(root)


def test_rgb_png_round_trip(tmp_path: pathlib.Path, folder: tuple[pathlib.Path, dict]) -> None:
    root, written = folder
    cfg = config(root, tmp_path / "tfds")
    for split in ("train", "test"):
        loaded = datasets.load_split(cfg, split)
        assert loaded.names == sorted(written[split])
        for name, image, mask in zip(loaded.names, loaded.images, loaded.masks, strict=True):
            assert image.dtype == np.uint8 and image.shape == written[split][name][0].shape
            np.testing.assert_array_equal(image, written[split][name][0])
            assert mask.dtype == np.uint8
            np.testing.assert_array_equal(mask, written[split][name][1])
    assert "tensorflow" not in sys.modules


def test_a_build_says_so_in_one_line_without_tfds_messages(tmp_path, folder, capfd) -> None:
    """TFDS's "Downloading and preparing" (nothing is downloaded), progress bars and its
    custom-configuration warning stay quiet; ours names where the dataset goes, once."""
    root, _ = folder
    datasets.load_info(config(root, tmp_path / "tfds"))
    out, err = capfd.readouterr()
    assert out.startswith("Building the dataset into ") and "Built in " in out
    assert "ownload" not in out + err and "custom data configuration" not in out + err
    assert "examples/s" not in out + err  # progress bars
    datasets.load_info(config(root, tmp_path / "tfds"))
    assert "Building" not in capfd.readouterr().out  # built once


@pytest.mark.parametrize("bars", [True, False])
def test_a_build_leaves_tfds_progress_bars_as_the_caller_had_them(tmp_path, folder, bars) -> None:
    root, _ = folder
    tfds.display_progress_bar(bars)
    try:
        datasets.load_info(config(root, tmp_path / "tfds"))
        assert tqdm_utils._active is bars
    finally:
        tfds.enable_progress_bar()


def test_hidden_and_system_files_are_not_data(tmp_path, folder) -> None:
    """macOS's .DS_Store and ._ files and Windows' Thumbs.db beside the images and masks are
    left alone; another non-PNG file among the masks is still refused."""
    root, written = folder
    for sub in ("images", "masks"):
        for name in (".DS_Store", "._train_0.png", "Thumbs.db", "desktop.ini"):
            (root / "train" / sub / name).write_bytes(b"\x00junk")
    loaded = datasets.load_split(config(root, tmp_path / "tfds"), "train")
    assert loaded.names == sorted(written["train"])
    (root / "train" / "masks" / "train_0.tif").write_bytes(b"II*\x00")
    with pytest.raises(datasets.DatasetError, match="train_0.tif: masks must be single-channel"):
        datasets.validate_folder(root)


def test_unlabelled_pixels_are_read_as_the_ignore_index(tmp_path, folder) -> None:
    """255 in a mask marks pixels nobody labelled: accepted, left out of the class counts, and
    read as data.ignore_index."""
    root, written = folder
    mask = written["train"]["train_1"][1].copy()
    mask[:5] = datasets.UNLABELLED
    _replace_mask(root, mask)
    masks = [mask if n == "train_1" else m for n, (_, m) in written["train"].items()]
    cfg = config(root, tmp_path / "tfds")
    counts = np.bincount(np.concatenate([m.ravel() for _, m in written["train"].values()]))
    counts[: len(CLASSES)] -= np.bincount(written["train"]["train_1"][1][:5].ravel(), minlength=3)
    info = datasets.load_info(cfg)
    np.testing.assert_array_equal(info.train_pixel_counts, counts[:3])
    holding = [  # labelled pixels of the train images that hold each class
        sum(int((m < 3).sum()) for m in masks if (m == k).any()) for k in range(3)
    ]
    np.testing.assert_array_equal(info.train_image_pixel_counts, holding)
    assert info.train_unlabelled_pixels == mask[:5].size
    loaded = datasets.load_split(cfg, "train")
    np.testing.assert_array_equal(loaded.masks[loaded.names.index("train_1")], mask)
    cfg.ignore_index = 200
    loaded = datasets.load_split(cfg, "train")
    np.testing.assert_array_equal(loaded.masks[loaded.names.index("train_1")][:5], 200)


def test_info_counts_scale_mean_std(tmp_path: pathlib.Path, folder: tuple[pathlib.Path, dict]):
    root, written = folder
    info = datasets.load_info(config(root, tmp_path / "tfds"))
    assert info.classes == CLASSES and info.splits == ("train", "test")
    assert info.num_channels == 3 and info.is_rgb and info.scale == 255.0
    masks = np.concatenate([m.ravel() for _, m in written["train"].values()])
    np.testing.assert_array_equal(info.train_pixel_counts, np.bincount(masks, minlength=3))
    assert info.train_pixel_counts.dtype == np.int64
    holding = [  # pixels of the train images that hold each class
        sum(m.size for _, m in written["train"].values() if (m == k).any()) for k in range(3)
    ]
    np.testing.assert_array_equal(info.train_image_pixel_counts, holding)
    # A tile of background alone counts for class 0 only.
    _replace_mask(root, np.zeros_like(written["train"]["train_1"][1]))
    alone = datasets.load_info(config(root, tmp_path / "tfds2")).train_image_pixel_counts
    size = written["train"]["train_1"][1].size
    np.testing.assert_array_equal(alone, np.array(holding) - [0, size, size])
    pixels = np.concatenate([i.reshape(-1, 3) for i, _ in written["train"].values()]) / 255.0
    np.testing.assert_allclose(info.channel_mean, pixels.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(info.channel_std, pixels.std(axis=0), rtol=1e-5)
    assert info.channel_mean.dtype == np.float32 and info.channel_std.dtype == np.float32
    # As a run saves it (dataset_info.json) and reads it back.
    again = datasets.info_from_metadata(json.loads(json.dumps(datasets.info_metadata(info))))
    assert datasets.info_metadata(again) == datasets.info_metadata(info)
    np.testing.assert_array_equal(again.channel_std, info.channel_std)
    assert again.channel_std.dtype == np.float32 and again.train_pixel_counts.dtype == np.int64


def test_grey_uint16_tiff_round_trip_and_scale(tmp_path: pathlib.Path) -> None:
    written = make_folder(tmp_path / "data", kind="grey16")
    cfg = config(tmp_path / "data", tmp_path / "tfds")
    loaded = datasets.load_split(cfg, "train")
    for name, image in zip(loaded.names, loaded.images, strict=True):
        assert image.dtype == np.uint16 and image.shape[2] == 1
        np.testing.assert_array_equal(image[..., 0], written["train"][name][0])
    info = datasets.load_info(cfg)
    raw = np.concatenate([i.ravel() for i, _ in written["train"].values()]).astype(np.float64)
    assert info.scale == raw.max() and info.num_channels == 1 and not info.is_rgb
    np.testing.assert_allclose(info.channel_mean, [raw.mean() / raw.max()], rtol=1e-5)
    np.testing.assert_allclose(info.channel_std, [raw.std() / raw.max()], rtol=1e-5)


def test_tiff_channels_are_found_last_or_first(tmp_path: pathlib.Path) -> None:
    image = np.arange(40 * 48 * 2, dtype=np.uint16).reshape(40, 48, 2)
    tifffile.imwrite(tmp_path / "last.tif", image)  # stored as QYX, (40, 48, 2)
    tifffile.imwrite(tmp_path / "first.tif", np.moveaxis(image, -1, 0))  # QYX, (2, 40, 48)
    tifffile.imwrite(tmp_path / "named.tif", np.moveaxis(image, -1, 0), metadata={"axes": "CYX"})
    for name in ("last", "first", "named"):
        np.testing.assert_array_equal(datasets.read_image(tmp_path / f"{name}.tif"), image)


def test_jpeg_loads_as_decoded(tmp_path: pathlib.Path) -> None:
    written = make_folder(tmp_path / "data", kind="jpeg")
    loaded = datasets.load_split(config(tmp_path / "data", tmp_path / "tfds"), "test")
    for name, image, mask in zip(loaded.names, loaded.images, loaded.masks, strict=True):
        decoded = np.asarray(Image.open(tmp_path / "data" / "test" / "images" / f"{name}.jpg"))
        np.testing.assert_array_equal(image, decoded)
        np.testing.assert_array_equal(mask, written["test"][name][1])


def test_an_opaque_alpha_channel_is_dropped_and_transparency_refused(tmp_path: pathlib.Path):
    rgba = np.random.default_rng(0).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "tile.png")  # as OpenSlide tiles come
    np.testing.assert_array_equal(datasets.read_image(tmp_path / "tile.png"), rgba[..., :3])
    grey_alpha = np.stack([rgba[..., 0], rgba[..., 3]], axis=-1)
    Image.fromarray(grey_alpha, "LA").save(tmp_path / "grey.png")
    np.testing.assert_array_equal(datasets.read_image(tmp_path / "grey.png"), rgba[..., :1])
    tiff = {"photometric": "rgb", "extrasamples": ["unassalpha"]}
    tifffile.imwrite(tmp_path / "tile.tif", rgba, **tiff)
    np.testing.assert_array_equal(datasets.read_image(tmp_path / "tile.tif"), rgba[..., :3])
    rgba[2, 3, 3] = 254
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    tifffile.imwrite(tmp_path / "cut.tif", rgba, **tiff)
    for name in ("cut.png", "cut.tif"):
        with pytest.raises(datasets.FormatError, match="transparent pixels"):
            datasets.read_image(tmp_path / name)


@pytest.mark.parametrize("compression", ["lzw", "jpeg", "zlib"])
def test_compressed_tiffs_are_read(tmp_path: pathlib.Path, compression: str) -> None:
    image = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "x.tif", image, compression=compression, photometric="rgb")
    read = datasets.read_image(tmp_path / "x.tif")
    assert read.shape == image.shape and read.dtype == np.uint8
    if compression != "jpeg":  # lossy
        np.testing.assert_array_equal(read, image)


def test_system_files_leave_the_fingerprint_alone(tmp_path: pathlib.Path) -> None:
    """Explorer writing Thumbs.db (or macOS .DS_Store) does not make the data new."""
    root = tmp_path / "data"
    make_folder(root)
    before = datasets.fingerprint(root)
    (root / "train" / "images" / "Thumbs.db").write_bytes(b"\x00")
    (root / "train" / "masks" / ".DS_Store").write_bytes(b"\x00")
    assert datasets.fingerprint(root) == before


def test_a_file_name_that_is_not_utf8_is_fingerprinted(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "data"
    make_folder(root)
    before = datasets.fingerprint(root)
    odd = os.fsdecode(b"caf\xe9.png")  # as unpacked from an old Windows zip
    first = sorted((root / "train" / "images").iterdir())[0]
    first.rename(first.with_name(odd))
    assert datasets.fingerprint(root) != before
    with pytest.raises(datasets.DatasetError, match=r"caf\\xe9.png: file name is not UTF-8"):
        datasets.validate_folder(root)


def test_val_split_is_optional(tmp_path: pathlib.Path) -> None:
    written = make_folder(tmp_path / "data", counts={"train": 2, "val": 1, "test": 1})
    cfg = config(tmp_path / "data", tmp_path / "tfds")
    assert datasets.load_info(cfg).splits == ("train", "val", "test")
    assert datasets.load_split(cfg, "val").names == list(written["val"])
    with pytest.raises(ValueError, match="not in dataset"):
        datasets.load_split(cfg, "validation")


def test_changed_files_are_rebuilt(tmp_path: pathlib.Path, folder: tuple[pathlib.Path, dict]):
    root, _ = folder
    cfg = config(root, tmp_path / "tfds")
    first = datasets.dataset_dir(cfg)
    datasets.load_split(cfg, "train")
    new_mask = np.zeros(SIZES[0], np.uint8)
    mask_path = root / "train" / "masks" / "train_0.png"
    Image.fromarray(new_mask).save(mask_path)
    os.utime(mask_path, ns=(mask_path.stat().st_atime_ns, mask_path.stat().st_mtime_ns + 10**9))
    assert datasets.dataset_dir(cfg) != first
    np.testing.assert_array_equal(datasets.load_split(cfg, "train").masks[0], new_mask)


def test_two_folders_never_share_a_cache(tmp_path: pathlib.Path) -> None:
    make_folder(tmp_path / "a", seed=1)
    make_folder(tmp_path / "b", seed=2)
    config_a, config_b = (
        config(tmp_path / "a", tmp_path / "tfds"),
        config(tmp_path / "b", tmp_path / "tfds"),
    )
    assert datasets.dataset_dir(config_a) != datasets.dataset_dir(config_b)
    images_a = datasets.load_split(config_a, "test").images
    images_b = datasets.load_split(config_b, "test").images
    assert not np.array_equal(images_a[0], images_b[0])


def test_missing_metadata_means_not_built(
    tmp_path: pathlib.Path, folder: tuple[pathlib.Path, dict]
):
    root, _ = folder
    cfg = config(root, tmp_path / "tfds")
    expected = datasets.load_info(cfg)
    (datasets.dataset_dir(cfg) / "metadata.json").unlink()
    assert datasets.load_info(cfg).classes == expected.classes
    assert (datasets.dataset_dir(cfg) / "metadata.json").is_file()


def test_crash_mid_build_leaves_no_valid_dataset(
    tmp_path: pathlib.Path, folder: tuple[pathlib.Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(folder[0], tmp_path / "tfds")
    original = datasets._FolderSource.examples

    def crash_on_test(self: datasets._FolderSource, split: str):
        if split == "test":
            raise RuntimeError("simulated crash after the train split was written")
        yield from original(self, split)

    monkeypatch.setattr(datasets._FolderSource, "examples", crash_on_test)
    with pytest.raises(RuntimeError, match="simulated crash"):
        datasets.load_info(cfg)
    assert not built_dirs(tmp_path / "tfds")
    monkeypatch.undo()
    # A build killed outright leaves TFDS's incomplete.* folder: the next build removes it once
    # it is stale, not while it may be another process's build in progress.
    version_dir = datasets.dataset_dir(cfg)
    killed, running = (version_dir.parent / f"incomplete.{t}_{version_dir.name}" for t in "AB")
    (killed / "train").mkdir(parents=True)
    (running / "train").mkdir(parents=True)
    old = killed.stat().st_mtime - datasets.STALE_BUILD_S - 60
    os.utime(killed, (old, old))
    assert datasets.load_split(cfg, "test").names == ["test_0", "test_1"]
    assert not killed.exists() and running.exists()


def test_process_shards_are_disjoint_and_complete(tmp_path: pathlib.Path) -> None:
    make_folder(tmp_path / "data", counts={"train": 5, "test": 1})
    cfg = config(tmp_path / "data", tmp_path / "tfds")
    everything = datasets.load_split(cfg, "train").names
    for count in (2, 3):
        shards = [datasets.load_split(cfg, "train", i, count).names for i in range(count)]
        assert sorted(sum(shards, [])) == sorted(everything)
        assert shards[1] == everything[1::count]
    with pytest.raises(ValueError):
        datasets.load_split(cfg, "train", 2, 2)


def test_validate_folder_accepts_a_good_folder(folder: tuple[pathlib.Path, dict]) -> None:
    datasets.validate_folder(folder[0])


# ----------------------------------------------------------------------------- validation errors


def _truncate(path: pathlib.Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _replace_mask(root: pathlib.Path, array: np.ndarray) -> pathlib.Path:
    path = root / "train" / "masks" / "train_1.png"
    Image.fromarray(array).save(path)
    return path


def _bad_labels(root: pathlib.Path) -> pathlib.Path:
    mask = np.zeros(SIZES[1], np.uint8)
    mask[0, :2], mask[1, 0], mask[2, 0] = 7, 9, datasets.UNLABELLED  # the last is allowed
    return _replace_mask(root, mask)


def _grey_image(root: pathlib.Path) -> pathlib.Path:
    (root / "test" / "images" / "test_0.png").unlink()
    return _write_image(root / "test" / "images", "test_0", np.zeros(SIZES[0], np.uint8), "rgb")


def _text_as_png(root: pathlib.Path) -> pathlib.Path:
    path = root / "test" / "images" / "test_1.png"
    path.write_text("this is not an image\n")
    return path


def _truncated(split: str, sub: str, name: str) -> Callable[[pathlib.Path], pathlib.Path]:
    def mutate(root: pathlib.Path) -> pathlib.Path:
        _truncate(root / split / sub / name)
        return root / split / sub / name

    return mutate


def _unlink(relative: str, named: str) -> Callable[[pathlib.Path], pathlib.Path]:
    def mutate(root: pathlib.Path) -> pathlib.Path:
        (root / relative).unlink()
        return root / named

    return mutate


def _write(relative: str, text: str) -> Callable[[pathlib.Path], pathlib.Path]:
    def mutate(root: pathlib.Path) -> pathlib.Path:
        (root / relative).write_text(text)
        return root / relative

    return mutate


def _remove_split(root: pathlib.Path) -> pathlib.Path:
    for path in sorted((root / "test").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (root / "test").rmdir()
    return root / "test"


def _empty_split(root: pathlib.Path) -> pathlib.Path:
    for sub in ("images", "masks"):
        for path in (root / "train" / sub).iterdir():
            path.unlink()
    return root / "train" / "images"


def _orphan_mask(root: pathlib.Path) -> pathlib.Path:
    path = root / "train" / "masks" / "extra.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    return path


def _jpeg_copy(root: pathlib.Path) -> pathlib.Path:
    """Adds a truncated JPEG (with its mask)."""
    image_path = _write_image(
        root / "train" / "images", "cut", np.zeros((37, 53, 3), np.uint8), "jpeg"
    )
    Image.fromarray(np.zeros((37, 53), np.uint8)).save(root / "train" / "masks" / "cut.png")
    _truncate(image_path)
    return image_path


def _float_tiff(root: pathlib.Path) -> pathlib.Path:
    (root / "train" / "images" / "train_0.png").unlink()
    path = root / "train" / "images" / "train_0.tif"
    tifffile.imwrite(path, np.zeros(SIZES[0], np.float32))
    return path


CASES = {
    "missing classes.json": (_unlink("classes.json", "classes.json"), "missing"),
    "classes.json not JSON": (_write("classes.json", "{background"), "invalid JSON"),
    "classes.json gap": (_write("classes.json", '{"0": "a", "2": "b"}'), "without gaps"),
    "missing split": (_remove_split, "missing split folder"),
    "empty split": (_empty_split, "no images"),
    "truncated png": (_truncated("train", "images", "train_2.png"), "corrupt image"),
    "text renamed png": (_text_as_png, "corrupt image"),
    "truncated jpeg": (_jpeg_copy, "corrupt image"),
    "truncated mask": (_truncated("test", "masks", "test_0.png"), "corrupt mask"),
    "image without mask": (
        _unlink("train/masks/train_0.png", "train/images/train_0.png"),
        "train/masks/train_0.png",
    ),
    "mask without image": (_orphan_mask, "no image"),
    "size mismatch": (lambda r: _replace_mask(r, np.zeros((30, 41), np.uint8)), "41x30"),
    "rgb mask": (lambda r: _replace_mask(r, np.zeros((*SIZES[1], 3), np.uint8)), "single-channel"),
    "bad labels": (
        _bad_labels,
        "label values [7, 9] outside the classes (0..2; 255 marks unlabelled pixels)",
    ),
    "float tiff": (_float_tiff, "pixel type float32 not supported"),
    "mixed channels": (_grey_image, "1 channel(s), but most images have 3 channel(s)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_error_names_file(tmp_path: pathlib.Path, case: str) -> None:
    root = tmp_path / "data"
    make_folder(root)
    mutate, expected = CASES[case]
    bad_path = mutate(root)
    with pytest.raises(datasets.DatasetError) as caught:
        datasets.load_split(config(root, tmp_path / "tfds"), "train")
    matching = [p for p in caught.value.problems if p.startswith(f"{bad_path}: ")]
    assert matching and any(expected in p for p in matching), caught.value.problems
    assert not built_dirs(tmp_path / "tfds")


def test_size_mismatch_gives_both_sizes(folder: tuple[pathlib.Path, dict]) -> None:
    path = _replace_mask(folder[0], np.zeros((30, 41), np.uint8))
    with pytest.raises(datasets.DatasetError) as caught:
        datasets.validate_folder(folder[0])
    assert caught.value.problems == [
        f"{path}: mask is 41x30 but image train_1.png is 41x29 (width x height)"
    ]


def test_all_problems_reported_together(tmp_path: pathlib.Path, folder: tuple[pathlib.Path, dict]):
    root, _ = folder
    paths = [_bad_labels(root), _text_as_png(root), _orphan_mask(root)]
    with pytest.raises(datasets.DatasetError) as caught:
        datasets.validate_folder(root)
    assert len(caught.value.problems) == 3
    lines = str(caught.value).splitlines()
    assert sorted(line.split(": ")[0] for line in lines) == sorted(str(p) for p in paths)


def test_failed_build_leaves_nothing_then_fixed_folder_builds(
    tmp_path: pathlib.Path, folder: tuple[pathlib.Path, dict]
) -> None:
    root, written = folder
    cfg = config(root, tmp_path / "tfds")
    _bad_labels(root)
    with pytest.raises(datasets.DatasetError):
        datasets.load_info(cfg)
    assert not built_dirs(tmp_path / "tfds")
    assert not datasets.dataset_dir(cfg).exists()
    _replace_mask(root, written["train"]["train_1"][1])
    assert datasets.load_info(cfg).classes == CLASSES
    assert built_dirs(tmp_path / "tfds") == [datasets.dataset_dir(cfg)]


def test_config_errors(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # DatasetError: launch.py prints these in one line, without a traceback
    with pytest.raises(datasets.DatasetError, match="unknown data.name"):
        datasets.load_info(config(tmp_path, tmp_path, name="imagenet"))
    with pytest.raises(datasets.DatasetError, match="data.path must name the dataset folder"):
        datasets.load_info(
            ml_collections.ConfigDict({"name": "folder", "path": "", "data_dir": ""})
        )
    with pytest.raises(datasets.DatasetError, match="dataset folder not found"):
        datasets.load_info(config(tmp_path / "nowhere", tmp_path / "tfds"))
    demo_with_path = ml_collections.ConfigDict({"name": "demo", "path": "/my/tiles"})
    with pytest.raises(datasets.DatasetError, match="/my/tiles: .*data.name=folder"):
        datasets.load_info(demo_with_path)
    monkeypatch.setenv("SEGAN_JAX_DATA_DIR", str(tmp_path / "env"))
    cfg = ml_collections.ConfigDict({"name": "demo", "path": "", "data_dir": ""})
    assert datasets.data_dir(cfg) == tmp_path / "env"


# ----------------------------------------------------------------------------- real data


@pytest.mark.skipif(
    importlib.util.find_spec("ndev_sampledata") is None, reason="ndev-sampledata not installed"
)
def test_demo(tmp_path: pathlib.Path) -> None:
    cfg = ml_collections.ConfigDict({"name": "demo", "path": "", "data_dir": str(tmp_path)})
    info = datasets.load_info(cfg)
    assert info.classes == ("background", "cytoplasm", "nucleus") and info.num_channels == 2
    train, test = datasets.load_split(cfg, "train"), datasets.load_split(cfg, "test")
    assert train.names == [f"t{t:02d}" for t in range(7)]
    assert test.names == ["t07", "t08", "t09"]
    for image, mask in zip(train.images + test.images, train.masks + test.masks, strict=True):
        assert image.shape == (210, 576, 2) and image.dtype == np.uint16
        assert mask.shape == (210, 576) and set(np.unique(mask)) == {0, 1, 2}
    assert info.scale == max(int(i.max()) for i in train.images)
    assert "tensorflow" not in sys.modules


@pytest.mark.skipif(not CONSEP.is_dir(), reason=f"CoNSeP not found at {CONSEP}")
def test_consep(tmp_path: pathlib.Path) -> None:
    cfg = ml_collections.ConfigDict({"name": "consep", "path": "", "data_dir": str(tmp_path)})
    info = datasets.load_info(cfg)
    assert len(info.classes) == 5 and info.is_rgb and info.splits == ("train", "test")
    assert info.train_pixel_counts.tolist() == CONSEP_TRAIN_COUNTS
    train = datasets.load_split(cfg, "train")
    assert len(train.names) == 27 and train.images[0].shape == (1000, 1000, 3)
    assert train.images[0].dtype == np.uint8 and train.masks[0].max() <= 4


def test_a_labelled_folder_read_in_shards_gives_each_image_once(tmp_path, write_labelled_folder):
    rng = np.random.default_rng(0)
    names = [f"tile{i}" for i in range(5)]
    images = [rng.integers(0, 255, (6, 7, 3), dtype=np.uint8) for _ in names]
    masks = [rng.integers(0, 3, (6, 7), dtype=np.uint8) for _ in names]
    folder = write_labelled_folder(tmp_path / "cohort", datasets.Split(images, masks, names))
    ok = lambda path, image: []  # noqa: E731
    whole = datasets.read_labelled_folder(folder, 3, ok)
    shards = [datasets.read_labelled_folder(folder, 3, ok, shard=slice(i, None, 2)) for i in (0, 1)]
    assert sorted(shards[0].names + shards[1].names) == whole.names == names
    for shard in shards:
        for name, image, mask in zip(shard.names, shard.images, shard.masks, strict=True):
            np.testing.assert_array_equal(image, images[names.index(name)])
            np.testing.assert_array_equal(mask, masks[names.index(name)])
    (folder / "masks" / "tile4.png").unlink()  # a listing problem: every shard names it
    for i in (0, 1):
        with pytest.raises(datasets.DatasetError, match="tile4.tif: no mask"):
            datasets.read_labelled_folder(folder, 3, ok, shard=slice(i, None, 2))


def test_slide_of_reads_the_slide_from_slide_tiles_names():
    assert datasets.slide_of("s_L0_x256_y128") == "s"
    assert datasets.slide_of("case 7_b_L1_x0_y0") == "case 7_b"
    assert datasets.slide_of("s_L0b2_x512_y0") == "s"  # level 0 in 2x2 blocks
    assert datasets.slide_of("test_1") == "test_1" and datasets.slide_of("a_L1_x0") == "a_L1_x0"
