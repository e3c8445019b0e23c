"""Preprocessing: write the 2D samples training reads, then embed each of them once.

Per sample: `samples/<id>.npz` (normalised image, raw label map when masks exist) and `samples/<id>.json` (weak
labels as boxes, shape, spacing, slice, case), then `embeddings/<model>/<id>.npy` through the embedding cache.
Each labelled sample also gets the plans' augmentation views (`<id>__<view>`, made from its stored sample and
embedded the same way), so training can draw augmented versions without encoding anything.
A rerun skips finished files (the json is written last, so it marks a complete sample); a change of the plans'
slicing, normalisation or targets, or of the labelled set, clears exactly the outputs it makes stale, a change
of a view clears that view's samples and embeddings, and a sample whose case files changed since it was written (a
corrected mask imported again, a box redrawn on the annotation page) is written again with its views.
A view's embedding is kept exactly while its pixels are the same: they depend on its sample's image (each embedding's
image digest), the slicing and normalisation (the embeddings key), the view's spec (the state's "views") and, for a
zoom, its window around the boxes (the state's "zoom_windows"); boxes and masks alone move none of them.
Under torchrun each process writes the samples of every world_size-th case, the views of every world_size-th
labelled sample and embeds every world_size-th sample; rank 0 alone clears stale outputs, and the processes wait
for each other between the stages.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from automedsam import distributed
from automedsam.boxes import BOX_SLICE_AXIS, MASK_BOXES, annotator_boxes, read_box_file
from automedsam.dataset import Case, RawDataset
from automedsam.device import bf16_hardware, resolve_device
from automedsam.errors import AutomedsamError
from automedsam.files import NAME_MAX_BYTES, files_digest, load_json, remove_tree, save_json, save_npz
from automedsam.foundation.base import FoundationModel, default_batch_size
from automedsam.foundation.cache import (IMAGE_STAMP_SUFFIX, PREPROCESSING_STATE_FILE, EmbeddingCache,
                                        embeddings_record_held, recorded_embeddings_key)
from automedsam.io import MAX_LABEL, read_image, read_segmentation
from automedsam.parallel import parallel_map
from automedsam.planning.augmentation import (transform_box, transform_image, transform_label_map, transform_pair,
                                              zoom_window)
from automedsam.planning.fingerprint import spacing_overrides
from automedsam.planning.precision import (MEASURED_FILE, CheckResult, Measured, check_key, check_subset,
                                           measure_change, plan_precision, read_check_samples)
from automedsam.plans import ALL_LABELS, DEFAULT_PRECISION, Plans, View, without_reasons
from automedsam.samples import (SEPARATOR, case_of, sample_id, slice_of, slice_spacing, take_slice,
                                view_sample_id)

STATE_FILE = PREPROCESSING_STATE_FILE
SAMPLES_FOLDER = "samples"


@dataclass(frozen=True)
class _CaseSamples:
    """One case's samples to write; runs in a worker process."""

    case: Case
    spacing: tuple[float, ...] | None  # dataset.json "spacing" override for natural images
    plans: Plans
    wanted: tuple[tuple[int | None, bool], ...]  # (slice index, labelled)
    samples_dir: Path


@dataclass(frozen=True)
class _SampleViews:
    """One labelled sample's missing views to write from its stored sample; runs in a worker process."""

    sample_id: str
    views: tuple[View, ...]
    samples_dir: Path


