"""The paper's schedule end to end: `launch.py` itself (the training loop, its evaluations and
checkpoints), timed from outside, on a synthetic folder dataset of the paper's size (890
training and 100 test tiles of 256x256, 3 classes: random blobs on noise; the speed does not
depend on what the pixels show).

The run keeps the paper config's 25,000-step schedule (evaluation and checkpoint every 1,000
steps) and stops after --steps with `--max_steps_this_run`. Every progress and evaluation line
is timestamped as it arrives, which gives:

- `build_and_init_s`: a first launch.py with `--max_steps_this_run=0` (validating and
  building the TFDS dataset, initialising, writing the workdir; no step);
- `first_line_s`: launch.py's start to its first progress line (imports, data, init, compile,
  the first `log_every` steps);
- `steps_per_s`: the median rate between progress lines whose interval holds no evaluation;
- `evaluation_s`: per evaluation (and the checkpoints saved with it), the time its interval
  took beyond the median (the first includes compiling; the one after the last progress line
  is not measured);
- `evaluation_own_s`: the seconds each evaluation line reports for the evaluation itself
  (every one, the last included): the rest of `evaluation_s` is the checkpoints' saving and
  the records' writing;
- `wall_s`: the whole second launch.py (--steps steps);
- `extrapolated_run_s`: first_line_s + the config's other num_steps - log_every steps at
  steps_per_s + its num_steps / eval_every evaluations (the first as measured, the others at
  the median of the later ones; NaN with fewer than two measured, so --steps must cover three
  evaluations: 3,000 for the paper configs): the issue's "25,000 iterations at batch 16 in
  under 6 minutes" as a user sees it. The compilation cache is off.

  python benchmarks/end_to_end.py --steps=3000 --out=e2e.json -- --config.model.dtype=bfloat16
  # a CPU smoke run with a tiny network
  python benchmarks/end_to_end.py --steps=30 --tiles=8 --test=2 --size=64 -- \
      --config.model.depth=18 --config.model.width=8 --config.data.crop_size=64 \
      --config.train.log_every=5 --config.train.eval_every=10 --config.train.checkpoint_every=10

Arguments after `--` go to launch.py (and override the config's keys).
"""

import argparse
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]


def write_dataset(root: pathlib.Path, counts: dict[str, int], size: int, seed: int = 0) -> None:
    """A folder dataset: RGB noise with a few discs of classes 1 and 2 on background 0."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({"0": "background", "1": "a", "2": "b"}))
    yy, xx = np.mgrid[:size, :size]
    for split, count in counts.items():
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        for i in range(count):
            mask = np.zeros((size, size), np.uint8)
            for _ in range(6):
                y, x, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(4, size // 6))]
                mask[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = rng.integers(1, 3)
            image = rng.integers(0, 80, (size, size, 3)) + 60 * mask[..., None]
            Image.fromarray(image.astype(np.uint8)).save(root / split / "images" / f"{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")


def timed_lines(command: list[str], env: dict) -> tuple[list[tuple[float, str]], float]:
    """Runs `command`, echoing its output; returns ([(seconds since start, line)], its wall
    time). Exits when it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    for line in proc.stdout:
        lines.append((time.perf_counter() - start, line.rstrip()))
        print(f"[{lines[-1][0]:8.1f}s] {lines[-1][1]}", flush=True)
    if proc.wait():
        raise SystemExit(f"{command[1]} exited with {proc.returncode}")
    return lines, time.perf_counter() - start


def summarise(lines: list[tuple[float, str]], train: dict) -> dict:
    """The timings described in the module docstring, from launch.py's timestamped output and
    the run's `train` config (num_steps, log_every, eval_every)."""
    log_every = train["log_every"]
    events = [(t, "eval" if s.startswith("eval ") else "step") for t, s in lines if _is_event(s)]
    steps = [t for t, kind in events if kind == "step"]
    intervals, after_eval = [], []
    for i in range(1, len(events)):
        if events[i][1] == "step":
            j = i - 1  # the previous progress line, past any evaluation lines
            while events[j][1] == "eval":
                j -= 1
            (after_eval if j != i - 1 else intervals).append(events[i][0] - events[j][0])
    if len(intervals) < 2:
        raise SystemExit("under 2 intervals between progress lines without an evaluation")
    step_s = statistics.median(intervals[1:]) / log_every
    evaluation_s = [d - step_s * log_every for d in after_eval]
    evaluations = train["num_steps"] // train["eval_every"]
    return {
        "first_line_s": steps[0],
        "steps_per_s": 1 / step_s,
        "evaluation_s": evaluation_s,
        "evaluation_own_s": [float(m[1]) for _, s in lines if (m := EVALUATION_TOOK.search(s))],
        "progress_lines": len(steps),
        "num_steps": train["num_steps"],
        "extrapolated_run_s": steps[0]
        + (train["num_steps"] - log_every) * step_s
        + _evaluations_s(evaluation_s, evaluations),
    }


def _evaluations_s(measured: list[float], count: int) -> float:
    """`count` evaluations: the first as measured (it compiles), the others at the median of
    the later ones (NaN when none was measured: run past two evaluations)."""
    if len(measured) < 2:
        return float("nan")
    return measured[0] + (count - 1) * statistics.median(measured[1:])


# The end of training's evaluation line: "... | 100 images in 0.42 s".
EVALUATION_TOOK = re.compile(r"^eval .*\| \d+ images in ([\d.]+) s$")


def _is_event(line: str) -> bool:
    return line.startswith("eval ") or (line.startswith("step ") and "steps/s" in line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/paper_ce.py")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--tiles", type=int, default=890)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", default="")
    parser.add_argument(
        "--workdir", default="", help="kept; default: a temporary folder, deleted at the end"
    )
    args, overrides = parser.parse_known_args()
    if args.workdir:
        measure(args, overrides, pathlib.Path(args.workdir))
        return
    with tempfile.TemporaryDirectory(prefix="segan_e2e_") as tmp:  # data, checkpoints
        measure(args, overrides, pathlib.Path(tmp))


def measure(args: argparse.Namespace, overrides: list[str], tmp: pathlib.Path) -> None:
    """Writes the dataset into ``tmp``, runs launch.py twice there, prints (and saves) the
    timings."""
    data, run = tmp / "data", tmp / "run"
    write_dataset(data, {"train": args.tiles, "test": args.test}, args.size)
    command = [sys.executable, "launch.py", f"--config={args.config}", f"--workdir={run}"]
    command += [f"--config.data.path={data}", f"--config.data.data_dir={tmp / 'tfds'}"]
    command += ["--compilation_cache="]  # every compile timed, as on a user's first run
    command += [o for o in overrides if o != "--"]
    # 0 steps: validates and builds the dataset, initialises, writes the workdir, trains nothing
    _, build_s = timed_lines([*command, "--max_steps_this_run=0"], dict(os.environ))
    lines, wall_s = timed_lines([*command, f"--max_steps_this_run={args.steps}"], dict(os.environ))
    config = json.loads((run / "config.json").read_text())
    result = {
        "command": " ".join(command),
        "host": platform.node(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "steps": args.steps,
        "batch_size": config["train"]["batch_size"],
        "build_and_init_s": build_s,
        "wall_s": wall_s,
        **summarise(lines, config["train"]),
    }
    result["images_per_s"] = result["steps_per_s"] * result["batch_size"]
    print(json.dumps(result, indent=1))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
