"""Dataset fingerprint: everything the planner needs to know about a dataset, measured reading each image once.

Per case: shape, spacing, intensity statistics and which 2D samples hold foreground. Per label, over the 2D
samples: how often it is present, objects (8-connected components) per image, object size relative to the image,
how much of its tight box it fills, how close its filled shape is to the ellipse inscribed in that box, and whether
it is ring-shaped (has holes or encloses another label, like the ACDC myocardium around the left ventricle).
Datasets with boxes only are measured from their boxes.
"""
from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from automedsam.boxes import rasterise_boxes, rasterise_ellipses, read_box_file
from automedsam.dataset import Case, RawDataset
from automedsam.errors import AutomedsamError
from automedsam.files import load_json
from automedsam.io import read_image, read_segmentation
from automedsam.parallel import parallel_map
from automedsam.samples import coarsest_axis, iter_slices, numpy_spacing

FINGERPRINT_VERSION = 3
CASE_SAMPLE_PIXELS = 100_000  # pixels drawn per case for its own intensity statistics
POOLED_PIXELS = 10_000  # pixels per case pooled into the dataset-wide statistics
RING_MIN_FRACTION = 0.5  # ring-shaped: holes / an enclosed label in at least half the samples showing the label
ENCLOSED_PIXEL_FRACTION = 0.5  # M is enclosed by L in a sample when this share of M's pixels lies in L's holes
BOX_SLICE_AXIS = 0  # boxesTr gives boxes of 3D images per slice along the first array axis
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class _CaseJob:
    case: Case
    labels: tuple[int, ...]
    spacing_override: tuple[float, ...] | None  # dataset.json "spacing" for natural images (HC18)
    axis: int | None  # slicing axis for the label statistics; None: this case's own coarsest axis


