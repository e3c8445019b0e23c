"""`automedsam_train`: train the prompt modules of one fold of a preprocessed dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from automedsam import checkpoint
from automedsam.cli.common import VersionOption, deprecated_option, renamed, run_app
from automedsam.errors import AutomedsamError
from automedsam.files import files_digest
from automedsam.training import TRAINER_VARIANTS, train_fold
from automedsam.training.loop import TRAINING_PRECISIONS
from automedsam.training.trainer import fold_folder, has_saved_state

TRAINERS = "\n".join(f"  {name}: {variant.description}" for name, variant in TRAINER_VARIANTS.items())

HELP = f"""Train one prompt module per target label on one fold, from boxes only (unless --trainer fullsup).

DATASET is the id or name (1, 001 or Dataset001_Name) of a dataset prepared by automedsam_plan_and_preprocess.
FOLD is a fold of the dataset's splits.json, 0..4 with the default 5 folds (also written fold0 or fold_0): the
fold's few-shot draw, validated on its held-out samples; or all: every labelled sample, no validation.

Writes results/DatasetXXX_Name/TRAINER__PLANS/fold_K/: checkpoint_best.pt (chosen by the box-based validation
score), checkpoint_final.pt, log.json, progress.png, validation/summary.json.

An interrupted run continues with --c, giving the same weights as an uninterrupted run; --c on a finished fold
does nothing. A fold that was started or finished is never silently replaced: pass --overwrite to retrain it.
Several GPUs: launch the same command with torchrun (torchrun --nproc_per_node 4 $(which automedsam_train) 1 0).

Trainers:

\b
{TRAINERS}

Examples:

  automedsam_train 1 0

  automedsam_train Dataset001_HC18 all --trainer paper2024

  automedsam_train 1 fold0 --epochs 5 --device cpu
"""

CONTINUE_NOTE = "Interrupted. Run the same command with --c to continue the fold from its last saved state."
CONTINUE_NEW_RUN_NOTE = ("Interrupted. Run the same command with --c in place of --overwrite to continue the new run "
                         "from its last saved state.")
START_AGAIN_NOTE = ("Interrupted before the fold's first saved epoch: there is nothing to continue. Run the same "
                    "command again (without --c) to start it over.")
KEPT_NOTE = ("Interrupted before the fold was replaced: {fold_dir} is intact, as it was before this command, and no "
             "new run started. Run the same command again (with --overwrite) to retrain it.")


_COMMAND: dict[str, Any] = {}  # the dataset, fold, trainer and --overwrite of the command, once its options are read


def interrupted_note() -> str:
    """The note after Ctrl-C: --c continues only a fold that saved a training state (else "Nothing to resume"), and
    --overwrite deletes the fold only once the new run is loaded and built: stopped before, the old fold stands."""
    if not _COMMAND:
        return START_AGAIN_NOTE
    where = {key: _COMMAND[key] for key in ("dataset", "fold", "trainer")}
    if _COMMAND["replaced_state"] is not None and _saved_state_digest(**where) == _COMMAND["replaced_state"]:
        return KEPT_NOTE.format(fold_dir=fold_folder(**where))
    if not has_saved_state(**where):
        return START_AGAIN_NOTE
    return CONTINUE_NEW_RUN_NOTE if _COMMAND["overwrite"] else CONTINUE_NOTE


def _saved_state_digest(dataset: str, fold: str, *, trainer: str) -> str | None:
    """A digest of the fold's training state and final checkpoint (names, sizes, modification times): unchanged, the
    fold is the one the command found. None where it holds neither, or cannot be told (not preprocessed)."""
    if not has_saved_state(dataset, fold, trainer=trainer):
        return None
    try:
        folder = fold_folder(dataset, fold, trainer=trainer)
    except AutomedsamError:
        return None
    return files_digest([folder / checkpoint.TRAINING_STATE, checkpoint.weights_path(folder, "final"),
                         checkpoint.metadata_path(folder, "final")])


app = typer.Typer(add_completion=False, help=HELP, rich_markup_mode=None)


@app.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
def train(
    dataset: str = typer.Argument(..., metavar="DATASET", help="Dataset id or name: 1, 001 or Dataset001_Name."),
    fold: str = typer.Argument(..., metavar="FOLD",
                               help="A fold of splits.json (0, fold0 or fold_0; 0..4 with 5 folds), or all."),
    trainer: str = typer.Option("default", "--trainer", "-tr", help=f"Trainer variant: {', '.join(TRAINER_VARIANTS)}."),
    epochs: Optional[int] = typer.Option(
        None,
        "--epochs",
        min=1,
        help="Override the planned number of epochs (quick runs); the lr drop stays at the same fraction of the run.",
    ),
    resume: bool = typer.Option(False, "--c", help="Continue an interrupted run from its last saved epoch."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete this fold's previous outputs and train again."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: CUDA when available)."),
    precision: str = typer.Option(
        "auto", "--precision", help=f"What the prompt modules and the frozen decoder train in: "
        f"{'|'.join(TRAINING_PRECISIONS)}. auto: bf16 autocast on CUDA and on a CPU that computes bf16 in "
        "hardware (AVX512-BF16, AMX), fp32 on other CPUs (there bf16 is emulated and slower). The losses are fp32 "
        "always."
    ),
    foundation_checkpoint: Optional[Path] = typer.Option(
        None, "--foundation-checkpoint", help="Foundation model weights for medsam_vit_b / sam_* plans, replacing the "
        "path stored in the plans (litemedsam needs none)."
    ),
    old_foundation_checkpoint: Optional[Path] = deprecated_option("--checkpoint", new="--foundation-checkpoint"),
    version: Optional[bool] = VersionOption,
) -> None:
    weights = renamed(foundation_checkpoint, old_foundation_checkpoint, old="--checkpoint",
                      new="--foundation-checkpoint")
    _COMMAND.update(dataset=dataset, fold=fold, trainer=trainer, overwrite=overwrite,
                    replaced_state=_saved_state_digest(dataset, fold, trainer=trainer) if overwrite else None)
    train_fold(dataset, fold, trainer=trainer, epochs=epochs, resume=resume, overwrite=overwrite, device=device,
               precision=precision, foundation_checkpoint=weights)


def main() -> None:
    run_app(app, interrupted_note=interrupted_note)
