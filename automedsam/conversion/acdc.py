"""Import the ACDC cardiac cine MRI release (end-diastole and end-systole volumes with RV/MYO/LV labels).

Volumes stay .nii.gz with their geometry under their release names (`patient001_frame01`); both frames of a patient
share a group so folds never split a patient. dataset.json declares the myocardium a ring around the left ventricle
(`rings`): anatomy a user knows, which the planner is never left to measure from masks. Labels are written with
their image's geometry, so small rounding differences between the release's image and label headers cannot fail
later checks. A `testing/` folder, as in later ACDC releases, becomes imagesTs/ (and labelsTs/ where it has labels).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from automedsam.conversion.staging import progress_over, staged_dataset, write_dataset_json
from automedsam.errors import AutomedsamError
from automedsam.files import UnwritableDiskError, copy_file
from automedsam.io import geometry_mismatch, read_image, read_segmentation, write_segmentation

LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
RINGS = {"MYO": ["LV"]}  # anatomy, declared rather than measured: the myocardium encloses the left ventricle cavity
FRAME = re.compile(r"^(patient\d+)_frame\d+\.nii\.gz$")
REFERENCE = ("O. Bernard, A. Lalande, C. Zotti, F. Cervenansky et al., 'Deep Learning Techniques for Automatic MRI "
             "Cardiac Multi-structures Segmentation and Diagnosis: Is the Problem Solved?', IEEE TMI 37(11), 2018.")


def convert_acdc(src: str | Path, dataset_id: int, *, name: str = "ACDC", overwrite: bool = False) -> Path:
    """Convert an ACDC release (`training/patientNNN/patientNNN_frameXX[_gt].nii.gz`) into raw/DatasetXXX_Name."""
    src = Path(src)
    training = src / "training" if (src / "training").is_dir() else src
    cases = find_frames(training, require_labels=True)
    if not cases:
        raise AutomedsamError(f"{src} holds no ACDC volumes (training/patientNNN/patientNNN_frameXX.nii.gz). Point "
                              "SRC at the folder that contains training/.")
    test_cases = find_frames(src / "testing", require_labels=False) if training != src else []
    problems: list[str] = []
    with staged_dataset(dataset_id, name, overwrite) as staging:
        work = [(case, "Tr") for case in cases] + [(case, "Ts") for case in test_cases]
        for (case_id, image, label), split in progress_over(work, len(work), "ACDC volumes"):
            try:
                _write_case(staging.folder, split, case_id, image, label)
            except UnwritableDiskError:
                raise  # not the case's fault: every case after it would fail alike
            except AutomedsamError as exc:
                problems.append(str(exc))
        if problems:
            raise AutomedsamError("ACDC conversion failed; fix or remove these volumes:\n  " + "\n  ".join(problems))
        write_dataset_json(
            staging.folder, name=name, labels=LABELS, channel_names={"0": "cineMRI"}, file_ending=".nii.gz",
            groups={case_id: patient(case_id) for case_id, _, _ in cases},
            description="ACDC cardiac cine MRI, end-diastolic and end-systolic short-axis volumes.",
            reference=REFERENCE, licence="CC BY-NC-SA 4.0 (non-commercial research only)", rings=RINGS,
        )
    return staging.target


def find_frames(folder: Path, require_labels: bool) -> list[tuple[str, Path, Path | None]]:
    """(case id, image, label or None) for every `patientNNN/patientNNN_frameXX.nii.gz` under `folder`."""
    if not folder.is_dir():
        return []
    cases, missing = [], []
    for image in sorted(folder.glob("patient*/patient*_frame*.nii.gz")):
        if not FRAME.match(image.name):
            continue
        case_id = image.name[: -len(".nii.gz")]
        label = image.with_name(f"{case_id}_gt.nii.gz")
        if label.is_file():
            cases.append((case_id, image, label))
        elif require_labels:
            missing.append(str(label))
        else:
            cases.append((case_id, image, None))
    if missing:
        raise AutomedsamError("These ACDC label files are missing; restore them from the release or remove their "
                              "images:\n  " + "\n  ".join(missing))
    return cases


def patient(case_id: str) -> str:
    """The patient a frame belongs to (`patient001_frame12` -> `patient001`)."""
    return case_id.split("_frame")[0]


def _write_case(folder: Path, split: str, case_id: str, image: Path, label: Path | None) -> None:
    pixels, geometry = read_image(image)
    if pixels.ndim != 3:
        raise AutomedsamError(f"{image}: expected a 3D volume, found shape {pixels.shape}")
    target = folder / f"images{split}" / f"{case_id}_0000.nii.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    copy_file(image, target)
    if label is None:
        return
    seg, seg_geometry = read_segmentation(label)
    if seg.shape != pixels.shape:
        raise AutomedsamError(f"{label}: shape {seg.shape} differs from its image {pixels.shape}")
    mismatch = geometry_mismatch(geometry, seg_geometry)
    if mismatch:
        raise AutomedsamError(f"{label}: geometry differs from its image ({mismatch})")
    unknown = sorted(set(np.unique(seg).tolist()) - set(LABELS.values()))
    if unknown:
        raise AutomedsamError(f"{label}: label values {unknown} are not ACDC labels (0 background, 1 RV, 2 MYO, 3 LV)")
    write_segmentation(folder / f"labels{split}" / f"{case_id}.nii.gz", seg, geometry)
