"""Whole-image evaluation and prediction with a trained segmentor.

Images are evaluated whole, reflect-padded to a multiple of the output stride and cropped back;
one confusion matrix is accumulated over the split and the paper's metrics come from it.
"""

import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from segan_jax import datasets, input_pipeline, metrics, models
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


@functools.partial(jax.jit, static_argnums=(0,))
def _logits(model: models.DeepLabV3, variables: Any, image: jax.Array) -> jax.Array:
    return model.apply(variables, image, train=False)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _confusion(model, variables, image, labels, ignore_index):
    logits = model.apply(variables, image, train=False)
    predictions = jnp.argmax(logits, axis=-1)
    return metrics.confusion_matrix(labels, predictions, model.num_classes, ignore_index)


def predict_labels(
    model: models.DeepLabV3,
    variables: Any,
    image: np.ndarray,
    normalizer: input_pipeline.Normalizer,
    ignore_index: int = 255,
) -> np.ndarray:
    """Label map of one whole image.

    Args:
      image: (H, W, C) raw pixel values.

    Returns:
      (H, W) uint8 predicted labels.
    """
    h, w = image.shape[:2]
    padded, _ = input_pipeline.pad_for_eval(image, None, model.output_stride, ignore_index)
    x = input_pipeline.normalize_host(padded, normalizer)[None]
    logits = _logits(model, variables, jnp.asarray(x))
    return np.asarray(jnp.argmax(logits[0, :h, :w], axis=-1), np.uint8)


def split_confusion(
    model: models.DeepLabV3,
    variables: Any,
    split: datasets.Split,
    normalizer: input_pipeline.Normalizer,
    ignore_index: int = 255,
) -> np.ndarray:
    """(K, K) int64 confusion matrix (rows truth) accumulated over every image of `split`."""
    total = np.zeros((model.num_classes,) * 2, np.int64)
    for image, mask in zip(split.images, split.masks, strict=True):
        padded, labels = input_pipeline.pad_for_eval(image, mask, model.output_stride, ignore_index)
        x = input_pipeline.normalize_host(padded, normalizer)[None]
        cm = _confusion(model, variables, jnp.asarray(x), jnp.asarray(labels[None]), ignore_index)
        total += np.asarray(cm, np.int64)
    return total


def per_image_scores(
    model: models.DeepLabV3,
    variables: Any,
    split: datasets.Split,
    normalizer: input_pipeline.Normalizer,
    ignore_index: int = 255,
) -> list[dict]:
    """Foreground-mean F1 of every image, for finding the worst ones (the paper's Fig. 6)."""
    rows = []
    for name, image, mask in zip(split.names, split.images, split.masks, strict=True):
        one = datasets.Split([image], [mask], [name])
        result = metrics.scores(split_confusion(model, variables, one, normalizer, ignore_index))
        rows.append({"name": name, "f1_foreground_mean": result["f1_foreground_mean"]})
    return rows


def result_record(step: int, split: str, classes, confusion: np.ndarray) -> dict:
    """The evaluation record with exactly `EVAL_KEYS`; NaN becomes None (JSON null)."""
    result = metrics.scores(confusion)
    return {
        "step": int(step),
        "split": split,
        "classes": list(classes),
        "f1": workdir_lib.nan_to_null(result["f1"].tolist()),
        "iou": workdir_lib.nan_to_null(result["iou"].tolist()),
        "f1_foreground_mean": workdir_lib.nan_to_null(result["f1_foreground_mean"]),
        "iou_foreground_mean": workdir_lib.nan_to_null(result["iou_foreground_mean"]),
        "confusion_matrix": np.asarray(confusion).astype(int).tolist(),
    }


def write_record(workdir: pathlib.Path, record: dict) -> pathlib.Path:
    """Writes `DIR/eval/<split>_<step>.json` atomically and returns its path."""
    out = pathlib.Path(workdir) / "eval" / f"{record['split']}_{record['step']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_json(out, record)
    return out


def table_from_record(record: dict) -> str:
    """The per-class table (Label | Type | F1 | IoU) of an evaluation record."""
    keys = ("f1", "iou", "f1_foreground_mean", "iou_foreground_mean")
    result = {k: workdir_lib.null_to_nan(record[k]) for k in keys}
    return metrics.format_table(record["classes"], result)


def save_label_png(labels: np.ndarray, path: pathlib.Path) -> None:
    """Writes an (H, W) uint8 label map as a single-channel PNG, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(labels, mode="L").save(tmp, format="PNG")
    tmp.replace(path)
