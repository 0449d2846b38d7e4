"""What predicting a whole slide region by region costs (``segan_jax/slides.py``): seconds and
peak memory of `slides.predict_slide` (label TIFF and GeoJSON) on a --size x --size RGB
pyramidal JPEG TIFF, against reading the same slide whole and predicting it in the same
windows (`evaluate.predict_all` with a tiling), each in a fresh process so that its peak
memory is its own.

The slide is a mosaic of CoNSeP's 1000x1000 H&E tiles (``../shared/data/consep``, real tissue;
noise where it is absent), the network the demo's (ResNet-18 width 16, OS8) with random
weights: the cost does not depend on what it learned (the number of regions, for GeoJSON,
does a little).

    python benchmarks/slide_predict.py --size 8192 [--geojson=0] [--modes bands whole blocks2]

Mode ``blocksF`` predicts level 0 read in F x F blocks (`slides.BlockMeans`,
``predict.resample``): a (size / F)-square label map from the full-resolution pixels.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
CONSEP = REPO.parent / "shared" / "data" / "consep" / "train" / "images"


def write_slide(path: pathlib.Path, size: int) -> str:
    """A size x size RGB pyramidal JPEG TIFF of CoNSeP tiles (`consep_mosaic`); returns what
    it was made of."""
    image, _, made = consep_mosaic(size)
    write_pyramid(path, image)
    return made


def consep_mosaic(size: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(size x size RGB mosaic of CoNSeP's training tiles, its labels from their masks or None,
    what it was made of); noise without labels where CoNSeP is absent."""
    from PIL import Image

    tiles = sorted(CONSEP.glob("*.jpg")) if CONSEP.is_dir() else []
    n = -(-size // 1000)
    image = np.empty((n * 1000, n * 1000, 3), np.uint8)
    labels = np.zeros(image.shape[:2], np.uint8) if tiles else None
    rng = np.random.default_rng(0)
    for i in range(n * n):
        r, c = divmod(i, n)
        where = np.s_[r * 1000 : (r + 1) * 1000, c * 1000 : (c + 1) * 1000]
        if not tiles:
            image[where] = rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
            continue
        tile = tiles[i % len(tiles)]
        image[where] = np.asarray(Image.open(tile).convert("RGB"))[:1000, :1000]
        labels[where] = np.asarray(Image.open(CONSEP.parent / "masks" / f"{tile.stem}.png"))[
            :1000, :1000
        ]
    made = f"{len(tiles)} CoNSeP tiles" if tiles else "noise (CoNSeP absent)"
    return image[:size, :size], None if labels is None else labels[:size, :size], made


def write_pyramid(path: pathlib.Path, image: np.ndarray) -> None:
    """An RGB image as a pyramidal JPEG TIFF, tiled 256, levels down by 4 and 16."""
    import tifffile

    options = dict(tile=(256, 256), compression="jpeg", photometric="rgb")
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(image, subifds=2, **options)
        for k in (4, 16):
            tif.write(image[::k, ::k], subfiletype=1, **options)


def peak_rss() -> int:
    """Bytes of this process's peak resident memory since it started (VmHWM): getrusage's
    ru_maxrss would also count the parent's peak before it started this process (Linux keeps
    it across fork and exec)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def measure(mode: str, path: pathlib.Path, window: int, margin: int, with_geojson: bool) -> dict:
    """One mode's seconds and peak resident memory (after the network is compiled on one
    window, so the figures are the slide's)."""
    predict = _demo_network(window, margin)
    predict(np.zeros((window, window, 3), np.uint8))  # compile
    before = peak_rss()
    start = time.perf_counter()
    shape = _predict(mode, path, predict, _tiling(window, margin), with_geojson)
    seconds = time.perf_counter() - start
    peak = peak_rss()
    pixels = shape[0] * shape[1]
    return {
        "mode": mode,
        "geojson": with_geojson,
        "size": list(shape),
        "seconds": round(seconds, 1),
        "megapixels_per_s": round(pixels / seconds / 1e6, 2),
        "peak_rss_gb": round(peak / 2**30, 2),
        "rss_before_gb": round(before / 2**30, 2),
        "slide_rgb_gb": round(pixels * 3 / 2**30, 2),
    }


def _tiling(window: int, margin: int):
    """The windows the slide is predicted in."""
    from segan_jax import tiles

    return tiles.Tiling(window, margin)


def _demo_network(window: int, margin: int):
    """(H, W, 3) uint8 -> (H, W) labels of the demo's network, random weights, in windows."""
    import jax

    from segan_jax import evaluate, input_pipeline, models

    model = models.DeepLabV3(num_classes=3, depth=18, width=16, aspp_features=64)
    variables = model.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32), train=False)
    normalizer = input_pipeline.Normalizer(255.0, (0.5,) * 3, (0.25,) * 3, True)
    tiling = _tiling(window, margin)

    def predict(rows: np.ndarray) -> np.ndarray:
        return evaluate.predict_all(model, variables, [rows], normalizer, tiling=tiling)[0]

    return predict


def _predict(mode: str, path: pathlib.Path, predict, tiling, with_geojson: bool):
    """Predicts the slide band by band or read whole, writing the label TIFF (and GeoJSON);
    returns its (H, W)."""
    import tifffile

    from segan_jax import annotations, slides

    out = path.with_name(f"{mode}_labels.tif")
    classes = ("background", "a", "b")
    if mode == "bands" or mode.startswith("blocks"):
        geojson = (out.with_suffix(".geojson"), classes) if with_geojson else None
        factor = int(mode.removeprefix("blocks") or 1) if mode != "bands" else 1
        info = slides.predict_slide(path, 0, tiling, predict, out, geojson, factor=factor)
        return info.shape
    image = tifffile.imread(path)
    labels = predict(image)
    tifffile.imwrite(out, labels, tile=(256, 256), compression="zlib")
    if with_geojson:
        annotations.save_geojson(labels, classes, out.with_suffix(".geojson"))
    return image.shape[:2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--margin", type=int, default=64)
    parser.add_argument("--modes", nargs="+", default=["bands", "whole"])
    parser.add_argument("--geojson", type=int, default=1, help="also write GeoJSON (1) or not")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: mode,path
    args = parser.parse_args()
    if args.one:
        mode, path = args.one.split(",", 1)
        figures = measure(mode, pathlib.Path(path), args.window, args.margin, bool(args.geojson))
        print(json.dumps(figures))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "slide.tif"
        made = write_slide(path, args.size)
        print(f"slide {args.size}x{args.size} of {made}: {path.stat().st_size / 1e6:.1f} MB")
        for mode in args.modes:
            command = [sys.executable, __file__, f"--one={mode},{path}"]
            command += [f"--window={args.window}", f"--margin={args.margin}"]
            command += [f"--geojson={args.geojson}"]
            out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
            print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
