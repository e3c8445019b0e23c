"""`automedsam_predict`: segment new images with a trained model (or given boxes with the foundation model alone)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from automedsam.cli.common import VersionOption, run_app
from automedsam.distributed import context_from_environment
from automedsam.errors import AutomedsamError
from automedsam.folds import ALL, parse_fold
from automedsam.inference import predict as run_prediction
from automedsam.inference.model_folder import CHECKPOINTS, DEFAULT_CHECKPOINT

HELP = """Segment a folder (or one file) of 2D images or 3D volumes with a trained automedsam model.

Each image is prepared as in training, encoded once by the foundation model, and that embedding serves every fold
and every label. The folds' sigmoid probabilities (not logits) are averaged, ring targets are turned back into
rings, each pixel takes the label of highest probability above 0.5, and the planned postprocessing is applied.
Volumes are predicted slice by slice along the planned axis. Outputs are OUT/CASE<input extension> (JPEG inputs
give PNG) with the input's geometry; CASE is the file name without a `_0000` suffix. Existing outputs are kept
unless --overwrite; every file is written atomically, so an interrupted run is finished by running it again.
DICOM files and series folders are read as well; their label maps are written as .nii.gz.

Which predictions to check first: OUT/fold_agreement.json gives every case the folds' agreement (mean Dice between
each pair of folds' masks, 1 = all alike), least agreed first, and the final line names the three least agreed.
Where the folds disagree, the ensemble is least trustworthy (on lesions: where the prompt looked elsewhere).

The model: -m FOLDER, or -d ID [--trainer NAME], or, with neither, the only trained model under
$AUTOMEDSAM_RESULTS. --boxes FILE segments given boxes with the foundation model alone (no training needed);
FILE is JSON {"CASE": [{"label": 1, "box": [x0, y0, x1, y1], "slice": z}]} (inclusive pixel corners, x =
column; slice only for 3D, an index along the first array axis).

--dataset-images (with -d, without -i) segments the dataset's own images, the annotator's work first: where
boxes were drawn or accepted (raw boxesTr/, e.g. with automedsam_annotate) the foundation model outlines them, an
image or volume slice marked as not showing the structure stays empty, and the trained model segments the rest.
Run it again after adding boxes or retraining: only the images whose image, mask, boxes, marks or model changed
are segmented again (OUT/.dataset_images.json records what each label map was made from); a label map in OUT that
the record does not name (edited by hand, written by another command) is replaced; --overwrite redoes all.
OUT/fold_agreement.json scores the images the trained model segmented (not those made from masks or boxes).

Examples:

\b
  automedsam_predict -i new_images -o predictions -d 1
  automedsam_predict -i scans -o predictions -d 001 -f 0 1 2 --save-probabilities --tta
  automedsam_predict -i new_images -o medsam_boxes --boxes boxes.json
  automedsam_predict -d 5 --dataset-images -o segmentations

Several GPUs or CPU processes: launch the same command with torchrun; each process predicts every N-th image
(see documentation/scaling.md):

\b
  torchrun --standalone --nproc_per_node 4 $(which automedsam_predict) -i scans -o predictions -d 1
