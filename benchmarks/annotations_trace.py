"""What exporting predictions as QuPath annotations costs (``predict.geojson``): time and
memory of tracing one class's regions in a square label map of --sizes pixels, and of writing
a whole map's GeoJSON (3 classes, regions about 40 pixels across, a stand-in for a region of
a slide; each size in a fresh process, so the peak memory is that size's).

    python benchmarks/annotations_trace.py --sizes 2000 4000 8000
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def label_map(size: int, seed: int = 0) -> np.ndarray:
    """(size, size) uint8 labels 0..2 in 40x40 blocks of random class (merging into regions)."""
    coarse = np.random.default_rng(seed).integers(0, 3, (size // 40 + 1,) * 2).astype(np.uint8)
    return np.kron(coarse, np.ones((40, 40), np.uint8))[:size, :size]


def measure(size: int) -> dict:
    from segan_jax import annotations

    labels = label_map(size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    regions = len(annotations.class_polygons(labels, 1))
    traced = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    text = json.dumps(annotations.feature_collection(labels, ("background", "a", "b")))
    whole = time.perf_counter() - start
    return {
        "size": size,
        "class_1_regions": regions,
        "trace_class_1_s": round(traced, 2),
        "trace_bytes_per_pixel": round((peak - before) / size**2, 1),
        "feature_collection_s": round(whole, 2),
        "geojson_mb": round(len(text) / 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process's size
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    for size in args.sizes:
        command = [sys.executable, __file__, f"--one={size}"]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
