"""The standardized trainer: one fold of one dataset, from the preprocessed artifacts to checkpoints and logs.

One prompt module per target label, all trained in the same loop on the same batches (they share the cached
image embeddings, so one data pass serves every target). An epoch is one pass over the fold's training samples,
each seen as itself or as one of its augmentation views (drawn per epoch; validation sees the samples only). The
best checkpoint is chosen by the box-based validation score, the only signal a user with box labels has; fold
`all` has no validation and its best checkpoint is its final one. Runs on one process or, under torchrun, on
several (DDP), where rank 0 writes.
"""
from __future__ import annotations

import json
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console

from automedsam import __version__, checkpoint, distributed
from automedsam.device import same_device
from automedsam.errors import AutomedsamError
from automedsam.files import load_json, remove_tree, save_json
from automedsam.folds import fold_dir_name, parse_fold
from automedsam.foundation.weights_file import TRAINED_WITH, refuse_folder
from automedsam.losses import WeakBoxLoss
from automedsam.paths import preprocessed_dataset_dir, resolve_dataset_name
from automedsam.plans import Plans, pseudo_label_source, target_losses, weights_sha256
from automedsam.plotting import plot_progress
from automedsam.prompt_module import build_prompt_module, load_modules, modules_state_dict
from automedsam.samples import stored_image
from automedsam.trained_models import training_fold
from automedsam.training import layout
from automedsam.training.data import SampleSet, load_sample_set
from automedsam.training.initialisation import start_at_mean_box
from automedsam.training.loop import (epoch_order, epoch_versions, process_batch_size, train_epoch,
                                     training_autocast)
from automedsam.training.pseudo_labels import pseudo_labels
from automedsam.training.report import epoch_line, progress_bar, summary_line, target_lines
from automedsam.training.refinement_check import refinement_check
from automedsam.training.second_look_check import checked_object_sizes, second_look_check
from automedsam.training.validation import ValidationResult, validate
from automedsam.training.variants import TrainingConfig, get_variant

if TYPE_CHECKING:
    from automedsam.foundation.base import FoundationModel

LOG_FILE = "log.json"
PROGRESS_FILE = "progress.png"


@dataclass
class TrainingResult:
    """What a finished (or already finished) fold reports."""

    fold_dir: Path
    summary: dict[str, Any]
    already_finished: bool = False


@dataclass
class _Run:
    """Everything fixed for one fold's run."""

    dataset: str
    trainer: str
    fold: int | str
    fold_count: int  # numbered folds in splits.json
    plans: Plans
    config: TrainingConfig
    fold_dir: Path
    device: torch.device
    autocast: torch.dtype | None  # what the modules and the decoder train under (None: fp32)
    context: distributed.DistributedContext
    console: Console
    samples: dict[str, list[str]] = field(default_factory=dict)  # the fold's "train" and "val" sample ids
    foundation_sha256: str | None = None  # of the foundation weights trained with: prediction refuses others

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast]

    @property
    def seed(self) -> int:
        return int(self.config.seed) + layout.seed_offset(self.fold, self.fold_count)

    def metadata(self, epoch: int, val: ValidationResult | None) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "metrics": None if val is None else val.mean,
            "dataset": self.dataset,
            "plans_name": self.plans.name,
            "trainer": self.trainer,
            "fold": self.fold,
            "targets": self.plans.labels,
            "samples": self.samples,
            "foundation_model": self.plans.foundation_name,
            TRAINED_WITH: self.foundation_sha256,
            "config": self.config.to_json(),
            "precision": self.precision,
            "automedsam_version": __version__,
        }


