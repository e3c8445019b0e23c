"""Pictures for quality control: the training progress plot and contour overlays of segmentations on images.

Figures are drawn on matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so
plotting works headless and from worker threads. Every PNG is written atomically.
"""
from __future__ import annotations

import logging
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import font_manager, rcParams
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, MaxNLocator
from rich.console import Console

from automedsam.dataset import GEOMETRY_TOLERANCE, printable_name, spelled_as
from automedsam.dicom import dicom_sources
from automedsam.errors import AutomedsamError
from automedsam.evaluation import (IMAGE_LIKE_VALUES, case_files, check_ignore_label, foreground_dice, listing,
                                   read_case_pair, read_label_map, settled_labels, tracked, unexpected_values)
from automedsam.files import atomic_path
from automedsam.io import Geometry, geometry_mismatch, read_image
from automedsam.samples import numpy_spacing, slicing_axis

MAX_MONTAGE_SLICES = 4
PREDICTION_COLOURS = ("#ff3b30", "#ffcc00", "#ff2dd4", "#00c8ff", "#ff9500", "#af52de", "#ffffff", "#5856d6",
                      "#8b4513", "#00ffff", "#ff69b4", "#c0c0c0", "#0000ff", "#808000", "#ff00ff", "#ffa07a")
REFERENCE_COLOUR = "#34ff5a"
VALIDATION_METRICS = (("box_dice", "box Dice"), ("inside_box_fraction", "inside-box fraction"), ("dice", "Dice"))
SYMLOG_LINEAR_FRACTION = 1e-3
SYMLOG_LINEAR_SCALE = 0.2  # the linear band's half height, in decades: its ticks (0) and the log part's stay apart
DRAWN_OVERSAMPLING = 2  # image pixels kept per PNG pixel, about: finer detail is never seen and only costs memory
LAST_RESORT_FONT = "Last Resort"  # matplotlib's own fallback font (3.10 on): a box for every character, never a letter

_progress_console = Console(stderr=True)


def plot_progress(log: Mapping[str, Any], out_png: str | os.PathLike) -> Path:
    """Draw the trainer's log.json as three panels: losses (`loss_curves`), validation metrics, learning rate."""
    epochs = list(log.get("epochs", []))
    x = [int(entry["epoch"]) for entry in epochs]
    figure = Figure(figsize=(9.6, 10))  # fixed margins: redrawn at every validation, where layout solving cost a lot
    figure.subplots_adjust(left=0.09, right=0.77, top=0.95, bottom=0.06, hspace=0.08)  # 2 inches for the legends
    ax_loss, ax_val, ax_lr = figure.subplots(3, 1, sharex=True)

    losses = loss_curves(log)
    for index, (name, values) in enumerate(losses.items()):  # markers: one epoch, or one between NaNs, shows
        ax_loss.plot(x, values, label=name, linewidth=2.0 if index == 0 else 1.0, marker=".", markersize=3)
    _log_scale(ax_loss, [value for values in losses.values() for value in values])
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(_progress_title(epochs))

    validated = [entry for entry in epochs if entry.get("val")]
    for key, name in VALIDATION_METRICS:
        values = [_number(entry["val"].get(key)) for entry in validated]
        if any(not math.isnan(value) for value in values):
            ax_val.plot([int(entry["epoch"]) for entry in validated], values, marker="o", markersize=3, label=name)
    ax_val.set_ylim(0.0, 1.0)
    ax_val.set_ylabel("validation")

    learning_rates = [_number(entry.get("lr")) for entry in epochs]
    ax_lr.plot(x, learning_rates, color="black", marker=".", markersize=3)
    _log_scale(ax_lr, learning_rates)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))

    for axes in (ax_loss, ax_val, ax_lr):
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:  # beside the panel: inside, "best" still covered the train loss
            axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return _save(figure, out_png)


