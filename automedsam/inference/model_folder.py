"""Find and check a trained model folder: which one, which folds, which checkpoint files.

Layout (documentation/architecture.md): `results/DatasetXXX_Name/<trainer>__<plans>/` with plans.json and
`fold_k/checkpoint_{best,final}.pt`. Every missing piece is reported with the command that produces it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from rich.console import Console

from automedsam import paths
from automedsam.checkpoint import (TRAINING_STATE, is_complete, load_checkpoint, load_metadata, metadata_path,
                                   weights_path)
from automedsam.distributed import context_from_environment
from automedsam.errors import AutomedsamError
from automedsam.files import load_json
from automedsam.folds import ALL, SPLITS_FILE, Fold, fold_dir_name, parse_fold
from automedsam.foundation.weights_file import TRAINED_WITH
from automedsam.plans import Plans, weights_sha256
from automedsam.trained_models import MODEL_CARD, PREVIOUS, installed_card, planned_dataset, reinstall_remedy

CHECKPOINTS = ("best", "final")
# nnU-Net's choice too: with 2 validation samples per fold the box-based "best" epoch is a noisy pick
# (documentation/training.md, Validation and the best checkpoint)
DEFAULT_CHECKPOINT = "final"
FINISHED_CHECKPOINT = "final"  # written when a fold's training ends, after everything else it writes (.pt, then .json)
FOLD_FOLDER = re.compile(r"^fold_(\d+)$")
DATASET_ID = re.compile(r"^Dataset(\d{3,})_")


@dataclass(frozen=True)
class ModelFolder:
    """A trained model folder with the folds and checkpoint chosen for prediction."""

    path: Path
    plans: Plans
    folds: tuple[Fold, ...]
    checkpoint: str
    left_out: tuple[int, ...] = ()  # with no folds named: fold folders not finished (still training?) or without it
    unfinished: tuple[Fold, ...] = ()  # folds named with --checkpoint best that have not finished training

    def checkpoint_path(self, fold: Fold) -> Path:
        return weights_path(self.path / fold_dir_name(fold), self.checkpoint)

    def refinement_checks(self) -> list[dict]:
        """The box refinement checks of the chosen folds' validation (none for fold `all` or an older model)."""
        return self._validation_checks("box_refinement")

    def second_look_checks(self) -> list[dict]:
        """The second look checks of the chosen folds' validation (none for fold `all` or an older model)."""
        return self._validation_checks("second_look")

    def _validation_checks(self, key: str) -> list[dict]:
        """The folds' checks measured on the weights prediction loads: a check of the final weights says nothing of
        the best checkpoint's, unless both are the same epoch."""
        checks = []
        for fold in self.folds:
            fold_dir = self.path / fold_dir_name(fold)
            summary = fold_dir / "validation" / "summary.json"
            if not summary.is_file():
                continue
            validation = load_json(summary, "fold validation summary")
            measured = validation.get("checkpoint", "final")
            if measured != self.checkpoint and not self._same_epoch(fold_dir, validation):
                continue
            checks.append(validation.get(key, {}))
        return checks

    def _same_epoch(self, fold_dir: Path, validation: dict[str, Any]) -> bool:
        """Whether the checkpoint loaded is of the epoch the checks measured: its metadata says, or (a model installed
        from an archive, which has none) the epochs its export recorded."""
        epoch = validation.get("epoch")
        if epoch is None:
            return False
        if metadata_path(fold_dir, self.checkpoint).is_file():
            return load_metadata(fold_dir, self.checkpoint).get("epoch") == epoch
        return (validation.get("checkpoint_epochs") or {}).get(self.checkpoint) == epoch

    def trained_with(self, fold: Fold) -> str | None:
        """The sha256 of the foundation weights `fold` trained with, as its checkpoint's metadata records it; None
        for folds trained before it was recorded and for an installed model (its plans pin the hash instead)."""
        fold_dir = self.path / fold_dir_name(fold)
        if not metadata_path(fold_dir, self.checkpoint).is_file():
            return None
        metadata = load_metadata(fold_dir, self.checkpoint)
        return metadata.get(TRAINED_WITH) if isinstance(metadata, dict) else None

    def check_foundation_weights(self, *, foundation_checkpoint: str | Path | None = None) -> None:
        """Refuse foundation weights other than those the chosen folds trained with: a prompt module learnt to prompt
        one frozen model, and weights saved over the planned file since (a fine-tune), or another file given, would
        silently change every segmentation. Called once per predictor; a weights file is hashed once per process."""
        recorded = {fold: sha256 for fold in self.folds if (sha256 := self.trained_with(fold))}
        found = weights_sha256(self.plans["foundation_model"], weights=foundation_checkpoint) if recorded else None
        differing = {fold: sha256 for fold, sha256 in recorded.items() if sha256 != found}
        if found is not None and differing:  # found None: no weights file there, which building the model reports
            raise self._other_weights_error(found, differing, foundation_checkpoint=foundation_checkpoint)

    def _other_weights_error(self, found: str, differing: dict[Fold, str], *,
                             foundation_checkpoint: str | Path | None) -> AutomedsamError:
        """What differs (the weights at hand, the folds' recorded ones) and what to do."""
        section = self.plans["foundation_model"]
        planned = section.get("checkpoint")
        used = foundation_checkpoint or planned or f"the '{section['name']}' weights packaged with automedsam"
        folds = "; ".join(f"fold {fold}: sha256 {sha256}" for fold, sha256 in differing.items())
        put_back = (f"Put the weights they were trained with back at {planned}, or give them with "
                    "--foundation-checkpoint PATH" if planned and foundation_checkpoint is None else
                    "Give the weights file they were trained with via --foundation-checkpoint PATH")
        fold = next(iter(differing))
        retrain = (f"`{train_command(self.path, fold)} --overwrite`, each fold" if _trained_here(self.path) else
                   "where they were trained")
        return AutomedsamError(f"The foundation weights {used} have sha256 {found}, but the folds of {self.path} were "
                               f"trained with other weights ({folds}): other weights give other segmentations. "
                               f"{put_back}, or retrain the folds with these weights ({retrain}).")

    def load_state(self, fold: Fold) -> dict[str, torch.Tensor]:
        """The flat "<label>.<param>" state dict of one fold, read without pickle."""
        return load_checkpoint(self.path / fold_dir_name(fold), self.checkpoint,
                               retrain=fold_remedy(self.path, fold, "Its fold must be retrained: `{train} --overwrite` "
                                                                    "replaces it."))


