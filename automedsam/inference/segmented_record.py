"""What each label map of an `automedsam_predict --dataset-images` run was made from, so that running it again
segments only the images whose inputs changed (a box drawn in review, an image marked empty, a retrained model) and
keeps the others: the annotation loop's Segment images then costs seconds after a few boxes, not a whole folder.

The record, `OUT/.dataset_images.json`, maps each case to a digest of its inputs and to the size and modification
time of the label map written from them. The inputs: the image and reference mask files (size and modification
time: an edit or a replacement reads as changed unless it keeps both), the box file's entries, the slices marked
empty, and, unless the reference mask is copied, the model: its folder, plans, checkpoints and validation summaries
(they choose box refinement and the second look), the prediction options, the precision on this device, the
foundation weights file and the package version. A label map replaced by anything else (another command, an edit)
no longer matches its record and is made again. Cases about to be redone leave the record before the run starts and
enter it as they are written (the run records its progress now and then) and at its end, and a case whose inputs
changed during the run is left out, so a stopped or failed run never leaves a label map recorded as made from
inputs it was not made from, and running again goes on from where it stopped.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from automedsam import __version__
from automedsam.dataset import RawDataset
from automedsam.errors import AutomedsamError
from automedsam.files import load_json, save_json
from automedsam.folds import fold_dir_name
from automedsam.inference.dataset_images import CaseAnnotation
from automedsam.inference.model_folder import ModelFolder
from automedsam.inference.naming import InputImage, segmentation_path

RECORD_FILE = ".dataset_images.json"


def input_signatures(dataset: RawDataset, folder: ModelFolder, *, annotations: Mapping[str, CaseAnnotation],
                     options: Mapping[str, Any], device: torch.device) -> dict[str, str]:
    """Case id -> digest of what its label map is made from (see the module docstring): `annotations` as the run
    reads them, the files' and the model's state as they are now."""
    model = _model_signature(folder, options=options, device=device)
    signatures = {}
    for case in dataset.cases:
        if case.label is not None:
            signatures[case.case_id] = _digest({"mask": _file_state(case.label)})
            continue
        annotation = annotations.get(case.case_id, CaseAnnotation())
        signatures[case.case_id] = _digest({"image": _file_state(case.image), "boxes": _by_slice(annotation.entries),
                                            "empty_slices": sorted(annotation.empty_slices), "model": model})
    return signatures


def up_to_date(output_dir: Path, images: Sequence[InputImage], signatures: Mapping[str, str]) -> set[str]:
    """The cases whose recorded inputs are today's and whose label map is the one the record names."""
    recorded = _load(output_dir)
    return {image.case_id for image in images
            if (entry := recorded.get(image.case_id)) is not None
            and entry.get("inputs") == signatures.get(image.case_id)
            and entry.get("label_map") == _label_map_state(segmentation_path(output_dir, image))}


def save_record(output_dir: Path, images: Sequence[InputImage], signatures: Mapping[str, str],
                cases: set[str]) -> None:
    """Record `cases` (those whose label map exists) as made from `signatures`; every other case leaves the record."""
    entries = {}
    for image in images:
        state = _label_map_state(segmentation_path(output_dir, image))
        if image.case_id in cases and state is not None:
            entries[image.case_id] = {"inputs": signatures[image.case_id], "label_map": state}
    save_json(output_dir / RECORD_FILE, {"cases": entries})


def _model_signature(folder: ModelFolder, *, options: Mapping[str, Any], device: torch.device) -> str:
    files = [folder.path / "plans.json"]
    for fold in folder.folds:
        files += [folder.checkpoint_path(fold), folder.path / fold_dir_name(fold) / "validation" / "summary.json"]
    weights = options.get("foundation_checkpoint") or folder.plans["foundation_model"].get("checkpoint")
    if weights:
        try:
            files.append(Path(weights).expanduser().resolve())
        except (OSError, RuntimeError, ValueError):  # a path that cannot be resolved: loading the weights says why
            files.append(Path(str(weights)))
    return _digest({"folder": str(folder.path.resolve()), "folds": [str(fold) for fold in folder.folds],
                    "checkpoint": folder.checkpoint, "files": [[str(path), _file_state(path)] for path in files],
                    "options": {key: str(value) for key, value in options.items()},
                    "precision": folder.plans.planned_precision(device), "version": __version__})


def _load(output_dir: Path) -> dict[str, dict[str, Any]]:
    """The recorded cases; none when there is no readable record (every label map is then made again)."""
    path = output_dir / RECORD_FILE
    try:
        cases = load_json(path, "record of segmented images").get("cases") if path.is_file() else None
    except (AutomedsamError, AttributeError):
        return {}
    if not isinstance(cases, dict):
        return {}
    return {str(case): entry for case, entry in cases.items() if isinstance(entry, dict)}


def _label_map_state(path: Path) -> list[int] | None:
    return None if not path.is_file() else _file_state(path)[1:]


def _by_slice(entries: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """The box file's entries ordered by slice, each slice's in file order (later outlines win where they overlap):
    saving one slice again moves its entries to the end of the file without changing them."""
    if entries is None:
        return None
    return sorted(entries, key=lambda entry: -1 if entry.get("slice") is None else int(entry["slice"]))


def _file_state(path: Path) -> list[Any] | None:
    """Name, size and modification time (None for a missing file)."""
    if not path.is_file():
        return None
    stat = path.stat()
    return [path.name, stat.st_size, stat.st_mtime_ns]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
