"""`automedsam_export_model`: pack a trained model into one zip to share it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from automedsam.cli.common import VersionOption, run_app
from automedsam.cli.predict import parse_folds
from automedsam.inference.model_folder import locate_model_folder, open_model_folder
from automedsam.model_sharing.export import export_model

HELP = """Pack a trained model into one zip file that automedsam_install_model installs on another machine.

The zip holds what prediction needs and nothing else: plans.json (the foundation weights named by file name and
sha256, not by this machine's path), dataset.json (labels and channel, without the case list), each chosen fold's
checkpoint_final.pt (and checkpoint_best.pt with --best), log.json and the box refinement and second look checks
(from validation/summary.json, without sample ids), and model_card.json (automedsam version,
foundation model and the sha256 of its weights, the few-shot budget and how the samples were chosen, the folds'
validation figures, the date). No training image, embedding or absolute path goes in.

The dataset's name does go in (in dataset.json, plans.json, model_card.json and each log.json), and install names
the model's folder after it. A folder imported with automedsam_annotate --images is named after the image folder,
which may name a patient: --name NEW gives the archive another name (Shared keeps the id: Dataset005_Shared; or a
full name Dataset042_Shared).

The model: -d ID and --trainer NAME, as for automedsam_predict; by default every finished fold.

Examples:

\b
  automedsam_export_model -d 1 -o hc18_model.zip
  automedsam_export_model -d Dataset002_ACDC -o acdc.zip -tr paper2024 -f 0 1 2 --best
  automedsam_export_model -d 5 -o liver.zip --name Liver
"""

app = typer.Typer(add_completion=False, help=HELP, rich_markup_mode=None)
stdout = Console()


@app.command(help=HELP, context_settings={"allow_extra_args": True, "help_option_names": ["-h", "--help"]})
def export(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "-d", "--dataset", help="Dataset id or name (1, 001, Dataset001_X)."),
    output: Path = typer.Option(..., "-o", "--output", help="The zip file to write."),
    trainer: str = typer.Option("default", "--trainer", "-tr", help="Trainer variant of the model to export."),
    folds: Optional[list[str]] = typer.Option(
        None, "-f", "--folds", metavar="FOLD ...", help="Folds to export, e.g. `-f 0 1 2` or `-f all` (default: "
        "every finished fold, as automedsam_predict would use them)."
    ),
    best: bool = typer.Option(False, "--best", help="Also export each fold's checkpoint_best.pt."),
    foundation_checkpoint: Optional[Path] = typer.Option(
        None, "--foundation-checkpoint", help="The foundation weights file the model was trained with, when the path "
        "in plans.json no longer holds it (its sha256 goes into the zip)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    name: Optional[str] = typer.Option(
        None, "--name", help="The dataset name the zip carries instead of the model's own (Shared keeps the id, or "
        "a full name Dataset042_Shared)."
    ),
    version: Optional[bool] = VersionOption,
) -> None:
    folder = open_model_folder(locate_model_folder(dataset, trainer=trainer), folds=parse_folds(folds, ctx.args))
    if best:
        open_model_folder(folder.path, folds=folder.folds, checkpoint="best")  # says which fold lacks one
    summary = export_model(folder.path, output, folds=folder.folds, include_best=best,
                           foundation_checkpoint=foundation_checkpoint, overwrite=overwrite, name=name)
    stdout.print(summary.line(), markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    run_app(app, interrupted_note="Interrupted. No archive was written: run the same command again.")
