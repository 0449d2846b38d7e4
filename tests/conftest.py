"""Test set-up: two simulated CPU devices, and the dataset cache inside pytest's temp dirs."""

import atexit
import os
import shutil
import tempfile

# Must precede the first jax import: every test sees 2 CPU devices. The tests compile far more
# than they compute: XLA's backend optimisation level 0 compiles about a third faster (two
# parity tests: 100 -> 68 s). The test that trains for real lifts it (full_optimisation).
O0 = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count=2 {O0}"
).strip()
_FULL_OPTIMISATION = os.environ["XLA_FLAGS"].replace(O0, "").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same tiny model (and launch.py subprocesses inherit this): JAX's
# persistent compilation cache, in a folder of this session's own, saves most recompiles.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="segan_jax_test_jit_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import pathlib  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """One TFDS data dir for the whole session (the demo dataset is built once)."""
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="session")
def full_optimisation() -> str:
    """XLA_FLAGS for a subprocess that computes more than it compiles: without level 0."""
    return _FULL_OPTIMISATION


@pytest.fixture(scope="session")
def write_labelled_folder():
    """A function writing a ``datasets.Split`` as a labelled folder: images/<name>.tif and
    masks/<name>.png (one split of a folder dataset, an evaluation cohort)."""
    import tifffile
    from PIL import Image

    def write(folder: pathlib.Path, split) -> pathlib.Path:
        for sub in ("images", "masks"):
            (folder / sub).mkdir(parents=True)
        for name, image, mask in zip(split.names, split.images, split.masks, strict=True):
            tifffile.imwrite(folder / "images" / f"{name}.tif", image, photometric="minisblack")
            Image.fromarray(mask).save(folder / "masks" / f"{name}.png")
        return folder

    return write


@pytest.fixture(scope="session")
def write_slide():
    """A function writing a pyramidal tiled TIFF (as scanners write, zlib instead of JPEG so
    pixels are exact): an (H, W[, 3]) image and ``levels - 1`` reductions by 2, as SubIFDs;
    ``level0``: further tifffile options of the first page (its resolution, say)."""
    import tifffile

    def write(path: pathlib.Path, image, levels: int = 2, **level0) -> None:
        photometric = "rgb" if image.ndim == 3 else "minisblack"
        options = dict(tile=(64, 64), compression="zlib", photometric=photometric)
        with tifffile.TiffWriter(path, ome=level0.pop("ome", None)) as tif:
            tif.write(image, subifds=levels - 1, **options, **level0)
            for level in range(1, levels):
                tif.write(image[:: 2**level, :: 2**level], subfiletype=1, **options)

    return write