def loss_curves(log: Mapping[str, Any]) -> dict[str, list[float]]:
    """The train loss and, per term, what it adds to it (its logged value times `loss_weights`, named with the
    weight), so the curves add up to the total: the raw log-barrier terms are orders of magnitude apart and would
    hide it. A log without `loss_weights` (written before they were logged) gives the raw terms."""
    epochs = list(log.get("epochs", []))
    curves = {"train loss": [float(entry["train_loss"]) for entry in epochs]}
    weights = log.get("loss_weights") or {}
    for name in sorted({name for entry in epochs for name in (entry.get("loss_terms") or {})}):
        weight = float(weights.get(name, 1.0))
        shown = f"{name} x {weight:g}" if name in weights else name
        curves[shown] = [weight * _number((entry.get("loss_terms") or {}).get(name)) for entry in epochs]
    return curves


def overlay(
    image: np.ndarray,
    seg: np.ndarray | None,
    ref: np.ndarray | None,
    out_png: str | os.PathLike,
    title: str | None = None,
    *,
    spacing: Sequence[float] | None = None,
) -> Path:
    """Draw prediction contours (solid, one colour per label value) and reference contours (dashed green) on the image.

    `image` is `(H, W)`, `(H, W, 3)` or a volume `(Z, Y, X)`; for a volume the (up to 4) slices with the most
    foreground in `seg` or `ref` are shown side by side, cut along the axis the planner would slice (the coarsest,
    `samples.slicing_axis`). `spacing` (SimpleITK order, x first) draws pixels at their physical aspect ratio.
    """
    image = np.asarray(image)
    masks = [np.asarray(mask) for mask in (seg, ref) if mask is not None]
    colour = image.ndim == 3 and image.shape[-1] == 3 and all(mask.ndim == 2 for mask in masks)
    spatial = image.shape[:2] if colour else image.shape
    for mask in masks:
        if mask.shape != spatial:
            raise AutomedsamError(
                f"Cannot overlay a segmentation of shape {mask.shape} on an image of shape {image.shape}"
                f"{f' ({title})' if title else ''}: they must cover the same pixels."
            )
    seg = None if seg is None else np.asarray(seg)
    ref = None if ref is None else np.asarray(ref)
    pixel_spacing = numpy_spacing(spacing) if spacing is not None and len(spacing) == len(spatial) else None
    if len(spatial) == 3:
        axis = slicing_axis(pixel_spacing or (1.0, 1.0, 1.0), spatial)
        image, seg, ref = (None if array is None else np.moveaxis(array, axis, 0) for array in (image, seg, ref))
        slices = _slices_with_most_foreground(seg, ref, spatial[axis])
        panels = [(image[z], _slice(seg, z), _slice(ref, z), f"slice {z}") for z in slices]
        if pixel_spacing is not None:
            pixel_spacing = tuple(value for index, value in enumerate(pixel_spacing) if index != axis)
    else:
        panels = [(image, seg, ref, None)]
    aspect = pixel_spacing[0] / pixel_spacing[1] if pixel_spacing and min(pixel_spacing) > 0 else 1.0
    labels = sorted({int(v) for mask in masks for v in np.unique(mask) if v != 0})
    label_colours = {label: label_colour(label) for label in labels}

    height, width = panels[0][0].shape[:2]
    panel_height = 5.0
    panel_width = min(max(panel_height * width / (height * aspect), 2.0), 12.0)
    dpi = float(np.clip(height / panel_height, 80, 200))
    step = _reduction((height, width), aspect=aspect, box=(panel_height * dpi, panel_width * dpi))
    figure = Figure(figsize=(panel_width * len(panels) + 1.6, panel_height + (0.5 if title else 0.0)),
                    layout="constrained")
    axes_row = np.atleast_1d(figure.subplots(1, len(panels)))
    for axes, (pixels, seg_slice, ref_slice, caption) in zip(axes_row, panels):
        _draw_panel(axes, pixels, seg_slice, ref_slice, label_colours, caption, step=step)
        axes.set_aspect(aspect)
    handles = [Line2D([], [], color=label_colours[label], label=f"prediction {label}") for label in labels
               if seg is not None and bool(np.any(seg == label))]
    if ref is not None:
        handles.append(Line2D([], [], color=REFERENCE_COLOUR, linestyle="--", label="reference"))
    if handles:  # beside the panels: inside one it would hide the contours under it
        figure.legend(handles=handles, fontsize="small", loc="outside right upper")
    if title:
        text, families = _drawable_title(title)
        figure.suptitle(text, fontfamily=families, parse_math=False)  # a case id is never mathtext: '$' stays
    return _save(figure, out_png, dpi=dpi)


