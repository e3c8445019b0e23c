"""What the bad-input cases share: the user's world, the case registry and builders of (broken) inputs.

Everything a user owns (datasets, box files, images to predict, downloaded checkpoints) lives under the raw root,
so tests/test_bad_inputs.py can check that a failing command created or changed nothing there.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from automedsam.checkpoint import save_checkpoint
from automedsam.files import save_json
from automedsam.io import Geometry, write_image, write_segmentation
from automedsam.model_sharing.export import export_model
from automedsam.prompt_module import build_prompt_module, modules_state_dict
from synthetic_raw import make_2d_boxes, make_2d_masks
from toy_model import toy_image, toy_plans

PLAN = ["-d", "1", "--plan-only", "-np", "1", "--shots", "2"]
MARKER = "PAYLOAD_RAN"


@dataclass
class World:
    """The three roots of one case, the user's own folder (`inbox`, inside raw/) and the environment."""

    raw: Path
    preprocessed: Path
    results: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def inbox(self) -> Path:
        folder = self.raw / "inbox"
        folder.mkdir(exist_ok=True)
        return folder

    @property
    def marker(self) -> Path:
        """The file a malicious pickle would create if automedsam ran its payload."""
        return self.raw.parent / MARKER


@dataclass(frozen=True)
class BadInput:
    name: str
    command: str
    prepare: Callable[[World], list[str]]
    expect: tuple[str, ...]
    subprocess: bool = False


BAD_INPUTS: list[BadInput] = []


def bad(command: str, *expect: str, subprocess: bool = False):
    """Register the decorated function as a bad-input case of `command`."""
    def register(prepare: Callable[[World], list[str]]) -> Callable[[World], list[str]]:
        BAD_INPUTS.append(BadInput(prepare.__name__, command, prepare, expect, subprocess))
        return prepare
    return register


# ------------------------------------------------------------------------------------------------ building blocks