def train_fold(
    dataset: str | int,
    fold: str | int,
    *,
    trainer: str = "default",
    epochs: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    precision: str = "auto",
    foundation_checkpoint: str | Path | None = None,
    foundation: FoundationModel | None = None,
    console: Console | None = None,
) -> TrainingResult:
    """Train one fold; `resume` continues an interrupted run (a finished fold is left as is).

    `precision` ("auto", "fp32", "bf16") is what the prompt modules and the decoder train under
    (`loop.training_autocast`). `foundation` lets a caller reuse an already built foundation model (it must match
    the plans); without a `device`, training runs where that model is.
    """
    if resume and overwrite:
        raise AutomedsamError("--c (continue) and --overwrite (start over) contradict each other; pass only one.")
    if foundation_checkpoint is not None:
        refuse_folder(foundation_checkpoint)
    given_device = foundation.device if device is None and foundation is not None else device
    with distributed.joined(given_device) as (context, torch_device):
        return _train(dataset, fold, trainer=trainer, epochs=epochs, resume=resume, overwrite=overwrite,
                      device=torch_device, autocast=training_autocast(torch_device, precision), context=context,
                      foundation_checkpoint=foundation_checkpoint,
                      foundation=foundation, console=console or Console())


def _train(
    dataset: str | int,
    fold: str | int,
    *,
    trainer: str,
    epochs: int | None,
    resume: bool,
    overwrite: bool,
    device: torch.device,
    autocast: torch.dtype | None,
    context: distributed.DistributedContext,
    foundation_checkpoint: str | Path | None,
    foundation: FoundationModel | None,
    console: Console,
) -> TrainingResult:
    if foundation is not None and not same_device(foundation.device, device):
        raise AutomedsamError(f"The foundation model given is on {foundation.device} but training was asked to run on "
                              f"{device}; build it on {device}, or leave the device out to train on "
                              f"{foundation.device}.")
    name = resolve_dataset_name(dataset)
    fold_key = parse_fold(fold)
    variant = get_variant(trainer)
    preprocessed_dir, plans, splits = layout.load_preprocessed(name, foundation_checkpoint=foundation_checkpoint)
    train_ids, val_ids = layout.fold_sample_ids(splits, fold_key)
    config = variant.configure(plans)
    if config.augmentation_views:
        layout.check_views_made(preprocessed_dir, plans, splits, name)
    if epochs is not None:
        config = config.with_epochs(epochs)
    process_batch = process_batch_size(config.batch_size, len(train_ids), context)
    output_dir = layout.trainer_output_dir(name, trainer, plans)
    fold_dir = output_dir / fold_dir_name(fold_key)
    run = _Run(name, trainer, fold_key, len(splits["folds"]), plans, config, fold_dir, device, autocast, context,
               console, samples={"train": train_ids, "val": val_ids},
               foundation_sha256=weights_sha256(plans["foundation_model"], weights=foundation_checkpoint))
    moved = layout.move_replanned(preprocessed_dir, output_dir) if overwrite and context.is_main else None
    with training_fold(output_dir, fold_dir.name) if context.is_main else nullcontext():
        if not overwrite:
            _check_not_damaged(fold_dir)
        finished = checkpoint.is_complete(fold_dir, "final")  # prediction's rule: an installed fold has no .json
        if (finished or resume) and not overwrite:
            _check_same_samples(run)
        if finished and resume:
            if layout.plans_changed(preprocessed_dir, output_dir):  # "nothing to continue" would hide it
                raise layout.other_plans_error(preprocessed_dir, output_dir)
            if epochs is not None:
                _check_finished_as_asked(run)
            if context.is_main:
                _drop_resume_files(fold_dir)  # left by a stop just after the final checkpoint
                console.print(f"{fold_dir} is already finished; nothing to continue (use --overwrite to retrain).",
                              markup=False, soft_wrap=True)
            return TrainingResult(fold_dir, _logged_summary(fold_dir), True)
        clear = _check_fold_state(run, finished, resume, overwrite)
        if context.is_main:
            moved = layout.copy_dataset_files(preprocessed_dir, output_dir, overwrite=overwrite,
                                              training=fold_dir.name) or moved
            if moved is not None:
                console.print(f"The plans changed since the folds in {output_dir} were trained: that model was moved "
                              f"to {moved} (automedsam_predict -m still uses it). Train every fold again with the new "
                              "plans.", markup=False, soft_wrap=True)
        if foundation is None:
            foundation = plans.build_foundation_model(checkpoint=foundation_checkpoint, device=device)
        train_set = _load_train_set(preprocessed_dir, plans, train_ids, foundation, config, name, device)
        val_set = load_sample_set(preprocessed_dir, plans, val_ids if context.is_main else [], foundation,
                                  masks=config.supervision == "masks")
        val_images = _second_look_images(preprocessed_dir, plans, val_set)
        model = _build_model(run, foundation, train_set)
        # Only now that everything the run needs is read and built: a fold that cannot train again stays as it was
        if context.is_main and clear and fold_dir.exists():  # a replanned model was moved aside, its folds with it
            remove_tree(fold_dir)
        distributed.barrier(context)
        return _fit(run, model, foundation, train_set, val_set, val_images=val_images, process_batch=process_batch,
                    resume=resume)


