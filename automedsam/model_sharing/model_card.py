"""The model card: what a shared model is, what it was trained with and how it was annotated, in model_card.json.

It is the archive's table of contents too: install reads which folds and checkpoints the archive must hold from it,
and refuses an archive whose members differ. Everything in it comes from an untrusted file, so every field that
becomes part of a folder name or a lookup is checked here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from automedsam import __version__
from automedsam.errors import AutomedsamError
from automedsam.folds import ALL, Fold
from automedsam.foundation.registry import FOUNDATION_MODELS
from automedsam.model_sharing.archive_rules import DATASET, MODEL_CARD, PLANS, fold_members, validation_member
from automedsam.paths import DATASET_FOLDER, MAX_DATASET_FOLDER_CHARS

CARD_FORMAT = "automedsam model"
CARD_VERSION = 1
CHECKPOINT_CHOICES = (("final",), ("final", "best"))
SUPERVISION_CHOICES = ("boxes", "masks")  # what the folds were trained on (the trainer's supervision)
FOLDER_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a trainer or plans name: one safe path component
PLAIN_FILE_NAME = re.compile(r"[^/\\\x00-\x1f]{1,255}")  # only shown in messages, never opened
SHA256 = re.compile(r"[0-9a-f]{64}")
VERSION_TEXT = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+!_-]{0,63}")  # as a package version is written: 0.1.0, 0.2.dev3+g1a
UNKNOWN = "unknown"  # the automedsam_version and created of a card that lacks them


@dataclass(frozen=True)
class ModelCard:
    """model_card.json; `foundation` is {"name", "weights_file", "sha256"}, `few_shot` and `supervision` (one of
    SUPERVISION_CHOICES) None when unknown."""

    dataset: str
    trainer: str
    plans_name: str
    folds: tuple[Fold, ...]
    checkpoints: tuple[str, ...]
    foundation: dict[str, Any]
    few_shot: dict[str, Any] | None
    validation: dict[str, Any] = field(default_factory=dict)
    supervision: str | None = None
    automedsam_version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def member_names(self) -> set[str]:
        """The archive members this card requires."""
        return {PLANS, DATASET, MODEL_CARD, *(name for fold in self.folds for name in fold_members(fold,
                                                                                                self.checkpoints))}

    @property
    def optional_member_names(self) -> set[str]:
        """The members an archive of this card may hold besides: the folds' validation records."""
        return {validation_member(fold) for fold in self.folds}

    def to_json(self) -> dict[str, Any]:
        return {"format": CARD_FORMAT, "format_version": CARD_VERSION, "automedsam_version": self.automedsam_version,
                "created": self.created, "dataset": self.dataset, "trainer": self.trainer,
                "plans_name": self.plans_name, "folds": list(self.folds), "checkpoints": list(self.checkpoints),
                "foundation_model": self.foundation, "supervision": self.supervision, "few_shot": self.few_shot,
                "validation": self.validation}

    @classmethod
    def from_json(cls, data: Any, where: str) -> ModelCard:
        """A card read from an archive, every field checked; AutomedsamError naming the first bad one."""
        def fail(problem: str) -> AutomedsamError:
            return AutomedsamError(f"{where}: {problem}. It was not written by automedsam_export_model (or by a newer "
                                   "version: update automedsam); export the model again.")

        if not isinstance(data, Mapping) or data.get("format") != CARD_FORMAT:
            raise fail(f"it is not an automedsam model card (no \"format\": \"{CARD_FORMAT}\")")
        if data.get("format_version") != CARD_VERSION:
            raise fail(f"format_version {data.get('format_version')!r} is not {CARD_VERSION}")
        dataset, trainer, plans_name = data.get("dataset"), data.get("trainer"), data.get("plans_name")
        if not isinstance(dataset, str) or not DATASET_FOLDER.fullmatch(dataset):
            raise fail(f"dataset {shown(dataset)} is not a dataset folder name like Dataset001_Name")
        if len(dataset) > MAX_DATASET_FOLDER_CHARS:
            raise fail(f"dataset {shown(dataset)} is {len(dataset)} characters long, more than the "
                       f"{MAX_DATASET_FOLDER_CHARS} a dataset folder name may have")
        for key, value in (("trainer", trainer), ("plans_name", plans_name)):
            if not isinstance(value, str) or not FOLDER_PART.fullmatch(value) or "__" in value:
                raise fail(f"{key} {value!r} is not a name of letters, digits, '_', '.' and '-'")
        folds = data.get("folds")
        if (not isinstance(folds, list) or not folds or len(set(map(str, folds))) != len(folds)
                or not all(fold == ALL or (type(fold) is int and 0 <= fold < 100) for fold in folds)):
            raise fail(f"folds {folds!r} is not a list of distinct fold numbers (0..99) or \"all\"")
        checkpoints = data.get("checkpoints")
        if not isinstance(checkpoints, list) or tuple(checkpoints) not in CHECKPOINT_CHOICES:
            raise fail(f"checkpoints {checkpoints!r} is not [\"final\"] or [\"final\", \"best\"]")
        foundation = data.get("foundation_model")
        if (not isinstance(foundation, Mapping) or foundation.get("name") not in FOUNDATION_MODELS
                or not isinstance(foundation.get("sha256"), str) or not SHA256.fullmatch(foundation["sha256"])):
            raise fail("foundation_model must name a known foundation model and the sha256 of its weights")
        weights_file = foundation.get("weights_file")
        if weights_file is not None and not (isinstance(weights_file, str) and PLAIN_FILE_NAME.fullmatch(weights_file)):
            raise fail(f"foundation_model.weights_file {weights_file!r} is not a plain file name")
        few_shot, validation = data.get("few_shot"), data.get("validation", {})
        if few_shot is not None and not isinstance(few_shot, Mapping):
            raise fail("few_shot must be an object or null")
        problem = _validation_problem(validation, folds=folds)
        if problem:
            raise fail(problem)
        supervision = data.get("supervision")  # absent from cards written before it was recorded
        if supervision is not None and supervision not in SUPERVISION_CHOICES:
            raise fail(f"supervision {supervision!r} is not one of {', '.join(SUPERVISION_CHOICES)} or null")
        automedsam_version, created = data.get("automedsam_version", UNKNOWN), data.get("created", UNKNOWN)
        if not isinstance(automedsam_version, str) or not VERSION_TEXT.fullmatch(automedsam_version):
            raise fail(f"automedsam_version {shown(automedsam_version)} is not a version as text, like \"0.1.0\"")
        if created != UNKNOWN and not _is_time_text(created):
            raise fail(f"created {shown(created)} is not a date and time as text, like \"2026-01-31T12:00:00+00:00\"")
        return cls(dataset, trainer, plans_name, tuple(folds), tuple(checkpoints),
                   {"name": foundation["name"], "weights_file": weights_file, "sha256": foundation["sha256"]},
                   None if few_shot is None else dict(few_shot), dict(validation), supervision,
                   automedsam_version, created)