"""

app = typer.Typer(add_completion=False, help=HELP, rich_markup_mode=None)
stdout = Console()


@app.command(help=HELP, context_settings={"allow_extra_args": True, "help_option_names": ["-h", "--help"]})
def predict(
    ctx: typer.Context,
    input_path: Optional[Path] = typer.Option(None, "-i", "--input", help="Folder of images, or one image file (DICOM "
                                              "files and series folders too: written as .nii.gz)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder (created; must not be inside -i)."),
    dataset: Optional[str] = typer.Option(None, "-d", "--dataset", help="Dataset id or name (1, 001, Dataset001_X)."),
    model_folder: Optional[Path] = typer.Option(
        None, "-m", "--model-folder", help="A trained model folder (results/DatasetXXX_Name/TRAINER__PLANS)."
    ),
    folds: Optional[list[str]] = typer.Option(
        None, "-f", "--folds", metavar="FOLD ...",
        help="Folds to ensemble, e.g. `-f 0 1 2` (default: every finished fold); `-f all`: the model trained on all "
        "labelled images (fold_all)."
    ),
    trainer: str = typer.Option("default", "--trainer", "-tr", help="Trainer name of the model to use with -d."),
    checkpoint: str = typer.Option(
        DEFAULT_CHECKPOINT, "--checkpoint", help="Which checkpoint of each fold: final (the last epoch) or best (the "
        "epoch with the best box-based validation score, a noisy pick on 2 validation samples)."
    ),
    save_probabilities: bool = typer.Option(
        False, "--save-probabilities", help="Also write CASE.npz (float16 probability per label) and CASE.json."
    ),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help="Box file: segment these boxes with the foundation "
                                       "model alone (LiteMedSAM, or the model of -d/-m/--foundation)."),
    foundation: Optional[str] = typer.Option(
        None, "--foundation", help="Foundation model for --boxes without -d/-m: litemedsam (default), medsam_vit_b, "
        "sam_vit_b/l/h."
    ),
    foundation_checkpoint: Optional[Path] = typer.Option(
        None, "--foundation-checkpoint", help="Foundation weights file: needed by the ViT models; replaces the path "
        "stored in the plans (e.g. for a model folder copied from another machine)."
    ),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation: average with flipped predictions."),
    box_refinement: str = typer.Option(
        "auto", "--box-refinement", metavar="auto|on|off",
        help="Outline each predicted object with the frozen model prompted by its box: auto = where the folds' "
             "validation samples showed it helps (decided from boxes only), on, off."),
    second_look: str = typer.Option(
        "auto", "--second-look", metavar="auto|on|off",
        help="Where the first pass is unsure of an object's extent (its confident core covers much less than its "
             "mask, as for objects far smaller than the labelled ones), encode a window around the core again, "
             "zoomed so the object has the labelled objects' size, and predict there: one extra encoder pass per "
             "such image. auto = where the folds' validation samples, shrunk, showed it helps; on; off."),
    dataset_images: bool = typer.Option(
        False, "--dataset-images", help="Segment the images of the dataset given with -d (no -i): its boxes "
        "outlined by the foundation model where the annotator drew them, the trained model elsewhere."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: CUDA if available)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo cases whose outputs already exist."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1, help="Slices encoded together (default: 8 on a GPU, 1 on a CPU, where each "
        "slice of a batch holds about 225 MB); lower it if memory runs out."
    ),
    version: Optional[bool] = VersionOption,
) -> None:
    if checkpoint not in CHECKPOINTS:
        raise AutomedsamError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, got '{checkpoint}'.")
    if dataset is not None and model_folder is not None:
        raise AutomedsamError("Give either -d/--dataset or -m/--model-folder, not both.")
    summary = run_prediction(
        input_path, output, dataset=dataset, model_folder=model_folder, folds=parse_folds(folds, ctx.args),
        trainer=trainer, checkpoint=checkpoint, save_probabilities=save_probabilities, boxes=boxes, tta=tta,
        device=device, overwrite=overwrite, batch_size=batch_size, foundation_name=foundation,
        foundation_checkpoint=foundation_checkpoint, box_refinement=box_refinement, second_look=second_look,
        dataset_images=dataset_images,
    )
    if context_from_environment().is_main:  # under torchrun every process has the summed counts; one reports
        stdout.print(summary.line(), markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    run_app(app)


def parse_folds(values: Optional[list[str]], extra: list[str]) -> Optional[list[int] | str]:
    """`-f 0 1 2` arrives as ['0'] plus extra arguments ['1', '2']; also `-f 0,1`, `-f fold0` and `-f all`."""
    if values is None:
        if extra:
            raise AutomedsamError(f"Unexpected arguments: {' '.join(extra)}. Fold numbers go after -f.")
        return None
    folds = [parse_fold(token) for value in [*values, *extra] for token in re.split(r"[,\s]+", value) if token]
    if folds == [ALL]:
        return ALL
    if ALL in folds:
        raise AutomedsamError("-f takes fold numbers (e.g. `-f 0 1 2`) or `all` alone, not both.")
    return sorted(set(folds))