def fold_folder(dataset: str | int, fold: str | int, *, trainer: str = "default") -> Path:
    """The folder `train_fold` trains the fold in, as the plans preprocessed now name it."""
    name = resolve_dataset_name(dataset)
    plans = Plans.load(preprocessed_dataset_dir(name) / "plans.json")
    return layout.trainer_output_dir(name, trainer, plans) / fold_dir_name(parse_fold(fold))


def has_saved_state(dataset: str | int, fold: str | int, *, trainer: str = "default") -> bool:
    """Whether the fold holds what --c continues (a training state) or confirms (a finished fold): what a run stopped
    by Ctrl-C tells its user to do next. False where the folder cannot be told (the dataset is not preprocessed)."""
    try:
        folder = fold_folder(dataset, fold, trainer=trainer)
    except AutomedsamError:
        return False
    return (folder / checkpoint.TRAINING_STATE).is_file() or checkpoint.is_complete(folder, "final")


def _check_not_damaged(fold_dir: Path) -> None:
    """A checkpoint_final.json without its weights (deleted, or lost in a copy) is neither finished nor continuable:
    prediction skips the fold, --c has nothing to continue, so only --overwrite trains it again."""
    weights, metadata = checkpoint.weights_path(fold_dir, "final"), checkpoint.metadata_path(fold_dir, "final")
    if metadata.is_file() and not weights.is_file():
        raise AutomedsamError(f"{fold_dir} is damaged: it has checkpoint_final.json but not its checkpoint_final.pt "
                              "(deleted or lost), so it neither finished nor can be continued. Pass --overwrite to "
                              "train it again.")


def _logged_summary(fold_dir: Path) -> dict[str, Any]:
    """The finished fold's summary, as its log records it (none where the log is gone)."""
    path = fold_dir / LOG_FILE
    return load_json(path, "training log").get("summary", {}) if path.is_file() else {}


def _second_look_images(preprocessed_dir: Path, plans: Plans, val_set: SampleSet) -> list[np.ndarray]:
    """The validation samples' stored images when the second look check will need them, read at the start with the
    rest of the fold's data: a replan while the fold trains deletes or rewrites samples/, and the check would then
    fail or measure images of other plans."""
    if not checked_object_sizes(plans):
        return []
    return [stored_image(preprocessed_dir, sid) for sid in val_set.sample_ids]