def fold_remedy(model_dir: Path, fold: Fold, training: str) -> str:
    """What gets `fold` of the model in `model_dir` (again), for error messages: `training`, a sentence in which
    {train} and {resume} stand for `train_command` and `continue_command`, where automedsam_train makes the folder's
    folds; else installing its model zip again, none for a model kept in previous/, or training the folder it was
    copied from (`_copy_remedy`)."""
    if (model_dir / MODEL_CARD).is_file():
        return reinstall_remedy(model_dir)
    if model_dir.parent.name == PREVIOUS:
        return (f"{model_dir} is a model replaced since (kept in {PREVIOUS}/): no command trains its folds again. "
                f"Leave fold {fold} out of -f, or use the current model of {model_dir.parent.parent.name}.")
    if not _trained_here(model_dir):
        return _copy_remedy(model_dir, fold)
    resume = continue_command(model_dir, fold) if "{resume}" in training else ""
    return training.format(train=train_command(model_dir, fold), resume=resume)


def _trained_here(model_dir: Path) -> bool:
    """Whether automedsam_train makes the folds of `model_dir`: not installed from a model zip, and at
    DatasetXXX_Name/TRAINER__PLANS as it places a model folder (not a copy renamed, whose trainer no name tells, nor
    one in a folder of its own, or in previous/, where the command would train another model's fold)."""
    trainer, _, plans_name = model_dir.name.partition("__")
    return (bool(trainer and plans_name) and paths.DATASET_FOLDER.match(model_dir.parent.name) is not None
            and not (model_dir / MODEL_CARD).is_file())


