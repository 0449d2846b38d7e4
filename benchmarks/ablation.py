"""Ablation of the paper's experiments: CE vs + single critic vs + per-class critics, each with
and without inverse-frequency class weights, over several seeds, on one dataset and budget.

Writes a markdown and a JSON table of per-class F1 and IoU (mean +- std over seeds, final
checkpoint, whole-image evaluation) and the foreground means, and each experiment's change
against the first with its 95 % bootstrap interval over the seeds and the test images
(`compare.runs_comparison`, where the records hold per-image matrices). Runs are ordinary
workdirs under --workdir, so an interrupted ablation resumes where it stopped.

  python benchmarks/ablation.py --data=consep --scale=cpu --steps=400      # 2 CPU cores
  python benchmarks/ablation.py --data=consep --scale=full --steps=25000   # one GPU
"""

import argparse
import datetime
import importlib
import json
import pathlib
import platform
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segan_jax import compare, inference, train  # noqa: E402

EXPERIMENTS = (
    "paper_ce",
    "paper_ce_weighted",
    "paper_critic_single",
    "paper_critic_single_weighted",
    "paper_critic_per_class",
    "paper_critic_per_class_weighted",
)


def reduce_for_cpu(c) -> None:
    """A small DeepLabV3-ResNet18 (width 16) and critic (width / 4) on 128 crops, batch 8."""
    c.model.update(depth=18, width=16, aspp_features=64)
    c.data.crop_size = 128
    c.train.batch_size = 8
    c.critic.features = (16, 32, 64, 128, 128, 128)
    c.optimizer.warmup_steps = 50


def experiment_config(name: str, args, seed: int):
    c = importlib.import_module(f"configs.{name}").get_config()
    c.data.name = args.data
    c.data.path = args.path
    if args.scale == "cpu":
        reduce_for_cpu(c)
    c.seed = seed
    c.train.num_steps = args.steps
    c.train.log_every = min(50, args.steps)
    c.train.eval_every = c.train.checkpoint_every = args.steps  # evaluate the final step only
    return c


def run_one(name: str, args, seed: int) -> dict | None:
    """Trains (or resumes, or reuses) one run and returns its final evaluation record.

    With --report_only nothing is trained and an unfinished run gives None.
    """
    config = experiment_config(name, args, seed)
    workdir = pathlib.Path(args.workdir) / name / f"seed{seed}"
    done = sorted(  # training's record (not a cohort's, from --config.eval.cohort)
        p
        for p in workdir.glob(f"eval/*_{args.steps}.json")
        if not p.name.startswith(inference.COHORT_PREFIX)
    )
    if done:
        return json.loads(done[0].read_text())
    if args.report_only:
        return None
    start = time.perf_counter()
    record = train.train_and_evaluate(config, str(workdir))
    record["seconds"] = time.perf_counter() - start
    return record


def _mean_std(values: list) -> tuple[float, float]:
    a = np.array([np.nan if v is None else v for v in values], np.float64)
    if np.all(np.isnan(a)):
        return float("nan"), float("nan")
    return float(np.nanmean(a)), float(np.nanstd(a))


def summarise(records: dict[str, list[dict]]) -> dict:
    """{experiment: {"f1": [(mean, std)] * K, "iou": ..., "f1_fg": (mean, std), ...}}."""
    out = {}
    for name, runs in records.items():
        k = len(runs[0]["classes"])
        out[name] = {
            "f1": [_mean_std([r["f1"][i] for r in runs]) for i in range(k)],
            "iou": [_mean_std([r["iou"][i] for r in runs]) for i in range(k)],
            "f1_foreground_mean": _mean_std([r["f1_foreground_mean"] for r in runs]),
            "iou_foreground_mean": _mean_std([r["iou_foreground_mean"] for r in runs]),
            "seeds": len(runs),
        }
    return out


def changes(
    records: dict[str, list[dict]], paths: dict[str, list[pathlib.Path]] | None = None
) -> dict[str, dict]:
    """{experiment: `compare.runs_comparison` of the first experiment's runs and its own} for
    every later experiment whose records, and the first's, hold per-image matrices and are
    of the same images; a note names each left out. ``paths``: each experiment's runs'
    workdirs, for the messages."""
    names = list(records)
    paths = paths or {
        n: [pathlib.Path(f"{n}/run{i}") for i in range(len(records[n]))] for n in names
    }
    found = {}
    for name in names[1:]:
        pair = (names[0], name)
        if not all("per_image" in r for n in pair for r in records[n]):
            print(
                f"note: no change of {name} against {names[0]}: records without per-image matrices"
            )
            continue
        try:
            found[name] = compare.runs_comparison(
                *(records[n] for n in pair), [paths[n] for n in pair]
            )
        except ValueError as err:
            print(f"note: no change of {name} against {names[0]}: {err}")
    return found


