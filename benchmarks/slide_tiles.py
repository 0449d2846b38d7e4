"""What cutting training tiles from a slide and its corrected annotations costs
(``segan_jax/slide_tiles.py``), and whether the masks are the annotations: seconds, peak
memory and tiles of `slide_tiles.tiles_from_slides`, each level in a fresh process.

The slide is a --size x --size mosaic of CoNSeP's 1000x1000 H&E training tiles (real tissue,
``../shared/data/consep``; `slide_predict.consep_mosaic`) as a pyramidal JPEG TIFF, levels
down by 4; its "corrected annotations" are the GeoJSON of the tiles' ground-truth masks as
predict streams it (`slides.GeoJSONWriter`, in 1024-row bands), and the same converted to
ImageScope XML as predict.imagescope does. At level 0 every tile's mask is compared with the
truth it was traced from.

    python benchmarks/slide_tiles.py --size 8192 [--runs 0,geojson 1,xml] [--tile_size 512]
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import slide_predict
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]


def prepare(folder: pathlib.Path, size: int) -> np.ndarray:
    """Writes folder/slides/mosaic.tif, folder/corrected/mosaic.geojson and
    folder/classes.json; returns the labels (H, W)."""
    from segan_jax import datasets, imagescope, slides, workdir

    image, labels, made = slide_predict.consep_mosaic(size)
    if labels is None:
        raise SystemExit(f"CoNSeP is absent ({slide_predict.CONSEP}): {made}")
    classes = datasets.read_classes(slide_predict.CONSEP.parents[1] / "classes.json")
    for sub in ("slides", "corrected"):
        (folder / sub).mkdir()
    slide_predict.write_pyramid(folder / "slides" / "mosaic.tif", image)
    start = time.perf_counter()
    with slides.GeoJSONWriter(folder / "corrected" / "mosaic.geojson", classes, (1, 1)) as w:
        for top in range(0, size, 1024):
            w.add(top, labels[top : top + 1024])
    geojson_s = time.perf_counter() - start
    workdir.write_json(folder / "classes.json", dict(enumerate(classes)))
    megabytes = (folder / "corrected" / "mosaic.geojson").stat().st_size / 1e6
    print(
        f"slide {size}x{size} of {made}; GeoJSON of its truth: {w.count} features, "
        f"{megabytes:.1f} MB, written in {geojson_s:.1f} s",
        flush=True,
    )
    (folder / "corrected_xml").mkdir()
    xml = folder / "corrected_xml" / "mosaic.xml"
    start = time.perf_counter()
    features = json.loads((folder / "corrected" / "mosaic.geojson").read_text())["features"]
    imagescope.save_xml(features, classes, xml)
    print(
        f"as ImageScope XML (imagescope.save_xml, reading the GeoJSON back included): "
        f"{xml.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    np.save(folder / "labels.npy", labels)
    return labels


def measure(folder: pathlib.Path, level: int, tile_size: int, source: str) -> dict:
    """One level's seconds, peak resident memory, tiles and (level 0) mask agreement, with
    the annotations of ``source`` ("geojson" or "xml")."""
    from segan_jax import slide_tiles

    output = folder / f"level{level}_{source}"
    corrected = folder / ("corrected" if source == "geojson" else "corrected_xml")
    before = slide_predict.peak_rss()
    start = time.perf_counter()
    names = slide_tiles.tiles_from_slides(
        folder / "slides", corrected, folder / "classes.json", output, level, tile_size
    )
    seconds = time.perf_counter() - start
    peak = slide_predict.peak_rss()
    figures = {
        "annotations": source,
        "level": level,
        "tile_size": tile_size,
        "tiles": len(names),
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(peak / 2**30, 2),
        "rss_before_gb": round(before / 2**30, 2),
    }
    if level == 0:
        figures["masks_equal_truth"] = _agreement(output, names, np.load(folder / "labels.npy"))
    return figures


def _agreement(output: pathlib.Path, names: list[str], labels: np.ndarray) -> str:
    """How many level-0 tiles' masks equal the truth under them, pixel for pixel."""
    equal = 0
    for name in names:
        x, y = (int(part[1:]) for part in name.split("_")[-2:])
        mask = np.asarray(Image.open(output / "masks" / f"{name}.png"))
        equal += np.array_equal(mask, labels[y : y + mask.shape[0], x : x + mask.shape[1]])
    return f"{equal} of {len(names)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument(
        "--runs", nargs="+", default=["0,geojson", "1,geojson", "1,xml"], help="level,source"
    )
    parser.add_argument("--tile_size", type=int, default=512)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child: folder,level,source
    args = parser.parse_args()
    if args.one:
        folder, level, source = args.one.rsplit(",", 2)
        print(json.dumps(measure(pathlib.Path(folder), int(level), args.tile_size, source)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        prepare(pathlib.Path(tmp), args.size)
        for run in args.runs:
            command = [sys.executable, __file__, f"--one={tmp},{run}"]
            command += [f"--tile_size={args.tile_size}"]
            out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
            print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
