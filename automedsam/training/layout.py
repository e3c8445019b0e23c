"""Where a training run reads and writes: a fold's samples and seed, the preprocessed inputs, the results folder.

`fold_sample_ids` refuses a fold that splits.json does not have (fold names: `automedsam.folds`).
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

from automedsam.errors import AutomedsamError
from automedsam.files import load_json, reporting_unwritable, save_json
from automedsam.folds import ALL, Fold
from automedsam.paths import preprocessed_dataset_dir, results_dataset_dir
from automedsam.plans import Plans

COPIED_FILES = ("plans.json", "dataset.json", "fingerprint.json")
PREVIOUS = "previous"  # results/DatasetXXX/previous/: models trained with plans since replaced
LOCK_FILE = ".training.lock"


def seed_offset(fold: Fold, fold_count: int) -> int:
    """Each fold gets its own seed (plans seed + offset): fold k adds k, 'all' adds the number of folds, so it never
    shares a numbered fold's seed."""
    return fold_count if fold == ALL else int(fold)


def fold_sample_ids(splits: dict[str, Any], fold: Fold) -> tuple[list[str], list[str]]:
    """(train, val) sample ids: the fold's few-shot draw and its held-out samples; 'all' has no validation."""
    if fold == ALL:
        return list(splits["labelled"]), []
    folds = splits["folds"]
    if fold >= len(folds):
        raise AutomedsamError(f"Fold {fold} does not exist: splits.json has {len(folds)} folds (0..{len(folds) - 1}). "
                              "Train one of them or all, or plan again with more --folds.")
    return list(folds[fold]["train"]), list(folds[fold]["val"])


def load_preprocessed(dataset_name: str) -> tuple[Path, Plans, dict[str, Any]]:
    """(preprocessed folder, plans, splits), with the fix spelled out when preprocessing has not run."""
    folder = preprocessed_dataset_dir(dataset_name)
    missing = [name for name in ("plans.json", "splits.json") if not (folder / name).is_file()]
    if missing:
        raise AutomedsamError(
            f"{dataset_name} is not preprocessed: {', '.join(missing)} missing in {folder}. "
            f"Run automedsam_plan_and_preprocess -d {dataset_name} first."
        )
    return folder, Plans.load(folder / "plans.json"), load_json(folder / "splits.json", "splits file")


def trainer_output_dir(dataset_name: str, trainer: str, plans: Mapping[str, Any]) -> Path:
    return results_dataset_dir(dataset_name) / f"{trainer}__{Plans(plans).name}"


def copy_dataset_files(preprocessed_dir: Path, output_dir: Path, *, overwrite: bool,
                       training: str | None = None) -> Path | None:
    """Make the results folder self-contained; never mix folds trained on different plans.

    When the plans changed since the folder's folds were trained (replanned after samples were added in review),
    --overwrite moves that model, whole (its plans and folds), to results/DatasetXXX/previous/ before the new plans
    are copied: nothing is lost, `automedsam_predict -m` still reads it, unless a fold of it other than `training`
    (the caller's) is being trained by another process: then nothing moves. Returns where it went, or None."""
    plans = load_json(preprocessed_dir / "plans.json", "plans file")
    moved = None
    with _lock(output_dir.parent):
        existing = output_dir / "plans.json"
        if existing.is_file() and load_json(existing, "plans file") != plans:
            if not overwrite:
                raise AutomedsamError(
                    f"{output_dir} holds folds trained with other plans than {preprocessed_dir / 'plans.json'} (the "
                    "plans changed since, e.g. replanned after samples were added in review). Pass --overwrite to "
                    f"train with the new plans: that model is first moved, whole, to {output_dir.parent / PREVIOUS}/.")
            _check_no_fold_training(output_dir, own=training)
            moved = _move_aside(output_dir)
        for name in COPIED_FILES:
            source = preprocessed_dir / name
            if source.is_file():
                save_json(output_dir / name, load_json(source, name))
    return moved


def keep_previous(output_dir: Path) -> Path | None:
    """Move a trained model whole to results/DatasetXXX/previous/ before it is retrained from scratch (the annotation
    page's Train): --overwrite alone replaces folds in place when the plans did not change. Refused while one of its
    folds trains in another process. Returns where it went, or None when there was no model."""
    with _lock(output_dir.parent):
        if not (output_dir / "plans.json").is_file():
            return None
        _check_no_fold_training(output_dir, own=None)
        return _move_aside(output_dir)


def _move_aside(output_dir: Path) -> Path:
    """previous/<folder name>_<n>, the first n free: a model folder of its own."""
    previous = output_dir.parent / PREVIOUS
    previous.mkdir(exist_ok=True)
    number = 1
    while (previous / f"{output_dir.name}_{number}").exists():
        number += 1
    target = previous / f"{output_dir.name}_{number}"
    os.replace(output_dir, target)
    return target


def fold_lock_path(output_dir: Path, fold_name: str) -> Path:
    """Held while the fold trains; beside the model folder, so that moving the folder leaves it in place."""
    return output_dir.parent / f".{output_dir.name}.{fold_name}.lock"


@contextmanager
def training_fold(output_dir: Path, fold_name: str) -> Iterator[None]:
    """Hold the fold's lock while it trains: a second process on the same fold (a terminal's automedsam_train beside
    the annotation page's Train) is an error, not a second writer into the same folder."""
    path = fold_lock_path(output_dir, fold_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with reporting_unwritable(path), open(path, "a") as handle:
        if not _try_lock(handle):
            raise AutomedsamError(_busy(output_dir, fold_name))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_no_fold_training(output_dir: Path, *, own: str | None) -> None:
    """Refuse to move the model while a fold of it other than `own` trains in another process."""
    prefix = f".{output_dir.name}."
    for path in sorted(output_dir.parent.glob(f"{prefix}*.lock")):
        fold_name = path.name[len(prefix):-len(".lock")]
        if fold_name == own:
            continue
        with open(path, "a") as handle:
            if not _try_lock(handle):
                raise AutomedsamError(f"{output_dir} would move to {output_dir.parent / PREVIOUS}/, but "
                                      f"{_busy(output_dir, fold_name)}")
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_lock(handle: IO[str]) -> bool:
    """Take the lock if it is free; never wait (the holder may train for an hour)."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _busy(output_dir: Path, fold_name: str) -> str:
    return (f"{fold_name} of {output_dir} is being trained by another process right now (automedsam_train, or Train "
            "on the annotation page): wait for it to finish, or stop it, then train again.")


@contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """One training process at a time checks and moves a results folder (folds are often trained in parallel)."""
    folder.mkdir(parents=True, exist_ok=True)
    with reporting_unwritable(folder / LOCK_FILE), open(folder / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
