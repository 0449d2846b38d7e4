"""Whole-image evaluation and prediction with a trained segmentor.

Images are evaluated whole, reflect-padded to a multiple of the output stride and cropped back,
one image per local device at a time (images of one padded shape are batched together, so each
shape compiles once), or with a `tiles.Tiling` in overlapping windows, one window per device at
a time; one confusion matrix is accumulated over the split and the paper's metrics come from it.
"""

import dataclasses
import functools
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from segan_jax import datasets, input_pipeline, metrics, models, parallel, tiles
from segan_jax import workdir as workdir_lib

EVAL_KEYS = (
    "step",
    "split",
    "classes",
    "f1",
    "iou",
    "f1_foreground_mean",
    "iou_foreground_mean",
    "confusion_matrix",
)


# Test-time augmentation (eval.tta): the (quarter turns, columns flipped) of each view whose
# class probabilities are averaged. "flips": the image, flipped left-right, upside down and
# both (a half turn); "d4": also the quarter turns of each, the square's eight symmetries.
TTA_VIEWS = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True), (2, False), (2, True)),
    "d4": tuple((k, flip) for k in range(4) for flip in (False, True)),
}


def settings(
    eval_config: ml_collections.ConfigDict, output_stride: int
) -> tuple[tiles.Tiling | None, str]:
    """(tiling, tta) of eval.*, checked (ValueError): the windows of eval.tile_size and
    eval.tile_margin, and eval.tta ("none" for a run saved before the key)."""
    tiling = tiles.from_config(eval_config)
    tiles.check(tiling, output_stride)
    tta = eval_config.get("tta", "none")
    if tta not in TTA_VIEWS:
        raise ValueError(f"eval.tta={tta!r} must be one of {tuple(TTA_VIEWS)}")
    return tiling, tta


def _view(x: jax.Array, k: int, flip: bool) -> jax.Array:
    """(B, H, W, ...) -> its columns reversed if `flip`, then turned `k` quarter turns:
    (B, H, W, ...) for even k, (B, W, H, ...) for odd k."""
    return jnp.rot90(x[:, :, ::-1] if flip else x, k, axes=(1, 2))


def _unview(x: jax.Array, k: int, flip: bool) -> jax.Array:
    """The inverse of `_view`: a view's (B, H', W', ...) output mapped back onto the image
    ((B, W', H', ...) for odd k)."""
    x = jnp.rot90(x, -k, axes=(1, 2))
    return x[:, :, ::-1] if flip else x


