"""`automedsam_convert`: turn a public release or any folder of images into an automedsam raw dataset."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from automedsam.cli.common import VersionOption, deprecated_option, renamed, run_app
from automedsam.conversion import convert_acdc, convert_folder, convert_hc18, make_synthetic_dataset
from automedsam.dataset import INTERACTIVE
from automedsam.errors import AutomedsamError
from automedsam.files import load_json

HELP = """Convert data into an automedsam raw dataset: raw/DatasetXXX_Name/ (nnU-Net v2 layout).

The dataset is written to the raw root (env AUTOMEDSAM_RAW) in one go: an interrupted conversion leaves nothing
behind, and an existing dataset is only replaced with --overwrite. Case ids keep the original file names.

Examples:

  automedsam_convert hc18 path/to/HC18 -d 1

  automedsam_convert acdc path/to/ACDC -d 2

  automedsam_convert folder --images imgs --masks masks -d 3 -n Lesions --label lesion

  automedsam_convert synthetic -d 900
"""
CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(add_completion=False, help=HELP, rich_markup_mode=None, no_args_is_help=True,
                  context_settings=CONTEXT)
stdout = Console()
stderr = Console(stderr=True)

DatasetId = typer.Option(None, "-d", "--dataset", min=1, max=999,
                         help="Dataset number, 1-999 (DatasetXXX_); required.")
OldDatasetId = deprecated_option("--dataset-id", new="-d/--dataset", min=1, max=999)
Overwrite = typer.Option(False, "--overwrite", help="Replace the dataset folder if it already exists.")


@app.callback()
def convert(version: Optional[bool] = VersionOption) -> None:
    """Convert data into an automedsam raw dataset (see the subcommands)."""


@app.command("hc18", context_settings=CONTEXT, help="""Import the HC18 fetal head ultrasound release.

SRC holds training_set/ (NNN_HC.png with NNN_HC_Annotation.png) and training_set_pixel_size_and_HC.csv. The
released ellipse outlines become filled head masks (outlines cut by the image border are completed by an ellipse
fit); frames of one examination share a group; the csv's pixel size goes to dataset.json under "spacing".

Example: automedsam_convert hc18 path/to/HC18 -d 1
""")
def hc18(
    src: Path = typer.Argument(..., metavar="SRC", help="HC18 release folder (holding training_set/ and the csv)."),
    dataset_id: Optional[int] = DatasetId,
    old_dataset_id: Optional[int] = OldDatasetId,
    name: str = typer.Option("HC18", "-n", "--name", help="Dataset name (DatasetXXX_NAME)."),
    overwrite: bool = Overwrite,
) -> None:
    _summary(convert_hc18(src, _dataset_id(dataset_id, old_dataset_id), name=name, overwrite=overwrite))


@app.command("acdc", context_settings=CONTEXT, help="""Import the ACDC cardiac cine MRI release.

SRC holds training/patientNNN/patientNNN_frameXX.nii.gz with patientNNN_frameXX_gt.nii.gz. Labels: RV 1, MYO 2,
LV 3; both frames of a patient share a group. A testing/ folder beside training/ becomes imagesTs/ (labelsTs/).

Example: automedsam_convert acdc path/to/ACDC -d 2
""")
def acdc(
    src: Path = typer.Argument(..., metavar="SRC", help="ACDC release folder (holding training/)."),
    dataset_id: Optional[int] = DatasetId,
    old_dataset_id: Optional[int] = OldDatasetId,
    name: str = typer.Option("ACDC", "-n", "--name", help="Dataset name (DatasetXXX_NAME)."),
    overwrite: bool = Overwrite,
) -> None:
    _summary(convert_acdc(src, _dataset_id(dataset_id, old_dataset_id), name=name, overwrite=overwrite))


@app.command("folder", context_settings=CONTEXT, help="""Import any folder of images, with masks, boxes or nothing.

Masks are matched to images by name: the same name in the masks folder, or the name plus _mask, _seg, _label or
_gt ("benign (3).png" <- "benign (3)_mask.png"); numbered masks (_mask_1, _mask_2) are merged. With one --label,
masks saved as 0/1, 0/255 or colour all become label 1. With several (--label RV --label MYO --label LV), each mask
is a label map whose values 1, 2, 3 are those structures in that order. Images and masks may share a folder. With
--boxes, a JSON file {"CASE": [{"label": 1, "box": [x0, y0, x1, y1]}]} (inclusive pixel corners, x = column;
"slice" for 3D; "label" the value of a --label name) gives the weak labels instead of masks. With neither, the
images are imported unannotated, with the structures named by --label: automedsam_plan_and_preprocess then draws
the samples to annotate and
automedsam_annotate collects their boxes in the browser. With --group-pattern, images of one patient or
examination (found by a regular expression on the image name) stay together in the few-shot draw and the folds;
without it each image is its own group. --ring and --shape declare structure you know in dataset.json (the planner
never measures it under the few-shot protocol): --ring MYO:LV trains MYO as a ring around LV, --shape head:ellipse
teaches head the ellipse inscribed in each box.

Examples:

  automedsam_convert folder --images Dataset_BUSI/benign --masks Dataset_BUSI/benign -d 3 -n BUSI --label lesion

  automedsam_convert folder --images scans --boxes boxes.json -d 4 -n Scans

  automedsam_convert folder --images unlabelled -d 5 -n Heads --label head

  automedsam_convert folder --images slices -d 6 -n Heart --label RV --label MYO --label LV --ring MYO:LV

  automedsam_convert folder --images volumes --masks volumes -d 7 -n Heart --label RV --label MYO --label LV

  automedsam_convert folder --images ddti/images --masks ddti/masks -d 5 -n Thyroid --label nodule
  --group-pattern 'ddti_(\\d+)_'
