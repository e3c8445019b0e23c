"""Dataset fingerprint: what the planner may know of every training case, measured reading each image once.

Per case: shape, spacing, intensity statistics and which 2D samples hold foreground. That last fact is all that is
read from a mask here: it is what the few-shot draw needs (a user knows which images show the structure), and
everything else a label could tell is measured on the labelled samples only (label_statistics.py), after the draw.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Collection

import numpy as np

from automedsam.boxes import BOX_SLICE_AXIS, read_box_file
from automedsam.dataset import Case, RawDataset, boxes_fix_slicing_axis, coarsest_median_axis
from automedsam.errors import AutomedsamError
from automedsam.files import load_json
from automedsam.io import MEDICAL_EXTENSIONS, read_image, read_segmentation
from automedsam.parallel import parallel_map
from automedsam.samples import numpy_spacing, slicing_axis

FINGERPRINT_VERSION = 4
CASE_SAMPLE_PIXELS = 100_000  # pixels drawn per case for its own intensity statistics
POOLED_PIXELS = 10_000  # pixels per case pooled into the dataset-wide statistics


@dataclass(frozen=True)
class _CaseJob:
    case: Case
    spacing_override: tuple[float, ...] | None  # dataset.json "spacing" for natural images (HC18)
    axis: int | None  # slicing axis for the samples counted; None: this case's own coarsest axis


def run_fingerprint(dataset: RawDataset, *, num_workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Measure a raw dataset (each image read once, `num_workers` processes) and return fingerprint.json's dict."""
    overrides = spacing_overrides(dataset)
    jobs = [_CaseJob(case, overrides.get(case.case_id), None) for case in dataset.cases]
    results = parallel_map(_measure_case, jobs, num_workers=num_workers, description="Fingerprint", progress=progress)
    dims = {len(result["record"]["shape"]) for result in results}
    if len(dims) > 1:
        raise AutomedsamError(f"The dataset {dataset.root} mixes 2D and 3D images; a dataset holds one kind. "
                              "Split it into two datasets.")
    is_3d = dims == {3}
    axis = coarsest_median_axis([(r["record"]["spacing"], r["record"]["shape"]) for r in results]) if is_3d else None
    stale = [index for index, result in enumerate(results) if result["axis"] not in (None, axis)]
    if stale:
        redone = parallel_map(_measure_case, [replace(jobs[i], axis=axis) for i in stale], num_workers=num_workers,
                              description="Fingerprint (dataset slicing axis)", progress=progress)
        for index, result in zip(stale, redone):
            results[index] = result
    return _assemble(dataset, results, is_3d, axis)


def source_key(dataset: RawDataset, cases: Collection[str] | None = None) -> str:
    """Digest of dataset.json and every case file's name (within the dataset's folder, so that moving the raw root
    keeps it), size and modification time (of the named `cases` only, when given): a changed file re-measures."""
    digest = hashlib.sha256(f"fingerprint v{FINGERPRINT_VERSION}".encode())
    digest.update((dataset.root / "dataset.json").read_bytes())
    for case in dataset.cases:
        if cases is not None and case.case_id not in cases:
            continue
        digest.update(f"{case.case_id}|{case.group}".encode())
        for path in (case.image, case.label, case.boxes):
            digest.update(_file_key(path, root=dataset.root).encode())
    return digest.hexdigest()


def _file_key(path: Path | None, *, root: Path) -> str:
    """A case file's part of the source key, named relative to the dataset's `root`. A path that is no file (a
    dangling link) gets a marker, not a stat that would end planning with a traceback, so that reading the case says
    what is wrong with it."""
    if path is None:
        return "|-"
    name = os.path.relpath(path, root)
    if not path.is_file():
        return f"|{name}:no file"
    stat = path.stat()
    return f"|{name}:{stat.st_size}:{stat.st_mtime_ns}"


def spacing_overrides(dataset: RawDataset) -> dict[str, tuple[float, ...]]:
    """Per-case pixel spacing from dataset.json's optional "spacing" map, for formats that cannot store it (PNG);
    none for a medical format, which carries its own (the key is ignored there, as dataset_format.md says)."""
    if dataset.file_ending.lower() in MEDICAL_EXTENSIONS:
        return {}
    meta = load_json(dataset.root / "dataset.json", "dataset description")
    spacing = meta.get("spacing", {}) if isinstance(meta, dict) else {}
    if not isinstance(spacing, dict):
        raise AutomedsamError(f"{dataset.root / 'dataset.json'}: 'spacing' must map case ids to [sx, sy].")
    return {str(case): tuple(float(v) for v in values) for case, values in spacing.items()}


