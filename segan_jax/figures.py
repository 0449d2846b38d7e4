"""Figures and tables of one run, for the results notebook (the paper's Figs. 3-6, Table I).

Every function here takes plain data (metric rows, evaluation records, arrays) and returns a
matplotlib :class:`~matplotlib.figure.Figure` or a string; nothing trains, restores or predicts.
Figures are built with the object API (no pyplot state), so they work under any backend
(Agg in tests) and ``fig.savefig(path)`` writes them; in a notebook, ``%matplotlib inline``
displays a returned figure.

Reading a workdir (``read_metrics``, ``load_config``, ``latest_record``) is here too: those are
the inputs of the figures.
"""

import math
import pathlib
from collections.abc import Mapping, Sequence

import matplotlib
import ml_collections
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatter, MaxNLocator

from segan_jax import evaluate, metrics
from segan_jax import workdir as workdir_lib

# Paper-sized text: readable at one column width when saved at DPI.
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
DPI = 200
# Label maps: "grey", a shade per class, black to white (the paper's Fig. 3); "classes",
# background (class 0) black and every other class the colour of its curves.
LABEL_PALETTES = ("grey", "classes")
# Label values outside 0..K-1 (unlabelled pixels, the ignore index), per palette.
IGNORE_COLORS = {"grey": "tab:red", "classes": "white"}
LOSS_KEYS = ("loss", "ce")  # panel 1 of loss_curves
ADVERSARIAL_KEYS = ("l_mae", "critic_l_mae")  # panel 2 (runs with a critic)
PENALTY_KEY = "critic_gp"  # panel 3 (critic.constraint="gradient_penalty")
CURVE_LABELS = {  # legend entries of loss_curves, by metrics.jsonl key
    "loss": "total",
    "ce": "cross-entropy",
    "l_mae": "segmentor's (after the critic update)",
    "critic_l_mae": "critic's (before its update)",
}
COLUMN_TITLES = ("Image", "Ground truth", "Prediction")


# ----------------------------------------------------------------------------- reading a run


def read_metrics(workdir: str | pathlib.Path) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) of ``workdir/metrics.jsonl``, each in file order.

    Train rows: {step, loss, ce, [l_mae], grad_norm, steps_per_s, ...}; eval rows: {step, split,
    f1 (K,), iou (K,), f1_foreground_mean, iou_foreground_mean, [their ``_interval``s (2,):
    the bootstrap bounds, in runs since 2026-11-28]}. JSON null becomes NaN. Blank
    lines and a last line torn by a kill are skipped; a missing file gives two empty lists.
    """
    train_rows: list[dict] = []
    eval_rows: list[dict] = []
    for record in workdir_lib.read_jsonl(pathlib.Path(workdir) / "metrics.jsonl"):
        row = {k: workdir_lib.null_to_nan(v) for k, v in record.items()}
        kind = row.pop("kind", "train")
        (eval_rows if kind == "eval" else train_rows).append(row)
    return train_rows, eval_rows


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The run's resolved config from ``workdir/config.json`` (JSON lists back to tuples).

    Raises:
      workdir.ConfigMismatchError: naming the file, when it is unreadable or not a config.
    """
    raw = workdir_lib.read_config(pathlib.Path(workdir) / "config.json")
    return ml_collections.ConfigDict(_tuples(raw))


def latest_record(
    workdir: str | pathlib.Path, split: str | None = None, data: str | None = None
) -> dict | None:
    """The record of `evaluate.latest_record_file` (the same arguments).

    Returns:
      The record (keys of ``evaluate.EVAL_KEYS``; a cohort's, of ``--config.eval.cohort``,
      also ``data``: with ``split`` None it may be one), or None when there is none.
    """
    found = evaluate.latest_record_file(workdir, split, data)
    return found and found[1]


# ----------------------------------------------------------------------------- curves


def _by_step(rows: Sequence[Mapping]) -> list[Mapping]:
    """Rows sorted by step; of rows with equal steps (a resumed run) the last one is kept."""
    return sorted({row["step"]: row for row in rows}.values(), key=lambda r: r["step"])


def _class_colors(num_classes: int) -> list:
    cmap = matplotlib.colormaps["tab10" if num_classes <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(num_classes)]