def label_colour(label: int) -> str:
    """The contour colour of a label value, the same in every overlay whatever other labels a case holds."""
    return PREDICTION_COLOURS[(int(label) - 1) % len(PREDICTION_COLOURS)]


def plot_overlays_folder(
    images_dir: str | os.PathLike,
    segs_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    refs_dir: str | os.PathLike | None = None,
    *,
    labels: Sequence[int] | None = None,
    ignore_label: int | None = None,
) -> list[Path]:
    """Write `out_dir/CASE.png` for every segmentation in `segs_dir`, on the image of the same case id.

    Images may carry the nnU-Net channel suffix (`CASE_0000.nii.gz`). Images without a segmentation are skipped; a
    case without a reference is drawn without one (`_paired_cases`: refused where none has one). A case with a
    reference is read exactly as automedsam_evaluate reads it for the same folders and `labels` (0/255, colour or JPEG
    one-object masks read as the one label scored, `evaluation.read_case_pair`; `labels` none of which occurs
    refused), and its title gives the Dice evaluate's summary gives it; with `ignore_label`, the pixels its reference
    leaves unannotated are neither scored nor drawn, in either map, as evaluate leaves them out.
    """
    check_ignore_label(ignore_label, None if labels is None else [int(label) for label in labels])
    images, dicom = case_files(Path(images_dir), None, "image"), dicom_sources(Path(images_dir))
    both = sorted(set(images) & set(dicom))
    if both:
        raise AutomedsamError(f"{images_dir} holds an image file and a DICOM image of the same case id: "
                              f"{', '.join(both[:5])}. Keep one of each.")
    images.update(dicom)
    segs = case_files(Path(segs_dir), None, "segmentation")
    images = spelled_as(images, segs, folders=(images_dir, segs_dir))
    refs = (spelled_as(case_files(Path(refs_dir), None, "reference"), segs, folders=(refs_dir, segs_dir))
            if refs_dir is not None else {})
    _check_overlay_folder(Path(out_dir), {"image": images_dir, "segmentation": segs_dir, "reference": refs_dir})
    if not segs:
        raise AutomedsamError(f"No segmentation found in {segs_dir}. Point -s at a folder of predicted label maps.")
    orphans = sorted(set(segs) - set(images))
    if orphans:
        raise AutomedsamError(
            f"{len(orphans)} segmentations in {segs_dir} have no image of the same case id in {images_dir}: "
            f"{listing(orphans)}. Point -i at the images they were predicted from (CASE.ext or CASE_0000.ext)."
        )
    refs_path, segs_path = (None if refs_dir is None else Path(refs_dir)), Path(segs_dir)
    pairs = _paired_cases(segs, refs, segs_dir=segs_path, refs_dir=refs_path)
    labels, not_found = settled_labels(pairs, labels, folders=(refs_path, segs_path), dataset_option=False,
                                       ignore_label=ignore_label)
    if not_found:
        _warn(f"Warning: label(s) {not_found} of --labels occur in no reference or segmentation: the titles' Dice "
              "is over the other labels. Expected if no case holds that structure; otherwise check the label ids.")
    written = []
    for case in tracked(sorted(segs), "Drawing overlays", console=_progress_console):
        image, image_geometry = read_image(images[case])
        shown = printable_name(case)  # a file name that is not UTF-8 (from another system's zip) cannot be drawn
        if case in pairs:
            pair = read_case_pair(case, *pairs[case], labels=labels, ignore_label=ignore_label)
            seg, seg_geometry, ref, ref_geometry = pair.pred, pair.pred_geometry, pair.ref, pair.ref_geometry
            title = f"{shown}  (Dice {_dice_text(foreground_dice(ref, seg, labels))})"
        else:
            seg, seg_geometry = _read_unpaired(segs[case], labels)
            ref, ref_geometry, title = None, None, shown
        placed_elsewhere = _placed_elsewhere(image_geometry, {"segmentation": seg_geometry, "reference": ref_geometry})
        if placed_elsewhere:
            _warn(f"Warning: {shown}: {placed_elsewhere}")
            title += f"\n{placed_elsewhere}"
        written.append(overlay(image, seg, ref, Path(out_dir) / f"{case}.png", title=title,
                               spacing=image_geometry.spacing))
    return written