@dataclass
class _Model:
    """The prompt modules and what trains them."""

    modules: dict[int, torch.nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    scaler: torch.amp.GradScaler
    loss_fns: dict[int, WeakBoxLoss]


def _build_model(run: _Run, foundation: FoundationModel, train_set: SampleSet) -> _Model:
    """Built before the fold that --overwrite replaces is deleted: plans.json that cannot train (an optimizer or a
    loss term this version does not know) leaves that fold standing."""
    _seed_everything(run.seed)
    modules = {label: build_prompt_module(run.plans).to(run.device) for label in run.plans.labels}
    for label, module in modules.items():  # the samples' own mean box: what validation and prediction see
        start_at_mean_box(module, foundation, train_set.targets[label].boxes_low_res[: train_set.originals])
    optimizer = _optimizer(run.config, [p for module in modules.values() for p in module.parameters()])
    return _Model(modules, optimizer, _scheduler(run.config, optimizer),
                  torch.amp.GradScaler(run.device.type, enabled=run.autocast == torch.float16),
                  {int(target["label"]): WeakBoxLoss(target_losses(run.config.losses, target))
                   for target in run.plans.targets})


def _fit(
    run: _Run, model: _Model, foundation: FoundationModel, train_set: SampleSet, val_set: SampleSet, *,
    val_images: list[np.ndarray], process_batch: int, resume: bool
) -> TrainingResult:
    config, context, device = run.config, run.context, run.device
    modules, optimizer, scheduler, scaler = model.modules, model.optimizer, model.scheduler, model.scaler
    loss_fns = model.loss_fns
    log: dict[str, Any] = {"epochs": [], "summary": {}}
    best: dict[str, Any] = {"score": None, "epoch": None, "val": None}
    start = 1
    if resume:
        start, best, log = _restore(run, modules, optimizer, scheduler, scaler)
    log["loss_weights"] = {name: weight for fn in loss_fns.values() for name, weight in fn.weights.items()}
    trainable = {label: distributed.wrap(module, context, device) for label, module in modules.items()}
    last_val: ValidationResult | None = None
    with progress_bar(run.console, config.epochs, start - 1, enabled=context.is_main) as advance:
        for epoch in range(start, config.epochs + 1):
            began = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            order = epoch_order(train_set.originals, epoch, run.seed, context, batch_size=config.batch_size)
            rows = epoch_versions(train_set.versions, order, epoch, run.seed)
            loss = train_epoch(trainable, foundation, loss_fns, optimizer, scaler, train_set, rows,
                               process_batch, context, device, autocast=run.autocast)
            scheduler.step()
            due = epoch % config.val_every == 0 or epoch == config.epochs
            val = None
            if due and context.is_main and len(val_set):
                val = validate(modules, foundation, val_set, run.plans.targets, device)
                last_val = val
                if val.score is not None and (best["score"] is None or val.score > best["score"]):
                    best = {"score": val.score, "epoch": epoch, "val": val.mean}
                    checkpoint.save_checkpoint(
                        run.fold_dir, "best", modules_state_dict(modules), run.metadata(epoch, val)
                    )
            entry = {"epoch": epoch, "train_loss": loss.total, "loss_terms": loss.terms, "lr": lr,
                     "val": None if val is None else val.mean, "time_s": time.perf_counter() - began}
            log["epochs"].append(entry)
            if context.is_main:
                is_best = val is not None and best["epoch"] == epoch
                run.console.print(epoch_line(entry, config.epochs, is_best), soft_wrap=True)
                save_json(run.fold_dir / LOG_FILE, log)
                if due:
                    checkpoint.save_training_state(run.fold_dir, epoch, modules_state_dict(modules),
                                                   optimizer.state_dict(), _scheduler_state(scheduler),
                                                   {"best": best, "config": config.to_json(),
                                                    "precision": run.precision, "samples": run.samples},
                                                   scaler=scaler.state_dict())
                    plot_progress(log, run.fold_dir / PROGRESS_FILE)
            distributed.barrier(context)
            advance()
    if last_val is None and context.is_main and len(val_set):  # resumed after the last validation
        last_val = validate(modules, foundation, val_set, run.plans.targets, device)
    refinement = (refinement_check(modules, foundation, val_set, run.plans.targets, device=device)
                  if context.is_main and len(val_set) else {})
    object_sizes = checked_object_sizes(run.plans)
    second_look = (second_look_check(modules, foundation, val_set, val_images, object_sizes)
                   if context.is_main and len(val_set) and object_sizes else {})
    summary = _finish(run, modules, log, best, last_val, train_set.originals, len(val_set), refinement=refinement,
                      second_look=second_look)
    return TrainingResult(run.fold_dir, summary)


def _finish(
    run: _Run,
    modules: dict[int, torch.nn.Module],
    log: dict[str, Any],
    best: dict[str, Any],
    last_val: ValidationResult | None,
    n_train: int,
    n_val: int,
    *,
    refinement: dict[str, Any],
    second_look: dict[str, Any],
) -> dict[str, Any]:
    """Final and (if never chosen) best checkpoints, validation summary (with the box refinement and second look
    checks), log summary; drop the resume files."""
    final_epoch = run.config.epochs
    times = [entry["time_s"] for entry in log["epochs"]]
    summary = {
        "finished": True,
        "dataset": run.dataset,
        "trainer": run.trainer,
        "fold": run.fold,
        "epochs": final_epoch,
        "best_epoch": best["epoch"] if best["epoch"] is not None else final_epoch,
        "best_val": best["val"],
        "final_val": None if last_val is None else last_val.mean,
        "train_samples": n_train,
        "val_samples": n_val,
        "time_s": float(sum(times)),
        "time_per_epoch_s": float(np.mean(times)) if times else None,
        "device": str(run.device),
        "precision": run.precision,
        "world_size": run.context.world_size,
    }
    if not run.context.is_main:
        return summary
    weights = modules_state_dict(modules)
    if best["epoch"] is None:
        checkpoint.save_checkpoint(run.fold_dir, "best", weights, run.metadata(final_epoch, last_val))
    if last_val is not None:
        validation = {"checkpoint": "final", "epoch": final_epoch, **last_val.to_json(), "box_refinement": refinement,
                      "second_look": second_look}
        save_json(run.fold_dir / "validation" / "summary.json", validation)
    log["summary"] = summary  # before the final checkpoint, which marks the fold finished: a Ctrl-C in between
    save_json(run.fold_dir / LOG_FILE, log)  # continues from the last state and writes both again
    checkpoint.save_checkpoint(run.fold_dir, "final", weights, run.metadata(final_epoch, last_val))
    _drop_resume_files(run.fold_dir)
    plot_progress(log, run.fold_dir / PROGRESS_FILE)
    run.console.print(summary_line(summary, run.fold_dir), soft_wrap=True)
    for line in target_lines(last_val, run.plans.targets) if last_val is not None else []:
        run.console.print(line, soft_wrap=True)
    return summary


def _drop_resume_files(fold_dir: Path) -> None:
    for leftover in (checkpoint.TRAINING_STATE, "checkpoint_latest.pt", "checkpoint_latest.json"):
        (fold_dir / leftover).unlink(missing_ok=True)


def _restore(
    run: _Run,
    modules: dict[int, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Load the last saved state: weights, optimiser, scheduler, fp16 loss scale, RNG, best so far, and the log up
    to it."""
    state = checkpoint.load_training_state(run.fold_dir, run.device)
    saved = state["progress"].get("config")
    if saved != run.config.to_json():
        raise AutomedsamError(f"The interrupted run in {run.fold_dir} used another configuration than this command: "
                              f"{_config_differences(saved, run.config.to_json())}. Continue it with the options it "
                              "ran with, or start over with --overwrite.")
    trained_in = state["progress"].get("precision", run.precision)  # absent in states saved before the option
    if trained_in != run.precision:
        raise AutomedsamError(
            f"The interrupted run in {run.fold_dir} trained in {trained_in}, this one would train in {run.precision}; "
            f"continue it with {_precision_option(trained_in)}, or start over with --overwrite."
        )
    restored = load_modules(state["weights"], run.plans, where=str(run.fold_dir / checkpoint.TRAINING_STATE))
    for label, module in modules.items():
        module.load_state_dict(restored[label].state_dict())
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler") and scaler.is_enabled():  # fp16 only; absent in states saved before it was kept
        scaler.load_state_dict(state["scaler"])
    checkpoint.restore_rng_state(state["rng"])
    epoch = int(state["epoch"])
    log_path = run.fold_dir / LOG_FILE
    log = load_json(log_path, "training log") if log_path.is_file() else {"epochs": [], "summary": {}}
    log["epochs"] = [entry for entry in log["epochs"] if entry["epoch"] <= epoch]
    if run.context.is_main:
        run.console.print(f"Continuing {run.fold_dir} after epoch {epoch}.", markup=False)
    return epoch + 1, state["progress"]["best"], log


def _check_finished_as_asked(run: _Run) -> None:
    """--c --epochs N on a finished fold: a finished run is not extended, so an N other than its own answered
    "nothing to continue" and kept the shorter run. The settings are compared as for an interrupted run, on what the
    finished fold recorded."""
    finished = _finished_config(run.fold_dir)
    if finished is None:  # nothing recorded tells: the fold stays as it is
        return
    current = run.config.to_json()
    asked = {key: current.get(key) for key in finished}  # keys added since it trained: it never had them
    if layout.differing_keys(finished, asked):
        raise AutomedsamError(f"{run.fold_dir} is already finished, with other settings than this command asks for: "
                              f"{_config_differences(finished, asked, run_name='finished run')}. --c does not extend "
                              "a finished run: pass --overwrite to train it again with these settings, or leave "
                              "--epochs out to keep it as it is.")


def _finished_config(fold_dir: Path) -> dict[str, Any] | None:
    """The configuration the finished fold trained with, as its final checkpoint records it; for an installed fold
    (weights and log only) or one trained before it was recorded, the length its log gives. None where neither
    tells."""
    if checkpoint.metadata_path(fold_dir, "final").is_file():
        config = checkpoint.load_metadata(fold_dir, "final").get("config")
        if isinstance(config, dict):
            return config
    epochs = _logged_summary(fold_dir).get("epochs")
    return {"epochs": epochs} if isinstance(epochs, int) else None


def _config_differences(saved: Any, current: dict[str, Any], *, run_name: str = "interrupted run") -> str:
    """Each configuration key the earlier run (`run_name`) and this command set differently, both values and what
    sets it: the whole configuration, some 900 characters, hid the one number that differs."""
    if not isinstance(saved, dict):
        return f"the {run_name} recorded no configuration this version reads"
    keys = layout.differing_keys(saved, current)
    return "; ".join(f"{key}: {run_name} {_config_value(saved, key)}, this command {_config_value(current, key)} "
                     f"({_config_source(key, saved, keys)})" for key in keys)


def _config_value(config: dict[str, Any], key: str) -> str:
    """`key` of the configuration ("losses.tightness": one level into a section), as JSON; "none" where absent."""
    value: Any = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "none" if value is None else json.dumps(value)


def _config_source(key: str, saved: dict[str, Any], differing: list[str]) -> str:
    """What sets `key`: --epochs sets the run's length and with it the lr drop; the rest comes from plans.json
    through --trainer."""
    if key == "epochs":
        return f"pass --epochs {_config_value(saved, key)}"
    if key == "lr_step_epoch" and "epochs" in differing:
        return "follows --epochs"
    return "from plans.json and --trainer"


def _precision_option(precision: str) -> str:
    """The option that trains in `precision` again: fp16 is no --precision value but what auto (and bf16) train in
    on a GPU without bf16."""
    if precision == "fp16":
        return "--precision auto on a GPU without bf16 (where it trains in fp16)"
    return f"--precision {precision}"


def _check_same_samples(run: _Run) -> None:
    """A fold trained on other samples than splits.json now gives it (a sample added in review, a new draw) is out of
    date: continuing or keeping it would mix or hide that, so only --overwrite may replace it."""
    written = [which for which in ("final", "best", "latest")  # latest: fold all has no best before its end
               if checkpoint.metadata_path(run.fold_dir, which).is_file()]
    recorded = checkpoint.load_metadata(run.fold_dir, written[0]).get("samples") if written else None
    if not recorded or _same_sets(recorded, run.samples):  # older folds did not record their samples
        return
    before, now = set(recorded["train"]) | set(recorded["val"]), set(run.samples["train"]) | set(run.samples["val"])
    changes = [f"{what}: {', '.join(sorted(ids))}" for what, ids in (("added", now - before), ("gone", before - now))
               if ids]
    raise AutomedsamError(
        f"{run.fold_dir} was trained on {len(recorded['train'])} samples, but splits.json now gives this fold "
        f"{len(run.samples['train'])} ({'; '.join(changes) or 'moved between training and validation'}). Pass "
        "--overwrite to train it again on the current samples.")


def _same_sets(recorded: dict[str, list[str]], samples: dict[str, list[str]]) -> bool:
    """Whether a fold's training and validation samples are the ones recorded, in any order: the loop draws its
    batches with its own seeded generator, so the order of splits.json's lists changes no trained weight's meaning."""
    return all(set(recorded.get(part, [])) == set(samples.get(part, [])) for part in ("train", "val"))


def _check_fold_state(run: _Run, finished: bool, resume: bool, overwrite: bool) -> bool:
    """Fail before any heavy work: nothing to resume, or a previous run that would be overwritten. Returns whether
    the fold folder is to be cleared first: with --overwrite, or when a run stopped before its first saved epoch
    left only its log there (nothing --c could continue: refusing both ways would leave only --overwrite)."""
    if resume:
        checkpoint.require_training_state(run.fold_dir)
        return False
    continuable = finished or (run.fold_dir / checkpoint.TRAINING_STATE).is_file()
    if continuable and not overwrite:
        what = "is already finished" if finished else "holds an interrupted run"
        raise AutomedsamError(
            f"{run.fold_dir} {what}. Pass --c to continue it (a finished fold stays as it is) or --overwrite to "
            "delete it and train again."
        )
    return run.fold_dir.exists()


def _load_train_set(
    preprocessed_dir: Path,
    plans: Plans,
    train_ids: list[str],
    foundation: FoundationModel,
    config: TrainingConfig,
    dataset: str,
    device: torch.device,
) -> SampleSet:
    if not train_ids:
        raise AutomedsamError(
            f"The fold has no training samples in {preprocessed_dir / 'splits.json'}. Rerun preprocessing."
        )
    needs_masks = config.supervision == "masks"
    views = plans.views() if config.augmentation_views else []
    samples = load_sample_set(preprocessed_dir, plans, train_ids, foundation, masks=needs_masks, views=views)
    if needs_masks and not samples.has_masks:
        raise AutomedsamError(
            f"Trainer 'fullsup' needs full masks, but {dataset} has training samples without one (boxes only). "
            "Use --trainer default or paper2024."
        )
    for target in plans.targets:
        if "pseudo_label" in target_losses(config.losses, target):
            labels = samples.targets[int(target["label"])]
            labels.pseudo_low_res = pseudo_labels(pseudo_label_source(target), foundation, samples.embeddings,
                                                  labels.boxes_low_res)
    samples.embeddings = samples.embeddings.to(device)
    return samples


def _optimizer(config: TrainingConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    kind = kinds.get(str(config.optimizer).lower())
    if kind is None:
        raise AutomedsamError(f"Optimizer '{config.optimizer}' in plans.json is not supported; use adam or adamw.")
    return kind(parameters, lr=config.lr, weight_decay=config.weight_decay)


def _scheduler(config: TrainingConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.MultiStepLR:
    """One lr drop, after epoch `lr_step_epoch`: StepLR dropped again at every multiple of it (twice in a run of
    5 epochs, whose drop falls after epoch 2)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[config.lr_step_epoch], gamma=config.lr_gamma)


def _scheduler_state(scheduler: torch.optim.lr_scheduler.MultiStepLR) -> dict[str, Any]:
    """The scheduler's state without its milestones: a Counter, which torch before 2.4 refuses to load with
    weights_only; `_scheduler` builds them from the configuration, which a resume must share."""
    return {key: value for key, value in scheduler.state_dict().items() if key != "milestones"}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