def changes_markdown(found: dict[str, dict], classes: list[str], baseline: str) -> str:
    """`changes` as a markdown table: each experiment's mean foreground F1 and IoU and each
    class's F1 against ``baseline``'s, change (95 % interval)."""
    if not found:
        return ""

    def cell(row):
        one, two, low, high = row
        if np.isnan(two - one):
            return "n/a"
        return f"{two - one:+.3f} ({low:+.3f} to {high:+.3f})"

    cols = ["F1 fg mean", "IoU fg mean"] + [f"F1 {c}" for c in classes]
    lines = [
        f"Change against {baseline} (means over seeds; 95 % bootstrap interval over the seeds "
        "and the test images, `compare.runs_comparison`):",
        "",
        "| experiment | " + " | ".join(cols) + " |",
        "|" + "---|" * (len(cols) + 1),
    ]
    for name, f in found.items():
        row = [cell(f["f1_foreground_mean"]), cell(f["iou_foreground_mean"])]
        lines.append(f"| {name} | " + " | ".join(row + [cell(r) for r in f["f1"]]) + " |")
    return "\n".join(lines) + "\n"


def markdown(summary: dict, classes: list[str], header: str) -> str:
    def cell(ms):
        return "n/a" if np.isnan(ms[0]) else f"{ms[0]:.3f} ± {ms[1]:.3f}"

    cols = [f"F1 {c}" for c in classes] + ["F1 fg mean", "IoU fg mean", "seeds"]
    lines = [header, "", "| experiment | " + " | ".join(cols) + " |"]
    lines.append("|" + "---|" * (len(cols) + 1))
    for name, s in summary.items():
        row = [cell(v) for v in s["f1"]] + [
            cell(s["f1_foreground_mean"]),
            cell(s["iou_foreground_mean"]),
            str(s["seeds"]),
        ]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Per-class IoU:")
    lines.append("")
    lines.append("| experiment | " + " | ".join(f"IoU {c}" for c in classes) + " |")
    lines.append("|" + "---|" * (len(classes) + 1))
    for name, s in summary.items():
        lines.append(f"| {name} | " + " | ".join(cell(v) for v in s["iou"]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="consep", choices=("consep", "folder", "demo"))
    p.add_argument("--path", default="", help="dataset folder (folder/consep)")
    p.add_argument("--scale", default="cpu", choices=("cpu", "full"))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--experiments", default=",".join(EXPERIMENTS))
    p.add_argument("--workdir", default="runs/ablation")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ablation"))
    p.add_argument(
        "--report_only", action="store_true", help="train nothing; tabulate finished runs"
    )
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    records, paths = {}, {}
    for name in args.experiments.split(","):
        done = [(s, r) for s in seeds if (r := run_one(name, args, s)) is not None]
        runs = [r for _, r in done]
        if runs:
            records[name] = runs
            paths[name] = [pathlib.Path(args.workdir) / name / f"seed{s}" for s, _ in done]
            print(f"{name}: F1 fg mean per seed", [r["f1_foreground_mean"] for r in runs])
    summary = summarise(records)
    classes = records[next(iter(records))][0]["classes"]
    import jax

    header = (
        f"Ablation on {args.data} ({records[next(iter(records))][0]['split']} split, final step), "
        f"{args.steps} steps, scale={args.scale}, seeds {args.seeds}; "
        f"{jax.devices()[0].device_kind} ({platform.node()}), {datetime.date.today()}.\n"
        f"Command: python benchmarks/ablation.py {' '.join(sys.argv[1:])}"
    )
    found = changes(records, paths)
    text = markdown(summary, classes, header)
    if found:
        text += "\n" + changes_markdown(found, classes, next(iter(records)))
    pathlib.Path(args.out + ".md").write_text(text)
    pathlib.Path(args.out + ".json").write_text(
        json.dumps(
            {
                "header": header,
                "classes": classes,
                "summary": summary,
                "changes": found,
                "runs": records,
            }
        )
    )
    print(text)


if __name__ == "__main__":
    main()