def run_fingerprint(dataset: RawDataset, *, num_workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Measure a raw dataset (each image read once, `num_workers` processes) and return fingerprint.json's dict."""
    overrides = spacing_overrides(dataset)
    jobs = [_CaseJob(case, tuple(dataset.label_ids), overrides.get(case.case_id), None) for case in dataset.cases]
    results = parallel_map(_measure_case, jobs, num_workers=num_workers, description="Fingerprint", progress=progress)
    dims = {len(result["record"]["shape"]) for result in results}
    if len(dims) > 1:
        raise AutomedsamError(f"The dataset {dataset.root} mixes 2D and 3D images; a dataset holds one kind. "
                              "Split it into two datasets.")
    is_3d = dims == {3}
    axis = coarsest_axis(np.median([numpy_spacing(r["record"]["spacing"]) for r in results], axis=0)) if is_3d else None
    stale = [index for index, result in enumerate(results) if result["axis"] not in (None, axis)]
    if stale:
        redone = parallel_map(_measure_case, [replace(jobs[i], axis=axis) for i in stale], num_workers=num_workers,
                              description="Fingerprint (dataset slicing axis)", progress=progress)
        for index, result in zip(stale, redone):
            results[index] = result
    return _assemble(dataset, results, is_3d, axis)


def source_key(dataset: RawDataset) -> str:
    """Digest of dataset.json and every case file's name, size and modification time: a changed file re-measures."""
    digest = hashlib.sha256(f"fingerprint v{FINGERPRINT_VERSION}".encode())
    digest.update((dataset.root / "dataset.json").read_bytes())
    for case in dataset.cases:
        digest.update(f"{case.case_id}|{case.group}".encode())
        for path in (case.image, case.label, case.boxes):
            stat = path.stat() if path is not None else None
            digest.update(f"|{path}:{stat.st_size}:{stat.st_mtime_ns}".encode() if stat else b"|-")
    return digest.hexdigest()


def spacing_overrides(dataset: RawDataset) -> dict[str, tuple[float, ...]]:
    """Per-case pixel spacing from dataset.json's optional "spacing" map, for formats that cannot store it (PNG)."""
    meta = load_json(dataset.root / "dataset.json", "dataset description")
    spacing = meta.get("spacing", {}) if isinstance(meta, dict) else {}
    if not isinstance(spacing, dict):
        raise AutomedsamError(f"{dataset.root / 'dataset.json'}: 'spacing' must map case ids to [sx, sy].")
    return {str(case): tuple(float(v) for v in values) for case, values in spacing.items()}


def _measure_case(job: _CaseJob) -> dict[str, Any]:
    """Read one case (image, mask or boxes) and measure it; runs in a worker process."""
    case = job.case
    image, geometry = read_image(case.image)
    spacing = job.spacing_override if geometry.kind == "natural" and job.spacing_override else geometry.spacing
    shape = image.shape[: geometry.ndim]
    record: dict[str, Any] = {"case": case.case_id, "group": case.group, "shape": list(shape),
                              "spacing": [float(v) for v in spacing], "annotation": "none",
                              "has_foreground": False, "foreground_slices": None}
    tally = _LabelTally(job.labels)
    axis, foreground = None, None
    if case.label is not None:
        if geometry.ndim == 3:
            axis = job.axis if job.axis is not None else coarsest_axis(numpy_spacing(spacing))
        foreground = _measure_masks(case, shape, axis, record, tally)
    elif case.boxes is not None:
        foreground = _measure_boxes(case, shape, record, tally)
    record["intensity"], pooled, pooled_foreground = _intensity(image, foreground, case.case_id)
    return {"record": record, "axis": axis, "labels": tally.values, "samples": tally.samples, "pooled": pooled,
            "pooled_foreground": pooled_foreground}


def _measure_masks(case: Case, shape: tuple[int, ...], axis: int | None, record: dict[str, Any],
                   tally: _LabelTally) -> np.ndarray:
    """Label statistics of every 2D sample along `axis`; returns the foreground mask."""
    seg, _ = read_segmentation(case.label)
    if seg.shape != shape:
        raise AutomedsamError(f"{case.label}: label shape {seg.shape} differs from image shape {shape} "
                              f"({case.image.name}). Draw the label on the image's pixel grid.")
    foreground = seg > 0
    record.update(annotation="masks", has_foreground=bool(foreground.any()))
    if axis is not None:
        record["foreground_slices"] = {str(a): _nonzero_slices(foreground, a) for a in range(3)}
    for _, seg2d in iter_slices(seg, axis):
        tally.add_label_map(seg2d)
    return foreground


def _measure_boxes(case: Case, shape: tuple[int, ...], record: dict[str, Any], tally: _LabelTally) -> np.ndarray:
    """Object statistics of the boxed samples; returns the inside of the boxes as the foreground mask."""
    is_3d = len(shape) == 3
    by_sample = _boxes_by_sample(read_box_file(case.boxes, shape), is_3d)
    record.update(annotation="boxes", has_foreground=any(by_sample.values()))
    plane = shape[-2:]
    foreground = np.zeros(shape, dtype=bool)
    for slice_index, entries in by_sample.items():
        tally.add_boxes(entries, plane)
        target = foreground if slice_index is None else foreground[slice_index]
        target |= rasterise_boxes([entry["box"] for entry in entries], plane)
    if is_3d:
        record["foreground_slices"] = {str(BOX_SLICE_AXIS): sorted(s for s, e in by_sample.items() if e)}
    return foreground


def _nonzero_slices(mask: np.ndarray, axis: int) -> list[int]:
    others = tuple(a for a in range(mask.ndim) if a != axis)
    return [int(i) for i in np.flatnonzero(mask.any(axis=others))]


def _boxes_by_sample(entries: list[dict[str, Any]], is_3d: bool) -> dict[int | None, list[dict[str, Any]]]:
    if not is_3d:
        return {None: entries}
    by_slice: dict[int | None, list[dict[str, Any]]] = {}
    for entry in entries:
        by_slice.setdefault(entry["slice"], []).append(entry)
    return by_slice


def _intensity(image: np.ndarray, foreground: np.ndarray | None,
               case_id: str) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """Statistics of the case's pixels (and foreground pixels) on a seeded subsample, plus pixels to pool."""
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    values = image.reshape(-1)
    drawn = _subsample(values, CASE_SAMPLE_PIXELS, rng)
    stats = {"all": intensity_statistics(drawn.astype(np.float64)), "foreground": None}
    stats["all"].update(min=float(values.min()), max=float(values.max()))
    pooled_foreground = None
    if foreground is not None and foreground.any():
        inside = _subsample(image[foreground].reshape(-1), CASE_SAMPLE_PIXELS, rng)
        stats["foreground"] = intensity_statistics(inside.astype(np.float64))
        pooled_foreground = _subsample(inside, POOLED_PIXELS, rng).astype(np.float32)
    return stats, _subsample(drawn, POOLED_PIXELS, rng).astype(np.float32), pooled_foreground


def _subsample(values: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` values drawn with replacement (plenty for percentiles), or all of them when there are fewer."""
    return values[rng.integers(0, values.size, count)] if values.size > count else values


def intensity_statistics(values: np.ndarray) -> dict[str, float]:
    """min, max, mean, std and the 0.5 / 99.5 percentiles (the normalisation's clip window) of `values`."""
    low, high = np.percentile(values, [0.5, 99.5])
    return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
            "std": float(values.std()), "p0_5": float(low), "p99_5": float(high)}


class _LabelTally:
    """Per-label measurements accumulated over the 2D samples of one case."""

    def __init__(self, labels: Sequence[int]) -> None:
        self.labels = list(labels)
        self.samples = {"masks": 0, "boxes": 0}
        self.values: dict[int, dict[str, Any]] = {
            label: {"present": 0, "objects": [], "sizes": [], "fill": [], "fill_component": [], "fill_filled": [],
                    "ellipse": [], "holes": 0, "enclosed": {}} for label in self.labels}

    def add_label_map(self, seg2d: np.ndarray) -> None:
        self.samples["masks"] += 1
        counts = np.bincount(seg2d.reshape(-1), minlength=max(self.labels) + 1)
        extents = ndimage.find_objects(seg2d, max_label=max(self.labels))
        for label in self.labels:
            if counts[label] == 0:
                continue
            self._measure_object(label, seg2d, extents[label - 1], counts)

    def _measure_object(self, label: int, seg2d: np.ndarray, extent: tuple[slice, slice], counts: np.ndarray) -> None:
        tally = self.values[label]
        crop = seg2d[extent] == label
        components, count = ndimage.label(crop, structure=EIGHT_CONNECTED)
        sizes = np.bincount(components.reshape(-1))[1:]
        box_areas = [(s[0].stop - s[0].start) * (s[1].stop - s[1].start) for s in ndimage.find_objects(components)]
        filled = ndimage.binary_fill_holes(crop)
        holes = filled & ~crop
        tally["present"] += 1
        tally["objects"].append(count)
        tally["sizes"].extend((sizes / seg2d.size).tolist())
        tally["fill"].append(float(crop.sum() / crop.size))
        tally["fill_component"].extend((sizes / np.asarray(box_areas)).tolist())
        tally["fill_filled"].append(float(filled.sum() / crop.size))
        ellipse = rasterise_ellipses([(0, 0, crop.shape[1] - 1, crop.shape[0] - 1)], crop.shape)
        tally["ellipse"].append(float(2 * (filled & ellipse).sum() / (filled.sum() + ellipse.sum())))
        if holes.any():
            tally["holes"] += 1
            inside = np.bincount(seg2d[extent][holes], minlength=counts.size)
            for other in self.labels:
                if other != label and counts[other] and inside[other] >= ENCLOSED_PIXEL_FRACTION * counts[other]:
                    tally["enclosed"][other] = tally["enclosed"].get(other, 0) + 1

    def add_boxes(self, entries: list[dict[str, Any]], plane: tuple[int, int]) -> None:
        self.samples["boxes"] += 1
        area = plane[0] * plane[1]
        for label in self.labels:
            boxes = [entry["box"] for entry in entries if entry["label"] == label]
            if boxes:
                tally = self.values[label]
                tally["present"] += 1
                tally["objects"].append(len(boxes))
                tally["sizes"].extend((x1 - x0 + 1) * (y1 - y0 + 1) / area for x0, y0, x1, y1 in boxes)


def _assemble(dataset: RawDataset, results: list[dict[str, Any]], is_3d: bool, axis: int | None) -> dict[str, Any]:
    cases = [result["record"] for result in results]
    annotations = [case["annotation"] for case in cases]
    pooled_foreground = [r["pooled_foreground"] for r in results if r["pooled_foreground"] is not None]
    samples = {kind: sum(r["samples"][kind] for r in results) for kind in ("masks", "boxes")}
    names = {value: name for name, value in dataset.labels.items()}
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "dataset_name": dataset.name,
        "channel_names": dataset.channel_names,
        "labels": {str(label): names[label] for label in dataset.label_ids},
        "num_cases": len(cases),
        "is_3d": is_3d,
        "median_shape": [float(v) for v in np.median([case["shape"] for case in cases], axis=0)],
        "median_spacing": [float(v) for v in np.median([case["spacing"] for case in cases], axis=0)],
        "coarsest_axis": axis,
        "box_slice_axis": BOX_SLICE_AXIS if is_3d and ("boxes" in annotations or dataset.interactive) else None,
        "interactive": dataset.interactive,
        "annotation": {kind: annotations.count(kind) for kind in ("masks", "boxes", "none")},
        "annotated_samples": samples,
        "intensity": {
            "all": intensity_statistics(np.concatenate([r["pooled"] for r in results]).astype(np.float64)),
            "foreground": (intensity_statistics(np.concatenate(pooled_foreground).astype(np.float64))
                           if pooled_foreground else None),
            "foreground_source": ("masks" if "masks" in annotations else "boxes") if pooled_foreground else None,
        },
        "label_statistics": {str(label): _label_summary(label, names[label], [r["labels"][label] for r in results],
                                                        sum(samples.values()))
                             for label in dataset.label_ids},
        "settings": {"ring_min_fraction": RING_MIN_FRACTION, "enclosed_pixel_fraction": ENCLOSED_PIXEL_FRACTION,
                     "case_sample_pixels": CASE_SAMPLE_PIXELS, "pooled_pixels": POOLED_PIXELS,
                     "connectivity": "8-connected"},
        "source_key": source_key(dataset),
        "cases": cases,
    }


def _label_summary(label: int, name: str, tallies: list[dict[str, Any]], annotated: int) -> dict[str, Any]:
    """One label's statistics over all cases; fill ratios and ring shape only where masks were measured."""
    present = sum(t["present"] for t in tallies)
    joined = {key: [v for t in tallies for v in t[key]] for key in ("objects", "sizes", "fill", "fill_component",
                                                                    "fill_filled", "ellipse")}
    masks_present = len(joined["fill"])
    holes = sum(t["holes"] for t in tallies)
    enclosed_counts: dict[int, int] = {}
    for tally in tallies:
        for other, count in tally["enclosed"].items():
            enclosed_counts[other] = enclosed_counts.get(other, 0) + count
    enclosure = {str(o): c / masks_present for o, c in sorted(enclosed_counts.items())} if masks_present else {}
    enclosed = [int(o) for o, fraction in enclosure.items() if fraction >= RING_MIN_FRACTION]
    holes_fraction = holes / masks_present if masks_present else None
    return {
        "name": name,
        "label": label,
        "samples_present": present,
        "presence": present / annotated if annotated else 0.0,
        "objects_per_image": _distribution(joined["objects"], (50, 95), integer=True),
        "relative_size": _distribution(joined["sizes"], (5, 50, 95)),
        "fill_ratio": _distribution(joined["fill"], (5, 50, 95)),
        "fill_ratio_per_component": _distribution(joined["fill_component"], (5, 50, 95)),
        "filled_fill_ratio": _distribution(joined["fill_filled"], (5, 50, 95)),
        "filled_ellipse_dice": _distribution(joined["ellipse"], (5, 50, 95)),
        "holes_fraction": holes_fraction,
        "enclosure_fraction": enclosure,
        "enclosed": enclosed,
        "ring": bool(enclosed) or (holes_fraction is not None and holes_fraction >= RING_MIN_FRACTION),
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