def _metric_panel(
    ax: Axes,
    steps: np.ndarray,
    values: np.ndarray,
    means: np.ndarray,
    classes: Sequence[str],
    bands: np.ndarray,
) -> None:
    """Per-class lines of one metric (values (N, K)), the foreground mean (N,) thick, and its
    bootstrap interval (over images or slides; bands (N, 2), NaN where a row has none)
    shaded."""
    marker = "o" if len(steps) <= 30 else None
    if np.isfinite(bands).any():
        label = f"{metrics.INTERVAL_LEVEL:.0%} bootstrap interval"
        ax.fill_between(steps, *bands.T, color="black", alpha=0.15, lw=0, label=label)
    for k, (name, color) in enumerate(zip(classes, _class_colors(len(classes)), strict=True)):
        style = "--" if k == 0 else "-"
        ax.plot(steps, values[:, k], style, color=color, marker=marker, ms=3, lw=1.2, label=name)
    ax.plot(steps, means, "-", color="black", marker=marker, ms=4, lw=2.8, label="foreground mean")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("Iteration")
    gaps = np.diff(np.unique(steps))
    if 1 < len(steps) <= 6 and gaps.min() >= 0.05 * np.ptp(steps):  # labels far apart
        ax.set_xticks(steps)  # a tick at each evaluation (not 21, 24, ... for 20 and 40)
    else:  # whole, round steps: no step 3.5, no 21, 24
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    if len(steps) and np.ptp(steps) < 2:  # one evaluation: room for whole steps around it
        ax.set_xlim(np.min(steps) - 1, np.max(steps) + 1)
    ax.grid(alpha=0.3)


def training_curves(
    eval_rows: Sequence[Mapping], classes: Sequence[str], split: str | None = None
) -> Figure:
    """Per-class F1 (left) and IoU (right) against iteration: the paper's Figs. 4 and 5.

    Each panel has K class lines (background dashed) and the foreground mean as a thick black
    line (K + 1 lines), shaded over its 95 % bootstrap interval over the split's images where
    the rows hold one (``f1_foreground_mean_interval``, ...).

    Args:
      eval_rows: eval rows of :func:`read_metrics`; f1 and iou (K,) lists (NaN allowed).
      classes: K class names in label order.
      split: only rows of this split (None: all rows).
    """
    rows = _by_step([r for r in eval_rows if split is None or r.get("split") == split])
    if not rows:
        raise ValueError("no evaluation rows to plot (did the run reach train.eval_every?)")
    steps = np.array([r["step"] for r in rows])
    shown = split or rows[-1].get("split", "")
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(10.0, 3.8), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        for ax, key, label in zip(axes, ("f1", "iou"), ("F1", "IoU"), strict=True):
            values = np.array([r[key] for r in rows], np.float64).reshape(len(rows), len(classes))
            means = np.array([r[f"{key}_foreground_mean"] for r in rows], np.float64)
            bands = [r.get(f"{key}_foreground_mean_interval") or (None, None) for r in rows]
            bands = np.array(bands, np.float64)  # runs from before the intervals: none
            _metric_panel(ax, steps, values, means, classes, bands)
            ax.set_ylabel(label)
            ax.set_title(f"Per-class {label} on the {shown} split")
        axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return fig


def loss_curves(train_rows: Sequence[Mapping]) -> Figure:
    """Training losses against iteration.

    Panels: total loss and cross-entropy; with a critic, its multi-scale L1: ``l_mae`` (after
    the step's critic update, what the segmentor descends) and ``critic_l_mae`` (before it, what
    the critic ascends), and the unweighted gradient penalty when the critic has one; the
    segmentor's gradient norm (log scale). Each value is the mean over the ``train.log_every``
    steps before the row's step.
    """
    rows = _by_step(train_rows)
    if not rows:
        raise ValueError("no train rows to plot")
    steps = np.array([r["step"] for r in rows])
    panels = [("Segmentor loss", [k for k in LOSS_KEYS if k in rows[0]], "Loss", False)]
    adversarial = [k for k in ADVERSARIAL_KEYS if any(k in r for r in rows)]
    if adversarial:
        panels.append(("Critic multi-scale L1", adversarial, r"$\ell_{mae}$", False))
    if any(PENALTY_KEY in r for r in rows):
        panels.append(("Critic gradient penalty", [PENALTY_KEY], "Penalty", False))
    if any("grad_norm" in r for r in rows):
        panels.append(("Gradient norm", ["grad_norm"], "Global L2 norm (log scale)", True))
    marker = "o" if len(steps) <= 30 else None
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.0 * len(panels), 3.4), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(panels)))
        for ax, (title, keys, ylabel, log) in zip(axes, panels, strict=True):
            for key in keys:
                values = np.array([r.get(key, math.nan) for r in rows], np.float64)
                label = CURVE_LABELS.get(key, key)
                ax.plot(steps, values, marker=marker, ms=3, lw=1.5, label=label)
            ax.set(title=title, xlabel="Iteration", ylabel=ylabel)
            if log:  # plain numbers ("6", "10"), not "6 x 10^0"
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(LogFormatter(base=10))
                ax.yaxis.set_minor_formatter(LogFormatter(base=10, labelOnlyBase=False))
            if len(keys) > 1:
                ax.legend(frameon=False)
            ax.grid(alpha=0.3)
    return fig