def preprocess(dataset: RawDataset, plans: Mapping[str, Any], *, splits: Mapping[str, Any],
               fingerprint: Mapping[str, Any], out_dir: Path, embed_all: bool = False, num_workers: int = 1,
               device: str | torch.device | None = None, progress: bool = True,
               context: distributed.DistributedContext | None = None,
               foundation: FoundationModel | None = None, precision: str | None = None) -> dict[str, Any]:
    """Write the labelled samples (all samples with `embed_all`), the labelled samples' views, and the embeddings
    of all of them; skip what is done. The planned foundation model is built only when an embedding is missing,
    unless `foundation` gives it already built.

    `precision` ("auto", "fp32", "bf16") chooses the foundation model's precision once the labelled samples exist
    and before anything is embedded, and writes it into `out_dir`/plans.json (planning.precision); None keeps the
    plans' own. With a distributed `context`, this process's share of each; the returned counts are summed over
    processes and count views as samples.
    """
    start = time.perf_counter()
    plans = Plans(plans)
    context = context or distributed.DistributedContext()
    torch_device = resolve_device(device)
    out_dir = Path(out_dir)
    samples_dir = out_dir / SAMPLES_FOLDER
    axis = plans.slicing_axis
    catalogue = sample_catalogue(fingerprint, axis)
    labelled = set(splits["labelled"])
    unknown = sorted(labelled - set(catalogue))
    if unknown:
        raise AutomedsamError(f"splits.json labels samples the plans' slicing does not produce "
                              f"({', '.join(unknown[:5])}). Rerun automedsam_plan_and_preprocess without "
                              "--preprocess-only to redraw them.")
    wanted = sorted(catalogue) if embed_all else sorted(labelled)
    views = plans.views()
    _refuse_long_view_names(sorted(labelled), views)
    cases = {case.case_id: case for case in dataset.cases}
    embedded = wanted + [view_sample_id(sid, view) for sid in sorted(labelled) for view in views]
    cache = EmbeddingCache(out_dir, plans.foundation_name)
    notes = []
    if context.is_main:  # outdated samples first: the embeddings of their views go even when samples/ is cleared
        notes += _drop_outdated_samples(out_dir, cases, views, plans=plans, labelled=labelled)
        notes += _clear_stale_samples(out_dir, plans, sorted(labelled), views)
        # a sample with no record yet (labelled for the first time) may find an embedding a coverage selection
        # stored before its image was imported again
        dropped = cache.drop_outdated(embedded, {case_id: case.image for case_id, case in cases.items()})
        notes += [f"{dropped} embedding(s) encoded again: stored before their image changed"] if dropped else []
    distributed.barrier(context)  # nobody looks at samples/ while rank 0 may still be deleting stale ones
    my_cases = set(distributed.shard(sorted({catalogue[sid][0] for sid in wanted}), context))
    todo: dict[str, list[tuple[int | None, bool]]] = {}
    for sid in wanted:
        if catalogue[sid][0] not in my_cases:
            continue
        if not _is_complete(samples_dir, sid):
            case_id, slice_index = catalogue[sid]
            todo.setdefault(case_id, []).append((slice_index, sid in labelled))
    overrides = spacing_overrides(dataset)
    jobs = [_CaseSamples(cases[case_id], overrides.get(case_id), plans, tuple(items), samples_dir)
            for case_id, items in todo.items()]
    written = sum(parallel_map(_write_case_samples, jobs, num_workers=num_workers, description="Samples",
                               progress=progress and context.is_main))
    distributed.barrier(context)  # views are made from the stored samples, whichever process wrote them
    if context.is_main:
        notes += _drop_moved_zoom_views(out_dir, sorted(labelled), views)
    distributed.barrier(context)  # nobody writes a view rank 0 may still be dropping
    view_jobs = _view_jobs(samples_dir, distributed.shard(sorted(labelled), context), views)
    written += sum(parallel_map(_write_sample_views, view_jobs, num_workers=num_workers, description="Views",
                                progress=progress and context.is_main))
    distributed.barrier(context)  # views done; the precision check reads the labelled samples
    computed = 0
    if precision is not None:
        if context.is_main:
            plans, computed, cleared = _choose_precision(out_dir, plans, sorted(labelled), mode=precision,
                                                         device=torch_device, cache=cache, progress=progress)
            notes += cleared
        distributed.barrier(context)  # the other processes embed with the precision rank 0 chose
        plans = Plans.load(out_dir / "plans.json")
    elif context.is_main:
        notes += clear_stale_embeddings(out_dir, plans)
    distributed.barrier(context)  # a sample is embedded by whichever process's share it falls in
    _refuse_mixed_precision(plans, torch_device, cache=cache, sample_ids=embedded)  # every process decides alike
    missing = [sid for sid in distributed.shard(embedded, context) if not cache.path(sid).is_file()]
    if missing:
        reuse = foundation is not None and foundation.precision == plans.planned_precision(torch_device)
        model = foundation if reuse else plans.build_foundation_model(device=torch_device)
        computed += cache.compute_missing(model, _StoredImages(samples_dir, missing),
                                         image_digests=_image_digests(samples_dir, missing),
                                         batch_size=default_batch_size(torch_device),
                                         progress=progress and context.is_main)
    written, computed = distributed.sum_counts([written, computed], context, torch_device)
    return {"samples": len(embedded), "samples_written": written, "views": len(embedded) - len(wanted),
            "embeddings": len(embedded), "embeddings_computed": computed, "seconds": time.perf_counter() - start,
            "notes": notes}


