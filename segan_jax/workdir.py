"""The workdir is the run: resolved config, metrics.jsonl, checkpoints, evaluation records."""

import contextlib
import json
import math
import pathlib
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_collections

# Keys that may change between runs in one workdir (they do not change what is trained;
# train.num_steps does: the learning-rate schedules are built from it). drop_untrained_taps
# only changes the network evaluation and prediction run on inputs larger than the crops;
# padding_taps, atrous and batch_norm only the floating-point rounding; data.path and
# data.data_dir only where the data lie (moved, or named another way): a resumed run refuses
# data whose facts changed (train.check_same_data).
# Keys each host of a multi-host run may set for itself (where its copy of the data or of a
# cohort lies, where it writes predictions); every other key must be process 0's
# (train.check_same_config).
PER_HOST_PREFIXES = ("data.path", "data.data_dir", "predict.", "eval.cohort")
MUTABLE_PREFIXES = (
    *PER_HOST_PREFIXES,
    "eval.",
    "train.log_every",
    "train.eval_every",
    "model.drop_untrained_taps",
    "model.padding_taps",
    "model.atrous",
    "model.batch_norm",
)
# A resumed training run must keep evaluating on one split: best/ compares its F1 scores.
# eval.checkpoint only chooses what --mode=evaluate and --mode=predict read.
TRAIN_MUTABLE_PREFIXES = tuple(p for p in MUTABLE_PREFIXES if p != "eval.") + ("eval.checkpoint",)


# Options added to segan_jax after runs had started whose absence from a run's saved config
# meant this value, compared as it: a resumed training run may not switch eval.tta on, since
# best/ compares F1 scores made without views.
ABSENT_MEANT = {"eval.tta": "none"}


class ConfigMismatchError(ValueError):
    """A rerun in an existing workdir asked for a different run."""


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(
    saved: dict, current: dict, mutable: tuple[str, ...] = TRAIN_MUTABLE_PREFIXES
) -> list[str]:
    """Keys (dotted) whose values differ, ignoring those that start with one of `mutable`.

    Keys the saved config lacks (options added to segan_jax after that run started) are not
    compared, the run trained with their defaults, except those of `ABSENT_MEANT`, compared as
    the values their absence meant.
    """
    a, b = ({**ABSENT_MEANT, **_flatten(config)} for config in (saved, current))
    keys = sorted(a)
    return [
        f"{k}: {a.get(k)!r} in the workdir, {b.get(k)!r} now"
        for k in keys
        if not _same(a.get(k), b.get(k)) and not k.startswith(mutable)
    ]


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN equalling NaN (a config value compared with itself, through JSON)."""
    nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return nan or a == b


def _options_note(
    path: pathlib.Path, saved: dict, config: ml_collections.ConfigDict, unnoted: tuple[str, ...]
) -> str | None:
    """A note naming the keys of ``config`` that ``saved`` (the config at ``path``) lacks
    (options added to segan_jax after that run started) and the values used for them now,
    except those starting with one of ``unnoted``."""
    flat_saved, current = _flatten(saved), _flatten(config_dict(config))
    added = [
        f"{k}={v!r}"
        for k, v in sorted(current.items())
        if k not in flat_saved and not k.startswith(unnoted)
    ]
    if not added:
        return None
    return (
        f"note: {path} predates these options; this run uses their current values (pass "
        "--config.KEY=VALUE to choose): " + ", ".join(added)
    )


def config_dict(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON types (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


RERUN_ADVICE = (
    "this workdir holds a different run; use a new --workdir (or --overwrite to discard it)"
)


def check(
    workdir: pathlib.Path,
    config: ml_collections.ConfigDict,
    mismatch: str = RERUN_ADVICE,
    mutable: tuple[str, ...] = TRAIN_MUTABLE_PREFIXES,
    resolved: Mapping[str, Any] | None = None,
    unnoted: tuple[str, ...] = (),
) -> str | None:
    """Checks that ``config`` asks for the run the workdir holds, if any (reads only): the
    keys that start with one of ``mutable`` may differ (by default those a resumed training
    run may change).

    Args:
      resolved: dotted keys that ``config`` holds resolved and an older saved config may hold
        as "" (left to be resolved, e.g. ``{"eval.split": "val"}``), with the values "" stood
        for then; compared as those values.
      unnoted: prefixes of keys the note leaves out (e.g. the keys of this call's own use).

    Returns:
      A note naming the options the saved config lacks (added to segan_jax since) and the
      values used for them now; None without a saved config or without such options.
    Raises:
      ConfigMismatchError: ``mismatch`` and every differing key, so no earlier result is
        overwritten.
    """
    path = workdir / "config.json"
    if not path.exists():
        return None
    saved = read_config(path)
    flat = _flatten(saved)
    flat.update({k: v for k, v in (resolved or {}).items() if flat.get(k) == ""})
    diffs = config_differences(flat, config_dict(config), mutable)
    if diffs:
        if any(d.startswith("eval.") for d in diffs):
            mismatch += " (--mode=evaluate and --mode=predict take other eval.* values)"
        raise ConfigMismatchError(f"{path}: {mismatch}. Differences:\n  " + "\n  ".join(diffs))
    return _options_note(path, saved, config, unnoted)


def read_config(path: pathlib.Path) -> dict:
    """A saved config.json, or ConfigMismatchError naming it when it is not one."""
    return read_json(path, "config")


def read_json(path: pathlib.Path, what: str) -> dict:
    """The JSON object a run saved as ``path`` (its ``what``, e.g. "config"), or
    ConfigMismatchError naming the file when it is unreadable or not an object."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigMismatchError(
            f"{path}: unreadable ({err}); not {'an' if what[0] in 'aeiou' else 'a'} {what} "
            "segan_jax saved"
        ) from err
    if not isinstance(saved, dict):
        raise ConfigMismatchError(f"{path}: holds no {what} (a JSON object was expected)")
    return saved


