"""Training tiles cut from whole slides by their corrected annotations: the step that closes the
paper's human-in-the-loop cycle for slides (``python -m segan_jax.slide_tiles``).

predict writes a slide's regions as GeoJSON in level-0 pixels (`slides.GeoJSONWriter`; with
predict.imagescope as ImageScope XML too); an expert corrects them on the slide in QuPath and
exports them (File > Export objects as GeoJSON), or in ImageScope and saves them. Each
slide's chosen level (``--level``; with ``--microns``, each slide's level, or level read in
blocks, closest to that pixel size: `slides.closest_view`) is cut on a grid of squares (the
last row and column of the grid end at the level's edge), and each square an annotation
reaches is written as an image and its mask, read by `annotations.label_map`'s rules, into a
folder dataset's split: ``images/<stem>_L<level>_x<X>_y<Y>.<png|tif>`` (``L0b2`` for level 0
in 2x2 blocks) and ``masks/<same>.png``, (X, Y) the square's top-left corner in level-0
pixels (where QuPath shows it).

Which squares: with ``Region*`` annotations (QuPath's class for an area of interest, here the
area the expert reviewed) those they reach, pixels outside them unlabelled; without, those
any annotation reaches, the rest of each square background.

Everything is read and checked first; the tiles are cut into a hidden folder in the output and
swapped for the slides' old tiles only when all are cut, a swap undone on any error: a failure
or Ctrl-C leaves the output as it was.
"""

import argparse
import contextlib
import dataclasses
import functools
import math
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
import tifffile
from PIL import Image

from segan_jax import annotations, datasets, evaluate, slides, tiles
from segan_jax import workdir as workdir_lib

TILE_SIZE = 512


@dataclasses.dataclass(frozen=True)
class SlidePlan:
    """A slide's level, its annotation file's annotations in that level's pixels, and which
    of them choose the tiles (``key``: the ``Region*`` ones if any, else all)."""

    source: pathlib.Path  # the annotation file
    info: slides.SlideInfo
    read: list[annotations.Annotation]
    boxes: np.ndarray  # (N, 4) x0, y0, x1, y1 of each annotation's outer rings
    key: np.ndarray  # (N,) bool


def tiles_from_slides(
    slides_dir: pathlib.Path,
    annotations_dir: pathlib.Path,
    classes_file: pathlib.Path,
    output: pathlib.Path,
    level: int = 0,
    tile_size: int = TILE_SIZE,
    overwrite: bool = False,
    microns: float = 0.0,
) -> list[str]:
    """Cuts each slide ``slides_dir/<stem>.*`` with an annotation file in ``annotations_dir``
    (`annotations.annotation_files`: QuPath GeoJSON or ImageScope XML) into
    ``tile_size`` squares of its ``level`` (with ``microns`` > 0 instead its
    `slides.closest_view` to that pixel width, levels read in blocks of up to
    `slides.MAX_FACTOR` pixels a side included) and writes those its annotations reach to
    ``output/images`` and ``output/masks`` (the module's rules), label values from
    ``classes_file`` (classes.json). Everything is checked first: DatasetError naming every
    problem, and nothing written, otherwise; tiles of a slide and level already in ``output``
    are refused, or with ``overwrite`` replaced (all of them: none stale is left). Returns the
    tiles' names (without suffix)."""
    problems: list[str] = []
    classes, missing = datasets.classes_problems(classes_file)
    problems += missing
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1:
        problems.append(f"tile size must be a whole number of pixels above 0, not {tile_size!r}")
    if not 0 <= microns < math.inf:  # NaN too
        problems.append(
            f"--microns must be a pixel width in micrometres (0: cut at --level), not {microns!r}"
        )
        raise datasets.DatasetError(problems)  # no level to check the slides at
    if problem := slides.microns_problem(microns):
        raise datasets.DatasetError([*problems, f"--microns={problem}"])
    files = annotations.annotation_files(annotations_dir, problems)
    found = datasets.files_by_stem(slides_dir, slides.TIFF_SUFFIXES)
    if microns:
        probe = functools.partial(
            slides.slide_info_closest, microns=microns, most=slides.MAX_FACTOR
        )
    else:
        probe = functools.partial(slides.slide_info, level=level)
    plans = [_plan(path, found, classes, probe, problems) for path in files]
    plans = [plan for plan in plans if plan is not None]
    listings = [_listing(output / sub) for sub in ("images", "masks")]
    problems += [p for plan in plans for p in _existing(plan, listings, output, overwrite)]
    if problems:
        raise datasets.DatasetError(problems)
    _print_notes(plans, found, output, listings[0], microns)
    return _cut_all(plans, tile_size, output)


