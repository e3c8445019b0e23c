"""What each label map of an `automedsam_predict --dataset-images` run was made from, so that running it again
segments only the images whose inputs changed (a box drawn in review, an image marked empty, a retrained model) and
keeps the others: the annotation loop's Segment images then costs seconds after a few boxes, not a whole folder.

The record, `OUT/.dataset_images.json`, maps each case to a digest of its inputs: the image and reference mask files
(size and modification time), the box file's entries, the slices marked empty, and, unless the reference mask is
copied, the model (its folder, the checkpoint files used, the prediction options, the package version). Cases about
to be redone leave the record before the run starts and enter it once the run has written them all, so a stopped or
failed run never leaves a label map recorded as made from inputs it was not made from.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from automedsam import __version__
from automedsam.dataset import Case
from automedsam.errors import AutomedsamError
from automedsam.files import load_json, save_json
from automedsam.inference.dataset_images import CaseAnnotation
from automedsam.inference.model_folder import ModelFolder

RECORD_FILE = ".dataset_images.json"


def model_signature(folder: ModelFolder, *, options: Mapping[str, Any]) -> str:
    """A digest of the model as prediction uses it: a retrained fold or another option changes it."""
    checkpoints = [_file_state(folder.checkpoint_path(fold)) for fold in folder.folds]
    return _digest({"folder": str(folder.path.resolve()), "plans": _file_state(folder.path / "plans.json"),
                    "folds": [str(fold) for fold in folder.folds], "checkpoint": folder.checkpoint,
                    "checkpoints": checkpoints, "options": dict(options), "version": __version__})


def case_signature(case: Case, annotation: CaseAnnotation, *, model: str) -> str:
    """A digest of what the case's label map is made from (see the module docstring)."""
    if case.label is not None:
        return _digest({"mask": _file_state(case.label)})
    return _digest({"image": _file_state(case.image), "boxes": annotation.entries,
                    "empty_slices": sorted(annotation.empty_slices), "model": model})


def load_record(output_dir: Path) -> dict[str, str]:
    """Case id -> signature of the label maps in `output_dir`; empty when there is no readable record (every label
    map is then made again)."""
    path = output_dir / RECORD_FILE
    if not path.is_file():
        return {}
    try:
        cases = load_json(path, "record of segmented images").get("cases", {})
    except (AutomedsamError, AttributeError):
        return {}
    return {str(case): str(signature) for case, signature in cases.items()} if isinstance(cases, dict) else {}


def save_record(output_dir: Path, cases: Mapping[str, str]) -> None:
    save_json(output_dir / RECORD_FILE, {"cases": dict(sorted(cases.items()))})


def _file_state(path: Path) -> list[Any]:
    """Name, size and modification time: a file replaced or edited in place reads as changed."""
    stat = path.stat()
    return [path.name, stat.st_size, stat.st_mtime_ns]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