def _refuse_long_view_names(labelled: list[str], views: list[View]) -> None:
    """A hand-made view name that makes a labelled sample's view files too long for the file system, refused before
    anything is written: the case ids were checked against the planner's three-character names only."""
    longest = max(labelled, key=lambda sid: len(sid.encode("utf-8")), default=None)
    for view in views if longest is not None else []:
        size = len(f"{view_sample_id(longest, view)}{IMAGE_STAMP_SUFFIX}".encode("utf-8"))
        if size > NAME_MAX_BYTES:
            raise AutomedsamError(f"plans.json augmentation view name {view['name']!r} is too long for sample "
                                  f"{longest}: the file name of that sample's view would be {size} bytes, more than "
                                  f"the {NAME_MAX_BYTES} a file system takes. Shorten the view's name to at most "
                                  f"{len(view['name']) - (size - NAME_MAX_BYTES)} characters and rerun with "
                                  "--preprocess-only.")


def sample_catalogue(fingerprint: Mapping[str, Any], axis: int | None) -> dict[str, tuple[str, int | None]]:
    """sample id -> (case id, slice index) of every 2D sample of every training case, for slicing `axis`."""
    catalogue = {}
    for case in fingerprint["cases"]:
        is_volume = len(case["shape"]) == 3
        if is_volume and axis is None:
            raise AutomedsamError("plans.json slicing.axis is null but the dataset holds 3D volumes. Set it to the "
                                  "array axis to slice along (0, 1 or 2).")
        indices = range(case["shape"][axis]) if is_volume else [None]
        for index in indices:
            catalogue[sample_id(case["case"], index)] = (case["case"], index)
    return catalogue


def _write_case_samples(job: _CaseSamples) -> int:
    """Read one case once, normalise it, and write the requested samples; returns how many were written."""
    case, plans = job.case, job.plans
    source = case_source(case)  # before reading: a file changed while it is read makes the sample outdated
    image, geometry = read_image(case.image)
    spacing = job.spacing if geometry.kind == "natural" and job.spacing else geometry.spacing
    axis = plans.slicing_axis if geometry.ndim == 3 else None
    normalised = plans.normalise(image)
    # the smallest dtype that holds its ids: uint8, or uint16 beside an id above 255, which its samples' masks keep
    label_map = read_segmentation(case.label)[0] if case.label is not None else None
    if label_map is not None and label_map.dtype.itemsize > 2:
        raise AutomedsamError(f"{case.label}: label {int(label_map.max())} exceeds {MAX_LABEL}, the most a label map "
                              "holds (masks are stored as uint16); renumber the labels.")
    entries = read_box_file(case.boxes, image.shape[: geometry.ndim]) if case.boxes and label_map is None else None
    if entries is not None and axis not in (None, BOX_SLICE_AXIS):
        raise AutomedsamError(f"{case.boxes} gives boxes per slice along array axis {BOX_SLICE_AXIS}, but plans.json "
                              f"slices along axis {axis}. Set slicing.axis to {BOX_SLICE_AXIS}.")
    for slice_index, labelled in job.wanted:
        pixels = normalised if slice_index is None else take_slice(normalised, axis, slice_index)
        mask = None
        if label_map is not None:
            mask = label_map if slice_index is None else take_slice(label_map, axis, slice_index)
        boxes = _sample_boxes(plans.targets, mask, entries, slice_index) if labelled else []
        sid = sample_id(case.case_id, slice_index)
        arrays = {"image": np.ascontiguousarray(pixels, dtype=np.float32)}
        if mask is not None:
            arrays["mask"] = np.ascontiguousarray(mask)
        save_npz(job.samples_dir / f"{sid}.npz", **arrays)
        save_json(job.samples_dir / f"{sid}.json", {
            "sample_id": sid, "case": case.case_id, "slice": slice_index, "shape": list(pixels.shape[:2]),
            "spacing": slice_spacing(spacing, axis), "boxes": boxes, "has_mask": mask is not None,
            "source": source})
    return len(job.wanted)