def _print_notes(
    plans: Sequence[SlidePlan],
    found: dict[str, list[pathlib.Path]],
    output: pathlib.Path,
    images: list[pathlib.Path],
    microns: float = 0.0,
) -> None:
    """Notes on the slides without annotations, on slides whose pixels at the level differ
    in size by over `slides.MICRONS_TOLERANCE` (from each other, or from ``microns``, the
    --microns asked for), and on tiles of other levels of these slides among ``images`` (the
    listing of ``output/images``): a split of mixed magnifications."""
    bare = sorted(found.keys() - {plan.source.stem for plan in plans})
    if bare:
        shown = workdir_lib.first_names(bare)
        print(f"note: no annotations, so no tiles, for {len(bare)} of the slides: {shown}")
    widths = {plan.info.path.name: plan.info.level_microns() for plan in plans}
    known = sorted((width, name) for name, width in widths.items() if width)
    off = [f"{n} {w:.3g} µm" for w, n in known if not slides.same_magnification(w, microns or w)]
    if off:
        print(
            f"note: no level of these slides, whole or in blocks of up to {slides.MAX_FACTOR}x"
            f"{slides.MAX_FACTOR}, is within 10 % of --microns={microns:g}: {', '.join(off)}"
        )
    if known and not slides.same_magnification(known[0][0], known[-1][0]):
        listed = ", ".join(f"{name} {width:.3g} µm" for width, name in known)
        print(
            f"note: the slides' pixels as cut differ ({listed}): one split of several "
            "magnifications; cut each group of slides at its own --level, or pass --microns"
        )
    for plan in plans:
        levels = {level for p in images if (level := _tile_level(p, plan.source.stem))}
        if levels - {plan.info.tag()}:
            others = ", ".join(sorted(levels - {plan.info.tag()}))
            print(
                f"note: {output} holds tiles of {plan.info.path.name} at level {others} too: "
                f"with these of level {plan.info.tag()}, one split of two magnifications"
            )


def _plan(
    path: pathlib.Path,
    found: dict[str, list[pathlib.Path]],
    classes: tuple[str, ...] | None,
    probe: Callable[[pathlib.Path], slides.SlideInfo],
    problems: list[str],
) -> SlidePlan | None:
    """The `SlidePlan` of one annotation file, its slide's level opened by ``probe``, or None
    (appending its problems)."""
    slide = found.get(path.stem, [])
    if len(slide) != 1:
        what = "no slide" if not slide else f"{len(slide)} slides ({[p.name for p in slide]})"
        problems.append(f"{path}: {what} named {path.stem}.<svs|ndpi|tif|tiff> among the slides")
        return None
    features = annotations.read_annotations(path, classes, problems)
    info = datasets.try_read(probe, slide, "slide", problems)
    if features is None or info is None or classes is None:
        return None
    read, bad = annotations.read_features(features, classes)
    scale = np.array([info.downsample[1], info.downsample[0]])  # level-0 pixels per (x, y)
    read = [(i, v, [[ring / scale for ring in rings] for rings in p]) for i, v, p in read]
    boxes = np.array([annotations.outer_box(p) for _, _, p in read]).reshape(-1, 4)
    height, width = info.full_shape  # level 0's: beyond a level's last block too
    outside = (boxes[:, 0] * scale[0] >= width) | (boxes[:, 1] * scale[1] >= height)
    outside |= (boxes[:, 2:] <= 0).any(1)
    bad += [
        (read[j][0], _outside(boxes[j], scale, (height, width))) for j in np.flatnonzero(outside)
    ]
    problems += annotations.file_problems(path, annotations.named_problems(features, bad))
    regions = np.array([v == annotations.REGION for _, v, _ in read], bool)
    return SlidePlan(path, info, read, boxes, regions if regions.any() else ~regions)