# ----------------------------------------------------------------------------- label maps


def class_shades(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Grey shade of every pixel, one per class (the paper's Fig. 3).

    Args:
      labels: (H, W) integer label map.

    Returns:
      (H, W) float64: class k -> k / (K - 1) (background 0 black, the last class white);
      NaN for values outside 0..K-1 (the ignore index), drawn in ``IGNORE_COLORS["grey"]``.
    """
    labels = np.asarray(labels)
    valid = (labels >= 0) & (labels < num_classes)
    return np.where(valid, labels / max(num_classes - 1, 1), np.nan)


def display_image(
    image: np.ndarray, channel: int | None = None, percentiles: tuple[float, float] = (1.0, 99.0)
) -> np.ndarray:
    """An (H, W, C) raw uint8/uint16 image as (H, W, 3) float RGB in [0, 1] for display.

    Three or more channels: the first three as RGB in their true colours (a stain's hue is
    data): 8-bit values / 255, 16-bit ones stretched between ``percentiles`` of all three
    channels together. One channel (or ``channel`` given): grey, and two channels: false
    colour, channel 0 magenta and channel 1 green (so both bright is white), each channel
    stretched between its own ``percentiles`` (fluorescence channels differ in brightness).
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if channel is not None:
        image = image[..., channel : channel + 1]
    if image.shape[-1] >= 3:
        rgb = image[..., :3]
        if rgb.dtype == np.uint8:
            return rgb / 255.0
        return _stretch(rgb.astype(np.float64), percentiles, axis=None)
    scaled = _stretch(image.astype(np.float64), percentiles, axis=(0, 1))
    return scaled[..., [0, 0, 0] if scaled.shape[-1] == 1 else [0, 1, 0]]


def _stretch(image: np.ndarray, percentiles: tuple[float, float], axis) -> np.ndarray:
    """``image`` mapped linearly from its ``percentiles`` (over ``axis``) to [0, 1], clipped."""
    low, high = np.percentile(image, percentiles, axis=axis)
    return np.clip((image - low) / np.maximum(high - low, 1e-12), 0.0, 1.0)


def label_colours(labels: np.ndarray, num_classes: int, palette: str = "grey") -> np.ndarray:
    """(H, W, 3) float RGB in [0, 1] of an (H, W) integer label map in ``palette``
    (``LABEL_PALETTES``); values outside 0..K-1 (the ignore index) in the palette's
    ``IGNORE_COLORS``."""
    colours = label_palette(num_classes, palette)
    labels = np.asarray(labels)
    valid = (labels >= 0) & (labels < num_classes)
    return colours[np.where(valid, labels, num_classes)]


def label_palette(num_classes: int, palette: str) -> np.ndarray:
    """(K + 1, 3) float RGB in [0, 1] of ``palette`` (``LABEL_PALETTES``): each class's
    colour, then the unlabelled pixels'."""
    if palette not in LABEL_PALETTES:
        raise ValueError(f"palette={palette!r} must be one of {LABEL_PALETTES}")
    if palette == "grey":
        shades = class_shades(np.arange(num_classes), num_classes)
        colours = [(s, s, s) for s in shades]
    else:
        colours = [(0.0, 0.0, 0.0), *_class_colors(num_classes)[1:]]
    colours.append(IGNORE_COLORS[palette])
    return np.array([to_rgb(c) for c in colours])


def class_colours(num_classes: int) -> list[list[int]]:
    """RGB 0-255 of each class, then of unlabelled pixels: ``label_palette(K, "classes")``,
    for annotation files."""
    return np.rint(label_palette(num_classes, "classes") * 255).astype(int).tolist()


def _class_legend(
    fig: Figure, classes: Sequence[str], unlabelled: bool = False, palette: str = "grey"
) -> None:
    """Each class's colour, and with ``unlabelled`` the colour of unlabelled (ignored) pixels."""
    colours = label_palette(len(classes), palette)
    names = [f"{k}: {name}" for k, name in enumerate(classes)]
    names += ["unlabelled"] if unlabelled else []
    handles = [
        Patch(facecolor=colour, edgecolor="black", label=name)
        for colour, name in zip(colours, names, strict=False)
    ]
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(len(classes), 6), frameon=False
    )


def result_grid(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    names: Sequence[str],
    classes: Sequence[str],
    title: str | None = None,
    channel: int | None = None,
    palette: str = "grey",
) -> Figure:
    """Rows of image | ground truth | prediction, labels in class shades (the paper's Fig. 3)
    or, with ``palette="classes"``, in colours (easier to tell apart beyond four classes; the
    colours repeat beyond 20).

    Args:
      images: N raw (H, W, C) images (see :func:`display_image`; ``channel`` picks one).
      truths, predictions: N (H, W) label maps.
      names: N row labels.
      classes: K class names; a legend maps each colour to its class.
      palette: one of ``LABEL_PALETTES`` (see :func:`label_colours`).

    Returns:
      A figure with 3 N axes, row-major.
    """
    n = len(images)
    if not n or not len(truths) == len(predictions) == len(names) == n:
        raise ValueError(
            f"need equally many (> 0) images, truths, predictions and names: {n}, "
            f"{len(truths)}, {len(predictions)}, {len(names)}"
        )
    h, w = np.shape(images[0])[:2]
    panel_w = 3.3
    panel_h = min(max(panel_w * h / w, 1.0), 4.0)
    k = len(classes)
    label_palette(k, palette)  # a bad palette fails before any drawing
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3 * panel_w + 0.6, n * panel_h + 0.9), layout="constrained")
        axes = fig.subplots(n, 3, squeeze=False)
        unlabelled = False  # any label map with ignored pixels: the legend names their colour
        for row, (image, truth, pred, name) in enumerate(
            zip(images, truths, predictions, names, strict=True)
        ):
            # Smoothed when shrunk (a 1000-pixel tile in a 3-inch panel); labels are not.
            axes[row, 0].imshow(display_image(image, channel), interpolation="antialiased")
            for ax, labels in zip(axes[row, 1:], (truth, pred), strict=True):
                unlabelled |= bool(((labels < 0) | (labels >= k)).any())
                ax.imshow(label_colours(labels, k, palette), interpolation="nearest")
            axes[row, 0].set_ylabel(name)
        _frame_panels(axes)
        _class_legend(fig, classes, unlabelled, palette)
        if title:
            fig.suptitle(title)
    return fig