def _is_complete(samples_dir: Path, sid: str) -> bool:
    """A sample is complete once its json, written after its npz, exists beside it."""
    return (samples_dir / f"{sid}.json").is_file() and (samples_dir / f"{sid}.npz").is_file()


def case_source(case: Case) -> dict[str, str]:
    """What a sample records of its case's files (name, size, modification time): its image's, and its mask's and
    box file's together. A sample written before one of them changed is outdated."""
    return {"image": files_digest([case.image]), "annotation": files_digest([case.label, case.boxes])}


def _drop_outdated_samples(out_dir: Path, cases: Mapping[str, Case], views: list[View], *, plans: Plans,
                           labelled: set[str]) -> list[str]:
    """Delete every stored sample whose case's files changed since it was written, with its views (their embeddings
    and its own too when the image changed), so that it is written again, and embedded again where its pixels
    changed. A sample of a box file that changed elsewhere (a box drawn on another slice of its volume) keeps all:
    its boxes are the same."""
    samples_dir = out_dir / SAMPLES_FOLDER
    dropped = 0
    for record_path in sorted(samples_dir.glob("*.json")) if samples_dir.is_dir() else []:
        if not record_path.is_file():
            continue  # a view dropped with its sample just before
        try:
            record = load_json(record_path, "sample")
        except AutomedsamError:
            record = None
        if isinstance(record, dict) and "source_sample" in record:
            continue  # a view: it goes with its sample
        sid = record_path.name[: -len(".json")]
        case = cases.get(case_of(sid))
        if case is None:
            continue
        state = _sample_state(record, record_path, case)
        if state == "annotation changed" and _same_boxes(record, case, plans, labelled=sid in labelled):
            save_json(record_path, {**record, "source": case_source(case)})
        elif state != "current":
            _drop_sample(out_dir, sid, views, keep_embeddings=state == "annotation changed")
            dropped += 1
    return [f"{dropped} sample(s) written again: their image, mask or box file changed since"] if dropped else []


def _same_boxes(record: dict[str, Any], case: Case, plans: Plans, *, labelled: bool) -> bool:
    """Whether a sample of a case annotated by a box file (no mask) would get the boxes it holds."""
    if case.label is not None:
        return False
    entries = read_box_file(case.boxes) if case.boxes is not None and case.boxes.is_file() else []
    boxes = _sample_boxes(plans.targets, None, entries, record.get("slice")) if labelled else []
    return boxes == record.get("boxes")


def _sample_state(record: Any, record_path: Path, case: Case) -> str:
    """"current", "annotation changed" or "image changed" since the sample was written (an unreadable record: the
    image). A sample written before samples recorded their source is compared by time: a case file newer than it
    changed since."""
    if not isinstance(record, dict):
        return "image changed"
    recorded = record.get("source")
    if isinstance(recorded, dict):
        newer = {key for key, digest in case_source(case).items() if recorded.get(key) != digest}
    else:
        written = record_path.stat().st_mtime_ns
        newer = {key for key, paths in (("image", [case.image]), ("annotation", [case.label, case.boxes]))
                 if any(path is not None and path.is_file() and path.stat().st_mtime_ns > written for path in paths)}
    return "image changed" if "image" in newer else "annotation changed" if newer else "current"