def _outside(box: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> str:
    """The problem of an annotation whose level-pixel ``box`` lies beyond the slide of level-0
    ``size`` (H, W)."""
    (x0, y0), (x1, y1) = box[:2] * scale, box[2:] * scale
    height, width = size
    return (
        f"lies outside the {width}x{height} slide (x {x0:g}..{x1:g}, y {y0:g}..{y1:g}; "
        "coordinates are the slide's full-resolution pixels, as QuPath exports them)"
    )


def _tile_name(plan: SlidePlan, top: int, left: int) -> str:
    """``<stem>_L<level>_x<X>_y<Y>``, (X, Y) the tile's top-left corner in level-0 pixels."""
    info = plan.info
    x, y = round(left * info.downsample[1]), round(top * info.downsample[0])
    return f"{plan.source.stem}_L{info.tag()}_x{x}_y{y}"


def _listing(folder: pathlib.Path) -> list[pathlib.Path]:
    """The sorted entries of ``folder`` (none when it is not there)."""
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _tiles_of(plan: SlidePlan, listing: list[pathlib.Path]) -> list[pathlib.Path]:
    """The files of a folder's ``listing`` named as tiles of the plan's slide and level."""
    return [p for p in listing if _tile_level(p, plan.source.stem) == plan.info.tag()]


def _tile_level(path: pathlib.Path, stem: str) -> str | None:
    """The level tag (`slides.SlideInfo.tag`) of a tile file of slide ``stem``
    (`datasets.TILE_NAME`, a .png or .tif), else None."""
    match = datasets.TILE_NAME.fullmatch(path.stem)
    if path.suffix in (".png", ".tif") and match and match["slide"] == stem:
        return match["level"]
    return None


def _existing(
    plan: SlidePlan, listings: list[list[pathlib.Path]], output: pathlib.Path, overwrite: bool
) -> list[str]:
    """The problem of tiles of the plan's slide and level already in ``output`` (``listings``:
    its images/ and masks/; none with ``overwrite``)."""
    old = sorted({p.stem for listing in listings for p in _tiles_of(plan, listing)})
    if not old or overwrite:
        return []
    return [
        f"{output}: holds {len(old)} tiles of {plan.info.path.name} at {plan.info.view()} "
        f"already ({old[0]}, ...); pass --overwrite to replace them all"
    ]


def _cut_all(plans: Sequence[SlidePlan], tile_size: int, output: pathlib.Path) -> list[str]:
    """Cuts every plan's tiles into a hidden folder in ``output``, then swaps them for the
    slides' old tiles there (`_move_all`). On any error, Ctrl-C included, ``output`` is left
    as it was (a folder it did not have removed)."""
    folders = (output / "images", output / "masks", output, *output.parents)
    created = [p for p in folders if not p.exists()]  # removed again on an error
    output.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".slide_tiles-", dir=output))
    try:
        for part in ("new/images", "new/masks", "old/images", "old/masks"):
            (staging / part).mkdir(parents=True)
        names = [name for plan in plans for name in _cut(plan, tile_size, staging / "new")]
        moves = []
        for sub in ("images", "masks"):
            (output / sub).mkdir(exist_ok=True)
            listing = _listing(output / sub)  # now: files made while cutting are replaced too
            old = [p for plan in plans for p in _tiles_of(plan, listing)]
            moves += [(p, staging / "old" / sub / p.name) for p in old]
            moves += [(p, output / sub / p.name) for p in sorted((staging / "new" / sub).iterdir())]
        _move_all(moves, staging)
    except StrandedError:
        raise  # the staging folder holds files of the output's: kept
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # if still empty
        raise
    try:  # the tiles are in place: a Ctrl-C now leaves only the hidden folder, not them
        shutil.rmtree(staging)
    except KeyboardInterrupt:
        shutil.rmtree(staging, ignore_errors=True)
    return names


