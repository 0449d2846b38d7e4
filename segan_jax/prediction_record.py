"""predict.output's record of what made each label map: ``prediction.json``.

One entry per label map (its file name): the checkpoint (the run, shown; its step and orbax's
commit time, compared: a checkpoint saved again differs), the views, the windows and, where
they apply, the slide level (with -1 the pixel size and predict.resample it chose by), an
image's blocks a side (predict.resample) and the least region area of its annotation files.
Maps found before the folder had a record are entered as `UNCHECKED`. `--mode=predict`
refuses to leave alone (predict.skip_existing) a map whose entry differs from what would make
it now, so one folder never holds maps of two networks or settings without the record saying
which.
"""

import json
import pathlib

FILE = "prediction.json"
UNCHECKED = "unchecked"  # a map found before the folder had a record
# Entry keys not compared (a run moved elsewhere is the same run) where the checkpoint's
# saving time tells checkpoints apart.
SHOWN_ONLY = ("run",)
# Entry keys added since the first records, with what an entry without them was made with.
ABSENT_MEANS = {"predict.resample": False, "blocks": 1}


def read(path: pathlib.Path) -> dict | None:
    """The record at ``path`` ({map name: entry}), None when there is none. Raises
    ValueError naming the file when it is not such a record."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable ({err})") from None
    if not isinstance(record, dict) or not all(
        isinstance(v, dict) or v == UNCHECKED for v in record.values()
    ):
        raise ValueError(f"{path}: not a segan_jax prediction record")
    return record


def differences(saved: dict | str, made: dict) -> list[str]:
    """``key=saved (now made)`` for each key of ``made`` whose values differ, but
    `SHOWN_ONLY` where ``made`` has a checkpoint saving time (without one, the run tells
    checkpoints apart); a key only ``saved`` has (e.g. the least region area of annotation
    files not written now) does not change the map; one only ``made`` has counts as its
    `ABSENT_MEANS` value in ``saved``."""
    if saved == UNCHECKED:
        return []
    shown = SHOWN_ONLY if made.get("saved") is not None else ()  # else the run tells them apart
    keys = sorted(set(made) - set(shown))
    was = {k: saved.get(k, ABSENT_MEANS.get(k)) for k in keys}
    return [f"{k}={was[k]!r} (now {made.get(k)!r})" for k in keys if was[k] != made.get(k)]


def updated(
    old: dict | None, made: dict[str, dict], skipped: list[str]
) -> tuple[dict, list[str], list[str]]:
    """(the record with ``made``'s entries (map name: entry, for the maps to write and those
    ``skipped``) put in, the skipped maps it holds no entry for (entered as `UNCHECKED`),
    ``name: differences`` of the skipped maps made otherwise). Maps of ``old`` not in
    ``made`` keep their entries."""
    old = old or {}
    unchecked = [n for n in skipped if old.get(n, UNCHECKED) == UNCHECKED]
    differ = [
        f"{n}: {'; '.join(d)}"
        for n in skipped
        if (d := differences(old.get(n, UNCHECKED), made[n]))
    ]
    record = {**old, **{n: e for n, e in made.items() if n not in skipped}}
    return {**record, **dict.fromkeys(unchecked, UNCHECKED)}, unchecked, differ