def tta_probabilities(
    model: models.DeepLabV3, variables: Any, images: jax.Array, tta: str
) -> jax.Array:
    """(B, H, W, C) normalised images -> (B, H, W, K) float32 class probabilities: the softmax
    of the network's logits averaged over the views of `TTA_VIEWS[tta]`, each mapped back.
    Equivariant under the views' transforms (up to float rounding) where no padding is added.

    The views of one orientation (upright, or turned a quarter) run one after another through
    one traced network (`lax.map`): two traces at most, and one view's activations at a time.
    """

    def probabilities(x: jax.Array) -> jax.Array:
        logits = model.apply(variables, x, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    total = 0.0
    for turned in (0, 1):
        views = [(k, flip) for k, flip in TTA_VIEWS[tta] if k % 2 == turned]
        if views:
            outputs = jax.lax.map(probabilities, jnp.stack([_view(images, *v) for v in views]))
            total = total + sum(_unview(out, *v) for v, out in zip(views, outputs, strict=True))
    return total / len(TTA_VIEWS[tta])


def _labels(model: models.DeepLabV3, tta: str, variables: Any, images: jax.Array) -> jax.Array:
    """(B, H, W, C) normalised images -> (B, H, W) uint8 predicted labels (with "none", the
    argmax of the logits themselves)."""
    if tta == "none":
        scores = model.apply(variables, images, train=False)
    else:
        scores = tta_probabilities(model, variables, images, tta)
    return jnp.argmax(scores, axis=-1).astype(jnp.uint8)


def _confusions(model, tta: str, ignore_index: int, variables, images, labels) -> jax.Array:
    """(B, H, W, C) images, (B, H, W) truth -> (B, K, K) int32 confusion matrices."""
    predictions = _labels(model, tta, variables, images)
    count = functools.partial(
        metrics.confusion_matrix, num_classes=model.num_classes, ignore_index=ignore_index
    )
    return jax.vmap(count)(labels, predictions)


@functools.lru_cache(maxsize=4)
def _program(model: models.DeepLabV3, mesh: Mesh, what: str, ignore_index: int, tta: str):
    """jit(shard_map) of `_labels` (what="labels": (variables, images)) or of `_confusions`
    (what="confusions": (variables, images, truth)): variables replicated, the rest split over
    the mesh's devices. Compiles once per padded image shape."""
    if what == "labels":
        fn, batched = functools.partial(_labels, model, tta), 1
    else:
        fn, batched = functools.partial(_confusions, model, tta, ignore_index), 2
    specs = (P(), *[P(parallel.AXIS)] * batched)
    return jax.jit(parallel.shard_map(fn, mesh, in_specs=specs, out_specs=P(parallel.AXIS)))


def shape_batches(shapes: list[tuple[int, int]], multiple: int, size: int) -> list[list[int]]:
    """Indices of the images grouped by their padded shape (H and W rounded up to `multiple`),
    in batches of at most `size`, first-seen shape first and image order kept within a shape."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(shapes):
        groups.setdefault((-(-h // multiple), -(-w // multiple)), []).append(i)
    return [g[j : j + size] for g in groups.values() for j in range(0, len(g), size)]


def _batches(model, images, masks, normalizer, ignore_index: int, mesh: Mesh):
    """Yields (indices, (images,) or (images, truth)) with one image per device of `mesh`:
    padded for evaluation, normalised, stacked (a short batch filled with zero images whose
    truth is all `ignore_index`) and placed split over the mesh."""
    sharding = NamedSharding(mesh, P(parallel.AXIS))
    shapes = [im.shape[:2] for im in images]
    for idx in shape_batches(shapes, model.output_stride, mesh.size):
        pairs = [
            input_pipeline.pad_for_eval(
                images[i], None if masks is None else masks[i], model.output_stride, ignore_index
            )
            for i in idx
        ]
        arrays = [
            _stack([input_pipeline.normalize_host(im, normalizer) for im, _ in pairs], mesh.size, 0)
        ]
        if masks is not None:
            arrays.append(_stack([m for _, m in pairs], mesh.size, ignore_index))
        yield idx, tuple(jax.device_put(a, sharding) for a in arrays)


def _stack(arrays: list[np.ndarray], size: int, fill) -> np.ndarray:
    """(size, ...) array: `arrays` stacked, the rest filled with `fill`."""
    out = np.full((size, *arrays[0].shape), fill, arrays[0].dtype)
    out[: len(arrays)] = arrays
    return out


def _outputs(model, variables, images, masks, normalizer, ignore_index: int, devices, tta: str):
    """Yields (indices, host outputs of those images): (n, H, W) padded labels when `masks` is
    None, else (n, K, K) confusion matrices, n = len(indices), with `tta`'s views averaged.
    Each batch is prepared and dispatched before the previous one's outputs are fetched, so the
    host's padding and copying overlap the devices' work."""
    mesh = parallel.make_mesh(jax.local_devices() if devices is None else devices)
    variables = parallel.replicate(variables, mesh)  # no copy when already there
    what = "labels" if masks is None else "confusions"
    program = _program(model, mesh, what, ignore_index, tta)
    pending = None
    for idx, args in _batches(model, images, masks, normalizer, ignore_index, mesh):
        result = program(variables, *args)  # asynchronous
        if pending is not None:
            yield pending[0], np.asarray(pending[1])[: len(pending[0])]
        pending = idx, result
    if pending is not None:
        yield pending[0], np.asarray(pending[1])[: len(pending[0])]


def predict_all(
    model: models.DeepLabV3,
    variables: Any,
    images: list[np.ndarray],
    normalizer: input_pipeline.Normalizer,
    devices: list | None = None,
    *,
    tiling: tiles.Tiling | None = None,
    tta: str = "none",
) -> list[np.ndarray]:
    """Label maps of whole images, one image per device at a time (`devices`: default this
    process's), or with `tiling` one window per device at a time, stitched (`tiles`); with
    `tta` the class probabilities of its views (`TTA_VIEWS`) averaged.

    Args:
      images: each (H, W, C) raw pixel values; sizes may differ.

    Returns:
      each (H, W) uint8 predicted labels, same order.
    """
    if tiling is not None:
        windows, parts = tiles.cut(images, tiling)
        shapes = [image.shape[:2] for image in images]
        return tiles.stitch(
            predict_all(model, variables, parts, normalizer, devices, tta=tta), windows, shapes
        )
    out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(images)
    for idx, labels in _outputs(model, variables, images, None, normalizer, 0, devices, tta):
        for j, i in enumerate(idx):
            h, w = images[i].shape[:2]
            out[i] = labels[j, :h, :w].copy()  # not a view keeping the padded batch alive
    return out


def predict_labels(
    model: models.DeepLabV3,
    variables: Any,
    image: np.ndarray,
    normalizer: input_pipeline.Normalizer,
) -> np.ndarray:
    """(H, W) uint8 label map of one (H, W, C) raw image, on this process's first device (for
    many images `predict_all` is faster: it batches them over every device)."""
    return predict_all(model, variables, [image], normalizer, jax.local_devices()[:1])[0]


def image_confusions(
    model: models.DeepLabV3,
    variables: Any,
    split: datasets.Split,
    normalizer: input_pipeline.Normalizer,
    ignore_index: int = 255,
    devices: list | None = None,
    *,
    tiling: tiles.Tiling | None = None,
    tta: str = "none",
) -> np.ndarray:
    """(N, K, K) int64 confusion matrix (rows truth) of each of the N images of `split`, one
    image per device at a time (`devices`: default this process's), or with `tiling` one
    window per device at a time (each window's truth outside its kept part ignored: the
    stitched prediction's confusion matrix); with `tta`'s views averaged."""
    out = np.zeros((len(split.images), *(model.num_classes,) * 2), np.int64)
    if tiling is not None:
        windows, parts = tiles.cut(split.images, tiling)
        pieces = datasets.Split(
            parts,
            [tiles.kept_truth(split.masks[w.owner], w, ignore_index) for w in windows],
            [split.names[w.owner] for w in windows],
        )
        per_window = image_confusions(
            model, variables, pieces, normalizer, ignore_index, devices, tta=tta
        )
        np.add.at(out, [w.owner for w in windows], per_window)
        return out
    batches = _outputs(
        model, variables, split.images, split.masks, normalizer, ignore_index, devices, tta
    )
    for idx, confusions in batches:
        out[idx] = confusions
    return out


def confusions_over_processes(
    model: models.DeepLabV3,
    variables: Any,
    shard: datasets.Split,
    normalizer: input_pipeline.Normalizer,
    ignore_index: int = 255,
    *,
    tiling: tiles.Tiling | None = None,
    tta: str = "none",
) -> tuple[np.ndarray, list[str]]:
    """((N, K, K) int64 confusion matrices, N names) of the N images of every process's shard
    of a split (process 0's first), each process evaluating its own `shard` on its devices
    (with `tiling`, window by window; with `tta`'s views averaged); exact, the same on all."""
    confusions = image_confusions(
        model, variables, shard, normalizer, ignore_index, tiling=tiling, tta=tta
    )
    return parallel.rows_over_processes(confusions), parallel.texts_over_processes(shard.names)


def prediction_scores(
    predictions: list[np.ndarray], split: datasets.Split, num_classes: int, ignore_index: int
) -> list[dict]:
    """Foreground-mean F1 of every image, for finding the worst ones (the paper's Fig. 6):
    [{"name", "f1_foreground_mean"}] of label maps already predicted (each (H, W),
    ``split``'s order), counted on the host: no second pass of the network."""
    rows = []
    for name, mask, labels in zip(split.names, split.masks, predictions, strict=True):
        cm = metrics.host_confusion_matrix(mask, labels, num_classes, ignore_index)
        rows.append({"name": name, "f1_foreground_mean": metrics.scores(cm)["f1_foreground_mean"]})
    return rows


def result_record(
    step: int,
    split: str,
    classes,
    confusions: np.ndarray,
    *,
    names: list[str] | None = None,
    tiling: tiles.Tiling | None = None,
    tta: str = "none",
) -> dict:
    """The evaluation record of a split's (N, K, K) per-image confusion matrices: exactly
    `EVAL_KEYS` (the figures of their sum), ``intervals`` (`metrics.bootstrap_intervals` over
    the images, or over the slides their `names` say they were cut from, with their ``level``,
    ``samples``, number of ``images`` and, when fewer, of ``slides``), ``tiling`` ({"size",
    "margin"}) when the images were evaluated in windows and ``tta`` when views were averaged,
    and ``per_image``: each image's matrix (``confusions``) and, given, its name (``names``),
    for paired comparisons of two records (`compare`); NaN becomes None (JSON null)."""
    confusion = np.asarray(confusions).sum(0)
    result = metrics.scores(confusion)
    windows = {} if tiling is None else {"tiling": dataclasses.asdict(tiling)}
    views = {} if tta == "none" else {"tta": tta}
    return {
        "step": int(step),
        "split": split,
        "classes": list(classes),
        "f1": workdir_lib.nan_to_null(result["f1"].tolist()),
        "iou": workdir_lib.nan_to_null(result["iou"].tolist()),
        "f1_foreground_mean": workdir_lib.nan_to_null(result["f1_foreground_mean"]),
        "iou_foreground_mean": workdir_lib.nan_to_null(result["iou_foreground_mean"]),
        "confusion_matrix": np.asarray(confusion).astype(int).tolist(),
        "intervals": _intervals(confusions, names),
        **windows,
        **views,
        "per_image": _per_image(confusions, names),
    }


def _per_image(confusions: np.ndarray, names: list[str] | None) -> dict:
    """The ``per_image`` of a record: the images' matrices (and names), sorted by name so
    that any split of the images over processes writes the same."""
    if names is None:
        return {"confusions": np.asarray(confusions).astype(int).tolist()}
    order = np.argsort(names, kind="stable")
    return {
        "names": [names[i] for i in order],
        "confusions": np.asarray(confusions).astype(int)[order].tolist(),
    }


def _intervals(confusions: np.ndarray, names: list[str] | None) -> dict:
    """The ``intervals`` of a record (the tiles of one slide drawn together): JSON lists, NaN
    as None."""
    groups, slides = datasets.slide_groups(names)
    bounds = metrics.bootstrap_intervals(confusions, groups=groups)
    return {
        "level": metrics.INTERVAL_LEVEL,
        "samples": metrics.BOOTSTRAP_SAMPLES,
        "images": len(confusions),
        **({"slides": slides} if slides else {}),
        **{k: workdir_lib.nan_to_null(v.tolist()) for k, v in bounds.items()},
    }


def record_settings(record: dict) -> tuple[tiles.Tiling | None, str]:
    """(tiling, tta) an evaluation record was made with (windows, views)."""
    tiling = record.get("tiling")
    return (tiles.Tiling(**tiling) if tiling else None), record.get("tta", "none")


def views_note(tta: str) -> str:
    """ ", views averaged: d4" for `tta` "d4"; "" for "none" (captions and messages)."""
    return "" if tta == "none" else f", views averaged: {tta}"


def describe(record: dict) -> str:
    """The record's split and step, its windows and views if any: "test split, step 600[, in
    256-pixel windows (margin 32)][, views averaged: d4]"."""
    tiling = record.get("tiling")
    windows = f", in {tiling['size']}-pixel windows (margin {tiling['margin']})" if tiling else ""
    views = views_note(record.get("tta", "none"))
    return f"{record['split']} split, step {record['step']}{windows}{views}"


def record_path(workdir: pathlib.Path, record: dict, n: int = 1) -> pathlib.Path:
    """`DIR/eval/<split>_<step>.json` (n = 1), or `<split>_<step>-<n>.json`: the n-th record of
    that split and step."""
    suffix = "" if n == 1 else f"-{n}"
    return pathlib.Path(workdir) / "eval" / f"{record['split']}_{record['step']}{suffix}.json"


def record_number(path: pathlib.Path) -> int:
    """The n of a `record_path` (1 for `<split>_<step>.json`)."""
    _, dash, n = path.stem.rpartition("-")
    return int(n) if dash and n.isdigit() else 1


def record_name(path: pathlib.Path) -> tuple[str, int] | None:
    """(split, step) of a `record_path`'s name, None for another file's."""
    stem = path.stem
    if record_number(path) > 1:
        stem = stem.rpartition("-")[0]
    split, underscore, step = stem.rpartition("_")
    return (split, int(step)) if underscore and step.isdigit() else None


def latest_record_file(
    workdir: str | pathlib.Path, split: str | None = None, data: str | None = None
) -> tuple[pathlib.Path, dict] | None:
    """(path, record) of the evaluation record ``workdir/eval/<split>_<step>[-n].json`` of the
    highest step (of several for that step, e.g. `--mode=evaluate`'s beside training's, the
    highest n; then the last written), picked by file name and read in that order until one
    is of ``data`` (without it only the pick is read: records hold per-image matrices). None
    when there is none.

    Args:
      split: only records of this split; None: any split.
      data: only records of this cohort folder (their ``data``, from ``--config.eval.cohort``:
        two folders of one name share a split name); None: any.
    """
    candidates = []
    for path in (pathlib.Path(workdir) / "eval").glob("*.json"):
        name = record_name(path)
        if name and split in (None, name[0]):
            order = (name[1], record_number(path), path.stat().st_mtime_ns)
            candidates.append((order, path))
    for _, path in sorted(candidates, reverse=True):  # the highest first: read until one fits
        record = workdir_lib.read_json(path, "evaluation record")  # ValueError naming it
        if split in (None, record.get("split")) and data in (None, record.get("data")):
            return path, record
    return None


def write_record(workdir: pathlib.Path, record: dict, n: int = 1) -> pathlib.Path:
    """Writes `record_path(workdir, record, n)` atomically and returns its path."""
    out = record_path(workdir, record, n)
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_json(out, record)
    return out


def save_record(workdir: pathlib.Path, record: dict) -> str:
    """Writes `record` as the next `-n` record of its split and step, unless one of them holds
    the same figures (of the same cohort folder, ``data``, windows and views, if any): that
    one gets `record`'s bootstrap intervals and per-image matrices where it lacks them or
    holds others (`_upgrade`); returns what was done."""
    n, same = 1, None
    while record_path(workdir, record, n).exists():
        kept = json.loads(record_path(workdir, record, n).read_text())
        keys = ("confusion_matrix", "data", "tiling", "tta")
        if all(kept.get(k) == record.get(k) for k in keys):
            same, same_record = record_path(workdir, record, n), kept
        n += 1
    if same is not None:
        return _upgrade(same, same_record, record)
    path = write_record(workdir, record, n)
    last = record_path(workdir, record, n - 1).name
    return str(path) if n == 1 else f"{path} (its figures or settings differ from {last}'s)"


def _upgrade(path: pathlib.Path, kept: dict, record: dict) -> str:
    """Gives the record at ``path`` (``kept``, of the same figures as ``record``) the
    bootstrap intervals and per-image matrices ``record`` holds where it lacks them or holds
    others (intervals drawn per image, before slides were drawn whole; images named
    otherwise); says what was done."""
    labels = {
        "intervals": ("bootstrap intervals", "drawn again"),
        "per_image": ("per-image matrices", "written again"),
    }
    added = {k: record[k] for k in labels if k in record and kept.get(k) != record[k]}
    if not added:
        return f"{path} (already there: the same figures)"
    done = [f"{labels[k][0]} {labels[k][1] if k in kept else 'added'}" for k in added]
    workdir_lib.write_json(path, {**kept, **added})
    return f"{path} (already there: the same figures; its {' and '.join(done)})"


def table_from_record(record: dict) -> str:
    """The per-class table (Label | Type | F1 | IoU) of an evaluation record, and the
    foreground means' bootstrap intervals when it holds them."""
    keys = ("f1", "iou", "f1_foreground_mean", "iou_foreground_mean")
    result = {k: workdir_lib.null_to_nan(record[k]) for k in keys}
    table = metrics.format_table(record["classes"], result)
    intervals = record.get("intervals")  # records written before they were added lack them
    drawn = intervals and intervals.get("slides", intervals["images"])
    if not drawn or drawn < 2:  # one image or slide: nothing to resample
        return table
    f1, iou = (_bounds(intervals[k]) for k in keys[2:])
    over = f"the {intervals['images']} images"
    if "slides" in intervals:
        over = f"the {drawn} slides of {over}"
    return (
        f"{table}\nforeground mean, {intervals['level']:.0%} interval (bootstrap over "
        f"{over}): F1 {f1}, IoU {iou}"
    )


def _bounds(pair: list) -> str:
    """ "0.262-0.335" of [lower, upper] ("n/a" for a missing bound)."""
    return "-".join("n/a" if x is None else f"{x:.3f}" for x in pair)


def save_label_png(labels: np.ndarray, path: pathlib.Path) -> None:
    """Writes an (H, W) uint8 label map as a single-channel PNG, atomically."""
    with workdir_lib.atomic_path(path) as tmp:
        Image.fromarray(labels, mode="L").save(tmp, format="PNG")