def _drop_sample(out_dir: Path, sid: str, views: list[View], *, keep_embeddings: bool) -> None:
    """Delete a sample and its views, with their embeddings of every model unless `keep_embeddings` (the image did
    not change: a corrected mask or box moves no view's pixels but a zoom's window, which `_drop_moved_zoom_views`
    checks). The sample's own json goes last: it is what shows the sample outdated, so a run stopped midway finds it
    again and drops the rest; gone first, it left views that were never checked on their own, and they kept the old
    boxes for good."""
    names = [*(view_sample_id(sid, view) for view in views), sid]
    model_dirs = _embedding_folders(out_dir)
    for name in names:
        embedded = [] if keep_embeddings else _embedding_files(model_dirs, name)
        for path in (*embedded, out_dir / SAMPLES_FOLDER / f"{name}.npz", out_dir / SAMPLES_FOLDER / f"{name}.json"):
            path.unlink(missing_ok=True)


def _sample_boxes(targets: list[dict[str, Any]], mask: np.ndarray | None, entries: list[dict[str, Any]] | None,
                  slice_index: int | None) -> list[dict[str, Any]]:
    """Weak labels of one sample: tight boxes from the mask per target (its specks left out, as an annotator
    leaves them unboxed), or the box file's boxes for this slice.

    A ring target's box is the box of the ring itself, which is also the box of its filled region.
    """
    boxes = []
    for target in targets:
        label = int(target["label"])
        if mask is not None:
            found = annotator_boxes(mask, [label], per_component=bool(target["per_component"]))[label]
        else:
            found = [entry["box"] for entry in entries or []
                     if entry["label"] == label and entry.get("slice") == slice_index]
        boxes.extend({"label": label, "box": [int(v) for v in box]} for box in found)
    return boxes


def _drop_moved_zoom_views(out_dir: Path, labelled: list[str], views: list[View]) -> list[str]:
    """Drop the zoomed views (and their embeddings) whose window moved since they were made: a zoom's window follows
    its sample's boxes, and a view's embedding outlives its sample files (rewritten when the targets, the labelled
    set, a mask or a box change, or when a box is corrected while its sample is out of the draw), so the new boxes
    would otherwise be paired with the old crop. Records each zoomed view's window in the preprocessing state."""
    state = _load_state(out_dir)
    recorded = dict(state.get("zoom_windows", {}))
    model_dirs = _embedding_folders(out_dir)
    moved = 0
    for sid in labelled:
        meta = load_json(out_dir / SAMPLES_FOLDER / f"{sid}.json", "sample")
        for view in views:
            window = zoom_window(meta["shape"], [entry["box"] for entry in meta["boxes"]], view)
            if window is None:
                continue
            vid, now = view_sample_id(sid, view), [round(float(value), 6) for value in window]
            if recorded.get(vid) != now:
                files = [out_dir / SAMPLES_FOLDER / f"{vid}.json", out_dir / SAMPLES_FOLDER / f"{vid}.npz",
                         *_embedding_files(model_dirs, vid)]
                moved += any(path.exists() for path in files) and vid in recorded
                for path in files:
                    path.unlink(missing_ok=True)
                recorded[vid] = now
    save_json(out_dir / STATE_FILE, {**_load_state(out_dir), "zoom_windows": recorded})
    return [f"{moved} zoomed view(s) made again: their sample's boxes moved since"] if moved else []