def _validation_problem(validation: Any, *, folds: list[Fold]) -> str | None:
    """What is wrong with a card's validation, None if nothing: install stores it with the model, so it must be
    what export writes, {fold: {figure: value}} for folds of the card, each figure as VALIDATION_FIGURES says."""
    if not isinstance(validation, Mapping):
        return f"validation {shown(validation)} is not an object of each fold's figures"
    for fold, figures in validation.items():
        if fold not in {str(card_fold) for card_fold in folds}:
            return f"validation names fold {shown(fold)}, which is not one of the card's folds"
        if not isinstance(figures, Mapping) or not set(figures) <= set(VALIDATION_FIGURES):
            return f"validation.{fold} {shown(figures)} is not an object of {', '.join(VALIDATION_FIGURES)}"
        for figure, value in figures.items():
            kind, fits = VALIDATION_FIGURES[figure]
            if value is not None and not fits(value):
                return f"validation.{fold}.{figure} {shown(value)} is not {kind}"
    return None


def _is_count(value: Any) -> bool:
    return type(value) is int


def _is_scores(value: Any) -> bool:
    """Whether `value` is the last validation's mean of each metric ({metric: number or null})."""
    return isinstance(value, Mapping) and all(score is None or type(score) in (int, float) for score in value.values())


# each fold's figures in the card's validation: what each must be, and a test of it (null always passes)
VALIDATION_FIGURES = {"epochs": ("a whole number or null", _is_count),
                      "train_samples": ("a whole number or null", _is_count),
                      "val_samples": ("a whole number or null", _is_count),
                      "final_val": ("null or an object of scores, each a number or null", _is_scores)}


def _is_time_text(value: Any) -> bool:
    """Whether `value` is a date and time as export writes it (ISO 8601), not some other JSON value."""
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def shown(value: Any) -> str:
    """A value from an archive for a message, cut short: the archive may hold a name of megabytes."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}..."
