"""What the labelled samples tell the planner about each target, and nothing beyond them.

Few-shot (`--shots N`, regime "few_shot"): only the N drawn samples are opened, and of them only what a tight box
tells. A drawn sample's mask is reduced to one tight box per 8-connected component of each label before anything
is measured, its specks left out as an annotator leaves them unboxed (`boxes.without_specks`: a component under
1/20 of its label's largest in the slice); a box file's boxes are taken as they are. The masks of samples that were
not drawn are never opened here. From the boxes: objects per image, box sizes, the intensities inside the boxes.
From what the frozen foundation model makes of the boxes (its box-prompted masks of the N images, which an annotator
who drew the boxes sees too): how much of its box an object fills and how close it is to the ellipse inscribed in
its box (for a ring, through the labels it encloses: see `measure_box_prompts`).

All labels (`--shots all`, regime "all_labels"): every annotated sample is labelled, and its mask is measured as it
is, its specks left out the same way (the fully supervised statistics).

Ring structure is declared in dataset.json (`rings`), never measured: a ring target is measured as its filled
region, the ring and the labels it encloses. Which label's box lies inside which on the labelled samples is counted
(`box_nesting`), so that the planner can refuse a ring declared backwards and point out nested labels declared
without one.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from automedsam.boxes import (Box, annotator_boxes, rasterise_boxes, rasterise_ellipses, read_box_file,
                              without_specks)
from automedsam.dataset import Case, RawDataset
from automedsam.io import read_image, read_segmentation
from automedsam.parallel import parallel_map
from automedsam.progress import progress_bar
from automedsam.planning.fingerprint import (CASE_SAMPLE_PIXELS, POOLED_PIXELS, boxes_by_slice, intensity_statistics,
                                             subsample)
from automedsam.planning.preprocessing import sample_catalogue
from automedsam.planning.splits import Shots
from automedsam.plans import ALL_LABELS, FEW_SHOT
from automedsam.samples import take_slice

if TYPE_CHECKING:
    from automedsam.foundation.base import FoundationModel

STATISTICS_VERSION = 3  # 2: specks left out of the masks (boxes.without_specks); 3: box_nesting counted
STATISTICS_FILE = "label_statistics.json"
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
MEASURES = ("fill", "fill_component", "fill_filled", "ellipse")


def regime_of(shots: Shots) -> str:
    """"all_labels" for `--shots all`, else "few_shot"."""
    return ALL_LABELS if shots == "all" else FEW_SHOT


def target_regions(dataset: RawDataset) -> dict[int, list[int]]:
    """Each label's region: itself, plus the labels it encloses when dataset.json declares it a ring."""
    return {label: [label, *dataset.rings.get(label, [])] for label in dataset.label_ids}


def declared_structure(dataset: RawDataset) -> dict[str, Any]:
    """dataset.json's declared rings and shapes, keyed by label id as strings (as stored in label_statistics.json)."""
    return {"rings": {str(label): inner for label, inner in sorted(dataset.rings.items())},
            "shapes": {str(label): shape for label, shape in sorted(dataset.shapes.items())}}


def statistics_key(source_key: str, labelled: Sequence[str], *, axis: int | None, regime: str,
                   foundation: Mapping[str, Any] | None, intensity: Mapping[str, Any] | None = None) -> str:
    """What label_statistics.json depends on: the raw files, the labelled samples, the slicing, the regime, the
    frozen model asked about the boxes and the images' intensities its window comes from (every image's, not only
    the labelled ones'); a stored file with the same key is reused."""
    content = [STATISTICS_VERSION, source_key, sorted(labelled), axis, regime, foundation]
    if intensity is not None:
        content.append(intensity)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


@dataclass
class LabelledSample:
    """A labelled 2D sample as the planner may see it: its image (kept only for the frozen model) and its boxes."""

    sample_id: str
    image: np.ndarray | None
    boxes: dict[int, list[Box]]  # per target label, one tight box per object


