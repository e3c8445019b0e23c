"""A trained model's folder in the results root, as training and model sharing both change it: the lock each fold
holds while it trains, and results/DatasetXXX/previous/, where a model that is replaced moves whole, so that nothing
trained is lost (retrained with new plans, retrained from the annotation page, or overwritten by an installed model);
and an installed model's card, which says that its folds come from a model zip, not from training.

A shared building block, not part of the training stage, because automedsam_install_model --overwrite replaces a
model too and a stage never imports another stage (documentation/architecture.md).
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from automedsam.errors import AutomedsamError
from automedsam.files import holding_lock, load_json, reporting_unwritable

PREVIOUS = "previous"  # results/DatasetXXX/previous/: models replaced since, each a model folder of its own
LOCK_FILE = ".training.lock"
MODEL_CARD = "model_card.json"  # what automedsam_install_model writes beside plans.json: the model came from a zip


def keep_previous(output_dir: Path) -> Path | None:
    """Move a trained model whole to results/DatasetXXX/previous/ before it is retrained from scratch (the annotation
    page's Train): --overwrite alone replaces folds in place when the plans did not change. Refused while one of its
    folds trains in another process. Returns where it went, or None when there was no model."""
    with results_lock(output_dir.parent):
        if not (output_dir / "plans.json").is_file():
            return None
        check_no_fold_training(output_dir, own=None)
        return move_aside(output_dir)


@contextmanager
def kept_while_replaced(output_dir: Path) -> Iterator[Path | None]:
    """Move whatever is in `output_dir` whole to previous/ so that the body can put a new model in its place
    (automedsam_install_model --overwrite), refused while one of its folds trains; moved back if the body fails.
    Yields where it went, None when there was nothing. Holds the results lock throughout, so no training process
    copies its plans into the folder between the move and the new model's arrival."""
    with results_lock(output_dir.parent):
        moved = None
        if output_dir.exists():
            check_no_fold_training(output_dir, own=None)
            moved = move_aside(output_dir)
        try:
            yield moved
        except BaseException:
            if moved is not None and not output_dir.exists():
                os.replace(moved, output_dir)
            raise


def restore_previous(previous: Path, output_dir: Path) -> Path | None:
    """Put the model `keep_previous` moved to `previous` back at `output_dir`, whatever stands there moving to
    previous/ in its turn (where it went, or None); refused while a fold of the model standing there trains."""
    with results_lock(output_dir.parent):
        moved = None
        if output_dir.exists():
            check_no_fold_training(output_dir, own=None)
            moved = move_aside(output_dir)
        with reporting_unwritable(output_dir):
            os.replace(previous, output_dir)
        return moved


def move_aside(output_dir: Path) -> Path:
    """previous/<folder name>_<n>, the first n free: a model folder of its own. Call it under `results_lock`."""
    previous = output_dir.parent / PREVIOUS
    number = 1
    while (previous / f"{output_dir.name}_{number}").exists():
        number += 1
    target = previous / f"{output_dir.name}_{number}"
    with reporting_unwritable(target):  # a file named previous, a results folder without write permission
        previous.mkdir(exist_ok=True)
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
    with reporting_unwritable(path):  # only making the lock file: the training's own errors are not the lock's
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    with handle:
        if not _try_lock(handle):
            raise AutomedsamError(_busy(output_dir, fold_name))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_no_fold_training(output_dir: Path, *, own: str | None) -> None:
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


@contextmanager
def results_lock(folder: Path) -> Iterator[None]:
    """One process at a time checks and moves the model folders of a results dataset folder (folds are often trained
    in parallel)."""
    with holding_lock(folder / LOCK_FILE):  # reports a lock file it cannot make; the block's errors pass through
        yield


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


def reinstall_remedy(model_dir: Path) -> str:
    """An installed model's folds come from its model zip, not from training: the data is seldom on that machine."""
    card = installed_card(model_dir)
    dataset = card.get("dataset") if isinstance(card.get("dataset"), str) else planned_dataset(model_dir)
    return (f"{model_dir} was installed from a model zip (it holds {MODEL_CARD}): install the zip again with "
            f"`automedsam_install_model ZIP -d {dataset or 'ID'} --overwrite`, or copy the model folder again.")


def installed_card(model_dir: Path) -> dict[str, Any]:
    """The model card install wrote, or {} where it cannot be read (the messages then do without it)."""
    try:
        card = load_json(model_dir / MODEL_CARD, "model card")
    except AutomedsamError:
        return {}
    return card if isinstance(card, dict) else {}


def planned_dataset(model_dir: Path) -> str | None:
    """The dataset the plans of `model_dir` name (install writes the name it installs under); None without them."""
    try:
        plans = load_json(model_dir / "plans.json", "model plans") if (model_dir / "plans.json").is_file() else {}
    except AutomedsamError:
        return None
    name = plans.get("dataset_name") if isinstance(plans, dict) else None
    return name if isinstance(name, str) else None
