"""`automedsam_install_model`: install a model zip written by automedsam_export_model."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from automedsam.cli.common import VersionOption, run_app
from automedsam.model_sharing.install import install_model

HELP = """Install a model zip (from automedsam_export_model) into $AUTOMEDSAM_RESULTS, ready for automedsam_predict.

The model goes to results/DatasetXXX_Name/TRAINER__PLANS/ under the zip's own dataset name, or under -d NEW_ID
(a number keeps the name: -d 42 gives Dataset042_Name; or a full name Dataset042_Other). An existing model is
replaced only with --overwrite, and then kept: it moves whole to results/DatasetXXX_Name/previous/
(refused while one of its folds trains). No raw or preprocessed data is needed: then

\b
  automedsam_predict -i IMAGES -o OUTPUT -d NEW_ID

The zip is treated as untrusted: anything but the files a model consists of, absolute paths, '..', symbolic
links, oversized members and zip bombs are refused before anything is written; checkpoints are loaded as plain
weights only (never code). A failed install leaves nothing behind.

Foundation weights: the default LiteMedSAM ships with automedsam. A model trained with another foundation model
needs the same weights file (checked by sha256): give it here with --foundation-checkpoint (its path is stored in
the installed plans) or to automedsam_predict.

Examples:

\b
  automedsam_install_model hc18_model.zip
  automedsam_install_model hc18_model.zip -d 42 --overwrite
  automedsam_install_model medsam_model.zip --foundation-checkpoint weights/medsam_vit_b.pth
"""

app = typer.Typer(add_completion=False, help=HELP, rich_markup_mode=None)
stdout = Console()


@app.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
def install(
    archive: Path = typer.Argument(..., metavar="ZIP", help="The model zip written by automedsam_export_model."),
    dataset: Optional[str] = typer.Option(
        None, "-d", "--dataset", help="Install under this dataset id (42) or name (Dataset042_Name) instead of the "
        "zip's own."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an installed model of the same name (it moves whole to previous/)."
    ),
    foundation_checkpoint: Optional[Path] = typer.Option(
        None, "--foundation-checkpoint", help="The foundation weights file the model was trained with (checked by "
        "sha256; needed only for a foundation model other than the default LiteMedSAM)."
    ),
    version: Optional[bool] = VersionOption,
) -> None:
    summary = install_model(archive, dataset=dataset, overwrite=overwrite, foundation_checkpoint=foundation_checkpoint)
    stdout.print(summary.line(), markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    run_app(app, interrupted_note="Interrupted. Nothing was installed: run the same command again.")