def _copy_remedy(model_dir: Path, fold: Fold) -> str:
    """A folder automedsam_train does not write (renamed from TRAINER__PLANS, or outside a DatasetXXX_Name folder)
    gets its folds where it was copied from, under a trainer its place does not tell for sure."""
    dataset = DATASET_ID.match(planned_dataset(model_dir) or "")
    command = f"automedsam_train {dataset.group(1) if dataset else 'ID'} {_fold_text(fold)} --trainer NAME"
    return (f"No command trains the folds of {model_dir} where it is (automedsam_train writes "
            "results/DatasetXXX_Name/TRAINER__PLANS): train the fold in the model folder this one was copied from "
            f"(`{command}`, with that folder's trainer), then copy that folder again.")


def train_command(model_dir: Path, fold: Fold = 0) -> str:
    """The command that trains `fold` of the model in `model_dir`, for error messages: the dataset its plans name
    (else its parent folder, as for a model not trained yet), the trainer its TRAINER__PLANS name begins with. Only
    true where `_trained_here`: `fold_remedy` says what to do elsewhere."""
    dataset = planned_dataset(model_dir) or model_dir.parent.name
    match = DATASET_ID.match(dataset)
    trainer = model_dir.name.split("__", 1)[0]
    trainer_option = f" --trainer {trainer}" if trainer and trainer != "default" else ""
    return f"automedsam_train {match.group(1) if match else dataset} {_fold_text(fold)}{trainer_option}"


def _fold_text(fold: Fold) -> str:
    """A fold as automedsam_train takes it."""
    return ALL if fold == ALL else f"fold{fold}"


def continue_command(model_dir: Path, fold: Fold) -> str:
    """The command that continues `fold`'s interrupted run, with the --epochs it ran with as its last saved state
    records them: --c refuses any other, and a quick run's were not the planned ones."""
    latest = model_dir / fold_dir_name(fold)
    try:
        config = load_metadata(latest, "latest").get("config") if metadata_path(latest, "latest").is_file() else None
    except AutomedsamError:  # unreadable: --c then says what it found
        config = None
    epochs = config.get("epochs") if isinstance(config, dict) else None
    return f"{train_command(model_dir, fold)}{f' --epochs {epochs}' if isinstance(epochs, int) else ''} --c"


def fold_checkpoints(model_dir: Path, checkpoint: str) -> list[Fold]:
    """Folds of `model_dir` whose `checkpoint_<checkpoint>.pt` is complete (`checkpoint.is_complete`): numbered folds
    sorted, then "all"."""
    return _folds_where(model_dir, lambda fold_dir: is_complete(fold_dir, checkpoint))


def _folds_where(model_dir: Path, holds: Callable[[Path], bool]) -> list[Fold]:
    """The folds of `model_dir` whose folder `holds`: numbered folds sorted, then "all"."""
    if not model_dir.is_dir():
        return []
    numbered = [int(match.group(1)) for entry in model_dir.iterdir() if (match := FOLD_FOLDER.match(entry.name))
                and holds(entry)]
    has_all = holds(model_dir / fold_dir_name(ALL))
    return [*sorted(numbered), *([ALL] if has_all else [])]


def trained_models(results_root: Path | None = None) -> list[Path]:
    """Every model folder under the results root that has plans.json and at least one checkpoint."""
    root = results_root if results_root is not None else paths.results_root()
    if not root.is_dir():
        return []
    found = []
    for model_dir in sorted(root.glob("Dataset*/*__*")):
        if (model_dir / "plans.json").is_file() and any(fold_checkpoints(model_dir, c) for c in CHECKPOINTS):
            found.append(model_dir)
    return found