class StrandedError(RuntimeError):
    """Swapping tiles failed and so did undoing it: the files lie in the staging folder."""


def _move_all(moves: Sequence[tuple[pathlib.Path, pathlib.Path]], staging: pathlib.Path) -> None:
    """Renames each (source, target) in turn; on any error, Ctrl-C included, renames those
    done back, last first, and raises it; `StrandedError` naming ``staging`` when that fails
    too."""
    done = []
    try:
        for source, target in moves:
            source.replace(target)
            done.append((source, target))
    except BaseException as err:
        try:
            for source, target in reversed(done):
                target.replace(source)
        except BaseException as again:
            raise StrandedError(
                f"{staging}: swapping tiles failed ({err!r}), and so did undoing it ({again!r}); "
                "the old tiles are in its old/ folder, the new in new/: move them back by hand"
            ) from again
        raise


def _cut(plan: SlidePlan, tile_size: int, folder: pathlib.Path) -> list[str]:
    """Writes the plan's tiles to ``folder/images`` and ``folder/masks``; their names. Says
    how many annotations hold no pixel of any tile (left out)."""
    info, names, used = plan.info, [], set()
    size = (min(tile_size, info.shape[0]), min(tile_size, info.shape[1]))
    candidates = _candidates(plan, size)
    progress = _Progress(info.path.name, len(candidates))
    with slides.open_level(info.path, info.level, info.factor) as (_, array):
        for top, left in candidates:
            progress(len(names))
            labels, filled = _tile_labels(plan, (top, left), size)
            if labels is None:
                continue
            name = _tile_name(plan, top, left)
            _save_image(slides.read_window(array, info, (top, left), size), folder / "images", name)
            evaluate.save_label_png(labels, folder / "masks" / f"{name}.png")
            names.append(name)
            used |= filled
    width = info.level_microns()
    microns = f", {width:.3g} µm per pixel" if width else ""
    print(
        f"{info.path.name}: {len(names)} tile(s) of {size[0]}x{size[1]} at {info.view()}"
        f"{microns} ({len(candidates)} square(s) reached by the bounds of {plan.source.name}'s "
        "annotations)",
        flush=True,
    )
    unused = len(plan.read) - len(used)
    if unused:
        print(
            f"note: {unused} of the {len(plan.read)} annotations of {plan.source.name} hold no "
            "pixel of a tile cut (beyond every Region*'s squares, beyond the slide's edge, "
            "or holding no pixel centre at this level): left out",
            flush=True,
        )
    return names


class _Progress:
    """Prints a slide's progress every `PROGRESS_S` seconds: squares done, tiles, ETA."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.done = name, total, 0
        self.start = self.last = time.perf_counter()

    def __call__(self, tiles: int) -> None:
        """Called before each square: ``tiles`` written so far."""
        now = time.perf_counter()
        if now - self.last >= PROGRESS_S and self.done:
            eta = workdir_lib.duration((now - self.start) * (self.total - self.done) / self.done)
            print(
                f"{self.name}: squares {self.done}/{self.total} | {tiles} tiles | ETA {eta}",
                flush=True,
            )
            self.last = now
        self.done += 1


PROGRESS_S = 10.0


def _candidates(plan: SlidePlan, size: tuple[int, int]) -> list[tuple[int, int]]:
    """(top, left) of the grid's squares that the bounding boxes of key annotations reach."""
    (h, w), (th, tw) = plan.info.shape, size
    rows = np.array([top for top, _, _ in tiles.axis_windows(h, th, 0)])
    cols = np.array([left for left, _, _ in tiles.axis_windows(w, tw, 0)])
    found = set()
    for x0, y0, x1, y1 in plan.boxes[plan.key]:
        r0, r1 = np.searchsorted(rows + th, y0, "right"), np.searchsorted(rows, y1)
        c0, c1 = np.searchsorted(cols + tw, x0, "right"), np.searchsorted(cols, x1)
        found.update((int(r), int(c)) for r in rows[r0:r1] for c in cols[c0:c1])
    return sorted(found)