def stale_overlays(out_dir: str | os.PathLike, written: Sequence[Path]) -> list[Path]:
    """PNGs in `out_dir` that this run did not write: overlays of cases gone from -s since an earlier run, which
    would pass for current ones. Named, never deleted: they may be the user's own files."""
    drawn = {Path(path).name for path in written}
    return sorted(path for path in Path(out_dir).glob("*.png")
                  if path.is_file() and not path.name.startswith(".") and path.name not in drawn)


def _paired_cases(segs: Mapping[str, Path], refs: Mapping[str, Path], *, segs_dir: Path,
                  refs_dir: Path | None) -> dict[str, tuple[Path, Path]]:
    """Case id -> (reference, segmentation) of the cases drawn with a reference. With -r, a folder holding none of
    them (labelsTr given for predictions of imagesTs) is refused, as evaluate refuses it, and the cases drawn without
    one are named in a warning: either way overlays without a reference contour or Dice would pass for checked ones."""
    pairs = {case: (refs[case], segs[case]) for case in sorted(segs) if case in refs}
    if refs_dir is None:
        return pairs
    if not pairs:
        raise AutomedsamError(
            f"None of the {len(segs)} segmentations in {segs_dir} has a reference of the same case id in {refs_dir} "
            f"(0 matched): segmentations: {listing(sorted(segs), 5)}; references: "
            f"{listing(sorted(refs), 5) or 'none'}. "
            "Point -r at the references of these cases (e.g. labelsTs for predictions of imagesTs), or leave -r out "
            "to draw the segmentations alone.")
    unreferenced = sorted(set(segs) - set(refs))
    if unreferenced:
        _warn(f"Warning: {len(unreferenced)} of {len(segs)} segmentations in {segs_dir} have no reference in "
              f"{refs_dir} and are drawn without one, nor a Dice: {listing(unreferenced)}.")
    return pairs


def _warn(message: str) -> None:
    """One line on the console beside the progress bar, however long: a wrapped one breaks names apart."""
    _progress_console.print(message, markup=False, highlight=False, soft_wrap=True)


def _read_unpaired(path: Path, labels: Sequence[int] | None) -> tuple[np.ndarray, Geometry]:
    """A segmentation without a reference: with one label given, a one-object mask is read as it, as in a pair."""
    single_label = labels[0] if labels is not None and len(labels) == 1 else None
    seg, geometry, _ = read_label_map(path, single_label)
    _check_label_map(seg, path, labels)
    return seg, geometry


def _check_label_map(label_map: np.ndarray, path: Path, labels: Sequence[int] | None) -> None:
    """Refuse a file of far more values than a label map holds: images given for segmentations would be drawn as a
    contour per grey level."""
    count = unexpected_values(label_map, labels)
    if count > IMAGE_LIKE_VALUES:
        raise AutomedsamError(f"{path} holds {count} different values: it looks like an image, not a segmentation "
                              f"(overlays draw label maps of at most {IMAGE_LIKE_VALUES} labels unless --labels "
                              "names them). Point -s at label maps (0 = background, 1, 2, ... the structures).")


def _placed_elsewhere(image: Geometry, masks: Mapping[str, Geometry | None]) -> str:
    """Which mask's header places it elsewhere than its image (drawn pixel by pixel all the same, as evaluate
    scores it): a flipped or shifted file would otherwise look like a wrong prediction, or a right one."""
    for what, geometry in masks.items():
        if geometry is None or "natural" in (image.kind, geometry.kind):
            continue
        difference = geometry_mismatch(image, geometry, GEOMETRY_TOLERANCE)
        if difference:
            return f"the {what}'s header differs from the image's ({difference}): drawn pixel by pixel"
    return ""


