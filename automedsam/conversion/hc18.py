"""Import the HC18 fetal head ultrasound release as a raw dataset with filled head masks.

The release annotates each head as a 1-2 px ellipse outline; training needs the filled head. Images stay PNG under
their release names (`000_HC`, `014_2HC`) so users find them again; frames of one examination (`014_HC`,
`014_2HC`) share a group so folds never split them. PNG holds no pixel size, so the csv's pixel size (mm) is kept
in dataset.json under `spacing` (case -> [sx, sy]).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from automedsam.conversion.ellipse import fill_outline
from automedsam.conversion.staging import progress_over, staged_dataset, write_dataset_json
from automedsam.errors import AutomedsamError
from automedsam.files import UnwritableDiskError, copy_file
from automedsam.io import Geometry, read_image, read_segmentation, split_extension, write_segmentation

TRAINING_FOLDER = "training_set"
TRAINING_CSV = "training_set_pixel_size_and_HC.csv"
ANNOTATION_SUFFIX = "_Annotation"
EXAMINATION = re.compile(r"^(\d+)_\d*HC$")
REFERENCE = ("T.L.A. van den Heuvel, D. de Bruijn, C.L. de Korte, B. van Ginneken, 'Automated measurement of fetal "
             "head circumference using 2D ultrasound images', PLoS ONE 13(8): e0200412, 2018. Zenodo 1327317.")


def convert_hc18(src: str | Path, dataset_id: int, *, name: str = "HC18", overwrite: bool = False) -> Path:
    """Convert an HC18 release folder (`training_set/` and its csv) into raw/DatasetXXX_Name.

    The release's unannotated `test_set/` is not imported: predict on that folder directly.
    """
    src = Path(src)
    training = src / TRAINING_FOLDER
    if not training.is_dir():
        raise AutomedsamError(f"{src} is not an HC18 release folder: {training} is missing. Point SRC at the folder "
                              f"holding {TRAINING_FOLDER}/ and {TRAINING_CSV}.")
    pixel_sizes = read_pixel_sizes(src / TRAINING_CSV)
    cases = _training_cases(training, pixel_sizes)
    completed: list[str] = []
    problems: list[str] = []
    with staged_dataset(dataset_id, name, overwrite) as staging:
        folder = staging.folder
        for case_id, image, annotation in progress_over(cases, len(cases), "HC18 cases"):
            try:
                if _write_training_case(folder, case_id, image, annotation):
                    completed.append(case_id)
            except UnwritableDiskError:
                raise  # not the case's fault: every case after it would fail alike
            except AutomedsamError as exc:
                problems.append(str(exc))
        if problems:
            raise AutomedsamError("HC18 conversion failed for these annotations:\n  " + "\n  ".join(problems))
        write_dataset_json(
            folder, name=name, labels={"background": 0, "head": 1}, channel_names={"0": "ultrasound"},
            file_ending=".png", groups={case_id: examination(case_id) for case_id, _, _ in cases},
            spacing={case_id: [pixel_sizes[case_id]] * 2 for case_id, _, _ in cases},
            description=_description(completed), reference=REFERENCE, licence="CC BY 4.0",
        )
    return staging.target


def head_mask(annotation: Path) -> tuple[np.ndarray, Geometry, bool]:
    """Filled head mask (uint8 0/1) of one released outline, its geometry, and whether an ellipse fit closed it."""
    outline, geometry = read_segmentation(annotation, binarise=True)
    filled, fitted = fill_outline(outline.astype(bool), str(annotation))
    return filled.astype(np.uint8), geometry, fitted


def read_pixel_sizes(csv_path: Path) -> dict[str, float]:
    """Case id -> pixel size in mm, from an HC18 csv (`filename,pixel size(mm),...`)."""
    if not csv_path.is_file():
        raise AutomedsamError(f"{csv_path} is missing. It comes with the HC18 release and gives each image's pixel "
                              "size; put it back beside the image folder.")
    with csv_path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    size_column = next((i for i, cell in enumerate(header) if cell.startswith("pixel size")), None)
    if "filename" not in header or size_column is None:
        raise AutomedsamError(f"{csv_path} lacks the 'filename' and 'pixel size(mm)' columns of the HC18 release. "
                              "Use the csv that came with the data.")
    name_column = header.index("filename")
    sizes: dict[str, float] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            sizes[split_extension(row[name_column].strip())[0]] = float(row[size_column])
        except (IndexError, ValueError):
            raise AutomedsamError(f"{csv_path}, line {line}: cannot read a file name and a pixel size from "
                                  f"{row}. Restore the release's csv.") from None
    return sizes


def examination(case_id: str) -> str:
    """The examination number shared by all frames of one examination (`014_2HC` -> `014`)."""
    match = EXAMINATION.match(case_id)
    return match.group(1) if match else case_id


def _training_cases(training: Path, pixel_sizes: dict[str, float]) -> list[tuple[str, Path, Path]]:
    images = sorted(p for p in training.glob("*.png")  # hidden files: macOS's ._NNN_HC.png on exFAT drives
                    if not p.name.startswith(".") and not split_extension(p)[0].endswith(ANNOTATION_SUFFIX))
    if not images:
        raise AutomedsamError(f"{training} holds no HC18 images (NNN_HC.png). Point SRC at the HC18 release folder.")
    cases, problems = [], []
    for image in images:
        case_id = split_extension(image)[0]
        annotation = training / f"{case_id}{ANNOTATION_SUFFIX}.png"
        if not annotation.is_file():
            problems.append(f"{case_id}: annotation {annotation.name} is missing")
        elif case_id not in pixel_sizes:
            problems.append(f"{case_id}: no pixel size in {TRAINING_CSV}")
        else:
            cases.append((case_id, image, annotation))
    if problems:
        raise AutomedsamError(f"{training} is incomplete; restore these files from the HC18 release (or remove the "
                              "images):\n  " + "\n  ".join(problems))
    return cases


def _write_training_case(folder: Path, case_id: str, image: Path, annotation: Path) -> bool:
    pixels, _ = read_image(image)
    mask, geometry, fitted = head_mask(annotation)
    if pixels.shape[:2] != mask.shape:
        raise AutomedsamError(f"{case_id}: image {pixels.shape[:2]} and annotation {mask.shape} differ in size")
    (folder / "imagesTr").mkdir(exist_ok=True)
    copy_file(image, folder / "imagesTr" / f"{case_id}_0000.png")
    write_segmentation(folder / "labelsTr" / f"{case_id}.png", mask, geometry)
    return fitted


def _description(completed: list[str]) -> str:
    text = "HC18 fetal head ultrasound; head masks filled from the released ellipse outlines."
    if completed:
        text += (f" {len(completed)} outline(s) cut by the image border were completed by a least-squares ellipse "
                 f"fit: {', '.join(completed)}.")
    return text