@dataclass
class LabelledSamples:
    """The labelled samples read once: their boxes, the measurements so far and the foreground's intensities."""

    samples: list[LabelledSample]
    tallies: dict[int, dict[str, Any]]
    foreground_pixels: np.ndarray | None
    source: str  # where the shape measures come from: "masks", "boxes" (none) or, once measured, "box_prompts"


@dataclass(frozen=True)
class _CaseJob:
    case: Case
    samples: tuple[tuple[str, int | None], ...]  # (sample id, slice index) of the case's labelled samples
    axis: int | None
    regions: tuple[tuple[int, tuple[int, ...]], ...]  # (target label, region labels)
    from_masks: bool  # measure the masks themselves (regime all_labels) rather than their boxes
    keep_images: bool  # return the images, for the frozen model


def read_labelled_samples(dataset: RawDataset, fingerprint: Mapping[str, Any], labelled: Sequence[str], *,
                          axis: int | None, regime: str, num_workers: int = 1,
                          progress: bool = True) -> LabelledSamples:
    """Read the labelled samples' cases (only those) in `num_workers` processes and measure what the regime allows."""
    regions = tuple((label, tuple(region)) for label, region in target_regions(dataset).items())
    from_masks = regime == ALL_LABELS
    catalogue = sample_catalogue(fingerprint, axis)
    by_case: dict[str, list[tuple[str, int | None]]] = {}
    for sid in sorted(labelled):
        case_id, index = catalogue[sid]
        by_case.setdefault(case_id, []).append((sid, index))
    cases = {case.case_id: case for case in dataset.cases}
    jobs = [_CaseJob(cases[case_id], tuple(samples), axis, regions, from_masks and cases[case_id].label is not None,
                     keep_images=not from_masks) for case_id, samples in sorted(by_case.items())]
    results = parallel_map(_read_case, jobs, num_workers=num_workers, description="Labelled samples",
                           progress=progress)
    tallies = {label: _empty_tally() for label, _ in regions}
    for result in results:
        for label, tally in result["tallies"].items():
            for key, value in tally.items():
                tallies[label][key] += value
    pooled = [result["foreground"] for result in results if result["foreground"] is not None]
    measured_masks = from_masks and any(job.from_masks for job in jobs)
    return LabelledSamples([sample for result in results for sample in result["samples"]], tallies,
                           np.concatenate(pooled) if pooled else None, "masks" if measured_masks else "boxes")


def measure_box_prompts(labelled: LabelledSamples, model: FoundationModel, *, normalise: Callable[[np.ndarray],
                        np.ndarray], regions: Mapping[int, Sequence[int]], progress: bool = True) -> None:
    """Add the shape measures of the frozen model's box-prompted masks (each clipped to its box) to the tallies.

    A ring target's filled region is read through what it encloses: prompted with the ring's own box the frozen
    model segments the enclosed cavity, not the region, so the region's fill ratio and roundness are those of the
    enclosed labels' box-prompted masks in their own boxes (the ring's outer contour follows its cavity's).
    """
    with progress_bar(progress) as bar:
        task = bar.add_task("Box prompts", total=len(labelled.samples))
        for sample in labelled.samples:
            prompts = [(label, box) for label, boxes in sorted(sample.boxes.items()) for box in boxes]
            image = normalise(sample.image)
            masks = model.segment_boxes(image, [box for _, box in prompts]) if prompts else []
            shape = image.shape[:2]
            clipped: dict[int, list[np.ndarray]] = {}
            for (label, box), mask in zip(prompts, masks):
                clipped.setdefault(label, []).append(mask & rasterise_boxes([box], shape))
            for label, region_labels in regions.items():
                measured = [member for member in region_labels if member != label] or [label]
                boxes = [box for member in measured for box in sample.boxes.get(member, [])]
                if not sample.boxes.get(label) or not boxes:
                    continue
                found = [mask for member in measured for mask in clipped.get(member, [])]  # a member not drawn here
                components = [float(mask.sum() / _area(box)) for mask, box in zip(found, boxes)]
                _add_shape(labelled.tallies[label], np.logical_or.reduce(found), _enclosing_box(boxes), components)
            bar.advance(task)
    labelled.source = "box_prompts"


