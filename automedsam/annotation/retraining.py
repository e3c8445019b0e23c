"""What Train (and Review) on the annotation page run: the annotation guide's steps 4 and 5, in the background.

Plan and preprocess the boxes (the draw being annotated is kept), move the model trained before whole to
results/DatasetXXX/previous/, train every fold, then rank the unlabelled samples with the new model and show them
for review. The page thus covers the whole loop: draw, train, review, add a box, train again.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

from automedsam.annotation.review_queue import PAGE_LIMIT_OPTION, REVIEW_SAMPLES, review_items
from automedsam.annotation.session import AnnotationSession
from automedsam.annotation.training_job import CallStep, CommandStep, Output, Step, StepStopped
from automedsam.checkpoint import is_complete
from automedsam.errors import AutomedsamError
from automedsam.files import load_json
from automedsam.folds import SPLITS_FILE, fold_dir_name, load_splits
from automedsam.trained_models import keep_previous, restore_previous
from automedsam.training.layout import trainer_output_dir


@dataclass(frozen=True)
class TrainingSettings:
    trainer: str = "default"
    device: str | None = None  # of every step; None: CUDA when available
    epochs: int | None = None  # None: the planned schedule
    review_samples: int = REVIEW_SAMPLES


def training_blocker(session: AnnotationSession) -> str | None:
    """Why Train cannot start now, in words for the page; None when it can. The page polls it: the labelled set's
    box files are read only while they decide."""
    return unboxed_blocker(session) or no_boxes_blocker(session)


def no_boxes_blocker(session: AnnotationSession) -> str | None:
    """Why Train cannot start though no drawn sample is left to do (every one marked No structure): Train's alone,
    since Review ranks with the model trained before."""
    if not any(session.status(sid) == "done" for sid in session.labelled()):
        return "No drawn sample has boxes: a model needs at least one boxed sample."
    return None


def unboxed_blocker(session: AnnotationSession) -> str | None:
    """Why neither Train nor Review can start while a drawn sample still needs boxes (one the draw brought in for a
    sample marked No structure, say): planning stops at it, and a review would hide it, showing only ranked samples."""
    labelled = session.labelled()
    todo = sum(session.status(sid) == "todo" for sid in labelled)
    if not todo:
        return None
    # in review, whether --review or the page's Train opened it, only a server started without --review shows them
    hidden = (" The review shows only the ranked samples: leave it to box them (restart automedsam_annotate -d "
              f"{session.dataset.name} without --review)." if session.review is not None else "")
    return (f"{todo} of the {len(labelled)} drawn samples still need boxes (or No structure): Train and Review start "
            f"once every drawn sample is done.{hidden}")


def training_steps(session: AnnotationSession, settings: TrainingSettings) -> list[Step]:
    """The commands a terminal user would run, with the page's trainer, device and epochs; then the review."""
    name = session.dataset.name
    device = ("--device", settings.device) if settings.device else ()
    epochs = ("--epochs", str(settings.epochs)) if settings.epochs else ()
    folds = len(session.splits["folds"])  # planning keeps it or, with fewer case groups left, lowers it
    kept: dict[str, Path] = {}
    steps: list[Step] = [CommandStep("Preprocessing the boxes", "automedsam_plan_and_preprocess",
                                     ("-d", name, *device)),
                         CallStep("Keeping the previous model",
                                  lambda output, stop: kept.update(_keep_previous(session, settings, output)),
                                  undo=lambda output: _bring_back(session, kept, output))]
    steps += [CommandStep(f"Training fold {fold + 1} of {folds}", "automedsam_train",
                          (name, str(fold), "--trainer", settings.trainer, "--overwrite", *epochs, *device),
                          skip=functools.partial(_fold_not_planned, session, fold))
              for fold in range(folds)]
    return steps + review_steps(session, settings)


def _fold_not_planned(session: AnnotationSession, fold: int) -> str | None:
    """Why a fold step is left out: the planning step just run made fewer folds."""
    planned = len(load_splits(session.preprocessed_dir / SPLITS_FILE)["folds"])
    return None if fold < planned else (f"Planning made {planned} folds (fewer case groups than before): fold {fold} "
                                        "is not trained.")


def _keep_previous(session: AnnotationSession, settings: TrainingSettings, output: Output) -> dict[str, Path]:
    """Every Train keeps the model it replaces (whatever the plans), so a worse retrained model loses nothing; but
    not before planning has found every drawn sample boxed (a sample marked No structure is replaced by the next
    of the draw, which needs its boxes first): the run ends there, and the model stays."""
    splits = load_splits(session.preprocessed_dir / SPLITS_FILE)
    waiting = splits.get("interactive", {}).get("to_annotate", [])
    if waiting:
        session.reload()
        raise AutomedsamError(f"Planning drew {len(waiting)} more sample(s) to box ({', '.join(waiting[:5])}) in place "
                              "of those marked No structure: box them, then press Train again. The model trained "
                              "before is unchanged.")
    plans = load_json(session.preprocessed_dir / "plans.json", "plans file")
    model = trainer_output_dir(session.dataset.name, settings.trainer, plans)
    moved = keep_previous(model)
    output("No model trained before." if moved is None else f"The previous model was moved to {moved} "
           "(automedsam_predict -m still uses it).")
    return {} if moved is None else {"model": model, "previous": moved}


def _bring_back(session: AnnotationSession, kept: dict[str, Path], output: Output) -> str | None:
    """After a failed or stopped Train: the model trained before goes back in place, unless every planned fold of
    the new one finished (only the review after them failed); the folds trained so far are kept in previous/."""
    if "previous" not in kept:
        return None
    model, previous = kept["model"], kept["previous"]
    folds = len(load_splits(session.preprocessed_dir / SPLITS_FILE)["folds"])
    if all(is_complete(model / fold_dir_name(fold), "final") for fold in range(folds)):
        return None
    partial = restore_previous(previous, model)
    output(f"The previous model is back in {model}.")
    kept_now = f"; the folds trained in this run are kept in {partial}" if partial is not None else ""
    return f"The model trained before is back in place{kept_now}."


def review_steps(session: AnnotationSession, settings: TrainingSettings) -> list[Step]:
    """Rank the unlabelled samples with the trained model and show them: `--review`, from the page."""
    return [CallStep("Ranking the unlabelled samples for review",
                     lambda output, stop: _review(session, settings, output, stop))]


def _review(session: AnnotationSession, settings: TrainingSettings, output: Output, stop: threading.Event) -> None:
    """Reread what planning wrote, rank the unlabelled samples (Stop ends it between samples), show them."""
    session.reload()
    unlabelled = len(session.unlabelled())
    if not unlabelled:
        output("Every sample is labelled: nothing is left to review.")
        return
    output(f"Segmenting {min(unlabelled, settings.review_samples)} unlabelled samples with every fold "
           "(an encoder pass each)")
    items = review_items(session, trainer=settings.trainer, device=settings.device, limit=settings.review_samples,
                         report=output, stop=stop, limit_option=PAGE_LIMIT_OPTION)
    if stop.is_set():
        raise StepStopped
    session.start_review(items)

