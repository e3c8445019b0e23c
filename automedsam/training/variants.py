"""Trainer variants: named recipes that turn a dataset's plans into the effective training configuration.

The registry is a plain dict so a reader sees every variant in one place; `--trainer NAME` picks one.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from automedsam.errors import AutomedsamError
from automedsam.plans import PAPER2024_LOSSES, PAPER2024_SCHEDULE, Plans


@dataclass(frozen=True)
class TrainingConfig:
    """Everything the training loop needs besides the data: losses, optimiser and schedule."""

    supervision: str  # "boxes" (weak labels only) or "masks" (full masks, for comparison)
    augmentation_views: bool  # train on the plans' augmentation views of each sample besides the sample itself
    losses: dict[str, Any]  # WeakBoxLoss configuration, the plans' "losses" section format
    optimizer: str
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    lr_step_epoch: int
    lr_gamma: float
    val_every: int
    seed: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingConfig:
        return cls(**data)

    def with_epochs(self, epochs: int) -> TrainingConfig:
        """A shorter or longer run with the same schedule shape: the lr drop stays at the same fraction."""
        if epochs < 1:
            raise AutomedsamError(f"--epochs must be at least 1, got {epochs}.")
        step = max(1, round(self.lr_step_epoch * epochs / self.epochs))
        return replace(self, epochs=epochs, lr_step_epoch=step)


@dataclass(frozen=True)
class TrainerVariant:
    """A named way of training: `configure(plans)` gives the effective configuration."""

    name: str
    description: str
    configure: Callable[[dict[str, Any]], TrainingConfig]


def _schedule(training: dict[str, Any]) -> dict[str, Any]:
    keys = ("optimizer", "lr", "weight_decay", "epochs", "batch_size", "lr_step_epoch", "lr_gamma", "val_every", "seed")
    missing = [key for key in keys if key not in training]
    if missing:
        raise AutomedsamError(
            f"plans.json 'training' lacks {', '.join(missing)}. "
            "Regenerate the plans with automedsam_plan_and_preprocess."
        )
    schedule = {key: training[key] for key in keys}
    for key in ("epochs", "batch_size", "lr_step_epoch", "val_every"):  # 0 trained nothing, then crashed
        value = schedule[key]
        if not _number(value) or not float(value).is_integer() or value < 1:
            raise AutomedsamError(f"plans.json training.{key} must be a whole number >= 1, got {value!r}.")
        schedule[key] = int(value)
    for key in ("lr", "weight_decay", "lr_gamma"):
        if not _number(schedule[key]) or schedule[key] < 0:
            raise AutomedsamError(f"plans.json training.{key} must be a number >= 0, got {schedule[key]!r}.")
    seed = schedule["seed"]  # -1 reached numpy's seeding at epoch 1, "abc" int()
    if not _number(seed) or not float(seed).is_integer() or seed < 0:
        raise AutomedsamError(f"plans.json training.seed must be a whole number >= 0, got {seed!r}.")
    schedule["seed"] = int(seed)
    return schedule


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def default_config(plans: dict[str, Any]) -> TrainingConfig:
    """The planner's choices, unchanged: boxes only, with the plans' augmentation views when there are any."""
    config = _planned_config(plans)
    _check_boxes_only(config.losses)
    return config


def _planned_config(plans: dict[str, Any]) -> TrainingConfig:
    """The plans' losses, schedule and views as written, before a variant checks or replaces its losses."""
    planned = Plans(plans)
    return TrainingConfig(supervision="boxes", augmentation_views=bool(planned.views()),
                          losses=planned.planned_losses(), **_schedule(plans["training"]))


def _check_boxes_only(losses: dict[str, Any]) -> None:
    """Refuse a `supervised` term among losses trained on boxes: it needs the full masks, which only the fullsup
    trainer reads, and crashed the first batch instead."""
    term = losses.get("supervised")
    if isinstance(term, dict) and _number(term.get("weight")) and term["weight"] > 0:
        raise AutomedsamError("plans.json losses has a supervised term (Dice+BCE against full masks), but the default "
                              "trainer trains on boxes alone and never reads a mask. Remove the term from losses, or "
                              "train with --trainer fullsup, which supervises with the full masks.")


def paper2024_config(plans: dict[str, Any]) -> TrainingConfig:
    """Gaillochet et al. 2024's losses and schedule, whatever the plans say (no augmentation views): the reproduction
    reference; where it departs from the authors' code (loss resolution, padding, size prior per box):
    documentation/training.md."""
    schedule = {**_schedule(plans["training"]), **PAPER2024_SCHEDULE}
    losses = {**copy.deepcopy(PAPER2024_LOSSES), "pseudo_label": {"weight": 0.0}}
    return TrainingConfig(supervision="boxes", augmentation_views=False, losses=losses, **schedule)


def fullsup_config(plans: dict[str, Any]) -> TrainingConfig:
    """Same module, schedule and views as the default, trained on full masks with Dice+BCE: the upper reference."""
    losses = {"supervised": {"weight": 1.0}, "pseudo_label": {"weight": 0.0}}
    return replace(_planned_config(plans), supervision="masks", losses=losses)


TRAINER_VARIANTS: dict[str, TrainerVariant] = {
    "default": TrainerVariant("default", "the planner's losses and schedule as written in plans.json", default_config),
    "paper2024": TrainerVariant(
        "paper2024",
        "the paper's loss terms, weights and schedule (Adam 1e-3, 100 epochs, batch 4, lr x0.1 at 50; log-barrier t "
        "fixed at 5): the reference",
        paper2024_config,
    ),
    "fullsup": TrainerVariant(
        "fullsup", "same module supervised with the full masks (Dice+BCE), for comparison; needs masks", fullsup_config
    ),
}


def get_variant(name: str) -> TrainerVariant:
    """Look a variant up, naming the known ones when `name` is not among them."""
    if name not in TRAINER_VARIANTS:
        raise AutomedsamError(f"Unknown trainer '{name}'. Choose one of: {', '.join(TRAINER_VARIANTS)}.")
    return TRAINER_VARIANTS[name]