def _tile_labels(
    plan: SlidePlan, corner: tuple[int, int], size: tuple[int, int]
) -> tuple[np.ndarray | None, set[int]]:
    """The (h, w) labels of the square at ``corner`` (top, left), or None when no key
    annotation holds a pixel of it; the indices of the annotations that hold one."""
    (top, left), (h, w) = corner, size
    x0, y0, x1, y1 = plan.boxes.T
    near = np.flatnonzero((x0 < left + w) & (x1 > left) & (y0 < top + h) & (y1 > top))
    labels, _, unset = annotations.rasterise([plan.read[j] for j in near], size, (left, top))
    filled = {plan.read[j][0] for j in near} - set(unset)
    if not any(plan.read[j][0] in filled for j in near if plan.key[j]):
        return None, filled
    return labels, filled


def _save_image(window: np.ndarray, folder: pathlib.Path, name: str) -> None:
    """Writes an (h, w, C) window: 8-bit grey or RGB as PNG, any other (16-bit, or another
    number of channels) as a zlib TIFF, channels last. PNG's fastest compression: on H&E
    tiles 4x faster than the default level, for 4 % more bytes."""
    if window.dtype == np.uint8 and window.shape[-1] in (1, 3):
        image = window[..., 0] if window.shape[-1] == 1 else window
        Image.fromarray(image).save(folder / f"{name}.png", format="PNG", compress_level=1)
        return
    photometric = "rgb" if window.shape[-1] == 3 else "minisblack"
    tifffile.imwrite(
        folder / f"{name}.tif",
        window[..., 0] if window.shape[-1] == 1 else window,
        photometric=photometric,
        planarconfig="contig",
        compression="zlib",
    )


DESCRIPTION = """Cuts whole slides into training tiles by their corrected annotations: each
slide in --slides with a <stem>.geojson (QuPath, full-resolution pixels) or <stem>.xml
(ImageScope) in --annotations is cut at --level (or, with --microns, at its level closest to
that pixel width, a level read in blocks included) into --tile_size squares, and each square an
annotation reaches is written to --output/images and --output/masks (a folder dataset's
split), label values from --classes. With Region* annotations only the squares they reach,
unlabelled outside them. Every file is checked before anything is written; tiles of a slide
and level already there are refused unless --overwrite (which replaces them all)."""


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m segan_jax.slide_tiles``: slides and their corrected annotations to tiles."""
    parser = argparse.ArgumentParser(
        prog="python -m segan_jax.slide_tiles",
        description=DESCRIPTION,
    )
    parser.add_argument("--slides", required=True, type=pathlib.Path, help="folder of slides")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--level", type=int, default=0, help="pyramid level (default 0: full resolution)"
    )
    which.add_argument(
        "--microns",
        type=float,
        default=0.0,
        help="instead of --level, each slide's level closest to this pixel width in "
        f"micrometres, a level read in blocks of up to {slides.MAX_FACTOR}x{slides.MAX_FACTOR} "
        "pixels (each block's mean one pixel) included: one magnification from slides "
        "scanned at several (their files must say their pixel size)",
    )
    parser.add_argument(
        "--tile_size",
        type=int,
        default=TILE_SIZE,
        help=f"square side in pixels of the level (default {TILE_SIZE})",
    )
    annotations.add_arguments(parser, "a dataset split's folder", "replace those slides' tiles")
    args = parser.parse_args(argv)
    try:
        names = tiles_from_slides(
            args.slides,
            args.annotations,
            args.classes,
            args.output,
            args.level,
            args.tile_size,
            args.overwrite,
            args.microns,
        )
    except datasets.DatasetError as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        print(f"stopped (Ctrl-C): {args.output} is as it was", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"wrote {len(names)} tiles (images/ and masks/) to {args.output}")


if __name__ == "__main__":
    main()
