"""The speed benchmark's workspace: real datasets converted under temporary roots, trained models, input folders.

Nothing goes into the repository or the user's roots: the AUTOMEDSAM_* roots point into the workspace for the
whole run. Prediction inputs are links to raw images that no fold was trained on.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console

from automedsam.conversion import convert_acdc, convert_hc18
from automedsam.dataset import Case, RawDataset, load_raw_dataset
from automedsam.files import load_json, save_json
from automedsam.folds import SPLITS_FILE
from automedsam.paths import preprocessed_dataset_dir, roots_at
from automedsam.planning.preprocessing import sample_catalogue
from automedsam.plans import Plans
from automedsam.training import train_fold

ROOTS = ("raw", "preprocessed", "results")
FOLDS = 5


@dataclass(frozen=True)
class DatasetSpec:
    dataset_id: int
    release_folder: str  # under --data
    convert: Callable[..., Path]


DATASETS = {"hc18": DatasetSpec(1, "HC18", convert_hc18), "acdc": DatasetSpec(2, "ACDC", convert_acdc)}


@contextmanager
def workspace_roots(root: Path) -> Iterator[None]:
    """Point AUTOMEDSAM_RAW / _PREPROCESSED / _RESULTS into `root` for the duration (restored afterwards)."""
    for kind in ROOTS:
        (root / kind).mkdir(parents=True, exist_ok=True)
    with roots_at({kind: root / kind for kind in ROOTS}):
        yield


def converted(key: str, data: Path) -> RawDataset:
    """The release under `data` converted into the workspace's raw root (reused when already there)."""
    spec = DATASETS[key]
    existing = sorted(Path(os.environ["AUTOMEDSAM_RAW"]).glob(f"Dataset{spec.dataset_id:03d}_*"))
    folder = existing[0] if existing else spec.convert(data / spec.release_folder, spec.dataset_id)
    return load_raw_dataset(folder, check_images=False)


def labelled_cases(raw: RawDataset) -> set[str]:
    """Cases holding one of the planned labelled samples (read from the preprocessed splits and plans)."""
    folder = preprocessed_dataset_dir(raw.name)
    fingerprint = load_json(folder / "fingerprint.json", "fingerprint")
    catalogue = sample_catalogue(fingerprint, Plans.load(folder / "plans.json").slicing_axis)
    return {catalogue[sid][0] for sid in load_json(folder / SPLITS_FILE, "splits")["labelled"]}


def held_out_cases(raw: RawDataset, count: int, *, fewer_ok: bool = False) -> list[Case]:
    """The first `count` cases (in name order) of the groups with no labelled sample: images no fold has seen, nor
    another frame of their examination (all of them where there are fewer and `fewer_ok`)."""
    labelled = labelled_cases(raw)
    groups = {case.group for case in raw.cases if case.case_id in labelled}
    cases = [case for case in raw.cases if case.group not in groups and case.label is not None]
    if len(cases) < count and not fewer_ok:
        raise SystemExit(f"{raw.name} has only {len(cases)} unlabelled cases with masks; ask for at most that many.")
    return cases[:count]


def input_folder(cases: list[Case], folder: Path) -> Path:
    """A folder of links to the cases' raw images, named as in imagesTr."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        link = folder / case.image.name
        if not link.is_symlink():
            link.symlink_to(case.image.resolve())
    return folder


def repeated_input_folder(cases: list[Case], count: int, folder: Path) -> Path:
    """A folder of `count` links named img0000_0000..., cycling through the cases' raw images: a run longer than the
    held-out cases predicts each image again under a new name, at the same cost."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = cases[index % len(cases)].image
        link = folder / f"img{index:04d}_0000{''.join(image.suffixes)}"
        if not link.is_symlink():
            link.symlink_to(image.resolve())
    return folder


def repeated_raw_dataset(source: RawDataset, cases: list[Case], count: int, *, dataset_id: int) -> RawDataset:
    """A raw dataset of `count` cases linking to `cases`' images and masks in turn, so that plan_and_preprocess can
    be timed on more images than the release holds: new case ids, the source's groups (copies of one image stay in
    one fold) and spacings."""
    meta = load_json(source.root / "dataset.json", "dataset description")
    name = f"{source.name.split('_', 1)[1]}x{count}"
    folder = Path(os.environ["AUTOMEDSAM_RAW"]) / f"Dataset{dataset_id:03d}_{name}"
    repeated_input_folder(cases, count, folder / "imagesTr")
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    groups, spacing = {}, {}
    for index in range(count):
        case = cases[index % len(cases)]
        case_id = f"img{index:04d}"
        link = folder / "labelsTr" / f"{case_id}{meta['file_ending']}"
        if not link.is_symlink():
            link.symlink_to(case.label.resolve())
        groups[case_id] = meta.get("groups", {}).get(case.case_id, case.case_id)
        if case.case_id in meta.get("spacing", {}):
            spacing[case_id] = meta["spacing"][case.case_id]
    save_json(folder / "dataset.json", {**meta, "name": name, "numTraining": count,
                                        "groups": groups, "spacing": spacing})
    return load_raw_dataset(folder, check_images=False)


def quick_folds(raw: RawDataset, folds: range, epochs: int, device: str, console: Console) -> Path:
    """Train `folds` of the default trainer for `epochs` epochs each (finished folds are kept); the model folder.

    Their weights only matter for Dice, not for timing: prediction costs the same for any weights.
    """
    model_dir = None
    for fold in folds:
        fold_dir = _finished_fold(raw, fold)
        if fold_dir is None:
            fold_dir = train_fold(raw.name, fold, epochs=epochs, device=device, console=console).fold_dir
        model_dir = fold_dir.parent
    if model_dir is None:
        raise ValueError("quick_folds needs at least one fold")
    return model_dir


def _finished_fold(raw: RawDataset, fold: int) -> Path | None:
    results = Path(os.environ["AUTOMEDSAM_RESULTS"]) / raw.name
    found = sorted(results.glob(f"default__*/fold_{fold}/checkpoint_final.pt"))
    return found[0].parent if found else None
