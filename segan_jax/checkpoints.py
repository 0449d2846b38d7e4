"""orbax checkpoints of the whole training state.

`DIR/checkpoints/` keeps the last `train.keep` states; `DIR/best/` keeps the network (step,
params, batch_stats: what evaluation and `model.init_checkpoint` read, a third of an Adam state)
with the best foreground-mean F1 on the evaluation split, written only when an evaluation is at
least as good as the one kept (`improves`). orbax writes each checkpoint to a temporary folder
and renames it when complete, so a run killed mid-save leaves nothing a later run takes as valid.
Restoring goes into an abstract state (shapes, dtypes, shardings of the traced init), so the
optax states keep their structure.
"""

import datetime
import logging
import math
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


def _best_metric(metrics: dict[str, float]) -> float:
    value = metrics.get("f1_foreground_mean", float("nan"))
    return value if math.isfinite(value) else -1.0


def latest_dir(workdir: str | pathlib.Path) -> pathlib.Path:
    """`workdir/checkpoints` (absolute): the last `train.keep` checkpoints of a run."""
    return pathlib.Path(workdir).absolute() / "checkpoints"


def latest_manager(
    workdir: str | pathlib.Path, keep: int, create: bool = True
) -> ocp.CheckpointManager:
    """Manager of the last `keep` checkpoints in `workdir/checkpoints`."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    return ocp.CheckpointManager(latest_dir(workdir), options=options)


def best_manager(workdir: str | pathlib.Path) -> ocp.CheckpointManager:
    """Manager of the single best checkpoint (by foreground-mean F1) in `workdir/best`."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=_best_metric, best_mode="max", create=True
    )
    return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "best", options=options)


def improves(manager: ocp.CheckpointManager, metrics: dict[str, float]) -> bool:
    """Whether a checkpoint with ``metrics`` would be kept by ``manager`` (a `best_manager`):
    none is kept yet, or it is at least as good as the kept one (orbax keeps the newer of two
    equals; NaN ranks below every number). Saving one that is not would write it only for
    orbax to delete it. Waits for a save in flight first: orbax writes its metrics when it
    finishes, so every process of a run reads the same kept score (and makes the same
    collective save, or none)."""
    manager.wait_until_finished()
    best = manager.best_step()
    return best is None or _best_metric(metrics) >= _best_metric(manager.metrics(best) or {})


def network(state: Any) -> dict:
    """What `DIR/best/` keeps of a training state: {"step", "params", "batch_stats"}."""
    return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats}


def save(
    manager: ocp.CheckpointManager, step: int, state: Any, metrics: dict | None = None
) -> None:
    """Saves `state` asynchronously; call `manager.wait_until_finished()` before exiting."""
    manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> Any:
    """Restores `step` (default: the latest) into the structure of `abstract_state`."""
    step = manager.latest_step() if step is None else step
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def _restore_on_one_device(manager: ocp.CheckpointManager, step: int) -> dict:
    """Restores a checkpoint as nested dicts on this process's first device, whatever mesh or
    number of processes saved it."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    metadata = manager.item_metadata(step)
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata
    )
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def _reader(directory: pathlib.Path) -> ocp.CheckpointManager:
    """A manager that only reads `directory`: it creates and writes nothing, so it waits at no
    barrier of several processes and may be used by one process alone."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns that a read-only manager is read-only
    try:
        options = ocp.CheckpointManagerOptions(
            create=False, save_root_metadata=False, read_only=True
        )
        handler = ocp.StandardCheckpointHandler()
        return ocp.CheckpointManager(directory, item_handlers=handler, options=options)
    finally:
        absl.setLevel(level)


def _find(path: pathlib.Path) -> tuple[ocp.CheckpointManager, int]:
    """(reading manager, step) of the checkpoint `path` names: a workdir, its `checkpoints/` or
    `best/` folder (the latest step), or one step folder inside them."""
    candidates = [(d, None) for d in (path / "best", path / "checkpoints", path) if d.is_dir()]
    if (path / "default").is_dir() and path.name.isdigit():
        candidates.append((path.parent, int(path.name)))
    for directory, wanted in candidates:
        manager = _reader(directory)
        step = manager.latest_step() if wanted is None else wanted
        if step is not None and step in manager.all_steps():
            return manager, step
        manager.close()
    raise FileNotFoundError(
        f"{path}: no orbax checkpoint found (expected a workdir or step folder)"
    )


def restore_raw(path: str | pathlib.Path) -> dict:
    """Restores a checkpoint without a target, as nested dicts of arrays (one device).

    Args:
      path: a workdir, its `checkpoints/` or `best/` folder (the latest step is used), or one
        step folder inside them.
    """
    manager, step = _find(pathlib.Path(path).absolute())
    with manager:
        return _restore_on_one_device(manager, step)


def locate(path: str | pathlib.Path) -> pathlib.Path:
    """The step folder of the checkpoint `path` names (as `restore_raw` reads it)."""
    manager, step = _find(pathlib.Path(path).absolute())
    with manager:
        return pathlib.Path(manager.directory) / str(step)


def raw_shapes(path: str | pathlib.Path) -> dict:
    """`restore_raw(path)`'s tree with a `jax.ShapeDtypeStruct` for each array, read from the
    checkpoint's metadata (no array is loaded)."""
    manager, step = _find(pathlib.Path(path).absolute())
    with manager:
        metadata = manager.item_metadata(step)
    tree = getattr(metadata, "tree", metadata)  # orbax's TreeMetadata holds the nested dicts
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)


def identity(folder: str | pathlib.Path, step: int | None = None) -> dict | None:
    """{"step", "saved"} of the latest checkpoint (or the kept ``step``) in a manager folder
    (`checkpoints/` or `best/`): its step and orbax's commit time (UTC, ISO 8601 to the
    microsecond; a step saved again, by a run started over, differs; None where orbax kept
    none); None when the folder holds no such checkpoint. Reads only."""
    folder = pathlib.Path(folder).absolute()
    if not folder.is_dir():
        return None
    with _reader(folder) as manager:
        if step is None:
            step = manager.latest_step()
        if step is None or step not in manager.all_steps():
            return None
        nanoseconds = manager.metadata(step).commit_timestamp_nsecs
    saved = None
    if nanoseconds is not None:
        when = datetime.datetime.fromtimestamp(nanoseconds / 1e9, datetime.UTC)
        saved = when.isoformat(timespec="microseconds")
    return {"step": int(step), "saved": saved}


def check_kept(folder: str | pathlib.Path, step: int, keep: int) -> None:
    """FileNotFoundError naming the steps the manager folder keeps (``keep``: train.keep)
    unless it keeps ``step``; reads only."""
    with _reader(pathlib.Path(folder).absolute()) as manager:
        kept = manager.all_steps()
    if step not in kept:
        raise FileNotFoundError(
            f"{folder}: no checkpoint of step {step} (it keeps {', '.join(map(str, kept))}: "
            f"train.keep={keep}, and best/ with eval.checkpoint=best)"
        )


def has_checkpoint(workdir: str | pathlib.Path) -> bool:
    """Whether `workdir/checkpoints` holds a finished checkpoint (a run to resume)."""
    return has_checkpoint_in(latest_dir(workdir))


def has_checkpoint_in(folder: str | pathlib.Path) -> bool:
    """Whether the manager folder `folder` (`checkpoints/` or `best/`) holds a finished
    checkpoint; reads only."""
    folder = pathlib.Path(folder).absolute()
    if not folder.is_dir():
        return False
    with _reader(folder) as manager:
        return manager.latest_step() is not None