def _measure_case(job: _CaseJob) -> dict[str, Any]:
    """Read one case (image, and mask or boxes only for which samples hold foreground) and measure it; runs in a
    worker process."""
    case = job.case
    image, geometry = read_image(case.image)
    spacing = job.spacing_override if geometry.kind == "natural" and job.spacing_override else geometry.spacing
    shape = image.shape[: geometry.ndim]
    record: dict[str, Any] = {"case": case.case_id, "group": case.group, "shape": list(shape),
                              "spacing": [float(v) for v in spacing], "annotation": "none",
                              "has_foreground": False, "foreground_slices": None}
    axis, samples = None, {"masks": 0, "boxes": 0}
    if case.label is not None:
        if geometry.ndim == 3:
            axis = job.axis if job.axis is not None else slicing_axis(numpy_spacing(spacing), shape)
        _foreground_of_mask(case, shape, axis, record)
        samples["masks"] = shape[axis] if axis is not None else 1
    elif case.boxes is not None:
        samples["boxes"] = _foreground_of_boxes(case, shape, record)
    record["intensity"], pooled = _intensity(image, case.case_id)
    return {"record": record, "axis": axis, "samples": samples, "pooled": pooled}


def _foreground_of_mask(case: Case, shape: tuple[int, ...], axis: int | None, record: dict[str, Any]) -> None:
    """Whether the case (each slice, for volumes) holds any foreground: all the draw may know of a mask."""
    seg, _ = read_segmentation(case.label)
    if seg.shape != shape:
        raise AutomedsamError(f"{case.label}: label shape {seg.shape} differs from image shape {shape} "
                              f"({case.image.name}). Draw the label on the image's pixel grid.")
    foreground = seg > 0
    record.update(annotation="masks", has_foreground=bool(foreground.any()))
    if axis is not None:
        record["foreground_slices"] = {str(a): _nonzero_slices(foreground, a) for a in range(3)}


def _foreground_of_boxes(case: Case, shape: tuple[int, ...], record: dict[str, Any]) -> int:
    """Which samples are boxed; returns how many samples the box file annotates."""
    is_3d = len(shape) == 3
    by_sample = boxes_by_slice(read_box_file(case.boxes, shape), is_3d)
    record.update(annotation="boxes", has_foreground=any(by_sample.values()))
    if is_3d:
        record["foreground_slices"] = {str(BOX_SLICE_AXIS): sorted(s for s, e in by_sample.items() if e)}
    return len(by_sample)


def _nonzero_slices(mask: np.ndarray, axis: int) -> list[int]:
    others = tuple(a for a in range(mask.ndim) if a != axis)
    return [int(i) for i in np.flatnonzero(mask.any(axis=others))]


def boxes_by_slice(entries: list[dict[str, Any]], is_3d: bool) -> dict[int | None, list[dict[str, Any]]]:
    """A box file's entries per slice index (None for a 2D image)."""
    if not is_3d:
        return {None: entries}
    by_slice: dict[int | None, list[dict[str, Any]]] = {}
    for entry in entries:
        by_slice.setdefault(entry["slice"], []).append(entry)
    return by_slice


def _intensity(image: np.ndarray, case_id: str) -> tuple[dict[str, Any], np.ndarray]:
    """Statistics of the case's pixels on a seeded subsample, plus pixels to pool. Unlabelled pixels cost no
    annotation, so every image counts; the foreground's intensities come from the labelled samples' boxes
    (label_statistics.py)."""
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    values = image.reshape(-1)
    drawn = subsample(values, CASE_SAMPLE_PIXELS, rng)
    stats = intensity_statistics(drawn.astype(np.float64))
    stats.update(min=float(values.min()), max=float(values.max()))
    return {"all": stats}, subsample(drawn, POOLED_PIXELS, rng).astype(np.float32)


def subsample(values: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` values drawn with replacement (plenty for percentiles), or all of them when there are fewer."""
    return values[rng.integers(0, values.size, count)] if values.size > count else values


def intensity_statistics(values: np.ndarray) -> dict[str, float]:
    """min, max, mean, std and the 0.5 / 99.5 percentiles (the normalisation's clip window) of `values`."""
    low, high = np.percentile(values, [0.5, 99.5])
    return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
            "std": float(values.std()), "p0_5": float(low), "p99_5": float(high)}


def _assemble(dataset: RawDataset, results: list[dict[str, Any]], is_3d: bool, axis: int | None) -> dict[str, Any]:
    cases = [result["record"] for result in results]
    annotations = [case["annotation"] for case in cases]
    boxed = is_3d and boxes_fix_slicing_axis(dataset.cases, interactive=dataset.interactive)
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
        "box_slice_axis": BOX_SLICE_AXIS if boxed else None,
        "interactive": dataset.interactive,
        "annotation": {kind: annotations.count(kind) for kind in ("masks", "boxes", "none")},
        "annotated_samples": {kind: sum(r["samples"][kind] for r in results) for kind in ("masks", "boxes")},
        "intensity": {
            "all": intensity_statistics(np.concatenate([r["pooled"] for r in results]).astype(np.float64)),
        },
        "settings": {"case_sample_pixels": CASE_SAMPLE_PIXELS, "pooled_pixels": POOLED_PIXELS},
        "source_key": source_key(dataset),
        "cases": cases,
    }