""")
def folder(
    images: Path = typer.Option(..., "--images", help="Folder of images (png, jpg, tif, bmp, nii.gz, nrrd, mha, DICOM "
                                "files; a subfolder holding one DICOM series is one volume)."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Folder of masks, one per image (may be --images)."),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help="JSON file of boxes per image, instead of masks."),
    dataset_id: Optional[int] = DatasetId,
    old_dataset_id: Optional[int] = OldDatasetId,
    name: str = typer.Option(..., "-n", "--name", help="Dataset name (DatasetXXX_NAME)."),
    label: Optional[List[str]] = typer.Option(
        None, "--label", metavar="NAME", help="Name of the segmented structure (label 1; default foreground). Repeat "
        "it for several structures: labels 1, 2, ... in the order given, the values of the masks and boxes."),
    group_pattern: Optional[str] = typer.Option(
        None, "--group-pattern", metavar="REGEX",
        help="Regular expression finding the patient/examination in an image name (its named group 'group', else "
             "its first group, else the whole match); images with the same group stay in one fold."),
    ring: Optional[List[str]] = typer.Option(
        None, "--ring", metavar="RING:INNER[,INNER]",
        help="Declare a ring label around the label(s) it encloses (dataset.json rings), e.g. MYO:LV; repeatable."),
    shape: Optional[List[str]] = typer.Option(
        None, "--shape", metavar="LABEL:ellipse",
        help="Declare a label's shape (dataset.json shapes): LABEL:ellipse learns from the ellipse in each box; "
             "repeatable. Default: none declared, the planner decides from the labelled boxes."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the dataset folder if it already exists. Without --masks or --boxes (more "
        "images to annotate, say), the boxes drawn on the annotation page are kept for the images imported again."),
) -> None:
    rings = {key: value.split(",") for key, value in _pairs(ring or [], "--ring", "MYO:LV").items()}
    _summary(convert_folder(images, masks=masks, boxes=boxes, dataset_id=_dataset_id(dataset_id, old_dataset_id),
                            name=name, label_names=label or ["foreground"], group_pattern=group_pattern,
                            rings=rings, shapes=_pairs(shape or [], "--shape", "head:ellipse"), overwrite=overwrite,
                            report=_warn))


@app.command("synthetic", context_settings=CONTEXT, help="""Generate the ultrasound-like demo dataset.

Each image shows one elliptical structure in speckle inside a fan-shaped field of view; imagesTr/labelsTr hold the
training cases, imagesTs/labelsTs held-out test images with their reference masks. Same seed, same images.

Example: automedsam_convert synthetic -d 900
""")
def synthetic(
    dataset_id: Optional[int] = DatasetId,
    old_dataset_id: Optional[int] = OldDatasetId,
    name: str = typer.Option("SyntheticUS", "-n", "--name", help="Dataset name (DatasetXXX_NAME)."),
    n_train: int = typer.Option(20, "--n-train", min=1, help="Number of training images."),
    n_test: int = typer.Option(10, "--n-test", min=0, help="Number of held-out test images."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1,
                             help="Random seed (0 to 2^32 - 1); the same seed gives the same images."),
    overwrite: bool = Overwrite,
) -> None:
    _summary(make_synthetic_dataset(_dataset_id(dataset_id, old_dataset_id), name=name, n_train=n_train,
                                    n_test=n_test, seed=seed, overwrite=overwrite))


def main() -> None:
    run_app(app, interrupted_note="Interrupted. Nothing was written (the dataset being built was removed): run the "
                                  "same command again.")


def _pairs(values: List[str], option: str, example: str) -> dict[str, str]:
    """`NAME:VALUE` option values as a dict; a value without its colon is a clear error."""
    pairs = {}
    for value in values:
        key, colon, rest = value.partition(":")
        if not colon or not key or not rest:
            raise AutomedsamError(f"{option} {value!r} must read NAME:VALUE, e.g. {option} {example}.")
        if key in pairs:  # the last one would win without a word
            raise AutomedsamError(f"{option} names {key} twice ({key}:{pairs[key]}, {value}). Give it once; several "
                                  "values go after one colon, comma-separated (e.g. MYO:LV,RV).")
        pairs[key] = rest
    return pairs


def _dataset_id(dataset_id: Optional[int], old_dataset_id: Optional[int]) -> int:
    """-d/--dataset, given under that name or its old one (--dataset-id); required either way."""
    chosen = renamed(dataset_id, old_dataset_id, old="--dataset-id", new="-d/--dataset")
    if chosen is None:
        raise AutomedsamError("Missing option -d/--dataset: the number of the dataset to write, 1-999 (DatasetXXX_).")
    return chosen


def _warn(text: str) -> None:
    """A warning of the conversion; its text is escaped, since file names like `scan [left].gif` read as markup."""
    stderr.print(f"[yellow]Warning:[/yellow] {escape(text)}", highlight=False, soft_wrap=True)


def _summary(target: Path) -> None:
    """One line: how many cases went where."""
    meta = load_json(target / "dataset.json", "dataset description")
    test_images = target / "imagesTs"
    tests = sum(1 for _ in test_images.iterdir()) if test_images.is_dir() else 0
    annotation = "boxes" if (target / "boxesTr").is_dir() else "masks"
    if meta.get("annotation") == INTERACTIVE:
        annotation = (f"not annotated yet: next, automedsam_plan_and_preprocess -d {target.name} draws the samples "
                      "to annotate")
    extra = f" and {tests} test images" if tests else ""
    stdout.print(f"Wrote {meta['numTraining']} training cases ({annotation}){extra} to {target}",
                 markup=False, highlight=False, soft_wrap=True)
