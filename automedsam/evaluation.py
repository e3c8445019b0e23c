"""Segmentation metrics per case and label (Dice, IoU, HD95, ASSD) and the summary.json that reports them.

Conventions, chosen so that summaries stay comparable across datasets:
- A label absent from both reference and prediction of a case has no defined score: every metric is NaN and
  `summarise` skips it (NaN-aware means), so it neither rewards nor penalises the case.
- If only one of the two is empty, Dice and IoU are 0 while HD95 and ASSD are NaN (no surface to measure from);
  those surface means therefore cover only the cases where both masks exist.
- Distances are measured between surface voxels (mask minus its erosion, 6/4-connected) with an exact Euclidean
  distance transform, in physical units when spacing is given and in pixels otherwise. evaluate_folders passes the
  reference's spacing: millimetres for NIfTI/NRRD/MHA files (2D ones too), pixels for PNG/BMP/TIFF/JPEG files,
  which carry none (summary.json's `distance_unit`). HD95 is the larger of the two directed 95th percentiles; ASSD
  is the mean over the surface voxels of both masks of the distance to the other surface. An axis of size 1 is left
  out (no voxel has a neighbour along it): a 2D image saved as a one-slice volume (1, H, W), nnU-Net's layout for 2D
  NIfTI, scores as the image.
- With an ignore label (nnU-Net v2's "ignore", unannotated pixels), the pixels the reference marks with it are set
  to background in reference and prediction alike before any metric, as nnU-Net's evaluation leaves them out.
- `spacing` follows SimpleITK's order `(x, y[, z])`, as stored in `io.Geometry`, and is reversed here to match
  the numpy arrays `(z, y, x)`.
In memory label keys are ints and NaN stays NaN; in summary.json keys become strings and NaN becomes null.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
from rich.console import Console
from scipy import ndimage

from automedsam.errors import AutomedsamError
from automedsam.files import save_json
from automedsam.paths import check_outside_raw_datasets
from automedsam.progress import progress_bar
from automedsam.dataset import GEOMETRY_TOLERANCE, spelled_as
from automedsam.io import (LOSSY_EXTENSIONS, SUPPORTED_EXTENSIONS, Geometry, as_label_map, geometry_mismatch, is_colour,
                           one_object_mask, read_image, split_extension)
from automedsam.samples import case_id_from_stem

METRICS = ("dice", "iou", "hd95", "assd")
IMAGE_LIKE_VALUES = 64  # more values than this beside the scored labels: an image, not a label map
MASK_VALUE_FROM = 128  # a file's one value from here up (0/255, 0/65535) marks a mask's object, below it a label id
ONE_OBJECT_VALUE = 255  # a colour or JPEG mask read without a label to read it as: a mask value, as in a 0/255 file
EDGE_PIXELS = 2  # the soft rim of an anti-aliased mask, left out of OFF_PEAK_SHARE
OFF_PEAK_SHARE = 0.5  # a one-object mask's lit pixels have its one brightness (edges, JPEG noise aside); an image's not
CHOOSE_BY_ENDING = "Keep one, or pass --file-ending to choose."  # two files of one case id, where --file-ending exists
MIXED_UNITS = "mixed"  # summary.json's distance_unit where some references carry spacing (mm) and some do not (pixel)

_progress_console = Console(stderr=True)
Item = TypeVar("Item")


def dice(ref: np.ndarray, pred: np.ndarray) -> float:
    """Dice overlap of two binary masks; NaN when both are empty (nothing to agree on)."""
    ref, pred = np.asarray(ref, dtype=bool), np.asarray(pred, dtype=bool)
    total = int(ref.sum()) + int(pred.sum())
    if total == 0:
        return math.nan
    return 2.0 * int(np.logical_and(ref, pred).sum()) / total


def iou(ref: np.ndarray, pred: np.ndarray) -> float:
    """Intersection over union of two binary masks; NaN when both are empty."""
    ref, pred = np.asarray(ref, dtype=bool), np.asarray(pred, dtype=bool)
    union = int(np.logical_or(ref, pred).sum())
    if union == 0:
        return math.nan
    return int(np.logical_and(ref, pred).sum()) / union


def surface_distances(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float] | None = None) -> dict[str, float]:
    """HD95 and ASSD between the surfaces of two binary masks; NaN for both when either mask is empty."""
    ref, pred = np.asarray(ref, dtype=bool), np.asarray(pred, dtype=bool)
    if not ref.any() or not pred.any():
        return {"hd95": math.nan, "assd": math.nan}
    sampling = _numpy_order_spacing(spacing, ref.ndim)
    ref, pred, sampling = _without_single_axes(ref, pred, sampling)
    window = _union_window(ref, pred)
    ref_surface, pred_surface = _surface(ref[window]), _surface(pred[window])
    pred_to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=sampling)[pred_surface]
    ref_to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)[ref_surface]
    hd95 = max(float(np.percentile(pred_to_ref, 95)), float(np.percentile(ref_to_pred, 95)))
    assd = float((pred_to_ref.sum() + ref_to_pred.sum()) / (pred_to_ref.size + ref_to_pred.size))
    return {"hd95": hd95, "assd": assd}


def case_metrics(
    ref: np.ndarray, pred: np.ndarray, labels: Iterable[int], *, spacing: Sequence[float] | None = None
) -> dict[int, dict[str, float]]:
    """Every metric for each label of one case: `{label: {dice, iou, hd95, assd, ref_voxels, pred_voxels}}`."""
    ref, pred = np.asarray(ref), np.asarray(pred)
    if ref.shape != pred.shape:
        raise AutomedsamError(
            f"Reference and prediction differ in shape ({ref.shape} vs {pred.shape}); "
            "a prediction must have its reference's size."
        )
    results: dict[int, dict[str, float]] = {}
    for label in labels:
        ref_mask, pred_mask = ref == label, pred == label
        results[int(label)] = {
            "dice": dice(ref_mask, pred_mask),
            "iou": iou(ref_mask, pred_mask),
            **surface_distances(ref_mask, pred_mask, spacing),
            "ref_voxels": int(ref_mask.sum()),
            "pred_voxels": int(pred_mask.sum()),
        }
    return results


def summarise(per_case: Mapping[str, Mapping[int, Mapping[str, float]]]) -> dict:
    """Means per label and over foreground labels, skipping NaN (a label absent from ref and pred of a case).

    `mean[label]["n_cases"]` counts the cases where the label occurs in the reference or the prediction, i.e. the
    cases behind the Dice/IoU means; `n_cases_with_both` those behind the HD95/ASSD means (a missed structure has
    no distance: a model missing most cases would otherwise show a perfect-looking HD95 with nothing to warn).
    `foreground_mean` averages the per-label means of every label except 0.
    """
    labels = sorted({label for case in per_case.values() for label in case}, key=_label_sort_key)
    mean: dict = {}
    for label in labels:
        rows = [case[label] for case in per_case.values() if label in case]
        mean[label] = {metric: _nanmean([row[metric] for row in rows]) for metric in METRICS}
        mean[label]["n_cases"] = sum(1 for row in rows if not _missing(row["dice"]))
        mean[label]["n_cases_with_both"] = sum(1 for row in rows if not _missing(row["hd95"]))
    foreground = [label for label in labels if str(label) != "0"]
    foreground_mean = {metric: _nanmean([mean[label][metric] for label in foreground]) for metric in METRICS}
    return {"per_case": {case: dict(metrics) for case, metrics in per_case.items()}, "mean": mean,
            "foreground_mean": foreground_mean}


def evaluate_folders(
    ref_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    *,
    labels: Iterable[int] | None = None,
    out_json: str | os.PathLike | None = None,
    file_ending: str | None = None,
    label_names: Mapping[int, str] | None = None,
    ignore_label: int | None = None,
) -> dict:
    """Score every reference in `ref_dir` against the prediction of the same case id in `pred_dir`.

    `labels=None` scores every foreground label found in the references or predictions. Spacing comes from the
    reference's geometry (pixels for natural images). Where one label is scored, a file that holds a single object
    value of 128 or more, is colour or is a JPEG (a 0/255, colour or JPEG mask, as `automedsam_convert folder`
    accepts), is read as that label, and its case is listed under `read_as_one_object`; with labels inferred, the same
    holds when one side (references or predictions) holds one and the same label throughout and the other side's
    other values are mask values (0/255 references of 0/1 predictions, or the reverse, scored as label 1 instead of
    label 1 and 255 at Dice 0 each); colour and JPEG masks count as 0/255 there. Label values found but not asked
    for are listed under `labels_not_scored`, labels asked for that no file holds under `labels_not_found` (none of
    them held, where the files hold other labels, is refused: `absent_labels`), cases whose prediction's spacing,
    origin or direction differ from the reference's (a flipped or shifted volume, scored voxel by voxel all the same)
    under `geometry_differs`, predictions without a reference (left out of the means) under
    `predictions_not_scored`; `distance_unit` is "mm", "pixel" or MIXED_UNITS, from the references' formats. The
    reference pixels of `ignore_label` (nnU-Net v2's "ignore": unannotated) are left out of every metric, in both
    files, as nnU-Net's evaluation leaves them out; the summary records it as `ignore_label`. The summary is written
    atomically to `out_json` when given and returned (NaN kept as NaN in the returned dict).
    """
    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    if out_json is not None:
        _check_summary_path(Path(out_json))
    refs = case_files(ref_dir, file_ending, "reference", duplicate_fix=CHOOSE_BY_ENDING)
    preds = spelled_as(case_files(pred_dir, file_ending, "prediction", duplicate_fix=CHOOSE_BY_ENDING), refs,
                       folders=(pred_dir, ref_dir))
    if not refs:
        endings = file_ending or ", ".join(SUPPORTED_EXTENSIONS)
        raise AutomedsamError(f"No reference segmentation ({endings}) found in {ref_dir}. Check the reference folder.")
    missing = sorted(set(refs) - set(preds))
    if missing:
        matched = len(refs) - len(missing)
        raise AutomedsamError(
            f"{len(missing)} of {len(refs)} references in {ref_dir} have no prediction in {pred_dir} "
            f"({matched} matched): {listing(missing)}. Predict these cases, or evaluate against a reference folder "
            "holding only the predicted cases."
        )
    fixed_labels = None if labels is None else sorted({int(label) for label in labels})
    check_ignore_label(ignore_label, fixed_labels)
    per_case: dict[str, dict[int, dict[str, float]]] = {}
    found = LabelsFound()
    units: set[str] = set()
    placed_elsewhere: list[str] = []  # scored voxel by voxel all the same: only the user knows which header is right
    for case in tracked(sorted(refs), "Evaluating"):
        pair = read_case_pair(case, refs[case], preds[case], labels=fixed_labels, ignore_label=ignore_label)
        found.add(case, pair)
        units.add(distance_unit(pair.ref_geometry))
        geometries = (pair.ref_geometry, pair.pred_geometry)
        natural = any(geometry.kind == "natural" for geometry in geometries)
        if not natural and geometry_mismatch(*geometries, GEOMETRY_TOLERANCE):
            placed_elsewhere.append(case)
        case_labels = fixed_labels if fixed_labels is not None else _foreground_labels(pair.ref, pair.pred)
        per_case[case] = case_metrics(pair.ref, pair.pred, case_labels, spacing=pair.ref_geometry.spacing)
    if fixed_labels is None:
        masks_of = found.one_label(dataset_option=True)
        if masks_of is not None:
            return evaluate_folders(ref_dir, pred_dir, labels=[masks_of], out_json=out_json, file_ending=file_ending,
                                    label_names=label_names, ignore_label=ignore_label)
        _fill_absent_labels(per_case)
        not_found = []
    else:
        not_found = absent_labels(fixed_labels, found.labels, folders=(ref_dir, pred_dir), dataset_option=True)
    summary = summarise(per_case)
    summary["reference_dir"], summary["prediction_dir"] = str(ref_dir), str(pred_dir)
    summary["distance_unit"] = units.pop() if len(units) == 1 else MIXED_UNITS
    summary["labels_not_scored"] = sorted(found.labels - set(summary["mean"]))
    summary["labels_not_found"] = not_found
    summary["read_as_one_object"] = found.read_as_one_object
    summary["geometry_differs"] = placed_elsewhere
    summary["predictions_not_scored"] = sorted(set(preds) - set(refs))
    if ignore_label is not None:
        summary["ignore_label"] = ignore_label
    if label_names:
        summary["label_names"] = {int(label): name for label, name in label_names.items()}
    if out_json is not None:
        save_json(out_json, json_ready(summary))
    return summary


@dataclass(frozen=True)
class CasePair:
    """One case's reference and prediction as automedsam_evaluate scores them."""

    ref: np.ndarray
    pred: np.ndarray
    ref_geometry: Geometry
    pred_geometry: Geometry
    read_as_one_object: bool  # either file was a one-object mask saved without its label id


def read_case_pair(case: str, ref_path: Path, pred_path: Path, *, labels: Sequence[int] | None,
                   ignore_label: int | None = None) -> CasePair:
    """Read a case's reference and prediction the one way evaluate scores them and overlays title their Dice: with one
    label scored, one-object masks (0/255, colour, JPEG) as that label; without labels, colour and JPEG masks as
    ONE_OBJECT_VALUE. Refused where either looks like an image or the two differ in shape. The pixels the reference
    marks `ignore_label` are background in both, so that no metric counts them."""
    single_label = labels[0] if labels is not None and len(labels) == 1 else None
    one_object_value = ONE_OBJECT_VALUE if labels is None else None
    ref, ref_geometry, ref_converted = read_label_map(ref_path, single_label, one_object_value=one_object_value,
                                                      ignore_label=ignore_label)
    pred, pred_geometry, pred_converted = read_label_map(pred_path, single_label, one_object_value=one_object_value)
    for label_map, path in ((ref, ref_path), (pred, pred_path)):
        _check_not_an_image(label_map, path, labels)
    if ref.shape != pred.shape:
        raise AutomedsamError(
            f"Case '{case}': prediction {pred_path} has shape {pred.shape} but reference {ref_path} has "
            f"{ref.shape}. Predictions must be written in their input's geometry."
        )
    if ignore_label is not None:
        ref, pred = _without_ignored(ref, pred, ignore_label)
    return CasePair(ref, pred, ref_geometry, pred_geometry, ref_converted or pred_converted)


def _without_ignored(ref: np.ndarray, pred: np.ndarray, ignore_label: int) -> tuple[np.ndarray, np.ndarray]:
    """Both maps with the pixels the reference marks `ignore_label` (unannotated) set to background: as in nnU-Net's
    evaluation, a prediction there is neither right nor wrong, and no label's voxels, overlap or surface include it."""
    ignored = ref == ignore_label
    return np.where(ignored, 0, ref).astype(ref.dtype), np.where(ignored, 0, pred).astype(pred.dtype)


def check_ignore_label(ignore_label: int | None, labels: Sequence[int] | None) -> None:
    """The ignore label marks unannotated pixels: it is no label to score, nor the background."""
    if ignore_label is None:
        return
    if isinstance(ignore_label, bool) or not isinstance(ignore_label, int) or ignore_label < 1:
        raise AutomedsamError(f"--ignore-label takes the id of the label marking unannotated pixels (a whole number "
                              f"from 1, e.g. --ignore-label 2), got {ignore_label!r}.")
    if labels is not None and ignore_label in labels:
        raise AutomedsamError(f"Label {ignore_label} is both scored (--labels or -d) and ignored (--ignore-label). "
                              "Score the other labels: drop it from --labels, or give --labels instead of -d.")


@dataclass
class LabelsFound:
    """The labels a folder's references and predictions hold and the cases read as one object: what the pair rule
    (0/255 masks of 0/1 ones score as that one label) and the labels_not_scored note are decided on."""

    referenced: set[int] = field(default_factory=set)
    predicted: set[int] = field(default_factory=set)
    read_as_one_object: list[str] = field(default_factory=list)

    def add(self, case: str, pair: CasePair) -> None:
        self.referenced.update(_foreground_labels(pair.ref, pair.ref))
        self.predicted.update(_foreground_labels(pair.pred, pair.pred))
        if pair.read_as_one_object:
            self.read_as_one_object.append(case)

    @property
    def labels(self) -> set[int]:
        return self.referenced | self.predicted

    def one_label(self, *, dataset_option: bool) -> int | None:
        """For pairs read without labels: the one label to read them all as again (the pair rule), else None, after
        refusing colour or JPEG masks beside several labels (`dataset_option`: whether the command has -d)."""
        masks_of = _masks_of_one_label(self.referenced, self.predicted)
        if masks_of is None:
            _check_label_of_one_object_masks(self.read_as_one_object, self.labels, dataset_option=dataset_option)
        return masks_of


def settled_labels(
    pairs: Mapping[str, tuple[Path, Path]], labels: Iterable[int] | None, *, folders: tuple[Path | None, Path],
    dataset_option: bool, ignore_label: int | None = None,
) -> tuple[list[int] | None, list[int]]:
    """The labels to read each case's (reference, prediction) pair with, settled as evaluate_folders settles them:
    those given, else the pair rule's one label, else None (the labels found); and the labels given that no pair
    holds, for a warning (none of them held is refused, `absent_labels`). Both look at the whole folder (`folders`:
    references, None where none are given, and predictions), so every pair is read here once before the caller
    reads it again."""
    given = None if labels is None else sorted({int(label) for label in labels})
    if not pairs:
        return given, []
    found = LabelsFound()
    for case, (ref_path, pred_path) in tracked(list(pairs.items()), "Reading labels"):
        found.add(case, read_case_pair(case, ref_path, pred_path, labels=given, ignore_label=ignore_label))
    if given is not None:
        return given, absent_labels(given, found.labels, folders=folders, dataset_option=dataset_option)
    masks_of = found.one_label(dataset_option=dataset_option)
    return (None if masks_of is None else [masks_of]), []


def absent_labels(labels: Sequence[int], found: set[int], *, folders: tuple[Path | None, Path],
                  dataset_option: bool) -> list[int]:
    """The labels asked for that no reference or prediction holds (`found`: the foreground values they hold), to
    name in a warning: a structure may be absent from every test case. None of them held, where the files hold other
    labels, is refused: a typo in --labels (or the wrong -d) would give a summary of n/a and exit as a success.
    `folders`: the references' and the predictions'; `dataset_option`: whether the command has -d."""
    absent = sorted(set(labels) - found)
    if not found or len(absent) < len(labels):
        return absent
    held = sorted(found)
    example = held[0] if held[0] < MASK_VALUE_FROM else 1  # a 0/255 mask is read as the one label given
    from_dataset = ", or -d for the dataset they belong to" if dataset_option else ""
    raise AutomedsamError(
        f"None of the labels asked for ({sorted(labels)}) occurs in the references in {folders[0]} or the "
        f"predictions in {folders[1]}: they hold the label values {held}. Give the labels to score with --labels "
        f"(e.g. --labels {example}){from_dataset}.")


def foreground_dice(ref: np.ndarray, pred: np.ndarray, labels: Sequence[int] | None = None) -> float:
    """A case's mean Dice over the labels scored (those given, else every foreground label either holds), a label
    absent from both skipped: the mean of the case's Dice in evaluate's summary.json."""
    scored = labels if labels is not None else _foreground_labels(ref, pred)
    return _nanmean([dice(ref == label, pred == label) for label in scored])


def distance_unit(geometry: Geometry) -> str:
    """The unit distances are scored in with this reference geometry: its spacing (mm) for NIfTI/NRRD/MHA, 2D ones
    too; pixels for PNG/BMP/TIFF/JPEG, which carry no spacing."""
    return "pixel" if geometry.kind == "natural" else "mm"


def _masks_of_one_label(referenced: set[int], predicted: set[int]) -> int | None:
    """The one label of one side (predictions or references) when the other side's other values are all mask values
    (0/255 masks of it), else None."""
    for one, other in ((predicted, referenced), (referenced, predicted)):
        extra = other - one
        if len(one) == 1 and extra and min(extra) >= MASK_VALUE_FROM:
            return next(iter(one))
    return None


def _check_label_of_one_object_masks(cases: Sequence[str], found: set[int], *, dataset_option: bool) -> None:
    """Refuse colour or JPEG masks, read as ONE_OBJECT_VALUE for want of a label id, beside label ids they may
    mean: neither side holding one label throughout, they would score 0 as a label of their own whatever they hold.
    `dataset_option`: whether the calling command also takes -d (automedsam_plot_overlays does not)."""
    labels = sorted(found - {ONE_OBJECT_VALUE})
    if cases and labels:
        from_dataset = ", or -d for a dataset's labels" if dataset_option else ""
        raise AutomedsamError(
            f"Case(s) {listing(list(cases))} hold masks saved in colour or as JPEG, which carry no label id, beside "
            f"files holding the labels {labels}: which label these masks mark is not known. Pass it with --labels "
            f"(e.g. --labels {labels[0]}){from_dataset}.")


def _check_summary_path(out_json: Path) -> None:
    """Refuse a summary path that is a folder, not a .json file, a JSON file other than an earlier summary, or one
    in the raw data: the summary would replace a user's image, reference or dataset.json given there by mistake, or
    (the default SEGS/summary.json of a raw labelsTs scored as predictions) change a raw dataset."""
    if out_json.is_dir():
        raise AutomedsamError(f"The summary path {out_json} is a folder. Give a file path, e.g. "
                              f"{out_json / 'summary.json'}.")
    if out_json.suffix.lower() != ".json":
        raise AutomedsamError(f"The summary path {out_json} does not end in .json; the summary would replace that "
                              "file if it exists. Give a path ending in .json, e.g. summary.json.")
    if out_json.is_file():
        try:
            earlier = json.loads(out_json.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            earlier = None
        if not (isinstance(earlier, dict) and "per_case" in earlier and "foreground_mean" in earlier):
            raise AutomedsamError(f"{out_json} exists and is not an evaluation summary: writing the summary there "
                                  "would replace it. Choose another -o, e.g. summary.json in a folder of its own.")
    check_outside_raw_datasets(out_json.parent, what="The summary's folder (set with -o)")


def _check_not_an_image(label_map: np.ndarray, path: Path, scored: Sequence[int] | None) -> None:
    """Refuse a file holding far more values than the labels scored: an image given for a segmentation (e.g. -r
    pointed at imagesTs) would otherwise be scored value by value as if each grey level were a label."""
    unexpected = unexpected_values(label_map, scored)
    if unexpected > IMAGE_LIKE_VALUES:
        beside = " besides the labels scored" if scored is not None else ""
        raise AutomedsamError(
            f"{path} holds {unexpected} different values{beside}: it looks like an image, not a segmentation. "
            "Point -r/--refs and -s/--segs at label maps (0 = background, 1, 2, ... the structures); a label map "
            f"with more than {IMAGE_LIKE_VALUES} labels is scored when --labels or -d names them.")


def unexpected_values(label_map: np.ndarray, scored: Sequence[int] | None = None) -> int:
    """How many foreground values a file holds besides the labels scored (all of them when none are): more than
    IMAGE_LIKE_VALUES mark an image given for a segmentation."""
    return sum(1 for value in np.unique(label_map).tolist() if value != 0 and (scored is None or value not in scored))


def read_label_map(
    path: Path, single_label: int | None = None, *, one_object_value: int | None = None,
    ignore_label: int | None = None
) -> tuple[np.ndarray, Geometry, bool]:
    """A label map, and whether it was a one-object mask saved without its label id read as `single_label`: 0/255
    (one value of MASK_VALUE_FROM or more), colour, or JPEG (compression noise at every value). Without
    `single_label`, colour and JPEG masks are read as `one_object_value` where given, and a colour file is refused
    otherwise. A file whose one value is a label id (below MASK_VALUE_FROM) is another label's map, never
    relabelled: a prediction of the wrong structure would score as the right one; nor is one whose one value is
    `ignore_label` (a 255 ignore region of a case without the structure), which marks no object."""
    pixels, geometry = read_image(path, palette_indices=True)
    object_value = single_label if single_label is not None else one_object_value
    one_object = object_value is not None and (is_colour(pixels, geometry) or _lossy(path))
    mask = one_object_mask(pixels, geometry, path=path) if one_object else None  # a 0/1 JPEG refused as what it is
    reason = _image_like(pixels, geometry, one_object=one_object)
    if reason:
        raise AutomedsamError(
            f"{path} looks like an image, not a segmentation: {reason}. Point -r/--refs and -s/--segs at label maps "
            "(0 = background, 1, 2, ... the structures) or one-object masks, not at the images.")
    if mask is not None:
        return mask.astype(np.min_scalar_type(object_value)) * object_value, geometry, True
    if is_colour(pixels, geometry):
        raise AutomedsamError(
            f"{path} is a colour image, not a label map: a colour mask is read as one object only where one label is "
            "scored or predicted. Give the label it marks (--labels N), or save masks as one-channel label maps "
            "(0 = background, 1, 2, ... the structures).")
    label_map = as_label_map(pixels, str(path))
    values = np.unique(label_map)
    objects = values[values != 0]
    if (single_label is not None and len(objects) == 1 and objects[0] not in (single_label, ignore_label)
            and objects[0] >= MASK_VALUE_FROM):
        return (label_map != 0).astype(np.min_scalar_type(single_label)) * single_label, geometry, True
    return label_map, geometry, False


def _lossy(path: Path) -> bool:
    return split_extension(path)[1].lower() in LOSSY_EXTENSIONS


def _image_like(pixels: np.ndarray, geometry: Geometry, *, one_object: bool) -> str:
    """Why a file given for a segmentation looks like an image (e.g. -r imagesTs), else '': negative or fractional
    values, or for a colour or JPEG file read as one object, many shades (its brighter half would score as the
    object)."""
    if pixels.dtype.kind in "if" and pixels.size and pixels.min() < 0:
        return f"it holds negative values (down to {pixels.min()})"
    if pixels.dtype.kind == "f" and not np.array_equal(pixels, np.round(pixels)):
        return "it holds fractional values"
    share = _off_peak_share(pixels.max(axis=-1) if is_colour(pixels, geometry) else pixels) if one_object else 0.0
    if share > OFF_PEAK_SHARE:
        return (f"{share:.0%} of its lit pixels are well below its brightest, where a one-object mask holds "
                "background and one brightness")
    return ""


def _off_peak_share(brightness: np.ndarray) -> float:
    """The share of the lit pixels (above an eighth of the peak) below seven eighths of the peak, inside the lit
    region less its rim (EDGE_PIXELS): a few hundredths for a mask, even one anti-aliased or saved as JPEG, and
    nothing to count for a thin one (a vessel, a needle) whose every pixel is edge; most of a photo, a scan or a
    low-contrast image."""
    values = brightness.astype(np.float64)
    peak = float(values.max()) if values.size else 0.0
    core = ndimage.binary_erosion(values > peak / 8, iterations=EDGE_PIXELS)
    core_count = int(np.count_nonzero(core))
    return int(np.count_nonzero(core & (values < peak * 7 / 8))) / core_count if core_count else 0.0


def case_files(folder: Path, file_ending: str | None, what: str, *,
               duplicate_fix: str = "Keep one of the two in the folder.") -> dict[str, Path]:
    """Map case id -> file for the supported images/segmentations in `folder`; an ambiguous case id is an error.

    `duplicate_fix` ends that error: what the caller's user can do about it (only some commands have --file-ending)."""
    if folder.is_file():
        raise AutomedsamError(f"{folder} is a file, not a folder. Give the folder that holds the {what}s: they are "
                              "matched by case id.")
    if not folder.is_dir():
        raise AutomedsamError(f"The {what} folder {folder} does not exist. Check the path given for the {what}s.")
    endings = (f".{file_ending.lower().lstrip('.')}",) if file_ending else SUPPORTED_EXTENSIONS  # png, .PNG: .png
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        stem, ending = split_extension(path)
        if ending.lower() not in endings:
            continue
        case = case_id_from_stem(stem)
        if case in found:
            raise AutomedsamError(
                f"Case '{case}' has two {what} files in {folder}: {found[case].name} and {path.name}. {duplicate_fix}"
            )
        found[case] = path
    return found


def json_ready(obj: object) -> object:
    """Copy with string keys and NaN/inf replaced by null, so summary.json is strict JSON."""
    if isinstance(obj, Mapping):
        return {str(key): json_ready(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(value) for value in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _numpy_order_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    if len(spacing) != ndim:
        raise AutomedsamError(
            f"Spacing {tuple(spacing)} has {len(spacing)} values but the masks have {ndim} dimensions; "
            "give one spacing per axis in SimpleITK order (x, y[, z])."
        )
    return tuple(float(value) for value in reversed(spacing))


def _without_single_axes(
    ref: np.ndarray, pred: np.ndarray, sampling: tuple[float, ...] | None
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...] | None]:
    """Both masks and the spacing less the axes of size 1 (the last kept where all are): nothing lies beyond such an
    axis, so no voxel has a neighbour along it. A 2D image saved as a one-slice volume (1, H, W) would otherwise have
    every voxel on its surface, the erosion reading outside the slice as background, and distances too low."""
    kept = [axis for axis, size in enumerate(ref.shape) if size > 1] or [ref.ndim - 1]
    shape = tuple(ref.shape[axis] for axis in kept)
    kept_sampling = None if sampling is None else tuple(sampling[axis] for axis in kept)
    return ref.reshape(shape), pred.reshape(shape), kept_sampling


def _union_window(ref: np.ndarray, pred: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of both masks: every surface voxel lies inside, so distances computed there are exact."""
    coords = np.nonzero(np.logical_or(ref, pred))
    return tuple(slice(int(axis.min()), int(axis.max()) + 1) for axis in coords)


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _foreground_labels(ref: np.ndarray, pred: np.ndarray) -> list[int]:
    values = np.union1d(np.unique(ref), np.unique(pred))
    return [int(value) for value in values if value != 0]


def _fill_absent_labels(per_case: dict[str, dict[int, dict[str, float]]]) -> None:
    """With inferred labels, give every case every label so per_case rows line up (absent: NaN, 0 voxels)."""
    labels = sorted({label for case in per_case.values() for label in case})
    absent = {**{metric: math.nan for metric in METRICS}, "ref_voxels": 0, "pred_voxels": 0}
    for case in per_case.values():
        for label in labels:
            case.setdefault(label, dict(absent))
        ordered = {label: case[label] for label in labels}
        case.clear()
        case.update(ordered)


def _missing(value: float | None) -> bool:
    """NaN in memory, null once read back from summary.json."""
    return value is None or math.isnan(float(value))


def _nanmean(values: Sequence[float | None]) -> float:
    finite = [float(value) for value in values if not _missing(value)]
    return float(np.mean(finite)) if finite else math.nan


def _label_sort_key(label: object) -> tuple[int, str]:
    text = str(label)
    return (int(text), text) if text.lstrip("-").isdigit() else (1 << 30, text)


def tracked(items: Sequence[Item], description: str, *, console: Console = _progress_console) -> Iterator[Item]:
    """`items` one by one, shown on stderr as `description`: a bar on a terminal, plain timestamped lines in a log,
    where a bar shows nothing until the work ends (automedsam.progress). `console`: the one warnings go to meanwhile,
    so that they print above the bar."""
    with progress_bar(console=console) as bar:
        task = bar.add_task(description, total=len(items))
        for item in items:
            yield item
            bar.advance(task)


def listing(items: Sequence[str], limit: int = 10) -> str:
    """The first `limit` items and how many more: enough to recognise which, few enough to read in one line."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"