def _frame_panels(axes: np.ndarray) -> None:
    """Image panels of an (N, 3) grid of axes: no ticks, a thin frame, column titles."""
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(True)
        ax.spines[:].set_linewidth(0.6)
    for ax, column in zip(axes[0], COLUMN_TITLES, strict=True):
        ax.set_title(column)


# ----------------------------------------------------------------------------- failures


def _score(row: Mapping) -> float:
    return float(workdir_lib.null_to_nan(row.get("f1_foreground_mean")))


def worst_images(rows: Sequence[Mapping], n: int) -> list[Mapping]:
    """The ``n`` rows of lowest foreground-mean F1, worst first (ties keep input order).

    Rows are those of ``evaluate.prediction_scores``: {name, f1_foreground_mean}. A NaN (or
    None) score sorts as best, after every number: it means no foreground class is in either
    the truth or the prediction, i.e. the image was correctly left all background.
    """
    order = sorted(range(len(rows)), key=lambda i: (math.isnan(_score(rows[i])), _score(rows[i])))
    return [rows[i] for i in order[: max(n, 0)]]


def failure_grid(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    names: Sequence[str],
    classes: Sequence[str],
    scores: Sequence[Mapping],
    n: int = 3,
    channel: int | None = None,
    palette: str = "grey",
) -> Figure:
    """The ``n`` worst images of a split (the paper's Fig. 6), as a :func:`result_grid`.

    ``images``, ``truths``, ``predictions`` and ``names`` describe the whole split (N each);
    ``scores`` are its per-image rows (matched by name). Rows are labelled with their F1.
    """
    index = {name: i for i, name in enumerate(names)}
    rows = worst_images(scores, n)
    worst = [index[row["name"]] for row in rows]
    labels = [f"{row['name']}\nF1 {_score(row):.3f}" for row in rows]
    return result_grid(
        [images[i] for i in worst],
        [truths[i] for i in worst],
        [predictions[i] for i in worst],
        labels,
        classes,
        title=f"The {len(worst)} images of lowest foreground-mean F1",
        channel=channel,
        palette=palette,
    )


# ----------------------------------------------------------------------------- tables


def per_class_table(record: Mapping) -> str:
    """Table I of an evaluation record: a caption line, then Label | Type | F1 | IoU."""
    caption = evaluate.describe(dict(record))
    return caption + "\n" + evaluate.table_from_record(dict(record))


def ablation_table(path: str | pathlib.Path) -> str | None:
    """The markdown of the ablation benchmark (``benchmarks/results/ablation.md``), or None."""
    path = pathlib.Path(path)
    return path.read_text() if path.is_file() else None


def save_figure(fig: Figure, directory: str | pathlib.Path, name: str) -> pathlib.Path:
    """Writes ``directory/name.png`` at ``DPI`` (creating the directory); returns the path."""
    out = pathlib.Path(directory) / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, bbox_inches="tight")
    return out