def _view_jobs(samples_dir: Path, sample_ids: list[str], views: list[View]) -> list[_SampleViews]:
    """The views still to write, grouped by their source sample."""
    jobs = []
    for sid in sample_ids:
        missing = tuple(view for view in views if not _is_complete(samples_dir, view_sample_id(sid, view)))
        if missing:
            jobs.append(_SampleViews(sid, missing, samples_dir))
    return jobs


def _write_sample_views(job: _SampleViews) -> int:
    """Write a labelled sample's views: pixels, label map and boxes moved together; returns how many."""
    meta = load_json(job.samples_dir / f"{job.sample_id}.json", "sample")
    with np.load(job.samples_dir / f"{job.sample_id}.npz", allow_pickle=False) as arrays:
        image = arrays["image"]
        mask = arrays["mask"] if "mask" in arrays.files else None
    for view in job.views:
        vid = view_sample_id(job.sample_id, view)
        window = zoom_window(meta["shape"], [entry["box"] for entry in meta["boxes"]], view)
        moved = {"image": transform_image(image, view, window)}
        if mask is not None:
            moved["mask"] = transform_label_map(mask, view, window)
        save_npz(job.samples_dir / f"{vid}.npz", **moved)
        placed = [(entry["label"], transform_box(entry["box"], meta["shape"], view, window)) for entry in meta["boxes"]]
        boxes = [{"label": label, "box": box} for label, box in placed if box is not None]
        save_json(job.samples_dir / f"{vid}.json", {
            **meta, "sample_id": vid, "shape": transform_pair(meta["shape"], view),
            "spacing": transform_pair(meta["spacing"], view), "boxes": boxes, "source_sample": job.sample_id,
            "view": view})
    return len(job.views)


class _StoredImages:
    """(sample id, normalised image) pairs read from samples/ one at a time; sized so progress shows a total."""

    def __init__(self, samples_dir: Path, sample_ids: list[str]) -> None:
        self.samples_dir = samples_dir
        self.sample_ids = sample_ids

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for sid in self.sample_ids:
            with np.load(self.samples_dir / f"{sid}.npz", allow_pickle=False) as arrays:
                yield sid, arrays["image"]


def _clear_stale_samples(out_dir: Path, plans: Plans, labelled: list[str], views: list[View]) -> list[str]:
    """Delete samples made under other plans, another labelled set or another rule for a mask's boxes (MASK_BOXES),
    with their views' samples (which hold their boxes and masks), and views made under another view spec with their
    embeddings; record what they are now. The views' embeddings outlive samples/: a zoom whose window moved with the
    boxes goes in `_drop_moved_zoom_views`, and nothing else of the samples changes a view's pixels."""
    samples_key = plans.samples_key(labelled)
    state = _load_state(out_dir)
    notes = []
    view_keys = {view["name"]: _digest(view) for view in views}
    replanned, boxes_changed = state.get("samples_key") != samples_key, state.get("mask_boxes") != MASK_BOXES
    if (replanned or boxes_changed) and (out_dir / SAMPLES_FOLDER).exists():
        remove_tree(out_dir / SAMPLES_FOLDER)
        notes.append("samples rewritten: the plans' slicing/normalisation/targets or the labelled set changed"
                     if replanned else "samples rewritten: their masks' boxes now leave specks out")
    stale = sorted(name for name, key in state.get("views", {}).items() if view_keys.get(name) != key)
    if stale:
        _remove_views(out_dir, stale)
        notes.append(f"views {', '.join(stale)} cleared: the plans' augmentation changed")
    save_json(out_dir / STATE_FILE, {**state, "samples_key": samples_key, "mask_boxes": MASK_BOXES, "views": view_keys})
    return notes


def clear_stale_embeddings(out_dir: Path, plans: Plans) -> list[str]:
    """Delete the model's embeddings made under other slicing, normalisation, model or precision; record the
    plans they are made under now."""
    model = plans.foundation_name
    key = plans.embeddings_key()
    notes = []
    with embeddings_record_held(out_dir):
        state = _load_state(out_dir)
        embeddings = dict(state.get("embeddings", {}))
        model_dir = out_dir / "embeddings" / model
        if embeddings.get(model) != key and model_dir.exists():
            remove_tree(model_dir)
            notes.append(f"{model} embeddings recomputed: the plans' slicing, normalisation, model or precision "
                         "changed")
        embeddings[model] = key
        save_json(out_dir / STATE_FILE, {**state, "embeddings": embeddings})
    return notes