def locate_model_folder(dataset: str | int | None = None, *, trainer: str = "default",
                        model_folder: str | Path | None = None) -> Path:
    """The model folder meant by `-m FOLDER`, or `-d ID --trainer NAME`, or the only trained model there is."""
    if model_folder is not None:
        path = Path(model_folder)
        if trainer != "default" and not path.name.startswith(f"{trainer}__"):
            raise AutomedsamError(f"--trainer {trainer} chooses a model of -d; -m {path} names the model folder "
                                  f"itself (trainer '{path.name.split('__')[0]}'). Give one of the two.")
        if not (path / "plans.json").is_file():
            raise _not_a_model_folder(path)
        return path
    if dataset is None:
        return _only_trained_model()
    name = paths.resolve_dataset_name(dataset)
    dataset_dir = paths.results_dataset_dir(name)
    candidates = sorted(p for p in dataset_dir.glob(f"{trainer}__*") if (p / "plans.json").is_file())
    if not candidates:
        raise AutomedsamError(f"No model trained with trainer '{trainer}' for {name} in {dataset_dir}. Train one "
                              f"with `{train_command(dataset_dir / f'{trainer}__plans', 0)}` (and the other folds).")
    if len(candidates) > 1:
        raise AutomedsamError(f"{name} has several '{trainer}' models: {', '.join(p.name for p in candidates)}. "
                              "Choose one with -m FOLDER.")
    return candidates[0]


def _not_a_model_folder(path: Path) -> AutomedsamError:
    """-m at a folder next to a model (the dataset's results folder, a fold folder, a misspelt trainer__plans): the
    model folders found there are named, so the fix is to copy one."""
    near = _model_folders_near(path.absolute())
    found = f" Model folders found there: {', '.join(map(str, near))}." if near else ""
    return AutomedsamError(f"{path} is not a trained model folder (no plans.json in it).{found} Point -m at a folder "
                           "like results/Dataset001_Name/default__plans, which automedsam_train creates.")


def _model_folders_near(path: Path) -> list[Path]:
    """The model folders (holding plans.json) inside `path`, else the one above it, else those beside it."""
    inside = sorted(folder for folder in path.glob("*__*") if (folder / "plans.json").is_file())
    if inside:
        return inside
    if (path.parent / "plans.json").is_file():
        return [path.parent]
    return sorted(folder for folder in path.parent.glob("*__*") if (folder / "plans.json").is_file())


def open_model_folder(model_dir: str | Path, *, folds: Iterable[Fold] | Fold | None = None,
                      checkpoint: str = DEFAULT_CHECKPOINT) -> ModelFolder:
    """Check the folder, pick the folds and read its plans.

    `folds`: one fold or several, as numbers or names (0, "fold0", "fold_0"), "all" (the fold trained on every
    labelled sample, `fold_all`), or None for every finished numbered fold with that checkpoint (`fold_all` only
    when no numbered fold is one). Finished means checkpoint_final.pt is complete (its metadata written after it:
    `checkpoint.is_complete`), whichever checkpoint is loaded: checkpoint_best.pt is written from the first validation
    on, so a fold stopped at epoch 3, or still training, has one too.
    """
    model_dir = Path(model_dir)
    if checkpoint not in CHECKPOINTS:
        raise AutomedsamError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, got '{checkpoint}'.")
    plans = Plans.load(model_dir / "plans.json", "model plans")
    available = fold_checkpoints(model_dir, checkpoint)
    if folds is None:
        finished = set(fold_checkpoints(model_dir, FINISHED_CHECKPOINT))
        usable = [fold for fold in available if fold in finished]
        if not usable:
            raise _no_finished_fold(model_dir, checkpoint, finished=bool(finished))
        numbered = [fold for fold in usable if fold != ALL]
        chosen: list[Fold] = numbered or [ALL]
        folders = {int(match.group(1)) for entry in model_dir.iterdir() if (match := FOLD_FOLDER.match(entry.name))}
        left_out = tuple(sorted(folders - set(numbered)))
    else:
        left_out = ()
        chosen = _named_folds(folds, model_dir)
        planned = _planned_folds(model_dir)
        for fold in chosen:
            if fold not in available and fold != ALL and planned is not None and not 0 <= fold < planned:
                raise AutomedsamError(f"Fold {fold} does not exist: {model_dir.parent.name} is planned with {planned} "
                                      f"folds (0 to {planned - 1}, and all).")
            if fold not in available:
                raise _fold_without_checkpoint(model_dir, fold, checkpoint, available=available)
    folder = ModelFolder(model_dir, plans, tuple(chosen), checkpoint, left_out, _unfinished(model_dir, chosen))
    _warn_unfinished(folder)
    return folder