def summarise(labelled: LabelledSamples, dataset: RawDataset, *, regime: str, shots: Shots, key: str,
              foundation: Mapping[str, Any] | None) -> dict[str, Any]:
    """label_statistics.json: per target, over the labelled samples, and the foreground's intensities."""
    names = {value: name for name, value in dataset.labels.items()}
    count = len(labelled.samples)
    pixels = labelled.foreground_pixels
    return {
        "statistics_version": STATISTICS_VERSION,
        "regime": regime,
        "shots": shots,
        "labelled_samples": sorted(sample.sample_id for sample in labelled.samples),
        "shape_source": labelled.source,
        "foundation_model": foundation,
        "declared": declared_structure(dataset),
        "foreground_intensity": (None if pixels is None or pixels.size == 0
                                 else intensity_statistics(pixels.astype(np.float64))),
        "foreground_source": None if pixels is None or pixels.size == 0 else (
            "masks" if labelled.source == "masks" else "boxes"),
        "label_statistics": {str(label): _label_summary(names[label], label, tally, count)
                             for label, tally in sorted(labelled.tallies.items())},
        "box_nesting": box_nesting(labelled.samples),
        "key": key,
    }


def box_nesting(samples: Sequence[LabelledSample]) -> dict[str, dict[str, dict[str, int]]]:
    """For each outer and inner label (ids as strings), on how many labelled samples both are boxed ("together")
    and on how many the inner label's box lies strictly inside the outer one's ("inside"), each label's box taken
    around all its objects: what the boxes tell of which label surrounds which (a ring's box contains the box of
    the label it encloses)."""
    nesting: dict[str, dict[str, dict[str, int]]] = {}
    for sample in samples:
        outlines = {label: _enclosing_box(boxes) for label, boxes in sample.boxes.items() if boxes}
        for outer, inner in itertools.permutations(sorted(outlines), 2):
            counts = nesting.setdefault(str(outer), {}).setdefault(str(inner), {"together": 0, "inside": 0})
            counts["together"] += 1
            counts["inside"] += int(_strictly_inside(outlines[inner], outlines[outer]))
    return nesting


def _read_case(job: _CaseJob) -> dict[str, Any]:
    """Read one case's labelled samples: boxes (masks reduced to one box per component, specks left out), measures,
    foreground pixels."""
    case = job.case
    image, geometry = read_image(case.image)
    is_3d = geometry.ndim == 3
    label_map = read_segmentation(case.label)[0] if case.label is not None else None
    entries = (boxes_by_slice(read_box_file(case.boxes, image.shape[:geometry.ndim]), is_3d)
               if label_map is None and case.boxes is not None else {})
    tallies = {label: _empty_tally() for label, _ in job.regions}
    samples, pooled = [], []
    rng = np.random.default_rng(zlib.crc32(case.case_id.encode()))
    for sid, index in job.samples:
        image2d = image if index is None else take_slice(image, job.axis, index)
        plane = image2d.shape[:2]
        if label_map is not None:
            seg2d = label_map if index is None else take_slice(label_map, job.axis, index)
            boxes = annotator_boxes(seg2d, [label for label, _ in job.regions], per_component=True)
        else:
            seg2d = None
            boxes = {label: [tuple(entry["box"]) for entry in entries.get(index, []) if entry["label"] == label]
                     for label, _ in job.regions}
        for label, region in job.regions:
            if boxes[label]:
                _add_boxes(tallies[label], boxes[label], plane)
                if job.from_masks:
                    _add_mask(tallies[label], without_specks(np.isin(seg2d, region)), _enclosing_box(boxes[label]))
        foreground = (seg2d > 0 if job.from_masks
                      else rasterise_boxes([box for found in boxes.values() for box in found], plane))
        if foreground.any():
            pooled.append(subsample(subsample(image2d[foreground].reshape(-1), CASE_SAMPLE_PIXELS, rng),
                                    POOLED_PIXELS, rng).astype(np.float32))
        samples.append(LabelledSample(sid, image2d if job.keep_images else None,
                                      {label: [tuple(map(int, box)) for box in found] for label, found in
                                       boxes.items()}))
    return {"samples": samples, "tallies": tallies, "foreground": np.concatenate(pooled) if pooled else None}