def adopt_embeddings(source_dir: Path, out_dir: Path, model_name: str) -> int:
    """Give `out_dir` (a fresh preprocessed folder of the same raw data, e.g. another seed's) the sample embeddings
    that `source_dir` holds, hard-linked (copied where links fail) with their image digests, and the plans key they
    were made under; the usual key check then keeps them only where the plans agree. Views are left out: they
    belong to the source's labelled samples. Returns how many were adopted; none when `out_dir` already records
    embeddings of the model."""
    key = recorded_embeddings_key(source_dir, model_name)
    state = _load_state(out_dir)
    if key is None or model_name in state.get("embeddings", {}):
        return 0
    source, target = source_dir / "embeddings" / model_name, out_dir / "embeddings" / model_name
    target.mkdir(parents=True, exist_ok=True)
    adopted = 0
    for path in sorted(source.glob("*.npy")):
        if slice_of(path.stem) is None and SEPARATOR in path.stem or path.stem.count(SEPARATOR) > 1:
            continue  # a view
        if (target / path.name).exists():
            continue
        stamp = path.with_suffix(IMAGE_STAMP_SUFFIX)
        (target / stamp.name).unlink(missing_ok=True)  # one left by an embedding deleted since
        for file in ([stamp] if stamp.is_file() else []) + [path]:  # the embedding last: its stamp is there by then
            try:
                os.link(file, target / file.name)
            except OSError:
                shutil.copyfile(file, target / file.name)
        adopted += 1
    with embeddings_record_held(out_dir):
        state = _load_state(out_dir)
        save_json(out_dir / STATE_FILE, {**state, "embeddings": {**state.get("embeddings", {}), model_name: key}})
    return adopted


def _choose_precision(out_dir: Path, plans: Plans, labelled: list[str], *, mode: str, device: torch.device,
                      cache: EmbeddingCache, progress: bool) -> tuple[Plans, int, list[str]]:
    """Choose the precision (planning.precision), write it into plans.json, clear embeddings made in another one,
    and store the embeddings the check computed in the chosen one (of the samples it measured); returns the plans,
    how many embeddings were stored, and notes. The check's per-sample figures go to MEASURED_FILE as it measures,
    until its result is stored."""
    section = plans["foundation_model"]
    masks = plans.get("protocol", {}).get("regime") == ALL_LABELS  # under --shots N a mask is only its boxes
    samples_dir = out_dir / SAMPLES_FOLDER
    written = {sid: {part: load_json(samples_dir / f"{sid}.json", "sample").get(part) for part in ("boxes", "source")}
               for sid in labelled}
    key = check_key(section, labelled, plans.samples_key(labelled), device, masks=masks, written=written)
    measured = Measured(out_dir / MEASURED_FILE, key)

    def measure() -> CheckResult:
        models = {name: plans.build_foundation_model(device=device, precision=name) for name in ("fp32", "bf16")}
        return measure_change(read_check_samples(samples_dir, check_subset(labelled), masks=masks), plans.targets,
                              reference=models["fp32"], candidate=models["bf16"], labelled=len(labelled),
                              progress=progress, measured=measured)

    stored = _load_state(out_dir).get("precision_check")
    chosen, result = plan_precision(section, mode=mode, device=device, measure=measure, stored=stored, key=key)
    plans = Plans({**plans.data, "foundation_model": chosen}, plans.where)
    save_json(out_dir / "plans.json", dict(plans.data))
    if chosen["precision_check"].get("key"):
        save_json(out_dir / STATE_FILE, {**_load_state(out_dir), "precision_check": chosen["precision_check"]})
        measured.path.unlink(missing_ok=True)  # the stored check holds what it measured
    notes = clear_stale_embeddings(out_dir, plans)
    stored_now = 0
    if result is not None:
        found = result.embeddings[plans.planned_precision(device)]
        digests = _image_digests(samples_dir, sorted(found))
        for sid, embedding in found.items():
            if not cache.path(sid).is_file():
                cache.put(sid, embedding, image_digest=digests.get(sid))
                stored_now += 1
    return plans, stored_now, notes