def _unfinished(model_dir: Path, folds: Iterable[Fold]) -> tuple[Fold, ...]:
    """The folds among `folds` that have not finished training: only named ones with --checkpoint best get here
    (their checkpoint_best.pt is written from the first validation on)."""
    return tuple(fold for fold in folds if not is_complete(model_dir / fold_dir_name(fold), FINISHED_CHECKPOINT))


def _warn_unfinished(folder: ModelFolder) -> None:
    """Name the unfinished folds the ensemble uses, as nnU-Net uses a checkpoint_best.pt wherever there is one: their
    best epoch so far, chosen among fewer epochs and validated by a run that may still change it. Printed once,
    by the first process of a torchrun launch."""
    if not folder.unfinished or not context_from_environment().is_main:
        return
    folds = ", ".join(map(str, folder.unfinished))
    Console(stderr=True).print(
        f"Warning: fold(s) {folds} of {folder.path} have not finished training (interrupted, or still training): "
        f"their checkpoint_{folder.checkpoint}.pt is the best of the epochs trained so far. Leave them out of -f, "
        "or finish them first. "
        + fold_remedy(folder.path, folder.unfinished[0], "Continue the first with `{resume}`."),
        markup=False, highlight=False, soft_wrap=True)


def _named_folds(folds: Iterable[Fold] | Fold, model_dir: Path) -> list[Fold]:
    """The folds asked for, spelt as for automedsam_predict -f: one name or several (0, "fold0", "fold_0"), or "all"
    alone. A bare string is one fold name, so "fold0" is fold 0, not the characters f, o, l, d and 0."""
    names = list(folds) if isinstance(folds, Iterable) and not isinstance(folds, str) else [folds]
    parsed = [parse_fold(name) for name in names]
    if not parsed:
        raise AutomedsamError(f"No fold chosen for {model_dir}: give fold numbers (e.g. -f 0 1 2) or leave -f out.")
    if ALL not in parsed:
        return sorted(set(parsed))
    if set(parsed) != {ALL}:
        raise AutomedsamError(f"Folds {', '.join(map(str, names))} mix fold numbers with all: give fold numbers "
                              "(e.g. -f 0 1 2) or all alone.")
    return [ALL]


def _fold_without_checkpoint(model_dir: Path, fold: Fold, checkpoint: str, *, available: list[Fold]) -> AutomedsamError:
    """A fold named with -f that lacks the checkpoint, or whose training stopped between writing its weights and
    their metadata: that one is continued, not trained anew; a finished one (an installed model exported without
    --best, on a machine without its data) is not trained at all."""
    with_one = f"folds with a complete one: {', '.join(map(str, available)) or 'none'}"
    fold_dir = model_dir / fold_dir_name(fold)
    if weights_path(fold_dir, checkpoint).is_file():
        return AutomedsamError(f"Fold {fold} of {model_dir} has checkpoint_{checkpoint}.pt but not its "
                               f"checkpoint_{checkpoint}.json: its training stopped while saving them ({with_one}). "
                               + fold_remedy(model_dir, fold, "Continue it with `{resume}`."))
    if metadata_path(fold_dir, checkpoint).is_file():
        return AutomedsamError(f"Fold {fold} of {model_dir} has checkpoint_{checkpoint}.json but not its "
                               f"checkpoint_{checkpoint}.pt, deleted or lost ({with_one}). "
                               + fold_remedy(model_dir, fold, "Train it again with `{train} --overwrite`."))
    if is_complete(fold_dir, FINISHED_CHECKPOINT):  # as _no_finished_fold tells it
        return AutomedsamError(f"Fold {fold} of {model_dir} finished without checkpoint_{checkpoint}.pt (a model "
                               f"exported without --best has none; {with_one}). Leave --checkpoint out to use "
                               f"checkpoint_{FINISHED_CHECKPOINT}.pt.")
    if (fold_dir / TRAINING_STATE).is_file():
        return AutomedsamError(f"Fold {fold} of {model_dir} has not finished training: it was interrupted, or is still "
                               f"training ({with_one}). "
                               + fold_remedy(model_dir, fold, "Continue it with `{resume}`, or wait for it to finish."))
    installed = _installed_folds(model_dir)
    if installed is not None and fold not in installed:
        return AutomedsamError(f"Fold {fold} of {model_dir} has no checkpoint_{checkpoint}.pt ({with_one}): the model "
                               f"zip it was installed from held fold(s) {', '.join(map(str, installed))} only (its "
                               f"{MODEL_CARD} lists them). Leave fold {fold} out of -f.")
    return AutomedsamError(f"Fold {fold} of {model_dir} has no checkpoint_{checkpoint}.pt ({with_one}). "
                           + fold_remedy(model_dir, fold, "Train it with `{train}`."))