def _check_overlay_folder(out_dir: Path, inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse an output folder that is one of the input folders: CASE.png overlays would replace PNG inputs there,
    and beside other formats they would make each case ambiguous for the next evaluate or overlay run."""
    for what, folder in inputs.items():
        if folder is not None and out_dir.resolve() == Path(folder).resolve():
            raise AutomedsamError(f"The output folder {out_dir} is the {what} folder: the overlays (CASE.png) would be "
                                  f"written among your {what}s and replace those saved as PNG. Choose another -o, "
                                  f"e.g. {out_dir / 'overlays'}.")


def _draw_panel(
    axes: Axes,
    pixels: np.ndarray,
    seg: np.ndarray | None,
    ref: np.ndarray | None,
    label_colours: Mapping[int, str],
    caption: str | None,
    *,
    step: tuple[int, int],
) -> None:
    """One panel, drawn from blocks of `step` pixels (rows, columns) but placed in the image's own pixel coordinates,
    so that the image frames the panel and every contour lies where its mask is."""
    height, width = pixels.shape[:2]
    shown = _block_mean(pixels, step)
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    if shown.ndim == 3:
        axes.imshow(_unit_range(shown), extent=extent)
    else:
        low, high = np.percentile(shown, (0.5, 99.5)) if shown.size else (0.0, 1.0)
        axes.imshow(shown, cmap="gray", vmin=low, vmax=high if high > low else low + 1, interpolation="nearest",
                    extent=extent)
    axes.set_autoscale_on(False)  # the image frames the panel; the contours' padding reaches beyond it
    for label, colour in label_colours.items():
        if seg is not None:
            _outline(axes, seg == label, step=step, colors=[colour], linewidths=1.5)
        if ref is not None:
            _outline(axes, ref == label, step=step, colors=[REFERENCE_COLOUR], linewidths=1.2, linestyles="dashed")
    axes.set_axis_off()
    if caption:
        axes.set_title(caption, fontsize="small")


def _drawable_title(title: str) -> tuple[str, list[str]]:
    """The title as it can be drawn, and the font families to draw it in: matplotlib's, then installed fonts holding
    the characters those lack (a Japanese, Chinese or Korean case id); characters no installed font holds are written
    as Python escapes (\\u60a3): drawn, they were empty boxes and each printed a matplotlib warning per figure."""
    families = [str(family) for family in rcParams["font.family"]]
    lacking = _lacking(title, [font_manager.findfont(font_manager.FontProperties(family=[family]))
                               for family in families])
    for family, path in _fallback_fonts() if lacking else ():
        if not lacking:
            break
        still_lacking = _lacking(lacking, [path])
        if still_lacking != lacking:
            families.append(family)
            lacking = still_lacking
    text = "".join(char.encode("ascii", "backslashreplace").decode("ascii") if char in lacking else char
                   for char in title)
    return text, families


def _lacking(text: str, fonts: Sequence[str]) -> str:
    """The characters of `text` (each once) that none of the font files holds; line breaks aside, matplotlib's own."""
    return "".join(dict.fromkeys(char for char in text
                                 if char != "\n" and not any(_holds(font, char) for font in fonts)))


def _fallback_fonts() -> list[tuple[str, str]]:
    """(family, file) of every installed font family, by family name: the file matplotlib draws that family's title
    in (its regular face, not the bold one whose glyphs a title would not get); matplotlib's Last Resort font left
    out, as its glyphs are the boxes a title must not show."""
    names = sorted({entry.name for entry in font_manager.fontManager.ttflist
                    if not entry.name.startswith(LAST_RESORT_FONT)})
    logger = logging.getLogger(font_manager.__name__)
    logger.addFilter(_not_a_weight_fallback)
    try:
        return [(name, font_manager.findfont(font_manager.FontProperties(family=[name]))) for name in names]
    finally:
        logger.removeFilter(_not_a_weight_fallback)


def _not_a_weight_fallback(record: logging.LogRecord) -> bool:
    """Whether a font_manager log record is other than findfont's note that a family has no regular weight (DejaVu
    Sans Light): asked of every installed family, that note printed a line per such family on a plot run."""
    return not record.getMessage().startswith("findfont: Failed to find font weight")


def _holds(font: str, char: str) -> bool:
    """Whether the font file has a glyph for the character: matplotlib draws a box for one it lacks, and warns."""
    points = _code_points(str(font))
    index = int(np.searchsorted(points, ord(char)))
    return index < len(points) and int(points[index]) == ord(char)


@lru_cache(maxsize=None)
def _code_points(font: str) -> np.ndarray:
    """The sorted code points a font file has glyphs for (none where it cannot be read), as an array: once a title
    needs a fallback, every installed font's are read, over a million on a desktop."""
    try:
        return np.array(sorted(FT2Font(font).get_charmap()), dtype=np.int32)
    except (OSError, RuntimeError):
        return np.empty(0, dtype=np.int32)


def _reduction(shape: tuple[int, int], *, aspect: float, box: tuple[float, float]) -> tuple[int, int]:
    """Image rows and columns to a block drawn as one, so that about `DRAWN_OVERSAMPLING` blocks (1.5 to 3) fall on
    a PNG pixel: matplotlib copies what it is given several times over (70 bytes a pixel for imshow alone: 12.5 GB
    in all for a 10000 x 10000 image), yet a panel of `box` PNG pixels (rows, columns) shows no finer detail."""
    scale = min(box[1] / shape[1], box[0] / (shape[0] * aspect))  # PNG pixels per image column; aspect times per row
    return (max(1, int(0.5 + 1 / (DRAWN_OVERSAMPLING * scale * aspect))),
            max(1, int(0.5 + 1 / (DRAWN_OVERSAMPLING * scale))))


def _block_edges(length: int, step: int) -> np.ndarray:
    """Where each block begins, and the end: ceil(length / step) blocks of step or step - 1 pixels spread evenly over
    the length, so that blocks drawn the same size each lie within half a pixel of their own pixels."""
    count = -(-length // step)
    return np.arange(count + 1) * length // count


def _block_any(mask: np.ndarray, step: tuple[int, int]) -> np.ndarray:
    """Blocks of `step` pixels (rows, columns) of a 2D mask, each set if any of its pixels is."""
    for axis, size in enumerate(step):
        if size > 1:
            mask = np.logical_or.reduceat(mask, _block_edges(mask.shape[axis], size)[:-1], axis=axis)
    return mask


def _block_mean(pixels: np.ndarray, step: tuple[int, int]) -> np.ndarray:
    """The image averaged over blocks of `step` pixels (area averaging: a fine pattern shows as its mean grey, not as
    some of it), a row of blocks at a time: a float copy of the whole image would cost 4 bytes a pixel or more."""
    if step == (1, 1):
        return pixels
    rows, cols = (_block_edges(length, size) for length, size in zip(pixels.shape[:2], step))
    widths = np.diff(cols).astype(np.float32).reshape(-1, *[1] * (pixels.ndim - 2))
    shown = np.empty((len(rows) - 1, len(cols) - 1, *pixels.shape[2:]), np.float32)
    for index, (top, bottom) in enumerate(zip(rows[:-1], rows[1:])):
        sums = np.add.reduceat(pixels[top:bottom].sum(axis=0, dtype=np.float32), cols[:-1], axis=0)
        shown[index] = sums / (widths * (bottom - top))
    return shown


def _outline(axes: Axes, mask: np.ndarray, *, step: tuple[int, int], **style: Any) -> None:
    """The mask's contour, drawn on its blocks of `step` pixels, a block set if any of its pixels is: a structure one
    pixel wide stays, and the outline reaches beyond the mask by less than a block (two thirds of a PNG pixel).
    Closed along the image's edge too: the level 0.5 needs a 0 beyond an object touching it, so the blocks are padded
    with background placed a block beyond the image. Only the blocks around the object go to matplotlib."""
    blocks = _block_any(mask, step)
    if not blocks.any():
        return
    rows = _block_centres(mask.shape[0], blocks.shape[0])
    cols = _block_centres(mask.shape[1], blocks.shape[1])
    padded = np.pad(blocks, 1)
    around = _around(padded)
    axes.contour(cols[around[1]], rows[around[0]], padded[around], levels=[0.5], **style)


def _block_centres(length: int, count: int) -> np.ndarray:
    """Where the centres of `count` blocks drawn over `length` pixels lie, and of one more block beyond each end."""
    return (np.arange(-1, count + 1) + 0.5) * length / count - 0.5


def _around(padded: np.ndarray) -> tuple[slice, slice]:
    """The bounding box of a padded mask's set pixels, one pixel wider on each side (the padding has room for it)."""
    rows, cols = np.flatnonzero(padded.any(axis=1)), np.flatnonzero(padded.any(axis=0))
    return slice(rows[0] - 1, rows[-1] + 2), slice(cols[0] - 1, cols[-1] + 2)


def _slices_with_most_foreground(seg: np.ndarray | None, ref: np.ndarray | None, depth: int) -> list[int]:
    """Indices of the slices with the most foreground (in order); evenly spread slices when there is none."""
    counts = np.zeros(depth, dtype=np.int64)
    for mask in (seg, ref):
        if mask is not None:
            counts += np.count_nonzero(mask.reshape(depth, -1), axis=1)
    busiest = [int(z) for z in np.argsort(-counts, kind="stable")[:MAX_MONTAGE_SLICES] if counts[z] > 0]
    if busiest:
        return sorted(busiest)
    return sorted({int(round(z)) for z in np.linspace(0, depth - 1, min(MAX_MONTAGE_SLICES, depth))})


def _slice(mask: np.ndarray | None, z: int) -> np.ndarray | None:
    return None if mask is None else mask[z]


def _unit_range(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32)
    low, high = float(rgb.min()), float(rgb.max())
    return (rgb - low) / (high - low) if high > low else np.zeros_like(rgb)


def _dice_text(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _log_scale(axes: Axes, values: Sequence[float]) -> None:
    """Log scale when every value is positive; symmetric log otherwise (log-barrier terms can go negative), linear
    up to the power of ten at or below a thousandth of the largest magnitude, so that values near zero do not each
    open decades of axis (all zero: left linear). That band is drawn about a fifth of a decade high and ticked only
    at 0: with the default height (a decade) and ticks at its ends, 1e-4, 0 and -1e-4 were printed on top of each
    other."""
    finite = [value for value in values if math.isfinite(value)]
    if not finite or not any(finite):
        return
    if min(finite) > 0:
        axes.set_yscale("log")
        return
    largest = max(abs(value) for value in finite)
    linear = math.floor(math.log10(largest * SYMLOG_LINEAR_FRACTION))  # the band's edge, as a power of ten
    axes.set_yscale("symlog", linthresh=10.0**linear, linscale=SYMLOG_LINEAR_SCALE)
    axes.yaxis.set_major_locator(FixedLocator(_symlog_ticks(linear, largest)))


def _symlog_ticks(linear: int, largest: float) -> list[float]:
    """0 and, both signs, the decades from ten times the linear band's edge `10**linear` to the first at or past
    `largest`: each tick at least a decade from the next."""
    decades = [10.0**power for power in range(linear + 1, math.ceil(math.log10(largest)) + 1)]
    return sorted([0.0, *decades, *(-decade for decade in decades)])


def _progress_title(epochs: Sequence[Mapping[str, Any]]) -> str:
    if not epochs:
        return "no epoch finished yet"
    seconds = sum(_number(entry.get("time_s")) for entry in epochs if entry.get("time_s") is not None)
    return f"{len(epochs)} epochs, {seconds / 60:.1f} min"


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _save(figure: Figure, out_png: str | os.PathLike, dpi: float = 100) -> Path:
    FigureCanvasAgg(figure)
    out_png = Path(out_png)
    with atomic_path(out_png, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return out_png