def _refuse_mixed_precision(plans: Plans, device: torch.device, *, cache: EmbeddingCache,
                            sample_ids: list[str]) -> None:
    """Refuse to encode missing embeddings on a device that runs the model in another precision than the plans
    record (a bf16 measured on another kind of device, fp32 here): the cache's key holds the recorded precision,
    so one cache would hold embeddings of both, and readers trust it to hold the plans' precision alone."""
    recorded = plans["foundation_model"].get("precision", DEFAULT_PRECISION)
    here = plans.planned_precision(device)
    missing = sum(not cache.path(sid).is_file() for sid in sample_ids) if here != recorded else 0
    if not missing:
        return
    check = plans["foundation_model"].get("precision_check") or {}
    made = (f"on another kind of device ({check.get('hardware', check.get('device'))})" if check.get("passed")
            else "by hand (--precision or an edit of foundation_model.precision)")
    raise AutomedsamError(
        f"The embeddings cached under plans.json are {recorded}, chosen {made}, but this {device.type} "
        f"({bf16_hardware(device)}) runs the foundation model in {here}: encoding the {missing} missing embedding(s) "
        f"here would mix {recorded} and {here} in one cache. Run --preprocess-only on the kind of device the "
        f"embeddings were made on, or plan again here (automedsam_plan_and_preprocess without --preprocess-only), "
        "which chooses the precision for this device and encodes every embedding again.")


def _load_state(out_dir: Path) -> dict[str, Any]:
    path = out_dir / STATE_FILE
    return load_json(path, "preprocessing state") if path.is_file() else {}


def _remove_views(out_dir: Path, names: list[str]) -> None:
    """Delete the samples and embeddings (of every model) of the named views."""
    folders = [out_dir / SAMPLES_FOLDER, *_embedding_folders(out_dir)]
    for folder in folders:
        for name in names:
            for path in folder.glob(f"*__{name}.*"):
                path.unlink()


def _embedding_folders(out_dir: Path) -> list[Path]:
    """Every foundation model's embedding folder: a sample or view goes from all of them."""
    embeddings = out_dir / "embeddings"
    return [folder for folder in embeddings.iterdir() if folder.is_dir()] if embeddings.is_dir() else []


def _embedding_files(model_dirs: list[Path], name: str) -> list[Path]:
    """A sample's or view's embedding in every model folder, with the image digest stored beside it."""
    return [folder / f"{name}{suffix}" for folder in model_dirs for suffix in (".npy", IMAGE_STAMP_SUFFIX)]


def _image_digests(samples_dir: Path, sample_ids: list[str]) -> dict[str, str]:
    """sample id -> the digest of the raw image its stored pixels were read from, as its record (a view: its
    sample's) keeps it; none for a record that does not (written before records kept it)."""
    digests = {}
    for sid in sample_ids:
        try:
            record = load_json(samples_dir / f"{sid}.json", "sample")
            if isinstance(record, dict) and "source_sample" in record:
                record = load_json(samples_dir / f"{record['source_sample']}.json", "sample")
        except AutomedsamError:
            continue
        source = record.get("source") if isinstance(record, dict) else None
        if isinstance(source, dict) and isinstance(source.get("image"), str):
            digests[sid] = source["image"]
    return digests


def _digest(*parts: Any) -> str:
    """Stable digest of plan sections (and the labelled set), ignoring the plans' human-readable reasons."""
    return hashlib.sha256(json.dumps(without_reasons(parts), sort_keys=True).encode()).hexdigest()