def _installed_folds(model_dir: Path) -> list[Fold] | None:
    """The folds the model zip of an installed model held, as its card lists them; None for a model not installed
    (or a card without a list of folds)."""
    folds = installed_card(model_dir).get("folds")
    try:
        return [parse_fold(fold) for fold in folds] if isinstance(folds, list) else None
    except AutomedsamError:  # a card edited since install: the messages do without it
        return None


def _no_finished_fold(model_dir: Path, checkpoint: str, *, finished: bool) -> AutomedsamError:
    """Why no fold can be chosen for the user: none finished training, or (a model installed from an archive exported
    without --best) the finished ones lack checkpoint_best.pt."""
    if finished:
        return AutomedsamError(f"{model_dir} has no fold with checkpoint_{checkpoint}.pt among its finished ones (a "
                               "model exported without --best has none). Leave --checkpoint out to use "
                               f"checkpoint_{FINISHED_CHECKPOINT}.pt.")
    if (model_dir / MODEL_CARD).is_file():
        return AutomedsamError(f"{model_dir} has no fold with checkpoint_{FINISHED_CHECKPOINT}.pt. "
                               + reinstall_remedy(model_dir))
    interrupted = _interrupted_folds(model_dir)
    if interrupted:
        return AutomedsamError(f"{model_dir} has no fold with checkpoint_{FINISHED_CHECKPOINT}.pt and its "
                               f"checkpoint_{FINISHED_CHECKPOINT}.json: no fold has finished training, which writes "
                               f"the two at its end. Fold(s) {', '.join(map(str, interrupted))} were interrupted, or "
                               "are still training. "
                               + fold_remedy(model_dir, interrupted[0], "Continue one with `{resume}`, or wait for it "
                                                                        "to finish."))
    return AutomedsamError(f"{model_dir} has no fold with checkpoint_{FINISHED_CHECKPOINT}.pt and its "
                           f"checkpoint_{FINISHED_CHECKPOINT}.json: no fold has finished training, which writes the "
                           "two at its end. "
                           + fold_remedy(model_dir, 0, "Wait for a fold still training, or train one with `{train}` "
                                                       "(add --c to continue an interrupted run)."))


def _interrupted_folds(model_dir: Path) -> list[Fold]:
    """The folds holding a training state: interrupted, or training now (which --c then says), numbered first."""
    return _folds_where(model_dir, lambda fold_dir: (fold_dir / TRAINING_STATE).is_file())


def _planned_folds(model_dir: Path) -> int | None:
    """How many folds the dataset's splits.json plans, when its preprocessed folder is here (not for a model
    installed from an archive alone)."""
    splits = paths.preprocessed_root() / model_dir.parent.name / SPLITS_FILE
    if not splits.is_file():
        return None
    folds = load_json(splits, "splits file").get("folds")
    return len(folds) if isinstance(folds, list) else None


def _only_trained_model() -> Path:
    root = paths.results_root()
    models = trained_models(root)
    if len(models) == 1:
        return models[0]
    if not models:
        raise AutomedsamError(f"No trained model found under the results root {root}. Train one with "
                              "`automedsam_train ID fold0`, point -m at a model folder, or set AUTOMEDSAM_RESULTS.")
    listing = "; ".join(str(model.relative_to(root)) for model in models)
    raise AutomedsamError(f"Several trained models under {root}: {listing}. Choose one with -d ID (and --trainer "
                          "NAME) or -m FOLDER.")