class Payload:
    """Unpickling this calls Path.touch(marker): proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def write_malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A torch.save file that looks like a state dict but carries a payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"1.sparse_linear.weight": torch.zeros(2), "1.payload": Payload(marker)}, path)
    return path


def discs(world: World, cases: int = 4) -> Path:
    """A valid 2D NIfTI dataset, Dataset001_Discs: case00..case03, label 1 = disc."""
    return make_2d_masks(world.raw, n_cases=cases)


def boxes_dataset(world: World, box: list[int]) -> list[str]:
    """A box-labelled dataset (Dataset003_Boxes, images 40 x 48) whose img00 has `box`."""
    root = make_2d_boxes(world.raw, n_cases=4)
    (root / "boxesTr" / "img00.json").write_text(json.dumps([{"label": 1, "box": box}]))
    return ["-d", "3", "--plan-only", "-np", "1", "--shots", "2"]


def edit_dataset_json(root: Path, **changes) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    (root / "dataset.json").write_text(json.dumps(meta))


def sitk_geometry(spacing=(0.5, 0.5), direction=(1.0, 0.0, 0.0, 1.0)) -> Geometry:
    return Geometry(spacing=spacing, origin=(0.0,) * len(spacing), direction=direction, kind="sitk")


def replace_image(root: Path, case: str, array: np.ndarray, geometry: Geometry | None = None) -> Path:
    path = root / "imagesTr" / f"{case}_0000.nii.gz"
    write_image(path, array, geometry or sitk_geometry())
    return path


def replace_label(root: Path, case: str, array: np.ndarray, geometry: Geometry | None = None) -> Path:
    path = root / "labelsTr" / f"{case}.nii.gz"
    write_segmentation(path, array, geometry or sitk_geometry())
    return path


def png_dataset(world: World, image: np.ndarray, label: np.ndarray) -> list[str]:
    """A PNG dataset (Dataset005_Png) of 3 good cases plus `bad` with the given image and label."""
    root = world.raw / "Dataset005_Png"
    rng = np.random.default_rng(5)
    for index in range(3):
        good = np.zeros((40, 48), np.uint8)
        good[10:25, 12:30] = 1
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(root_dir(root / "imagesTr") /
                                                                            f"ok{index}_0000.png")
        Image.fromarray(good).save(root_dir(root / "labelsTr") / f"ok{index}.png")
    Image.fromarray(image).save(root / "imagesTr" / "bad_0000.png")
    Image.fromarray(label).save(root / "labelsTr" / "bad.png")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "US"}, "labels": {"background": 0, "a": 1},
                                                   "numTraining": 4, "file_ending": ".png"}))
    return ["-d", "5", "--plan-only", "-np", "1", "--shots", "2"]


def root_dir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def label_png() -> np.ndarray:
    label = np.zeros((40, 48), np.uint8)
    label[5:20, 5:20] = 1
    return label


def toy_model(world: World, folds: tuple[int, ...] = (0,), center_channels: int | None = None) -> Path:
    """A trained-model folder (random prompt modules) and the images to predict, in inbox/images."""
    plans = toy_plans()
    model_dir = world.results / "Dataset001_Toy" / "default__toyPlans"
    save_json(model_dir / "plans.json", plans)
    module_plans = plans if center_channels is None else {**plans, "prompt_module": {
        **plans["prompt_module"], "center_channels": center_channels}}
    for fold in folds:
        modules = {int(t["label"]): build_prompt_module(module_plans) for t in plans["targets"]}
        for kind in ("best", "final"):
            save_checkpoint(model_dir / f"fold_{fold}", kind, modules_state_dict(modules), {"fold": fold})
    images = world.inbox / "images"
    images.mkdir(exist_ok=True)
    for index in range(2):
        Image.fromarray(toy_image(index)).save(images / f"img{index}.png")
    return model_dir


def exportable_toy_model(world: World, **plans_changes) -> Path:
    """`toy_model` with what a finished training run also leaves (dataset.json, log.json), plans edited as given."""
    model_dir = toy_model(world)
    save_json(model_dir / "plans.json", {**toy_plans(), **plans_changes})
    save_json(model_dir / "dataset.json", {"channel_names": {"0": "US"}, "labels": {"background": 0, "ring": 1,
                                           "core": 2}, "numTraining": 2, "file_ending": ".png"})
    save_json(model_dir / "fold_0" / "log.json", {"epochs": [], "summary": {"fold": 0, "epochs": 1}})
    return model_dir


def model_archive(world: World, *, drop: tuple[str, ...] = (),
                  add: tuple[tuple[zipfile.ZipInfo | str, bytes], ...] = ()) -> Path:
    """The toy model exported to inbox/model.zip, with members dropped or added (a name may repeat)."""
    exported = export_model(exportable_toy_model(world), world.inbox / "exported.zip", folds=(0,))
    target = world.inbox / "model.zip"
    with zipfile.ZipFile(exported.output) as source, zipfile.ZipFile(target, "w") as archive:
        for name in source.namelist():
            if name not in drop:
                archive.writestr(name, source.read(name))
        for info, data in add:
            archive.writestr(info, data)
    exported.output.unlink()
    return target


def predict_args(world: World, model_dir: Path, *extra: str, device: str = "cpu") -> list[str]:
    return ["-i", str(world.inbox / "images"), "-o", str(world.results.parent / "predictions"), "-m", str(model_dir),
            "--device", device, *extra]


def box_prompt_args(world: World, entries: dict) -> list[str]:
    toy_model(world)
    box_file = world.inbox / "boxes.json"
    box_file.write_text(json.dumps(entries))
    return ["-i", str(world.inbox / "images"), "-o", str(world.results.parent / "predictions"), "--boxes",
            str(box_file), "--device", "cpu"]


def fake_preprocessed(world: World) -> None:
    """plans.json and splits.json of Dataset001_Toy, enough for train to get as far as loading the foundation."""
    folder = world.preprocessed / "Dataset001_Toy"
    save_json(folder / "plans.json", toy_plans())
    save_json(folder / "splits.json", {"seed": 0, "shots": 2, "labelled": ["a", "b"],
                                       "folds": [{"train": ["a"], "val": ["b"]}] * 5})


def segmentation_folders(world: World, pred_shape=(20, 30)) -> tuple[Path, Path]:
    refs, preds = root_dir(world.inbox / "refs"), root_dir(world.inbox / "preds")
    for case in ("a", "b"):
        Image.fromarray(np.ones((20, 30), np.uint8)).save(refs / f"{case}.png")
        Image.fromarray(np.ones(pred_shape, np.uint8)).save(preds / f"{case}.png")
    return refs, preds