# Everything a training run writes in its workdir (also as NAME.tmp while being written);
# --overwrite deletes these alone, in this order (config.json last, so an interrupted discard
# leaves a folder that is still a run).
RUN_ENTRIES = (
    "checkpoints",
    "best",
    "eval",
    "metrics.jsonl",
    "class_frequencies.json",
    "dataset_info.json",
    "config.json",
)
# Where discard moves them before deleting them.
TRASH = ".discarded"


def _ours(name: str) -> bool:
    return name.removesuffix(".tmp") in RUN_ENTRIES or name == TRASH


def check_new(workdir: pathlib.Path) -> None:
    """Refuses to start or resume a run where an --overwrite stopped half-way, or to start one
    in a folder holding files a run does not write (a data folder, another tool's results):
    --overwrite could not tell them apart from the run's later. Hidden files do not count."""
    if (workdir / TRASH).exists():
        raise ConfigMismatchError(
            f"{workdir}: an --overwrite stopped before it finished (it left {TRASH}); rerun "
            "with --overwrite"
        )
    names = [p.name for p in workdir.iterdir()] if workdir.is_dir() else []
    others = sorted(n for n in names if not _ours(n) and not n.startswith("."))
    if others and not (workdir / "config.json").exists():
        raise ConfigMismatchError(
            f"{workdir}: holds {len(others)} files or folders that are not a segan_jax run "
            f"(e.g. {others[0]!r}) and no config.json; use a new or empty --workdir"
        )