def _empty_tally() -> dict[str, Any]:
    return {"present": 0, "objects": [], "sizes": [], **{key: [] for key in MEASURES}}


def _add_boxes(tally: dict[str, Any], boxes: list[Box], plane: tuple[int, int]) -> None:
    tally["present"] += 1
    tally["objects"].append(len(boxes))
    tally["sizes"].extend(_area(box) / (plane[0] * plane[1]) for box in boxes)


def _add_mask(tally: dict[str, Any], region: np.ndarray, box: Box) -> None:
    """Shape measures of a reference mask: its 8-connected components stand for the objects."""
    crop = region[box[1]:box[3] + 1, box[0]:box[2] + 1]
    components, _ = ndimage.label(crop, structure=EIGHT_CONNECTED)
    sizes = np.bincount(components.reshape(-1))[1:]
    areas = [(s[0].stop - s[0].start) * (s[1].stop - s[1].start) for s in ndimage.find_objects(components)]
    _add_shape(tally, region, box, (sizes / np.asarray(areas)).tolist())


def _add_shape(tally: dict[str, Any], region: np.ndarray, box: Box, component_fill: list[float]) -> None:
    """How much of `box` the region fills (as it is, and with its holes filled), per object, and the Dice of the
    filled region with the ellipse inscribed in the box."""
    crop = region[box[1]:box[3] + 1, box[0]:box[2] + 1]
    filled = ndimage.binary_fill_holes(crop)
    ellipse = rasterise_ellipses([(0, 0, crop.shape[1] - 1, crop.shape[0] - 1)], crop.shape)
    tally["fill"].append(float(crop.sum() / crop.size))
    tally["fill_component"].extend(component_fill)
    tally["fill_filled"].append(float(filled.sum() / crop.size))
    tally["ellipse"].append(float(2 * (filled & ellipse).sum() / max(filled.sum() + ellipse.sum(), 1)))


def _label_summary(name: str, label: int, tally: Mapping[str, Any], count: int) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "samples_present": tally["present"],
        "presence": tally["present"] / count if count else 0.0,
        "objects_per_image": _distribution(tally["objects"], (50, 95), integer=True),
        "relative_size": _distribution(tally["sizes"], (5, 50, 95)),
        "fill_ratio": _distribution(tally["fill"], (5, 50, 95)),
        "fill_ratio_per_component": _distribution(tally["fill_component"], (5, 50, 95)),
        "filled_fill_ratio": _distribution(tally["fill_filled"], (5, 50, 95)),
        "filled_ellipse_dice": _distribution(tally["ellipse"], (5, 50, 95)),
    }


def _distribution(values: list[float], percentiles: Sequence[int], integer: bool = False) -> dict[str, float] | None:
    """Percentiles (p5, p50 = median, p95), min and max of `values`; None when nothing was measured."""
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    method = "nearest" if integer else "linear"
    summary = {("median" if p == 50 else f"p{p}"): float(np.percentile(array, p, method=method)) for p in percentiles}
    summary.update(min=float(array.min()), max=float(array.max()), count=int(array.size))
    return summary


def _area(box: Sequence[int]) -> int:
    return (box[2] - box[0] + 1) * (box[3] - box[1] + 1)


def _enclosing_box(boxes: Sequence[Sequence[int]]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _strictly_inside(inner: Sequence[int], outer: Sequence[int]) -> bool:
    """Whether box `inner` lies inside box `outer` and is not the same box."""
    return (tuple(inner) != tuple(outer) and outer[0] <= inner[0] and outer[1] <= inner[1]
            and inner[2] <= outer[2] and inner[3] <= outer[3])
