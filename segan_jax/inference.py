"""The evaluate and predict modes: a trained workdir applied to a split or to image files."""

import functools
import json
import os
import pathlib
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from segan_jax import (
    annotations,
    checkpoints,
    datasets,
    evaluate,
    imagescope,
    input_pipeline,
    models,
    parallel,
    prediction_record,
    slides,
    tiles,
    train,
)
from segan_jax import workdir as workdir_lib


def run_info(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, data_info=None
) -> datasets.DatasetInfo:
    """The dataset facts the run in ``workdir`` trained on: its record of them, or for a run
    that predates the record the data's (``data_info`` when the caller read them)."""
    return train.saved_info(workdir) or data_info or train.load_info(config)


def load_trained(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, info=None, checked=False
):
    """(model, variables on this process's devices, dataset info, step, normalizer) of the
    workdir's latest checkpoint, or with eval.checkpoint="best" of its best/, or with a step
    (digits) of that checkpoint kept in checkpoints/. `config` must be
    the run's (eval.* and predict.* may differ; `checked`: the caller checked that; if not,
    every process must call it: the check compares the processes' configs).
    `info`: the run's `run_info`, when the caller read it (else read here)."""
    if not checked:
        _check_same_run(config, workdir)
    info = info or run_info(config, workdir)
    ctx = train.validated_context(config, info, 1, resuming=True, axis_name=None, training=False)
    mesh = parallel.make_mesh(jax.local_devices())
    if config.eval.get("checkpoint") == "best":
        variables, step = _best_network(workdir)
        # placed once here, not again by every predict_all call (a slide makes one a band)
        return ctx.model, parallel.replicate(variables, mesh), info, step, ctx.normalizer
    manager = checkpoints.latest_manager(workdir, config.train.keep, create=False)
    step, asked = manager.latest_step(), train.kept_step(config)
    if step is None:
        raise FileNotFoundError(f"{checkpoints.latest_dir(workdir)}: no checkpoint; train first")
    if asked is not None:
        checkpoints.check_kept(checkpoints.latest_dir(workdir), asked, config.train.keep)
        step = asked
    state = train.initial_state(ctx, config, info.num_channels, mesh, (manager,), step)
    manager.close()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return ctx.model, variables, info, step, ctx.normalizer


def _best_network(workdir: pathlib.Path) -> tuple[dict, int]:
    """(params and batch_stats on this process's first device, step) of ``workdir/best``."""
    best = workdir / "best"
    if not checkpoints.has_checkpoint_in(best):
        raise FileNotFoundError(
            f"{best}: no checkpoint (training saves one at its first evaluation); train "
            "further, or evaluate the latest with --config.eval.checkpoint=latest"
        )
    raw = checkpoints.restore_raw(best)
    if jax.process_index() == 0:
        print(f"Restored step {int(raw['step'])} from {best}", flush=True)
    return {"params": raw["params"], "batch_stats": raw["batch_stats"]}, int(raw["step"])


def _check_same_run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """Refuses a config other than the run's (eval.* and predict.* may differ) or, with
    several processes, other than process 0's (but for predict.*: each host writes its own),
    and bad eval.* values, before any image is read. Every process calls it; a refusal on
    any stops all of them (a host given another workdir does not leave the others waiting)."""
    train.check_processes_agree(config)  # processes given other eval.tta, say
    note = parallel.on_every_process(lambda: _run_note(config, workdir), "check the run")
    if note and jax.process_index() == 0:
        print(note, flush=True)