def prepare(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Creates the workdir and saves the resolved config (after `check`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", config_dict(config))


def discard(workdir: pathlib.Path) -> list[str]:
    """Sets an earlier run's files (`RUN_ENTRIES`) aside in `TRASH`, for `empty_trash` to delete
    once the new run's config is written, but only from a folder that is a run:
    config.json plus metrics or checkpoints, or the files a run writes before its checkpoint
    folders (anything else raises and nothing is deleted). Other files and folders in it
    (e.g. predictions written there) are kept.

    Returns:
      The names of the entries kept, sorted.
    """
    if not workdir.exists():
        return []
    trash = workdir / TRASH
    names = {p.name for p in workdir.iterdir()} - {TRASH}
    # config.json and metrics or checkpoints, or no files but a run's (stopped before its
    # first step): config.json alone may be anyone's.
    first_files = len(names) > 1 and all(map(_ours, names))
    is_run = (workdir / "config.json").is_file() and (
        "metrics.jsonl" in names or (workdir / "checkpoints").is_dir() or first_files
    )
    if not is_run and not trash.is_dir():  # with it: a discard was interrupted
        raise ConfigMismatchError(f"{workdir}: --overwrite deletes only a segan_jax run folder")
    shutil.rmtree(trash, ignore_errors=True)
    trash.mkdir()
    for name in (n for entry in RUN_ENTRIES for n in (entry, entry + ".tmp") if n in names):
        (workdir / name).rename(trash / name)
    return sorted(n for n in names if not _ours(n))


def empty_trash(workdir: pathlib.Path) -> None:
    """Deletes what `discard` set aside, once the new run's config.json is written: until
    then a stop leaves the folder marked as a discard to finish (`check_new`)."""
    shutil.rmtree(workdir / TRASH, ignore_errors=True)


def write_json(path: pathlib.Path, obj) -> None:
    """Writes JSON atomically (temporary file, then rename)."""
    _write_atomically(path, json.dumps(obj, indent=1))


def _write_atomically(path: pathlib.Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_path(path: pathlib.Path) -> Iterator[pathlib.Path]:
    """Yields ``NAME.tmp`` beside ``path`` to write; renamed to ``path`` when the block ends,
    removed when it raises (Ctrl-C included): ``path`` is complete or absent, never partial."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def append_jsonl(path: pathlib.Path, record: dict) -> None:
    """Appends one JSON line (NaN written as null)."""
    clean = {k: nan_to_null(v) for k, v in record.items()}
    with path.open("a") as f:
        f.write(json.dumps(clean) + "\n")


def drop_after(path: pathlib.Path, step: int) -> list[dict]:
    """Drops the lines of ``path`` (metrics.jsonl) logged after ``step``, the checkpoint a
    run resumes from, which logs those steps again; also a line torn by a kill while it was
    appended. Rewrites the file atomically, and only when a line goes. Returns the records
    kept."""
    text = path.read_text() if path.exists() else ""
    keep = [line for line in _whole_lines(text) if json.loads(line)["step"] <= step]
    if len(keep) < len(text.splitlines()):
        _write_atomically(path, "".join(f"{line}\n" for line in keep))
    return [json.loads(line) for line in keep]


def logged(records: list[dict], kind: str, step: int) -> bool:
    """Whether ``records`` (of metrics.jsonl) hold one of ``kind`` ("train", "eval") and
    ``step``."""
    return any((r.get("kind"), r.get("step")) == (kind, step) for r in records)


def read_jsonl(path: pathlib.Path) -> list[dict]:
    """The records of ``path`` (metrics.jsonl), one per whole line: blank lines and a last line
    torn by a kill while it was appended are left out. [] for a missing file."""
    return [json.loads(line) for line in _whole_lines(path.read_text() if path.exists() else "")]


def _whole_lines(text: str) -> list[str]:
    """The non-blank lines of ``text`` that end in a newline (the last may be torn)."""
    return [line for line in text.split("\n")[:-1] if line.strip()]


def nan_to_null(v):
    """NaN and inf (also inside lists) to None, which JSON writes as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [nan_to_null(x) for x in v]
    return v


def null_to_nan(v):
    """The inverse for reading: None (also inside lists) back to NaN."""
    if v is None:
        return math.nan
    if isinstance(v, list):
        return [null_to_nan(x) for x in v]
    return v


class Progress:
    """Terminal progress: step, loss, steps/s (and images/s: ``batch_size`` images a step) and
    ETA. A line whose rate includes more than steps says what: the first, compiling the step;
    one after an evaluation (`included`), the evaluation."""

    def __init__(self, start_step: int, num_steps: int, batch_size: int):
        self.num_steps, self.batch_size = num_steps, batch_size
        self.last_step, self.last_time = start_step, time.perf_counter()
        self.extra: str | None = "compiling"

    def included(self, what: str) -> None:
        """The next line's interval includes ``what`` (e.g. "evaluation")."""
        self.extra = what if self.extra is None else f"{self.extra} and {what}"

    def line(self, step: int, means: dict[str, float]) -> str:
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        eta = (self.num_steps - step) / max(rate, 1e-9)
        parts = [f"step {step}/{self.num_steps}"]
        parts += [f"{k} {v:.4f}" for k, v in means.items()]
        images = rate * self.batch_size
        parts += [f"{rate:.2f} steps/s ({images:.{0 if images >= 10 else 1}f} img/s)"]
        parts += [f"ETA {duration(eta)}" + (f" ({self.extra} included)" if self.extra else "")]
        self.extra = None
        return " | ".join(parts)

    def print(self, step: int, means: dict[str, float]) -> float:
        """Prints the progress line and returns steps/s since the last call."""
        before_step, before = self.last_step, self.last_time
        print(self.line(step, means), file=sys.stdout, flush=True)
        return (step - before_step) / max(self.last_time - before, 1e-9)


def duration(seconds: float) -> str:
    """Whole seconds as "1h02m03s", or "2m03s" under an hour."""
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def first_names(names: Sequence[str], most: int = 5) -> str:
    """The first ``most`` of ``names`` joined by commas, then ", ..." if there are more."""
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")