def _run_note(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> str | None:
    """`_check_same_run`'s checks on this process: the note on keys the config adds or
    fills in for the run's (`workdir.check`)."""
    path = workdir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a segan_jax run (no config.json); train first")
    mismatch = "the run was trained with another config; pass the same --config and overrides"
    # eval.* and predict.* are this call's choices, not the run's: no note names them.
    use = ("eval.", "predict.")
    note = workdir_lib.check(workdir, config, mismatch, workdir_lib.MUTABLE_PREFIXES, unnoted=use)
    train.eval_settings(config)  # before any image is read (load_trained checks all again)
    return note


EVALUATE_ADVICE = (
    "evaluation reads the data the run trained on (their val or test split); --mode=predict "
    "labels any images"
)


def evaluate_trained(
    config: ml_collections.ConfigDict, workdir: pathlib.Path
) -> tuple[dict, np.ndarray]:
    """(evaluation record, (N, K, K) confusion matrices of its N images) of the checkpoint
    eval.checkpoint names (the latest by default) on eval.split, of the data the run trained
    on (moved or not); writes nothing. Each process evaluates its shard of the split; the
    matrices are gathered (process 0's first: with one process, the split's order)."""
    _check_same_run(config, workdir)
    data_info = train.load_info(config)  # the cheap checks first: the data, then the split

    def checked_split() -> str:
        train.check_same_data(workdir, data_info, config.data, EVALUATE_ADVICE)
        return train.eval_split_name(config, data_info.splits)

    name = parallel.on_every_process(checked_split, "check its data")
    info = run_info(config, workdir, data_info)
    return _scored(config, workdir, info, train.load_shard(config, name), name)


def _scored(
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    info: datasets.DatasetInfo,
    shard: datasets.Split,
    name: str,
) -> tuple[dict, np.ndarray]:
    """(record named ``name``, (N, K, K) confusion matrices of every process's images) of the
    checkpoint eval.checkpoint names on every process's ``shard``, in eval.tile_size windows
    if set."""
    model, variables, info, step, normalizer = load_trained(config, workdir, info, True)
    tiling, tta = evaluate.settings(config.eval, config.model.output_stride)
    confusions, names = evaluate.confusions_over_processes(
        model, variables, shard, normalizer, config.data.ignore_index, tiling=tiling, tta=tta
    )
    record = evaluate.result_record(
        step, name, info.classes, confusions, names=names, tiling=tiling, tta=tta
    )
    return record, confusions


COHORT_PREFIX = "cohort-"  # of the split names of cohorts' evaluation records


def evaluate_cohort(
    config: ml_collections.ConfigDict, workdir: pathlib.Path
) -> tuple[dict, np.ndarray]:
    """(evaluation record, (N, K, K) confusion matrices of its images) of the checkpoint
    eval.checkpoint names on every
    image of the labelled folder eval.cohort (another cohort: ``images/``, ``masks/`` and
    optionally ``classes.json``, as one split of a folder dataset); writes nothing. The
    record's split is `cohort_name` of the folder and its ``data`` the folder's path. Each
    process reads and checks its share of the images (every problem at once) before the
    network is restored, and evaluates it; the matrices are gathered."""
    _check_same_run(config, workdir)
    info = run_info(config, workdir)
    folder = cohort_folder(config.eval.cohort)
    ignore, mine = config.data.ignore_index, slice(jax.process_index(), None, jax.process_count())
    shard = parallel.on_every_process(
        lambda: read_cohort(folder, info, ignore, mine), "read the cohort"
    )
    record, confusions = _scored(config, workdir, info, shard, cohort_name(folder))
    return {**record, "data": str(folder)}, confusions


def cohort_folder(path: str) -> pathlib.Path:
    """eval.cohort as an absolute path without ``~``, ``.`` or ``..`` (links kept)."""
    return pathlib.Path(os.path.abspath(os.path.expanduser(path)))


def cohort_name(folder: pathlib.Path) -> str:
    """The split name of the evaluation records of the `cohort_folder` ``folder``:
    ``cohort-<folder name>``, with the parent's name before a split's
    (``/data/hospital_b/test`` -> ``cohort-hospital-b-test``), in lower-case letters, digits
    and dashes."""
    parts = [folder.parent.name, folder.name] if folder.name in datasets.SPLITS else [folder.name]
    slug = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    return f"{COHORT_PREFIX}{slug or 'root'}"


def read_cohort(
    folder: pathlib.Path,
    info: datasets.DatasetInfo,
    ignore_index: int,
    shard: slice = slice(None),
) -> datasets.Split:
    """The labelled folder's images and masks (`datasets.read_labelled_folder`, ``shard`` of
    them), checked to be the run's kind of data: its classes.json (in the folder or, for a
    folder dataset's split, its parent; optional) naming the run's classes in order, every
    image with the training images' channels and pixel type. DatasetError naming every
    problem."""
    problems = _cohort_classes_problems(folder, info.classes)
    try:
        cohort = datasets.read_labelled_folder(
            folder,
            len(info.classes),
            lambda f, image: _image_problems(f, image.shape[-1], image.dtype, info),
            ignore_index,
            shard,
        )
    except datasets.DatasetError as err:
        raise datasets.DatasetError(problems + err.problems) from None
    if problems:
        raise datasets.DatasetError(problems)
    return cohort


def _cohort_classes_problems(folder: pathlib.Path, classes: tuple[str, ...]) -> list[str]:
    parent = folder.parent / "classes.json" if folder.name in datasets.SPLITS else None
    path = next((p for p in (folder / "classes.json", parent) if p and p.is_file()), None)
    if path is None:
        return []  # label values read as the run's
    names, problems = datasets.classes_problems(path)
    if problems or names == tuple(classes):
        return problems
    return [f"{path}: names {list(names)}; the run was trained on {list(classes)} in that order"]


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluates the checkpoint eval.checkpoint names on eval.split, or with eval.cohort set
    on that labelled folder (`evaluate_cohort`); process 0 prints the per-class table and
    writes DIR/eval/<split>_<step>.json, or, where a record with other figures is already
    there (training's evaluation of that step, made with other keys), beside it as
    <split>_<step>-2.json, -3, ...: no record is replaced. Returns the record."""
    workdir = pathlib.Path(workdir)
    cohort = config.eval.get("cohort", "")  # runs saved before the key lack it
    record, confusions = (evaluate_cohort if cohort else evaluate_trained)(config, workdir)
    if jax.process_index() == 0:
        where = f" of {record['data']}" if cohort else ""
        print(f"{evaluate.describe(record)}{where} ({len(confusions)} images)")
        print(evaluate.table_from_record(record), flush=True)
        print(f"-> {evaluate.save_record(workdir, record)}", flush=True)
    return record


# What predict reads: images, and slides region by region (`slides`).
INPUT_SUFFIXES = (*datasets.IMAGE_SUFFIXES, *slides.SLIDE_SUFFIXES)


def input_files(path: pathlib.Path) -> list[pathlib.Path]:
    """The image and slide files named by --config.predict.input (a file or a folder), sorted.
    In a folder, as in a dataset, hidden and system files are left out (e.g. macOS's
    ``._*.png``)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: predict.input is neither an image file nor a folder")
    files = datasets.visible_files(path, INPUT_SUFFIXES)
    if not files:
        suffixes = ", ".join(INPUT_SUFFIXES)
        raise FileNotFoundError(f"{path}: no images ({suffixes}) in this folder")
    return files


def predict_workdir(config: ml_collections.ConfigDict, workdir: str) -> list[pathlib.Path]:
    """Writes one single-channel label PNG per input image (same stem) to predict.output
    (with predict.geojson also its regions as ``<stem>.geojson``, `annotations`; with
    predict.imagescope as ``<stem>.xml`` too, `imagescope`), and
    classes.json naming the label values (the folder dataset's format: corrected label PNGs
    can become a dataset's masks/, with classes.json moved to its root and the record left
    out), and the `prediction_record` of what made each map. A slide (a TIFF-based input
    over predict.slide_pixels) is predicted region by region at predict.slide_level into a
    label TIFF, ``<stem>.tif`` (`slides`).

    With several processes each reads, predicts and writes its share of the inputs; any
    process's failed check stops all of them before anything is written. Returns the paths of
    the label maps written (none when predict.skip_existing found every input done)."""
    files, targets, skipped, widths = parallel.on_every_process(
        lambda: _plan(config), "check inputs and outputs"
    )
    parallel.check_against_process_0(
        json.dumps([str(t) for t in targets]), _same_plan, "plan the same predictions"
    )
    run, out = pathlib.Path(workdir), pathlib.Path(config.predict.output)
    _check_same_run(config, run)  # a run, this one: before reading (or building) any data
    blocks = {name: _blocks(config, width) for name, width in widths.items()}
    record, unchecked, checked = _checked_record(config, run, targets, skipped, blocks)
    if not targets:
        return _nothing_to_predict(out, record, unchecked, len(skipped))
    mine = slice(jax.process_index(), None, jax.process_count())
    every_file, files, mine_targets = files, files[mine], targets[mine]
    # Reads and checks all of this process's images, every problem at once, before restoring
    # the network and writing anything.
    info = run_info(config, run)
    classes = {str(k): name for k, name in enumerate(info.classes)}
    parallel.on_every_process(
        lambda: _check_classes_file(out / "classes.json", classes, config.predict.overwrite),
        "check classes.json",
    )
    images = _read_mine(config, info, files, mine_targets)
    model, variables, info, step, normalizer = load_trained(config, run, info, checked=True)
    _start_writing(config, classes, record, targets, (step, checked))
    if jax.process_index() == 0:
        _print_notes(config, every_file, targets, skipped, widths, blocks)
    trained = (model, variables, normalizer)
    _write_predictions(config, trained, info, images, mine_targets, blocks)
    parallel.barrier("predict: written")
    if jax.process_index() == 0:
        also = " and <stem>".join(_annotation_suffixes(config))
        also = f" (and their regions as <stem>{also})" if also else ""
        _, tta = evaluate.settings(config.eval, config.model.output_stride)
        print(f"wrote {_count_maps(targets)} to {out}{also}{evaluate.views_note(tta)}", flush=True)
    return targets


def _nothing_to_predict(
    out: pathlib.Path, record: dict, unchecked: list[str], skipped: int
) -> list[pathlib.Path]:
    """Says that every input was predicted already; process 0 enters the maps made before
    the folder had a record as unchecked (`_checked_record`). Returns []."""

    def write() -> None:
        path = out / prediction_record.FILE
        if unchecked and prediction_record.read(path) != record:
            workdir_lib.write_json(path, record)
        print(f"nothing to predict: all {skipped} input(s) predicted already", flush=True)

    parallel.process_0_first(write, f"write {prediction_record.FILE}")
    return []


def _read_mine(
    config: ml_collections.ConfigDict,
    info: datasets.DatasetInfo,
    files: list[pathlib.Path],
    targets: list[pathlib.Path],
) -> list[np.ndarray | slides.SlideInfo]:
    """`read_images` of this process's ``files`` (slides where their ``targets`` are label
    TIFFs) on every process; notes its slides whose pixels differ from
    predict.microns_per_pixel (`slides.resolution_note`) or whose files do not say."""
    level, microns = _predict_key(config, "slide_level"), _predict_key(config, "microns_per_pixel")
    resample, is_slide = _predict_key(config, "resample"), list(map(_is_slide_map, targets))
    images = parallel.on_every_process(
        lambda: read_images(files, info, is_slide, level, microns, resample),
        "read its images",
    )
    mine_slides = [image for image in images if isinstance(image, slides.SlideInfo)]
    for slide in mine_slides:
        if level == AUTO_LEVEL:
            width = slide.level_microns()
            print(f"{slide.path.name}: {slide.view()} ({width:.3g} µm per pixel)", flush=True)
        if note := slides.resolution_note(slide, microns):
            print(note, flush=True)
        elif microns and slide.microns is None:
            print(
                f"note: {slide.path.name} says no usable pixel size: not checked against "
                "predict.microns_per_pixel",
                flush=True,
            )
    return images


def _image_resolution_notes(
    widths: dict[str, float | None], microns: float, blocks: dict[str, int] | None = None
) -> list[str]:
    """Notes on the images (not slides; their pixel ``widths`` in µm by file name, None where
    the file does not say, `slides.image_microns`) whose pixels differ from ``microns``
    (predict.microns_per_pixel) by over `slides.MICRONS_TOLERANCE`: with ``blocks`` (by file
    name, `_blocks`: predict.resample) those read in blocks, and those predicted at their own
    resolution all the same; and on those whose files do not say."""
    resample, blocks = blocks is not None, blocks or {}
    off = [n for n, w in widths.items() if w and not slides.same_magnification(w, microns)]
    blocked = [n for n in off if blocks.get(n, 1) > 1]
    other = [f"{n} {widths[n]:.3g} µm" for n in off if n not in blocked]
    unknown = [n for n, w in widths.items() if w is None]
    notes = []
    if blocked:
        read = [f"{n} {widths[n]:.3g} µm in {blocks[n]}x{blocks[n]}" for n in blocked]
        notes.append(
            f"note: {len(read)} of {len(widths)} image(s) are read in blocks, each block's "
            f"mean one pixel, as the run's images' {microns:.3g} µm (predict.resample); their "
            f"label maps keep the images' size: {workdir_lib.first_names(read)}"
        )
    if other:
        if resample:
            hint = "predict.resample reads in blocks only images 2 to 8 times finer"
        else:
            hint = "with predict.slide_level=-1 a pyramidal TIFF is predicted at its closest level"
            if any(slides.block_factor(widths[n], microns) > 1 for n in off):
                hint += ", and with predict.resample=True too an image 2 to 8 times finer in blocks"
        notes.append(
            f"note: {len(other)} of {len(widths)} image(s) have pixels other than the run's "
            f"images' {microns:.3g} µm (predict.microns_per_pixel), so the network sees them "
            f"at another magnification than it learned: {workdir_lib.first_names(other)}; "
            f"rescale them to the run's pixel size first ({hint})"
        )
    if unknown:
        notes.append(
            f"note: {len(unknown)} of {len(widths)} image(s) say no usable pixel size: not "
            f"checked against predict.microns_per_pixel: {workdir_lib.first_names(unknown)}"
        )
    return notes


def _same_plan(mine: str, first: str) -> None:
    """Refuses a plan (the label maps to write, as JSON) other than process 0's: the
    processes would share out different inputs, or one stop while the others go on."""
    if mine != first:
        raise FileNotFoundError(
            f"process {jax.process_index()} found other inputs or predictions than process 0 "
            "in predict.input and predict.output: give every host the same folders"
        )


def _print_notes(
    config: ml_collections.ConfigDict,
    files: list[pathlib.Path],
    targets: list[pathlib.Path],
    skipped: list[pathlib.Path],
    widths: dict[str, float | None],
    blocks: dict[str, int],
) -> None:
    """Says which inputs predict.skip_existing leaves alone, which are images that
    predict.slide_level does not apply to, and which of the images (``files`` of ``targets``
    that are not slides; their pixel ``widths`` and ``blocks`` by label map name, `_plan`,
    `_blocks`) have pixels of another size than predict.microns_per_pixel
    (`_image_resolution_notes`)."""
    if skipped:
        names = workdir_lib.first_names([t.name for t in skipped])
        print(f"note: {len(skipped)} input(s) already predicted, left alone: {names}")
    level, resample = _predict_key(config, "slide_level"), _predict_key(config, "resample")
    images = [t for t in targets if not _is_slide_map(t)]
    if level and images and not resample:  # with resample: which are read in blocks, below
        names = workdir_lib.first_names([t.stem for t in images])
        print(
            f"note: predict.slide_level={level} applies to slides; {len(images)} input(s) are "
            f"images, predicted at their own resolution: {names}"
        )
    if microns := _predict_key(config, "microns_per_pixel"):
        source = {t.name: f.name for f, t in zip(files, targets, strict=True)}
        plain = [t.name for t in targets if not _is_slide_map(t)]
        named = {source[t]: widths[t] for t in plain}
        read = {source[t]: blocks[t] for t in plain} if resample else None
        for note in _image_resolution_notes(named, microns, read):
            print(note, flush=True)


# The predict.* keys added since the first runs, with the values a config that lacks them
# gets (configs/default.py's; configs/saved.py fills them in for a saved run's config).
PREDICT_FALLBACKS = {
    "geojson": False,
    "imagescope": False,
    "microns_per_pixel": 0.0,
    "min_region_area": 0.0,
    "skip_existing": False,
    "resample": False,
    "slide_pixels": 2**26,
    "slide_level": 0,
}


def _predict_key(config: ml_collections.ConfigDict, key: str):
    """predict.<key>, or its `PREDICT_FALLBACKS` value where the config lacks it."""
    return config.predict.get(key, PREDICT_FALLBACKS[key])


# The trained network as predict uses it: (model, variables, normalizer).
Trained = tuple[models.DeepLabV3, Any, input_pipeline.Normalizer]


def _write_predictions(
    config: ml_collections.ConfigDict,
    trained: Trained,
    info: datasets.DatasetInfo,
    images: list[np.ndarray | slides.SlideInfo],
    targets: list[pathlib.Path],
    blocks: dict[str, int],
) -> None:
    """Predicts this process's images together (label PNGs; each read in its ``blocks`` a
    side by label map name, `_blocks`, where over 1), then its slides one by one (label
    TIFFs, `_predict_slide`)."""
    model, variables, normalizer = trained
    whole = [i for i, t in enumerate(targets) if not _is_slide_map(t)]
    factors = [blocks.get(targets[i].name, 1) for i in whole]
    parts = [
        slides.image_block_means(images[i], f) if f > 1 else images[i]
        for i, f in zip(whole, factors, strict=True)
    ]
    tiling, tta = evaluate.settings(config.eval, config.model.output_stride)
    labels = evaluate.predict_all(model, variables, parts, normalizer, tiling=tiling, tta=tta)
    min_area = _predict_key(config, "min_region_area")
    for i, f, one in zip(whole, factors, labels, strict=True):
        one = slides.expand_labels(one, f, images[i].shape[:2]) if f > 1 else one
        evaluate.save_label_png(one, targets[i])
        if _annotation_suffixes(config):  # about the least area in pixels predicted
            path, area = geojson_path(targets[i]), min_area * f * f
            features = annotations.save_geojson(one, info.classes, path, area)
            if _predict_key(config, "imagescope"):
                imagescope.save_xml(features, info.classes, xml_path(targets[i]))
    for i in (i for i, t in enumerate(targets) if _is_slide_map(t)):
        _predict_slide(config, trained, images[i], targets[i], info)


def _blocks(config: ml_collections.ConfigDict, width: float | None) -> int:
    """An image's blocks a side, f x f pixels read as one: with predict.resample, f where its
    pixels, ``width`` µm wide as its file says, are f times finer than
    predict.microns_per_pixel (`slides.block_factor`); 1 otherwise (its own resolution), also
    where ``width`` is not known."""
    if not (width and _predict_key(config, "resample")):  # True only with microns (checked)
        return 1
    return slides.block_factor(width, _predict_key(config, "microns_per_pixel"))


# Windows of a slide when eval.tile_size is 0 (whole images): a slide never fits whole.
SLIDE_WINDOW = 1024


def _slide_tiling(config: ml_collections.ConfigDict) -> tiles.Tiling:
    """The windows of a slide: eval.tile_size (`SLIDE_WINDOW` when 0), eval.tile_margin."""
    return tiles.from_config(config.eval) or tiles.Tiling(SLIDE_WINDOW, config.eval.tile_margin)


def _predict_slide(
    config: ml_collections.ConfigDict,
    trained: Trained,
    slide: slides.SlideInfo,
    target: pathlib.Path,
    info: datasets.DatasetInfo,
) -> None:
    """Predicts one slide (its level `read_images` opened; `slides.predict_slide`) in
    `_slide_tiling`'s windows."""
    model, variables, normalizer = trained
    tiling = _slide_tiling(config)
    _, tta = evaluate.settings(config.eval, config.model.output_stride)

    def predict(rows: np.ndarray) -> np.ndarray:
        return evaluate.predict_all(model, variables, [rows], normalizer, tiling=tiling, tta=tta)[0]

    geojson = (geojson_path(target), info.classes) if _annotation_suffixes(config) else None
    features = [] if _predict_key(config, "imagescope") else None  # the GeoJSON's, for the XML
    slides.predict_slide(
        slide.path,
        slide.level,
        tiling,
        predict,
        target,
        geojson,
        _SlideProgress(),
        _predict_key(config, "min_region_area"),
        features,
        slide.factor,
    )
    if features is not None:
        imagescope.save_xml(features, info.classes, xml_path(target), slide.level_microns(0))
    print(f"{slide.path} -> {target}", flush=True)


class _SlideProgress:
    """Prints a slide's progress after each band: rows done, megapixels/s, ETA."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self, slide: slides.SlideInfo, rows: int) -> None:
        (h, w), seconds = slide.shape, max(time.perf_counter() - self.start, 1e-9)
        eta = workdir_lib.duration(seconds * (h - rows) / rows)
        print(
            f"{slide.path.name} {slide.view()} ({h}x{w}): rows {rows}/{h} | "
            f"{rows * w / seconds / 1e6:.2f} megapixels/s | ETA {eta}",
            flush=True,
        )


def _count_maps(targets: list[pathlib.Path]) -> str:
    """ "3 label PNGs", "1 label PNG and 2 slide label TIFFs", ..."""
    pngs = sum(not _is_slide_map(t) for t in targets)
    counts = [(pngs, "label PNG"), (len(targets) - pngs, "slide label TIFF")]
    return " and ".join(f"{n} {what}{'s' * (n != 1)}" for n, what in counts if n)


def _is_slide_map(target: pathlib.Path) -> bool:
    """Whether a label map of `_plan`'s is a slide's (a TIFF; an image's is a PNG)."""
    return target.suffix == ".tif"


def geojson_path(target: pathlib.Path) -> pathlib.Path:
    """The GeoJSON annotations beside a label map (predict.geojson): ``<stem>.geojson``."""
    return target.with_suffix(".geojson")


def xml_path(target: pathlib.Path) -> pathlib.Path:
    """The ImageScope XML annotations beside a label map (predict.imagescope): ``<stem>.xml``."""
    return target.with_suffix(".xml")


def _outputs(target: pathlib.Path, suffixes: Sequence[str]) -> list[pathlib.Path]:
    """A label map and its annotation files of ``suffixes`` (e.g. `_annotation_suffixes`)."""
    return [target, *(target.with_suffix(suffix) for suffix in suffixes)]


def _annotation_suffixes(config: ml_collections.ConfigDict) -> list[str]:
    """The suffixes of the annotation files written beside each label map: .geojson with
    predict.geojson or predict.imagescope (whose XML is made from it), then with
    predict.imagescope .xml."""
    xml = _predict_key(config, "imagescope")
    return [".geojson"] * (_predict_key(config, "geojson") or xml) + [".xml"] * xml


def read_images(
    files: list[pathlib.Path],
    info: datasets.DatasetInfo | None = None,
    is_slide: list[bool] | None = None,
    slide_level: int = 0,
    microns: float = 0.0,
    resample: bool = False,
) -> list[np.ndarray | slides.SlideInfo]:
    """Each file decoded, (H, W, C), but a slide (``is_slide``), whose ``slide_level`` (with
    `AUTO_LEVEL`, the one closest to ``microns`` per pixel, with ``resample`` also a level in
    blocks, `slides.closest_view`) is only opened and one pixel decoded (its entry: its
    `slides.SlideInfo`); DatasetError naming
    every file that is not a readable image (or slide) of a supported pixel type or, given
    the training data's ``info``, whose channels or pixel type differ from theirs."""
    problems: list[str] = []
    open_slide = functools.partial(slides.slide_info, level=slide_level)
    if slide_level == AUTO_LEVEL:
        most = slides.MAX_FACTOR if resample else 1
        open_slide = functools.partial(slides.slide_info_closest, microns=microns, most=most)
    images = [
        datasets.try_read(open_slide, [f], "slide", problems)
        if slide
        else datasets.try_read(datasets.read_image, [f], "image", problems)
        for f, slide in zip(files, is_slide or [False] * len(files), strict=True)
    ]
    if info is not None:
        for f, image in zip(files, images, strict=True):
            if isinstance(image, slides.SlideInfo):
                problems += _image_problems(f, image.channels, image.dtype, info)
            elif image is not None:
                problems += _image_problems(f, image.shape[-1], image.dtype, info)
    if problems:
        raise datasets.DatasetError(problems)
    return images


def _is_slide(path: pathlib.Path, max_pixels: int, level: int) -> bool:
    """An .svs or .ndpi, a TIFF whose full-resolution image has more than ``max_pixels``
    pixels, or one with a pyramid ``level`` > 0 (or any pyramid for `AUTO_LEVEL`; a small TIFF
    with a thumbnail stays an image at level 0); a TIFF whose header cannot be read is an
    image (and named as unreadable)."""
    if path.suffix.lower() in slides.SLIDE_SUFFIXES:
        return True
    try:
        found = slides.full_size(path)
    except datasets.FormatError:
        return False
    if found is None:
        return False
    (height, width), levels = found
    pyramid = 0 < level < levels or (level == AUTO_LEVEL and levels > 1)
    return height * width > max_pixels or pyramid


# predict.slide_level's value for "each slide's level closest to predict.microns_per_pixel".
AUTO_LEVEL = -1


def _check_predict_numbers(config: ml_collections.ConfigDict) -> None:
    """ConfigError naming a predict.* number out of its range."""
    for key, least in (("slide_pixels", 1), ("slide_level", AUTO_LEVEL)):
        value = _predict_key(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            auto = ", or -1 (each slide's level closest to predict.microns_per_pixel)"
            least_said = f"{max(least, 0)}{auto if key == 'slide_level' else ''}"
            raise train.ConfigError(
                f"predict.{key}={value!r} must be a whole number >= {least_said}"
            )
    for key in ("min_region_area", "microns_per_pixel"):
        value = _predict_key(config, key)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not 0 <= value < float("inf"):
            raise train.ConfigError(f"predict.{key}={value!r} must be a number >= 0")
    if problem := slides.microns_problem(_predict_key(config, "microns_per_pixel")):
        raise train.ConfigError(f"predict.microns_per_pixel={problem}")
    auto = _predict_key(config, "slide_level") == AUTO_LEVEL
    if auto and not _predict_key(config, "microns_per_pixel"):
        raise train.ConfigError(
            "predict.slide_level=-1 (each slide's level closest to predict.microns_per_pixel) "
            "needs predict.microns_per_pixel, the training images' pixel width in micrometres"
        )
    resample = _predict_key(config, "resample")
    if not isinstance(resample, bool):
        raise train.ConfigError(f"predict.resample={resample!r} must be True or False")
    if resample and not auto:
        raise train.ConfigError(
            "predict.resample=True needs predict.slide_level=-1 (each slide's level closest to "
            "predict.microns_per_pixel, or a level read in blocks; images whose pixels are 2 "
            "to 8 times finer read in blocks too)"
        )


def _plan(config: ml_collections.ConfigDict) -> tuple[list, list, list, dict]:
    """(input files, their label maps' paths: PNGs, for slides TIFFs; the inputs left alone by
    predict.skip_existing; {label map name: pixel width in µm or None} of every image input,
    as its file says, when predict.microns_per_pixel is set), after checking the predict.*
    keys and that no existing prediction would be overwritten without predict.overwrite."""
    if not config.predict.input or not config.predict.output:
        raise train.ConfigError(
            "--mode=predict needs --config.predict.input and --config.predict.output"
        )
    _check_predict_numbers(config)
    files = input_files(pathlib.Path(config.predict.input))
    out = pathlib.Path(config.predict.output)
    _check_outputs(files, out)
    limit, level = _predict_key(config, "slide_pixels"), _predict_key(config, "slide_level")
    slide = [_is_slide(f, limit, level) for f in files]
    if any(slide) and not tiles.from_config(config.eval):  # eval.tile_size's are checked
        try:  # with the run's config; SLIDE_WINDOW's margin only here
            tiles.check(_slide_tiling(config), config.model.output_stride)
        except ValueError as err:
            raise train.ConfigError(f"slides' windows: {err}") from None
    targets = [
        out / f"{f.stem}{'.tif' if s else '.png'}" for f, s in zip(files, slide, strict=True)
    ]
    microns = _predict_key(config, "microns_per_pixel")
    widths = {  # each image's, as its file says, for the notes, its blocks and the record
        t.name: slides.image_microns(f)
        for f, t, s in zip(files, targets, slide, strict=True)
        if microns and not s
    }
    return (*_existing_outputs(config, files, targets, out), widths)


def _existing_outputs(
    config: ml_collections.ConfigDict,
    files: list[pathlib.Path],
    targets: list[pathlib.Path],
    out: pathlib.Path,
) -> tuple[list, list, list]:
    """`_plan`'s (files, targets, skipped targets) given predictions already in ``out``: with
    predict.skip_existing the inputs with all their outputs there are skipped (the others'
    partial outputs replaced); else any is refused without predict.overwrite."""
    outputs = [_outputs(t, _annotation_suffixes(config)) for t in targets]
    if _predict_key(config, "skip_existing"):
        if config.predict.overwrite:
            raise train.ConfigError("predict.overwrite and predict.skip_existing: choose one")
        done = [all(p.exists() for p in paths) for paths in outputs]
        keep = [i for i, d in enumerate(done) if not d]
        skipped = [t for t, d in zip(targets, done, strict=True) if d]
        files, targets = [files[i] for i in keep], [targets[i] for i in keep]
        return files, targets, skipped  # the others' partial outputs are replaced
    existing = [str(p) for paths in outputs for p in paths if p.exists()]
    if existing and not config.predict.overwrite:
        n = len(existing)
        raise FileExistsError(
            f"{out}: {n} prediction file{'s' * (n != 1)} exist{'s' * (n == 1)} already (e.g. "
            f"{existing[0]}); set --config.predict.overwrite=True to replace them, or "
            "--config.predict.skip_existing=True to predict only the inputs without them"
        )
    return files, targets, []


def _check_outputs(files: list[pathlib.Path], out: pathlib.Path) -> None:
    """Refuses an output folder that is an input folder, and inputs sharing a stem."""
    if any(f.parent.resolve() == out.resolve() for f in files):
        raise FileExistsError(f"{out}: predict.output must not be the folder of the input images")
    stems: dict[str, list[str]] = {}
    for f in files:
        stems.setdefault(f.stem, []).append(f.name)
    clashes = [names for names in stems.values() if len(names) > 1]
    if clashes:
        raise FileExistsError(
            f"{files[0].parent}: inputs share a stem, so their label maps would overwrite each "
            f"other: {clashes}"
        )


def _checked_record(
    config: ml_collections.ConfigDict,
    run: pathlib.Path,
    targets: list[pathlib.Path],
    skipped: list[pathlib.Path],
    blocks: dict[str, int],
) -> tuple[dict, list[str], int | None]:
    """(predict.output's `prediction_record` with the entries of this call's label maps
    (``targets``, and those predict.skip_existing leaves alone, ``skipped``; an image's with
    its ``blocks`` a side, `_blocks`) put in, checked
    on every process: a map left alone must have been made as it would be now
    (FileExistsError naming each that was not), the maps left alone that were made before
    the folder had a record, which process 0 notes, the step of the checkpoint checked)."""

    def checked() -> tuple[dict, list[str], int | None]:
        path = pathlib.Path(config.predict.output) / prediction_record.FILE
        try:
            old = prediction_record.read(path)
        except ValueError as err:
            if not config.predict.overwrite:
                raise FileExistsError(
                    f"{err}; set --config.predict.overwrite=True to start it again, or choose "
                    "another predict.output"
                ) from None
            old = None
        checkpoint = _checkpoint_entry(config, run)
        entries = {slide: _entry(config, slide, checkpoint) for slide in (False, True)}
        made = {  # an image's blocks, 1 too: a map read whole differs from one in blocks
            t.name: entries[True]
            if _is_slide_map(t)
            else {**entries[False], "blocks": blocks.get(t.name, 1)}
            for t in [*targets, *skipped]
        }
        record, unchecked, differ = prediction_record.updated(old, made, [t.name for t in skipped])
        if differ:
            shown = " | ".join(differ[:3]) + " | ..." * (len(differ) > 3)
            raise FileExistsError(
                f"{path}: {len(differ)} of the predictions predict.skip_existing would leave "
                f"alone were made with another checkpoint or other settings ({shown}); set "
                "--config.predict.overwrite=True (instead of skip_existing) to replace them, "
                "or choose another predict.output"
            )
        return record, unchecked, checkpoint["step"]

    record, unchecked, step = parallel.on_every_process(checked, f"check {prediction_record.FILE}")
    if unchecked and jax.process_index() == 0:
        names = workdir_lib.first_names(unchecked)
        print(
            f"note: {len(unchecked)} of the predictions left alone were made before "
            f"{prediction_record.FILE} recorded what made them, so they may come from another "
            f"checkpoint or other settings: {names}",
            flush=True,
        )
    return record, unchecked, step


def _checkpoint_entry(config: ml_collections.ConfigDict, run: pathlib.Path) -> dict:
    """The run (shown in the record) and `checkpoints.identity` of the checkpoint
    eval.checkpoint names (step and saved None where there is none: load_trained says so; a
    step the folder does not keep refused, `checkpoints.check_kept`)."""
    best = config.eval.get("checkpoint") == "best"
    folder = run / "best" if best else checkpoints.latest_dir(run)
    asked = train.kept_step(config)
    found = checkpoints.identity(folder, asked)  # opens the folder once where all is well
    if found is None and asked is not None and checkpoints.has_checkpoint_in(folder):
        checkpoints.check_kept(folder, asked, config.train.keep)  # refused, before writing
    found = found or {"step": None, "saved": None}  # none at all: load_trained says so
    # the folder ("latest": checkpoints/, whatever step; "best": best/): step and saving time
    # tell its checkpoints apart, so a map of step 4 made as "latest" is one made as "4"
    return {"run": str(run.resolve()), "checkpoint": "best" if best else "latest", **found}


def _entry(config: ml_collections.ConfigDict, slide: bool, checkpoint: dict) -> dict:
    """What makes a label map (`prediction_record`), an image's or with ``slide`` a slide's:
    the checkpoint, the views, the windows (a slide's `_slide_tiling`) and, where they apply,
    predict.slide_level (with -1 also predict.microns_per_pixel and predict.resample) and
    predict.min_region_area. An image's blocks are put in by `_checked_record`."""
    tiling, tta = evaluate.settings(config.eval, config.model.output_stride)
    if slide:
        tiling = _slide_tiling(config)
    entry = {**checkpoint, "eval.tta": tta}
    entry["windows"] = [tiling.size, tiling.margin] if tiling else "whole image"
    if slide:
        entry["predict.slide_level"] = _predict_key(config, "slide_level")
        if entry["predict.slide_level"] == AUTO_LEVEL:  # the level chosen by these
            entry["predict.microns_per_pixel"] = _predict_key(config, "microns_per_pixel")
            entry["predict.resample"] = _predict_key(config, "resample")
    if _annotation_suffixes(config):
        entry["predict.min_region_area"] = _predict_key(config, "min_region_area")
    return entry


def _start_writing(
    config: ml_collections.ConfigDict,
    classes: dict[str, str],
    record: dict,
    targets: list[pathlib.Path],
    steps: tuple[int, int | None],
) -> None:
    """After every check, before any label map: refuses a checkpoint other than the one the
    record was made for (``steps``: restored, checked; a step saved since, on any process);
    process 0 removes the outputs of ``targets`` that this call replaces (with
    predict.overwrite also their annotation files of kinds not written now), so that a
    stopped run leaves none the record would vouch for, then writes classes.json and the
    record. Every process calls it."""
    step, checked = steps

    def same_step(mine: str, first: str) -> None:
        if json.loads(mine) != [checked, checked] or mine != first:
            raise RuntimeError(
                f"step {step} was restored, step {checked} was checked (process 0: "
                f"{json.loads(first)}; a checkpoint saved meanwhile?): predict again"
            )

    parallel.check_against_process_0(json.dumps([step, checked]), same_step, "restore the step")
    out = pathlib.Path(config.predict.output)
    written = _annotation_suffixes(config)
    every = annotations.ANNOTATION_SUFFIXES if config.predict.overwrite else written
    replaced = [path for t in targets for path in _outputs(t, every)]

    def write() -> None:
        out.mkdir(parents=True, exist_ok=True)
        kinds = set(every) - set(written)  # annotation kinds not written now
        stale = [p for p in replaced if p.suffix in kinds and p.exists()]
        for path in replaced:
            path.unlink(missing_ok=True)
        if stale:
            names = workdir_lib.first_names([p.name for p in stale])
            print(
                f"note: removed {len(stale)} annotation file(s) of kinds not written now, made "
                f"with the maps replaced (predict.overwrite): {names}",
                flush=True,
            )
        workdir_lib.write_json(out / "classes.json", classes)  # first: a stopped run's too
        workdir_lib.write_json(out / prediction_record.FILE, record)

    parallel.process_0_first(write, f"write {prediction_record.FILE}")
    out.mkdir(parents=True, exist_ok=True)  # seen on every host (a network filesystem's cache)


def _check_classes_file(path: pathlib.Path, classes: dict[str, str], overwrite: bool) -> None:
    """Refuses to replace a classes.json in predict.output that names other classes (label
    PNGs of another model may lie beside it) without predict.overwrite."""
    if overwrite or not path.exists():
        return
    try:
        problem = "names other classes" if json.loads(path.read_text()) != classes else ""
    except (OSError, ValueError) as err:
        problem = f"unreadable ({err})"
    if problem:
        raise FileExistsError(
            f"{path}: {problem}; this run's classes are {list(classes.values())}: set "
            "--config.predict.overwrite=True to replace it, or choose another predict.output"
        )


def _image_problems(
    f: pathlib.Path, c: int, dtype: np.dtype, info: datasets.DatasetInfo
) -> list[str]:
    """An image's channels ``c`` or pixel type where they differ from the training data's: a
    16-bit image given to a model trained on 8-bit ones would be scaled by the wrong factor."""
    bad = []
    if c != info.num_channels:
        bad.append(f"{f}: {c} channel{'s' * (c != 1)}, the model takes {info.num_channels}")
    if dtype != info.image_dtype:
        bad.append(
            f"{f}: {dtype} pixels, the model was trained on {info.image_dtype} images "
            f"divided by {info.scale:g}; convert it to {info.image_dtype} with the training "
            "images' intensity range first"
        )
    return bad
