"""Small raw datasets written on the fly for the planning tests: 2D/3D, masks or boxes only, rings, many objects."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from automedsam.boxes import mask_to_boxes, write_box_file
from automedsam.io import Geometry, write_image, write_segmentation


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def write_dataset(raw_root: Path, folder: str, cases: list[dict], labels: dict[str, int], channel: str = "MRI",
                  file_ending: str = ".nii.gz", groups: dict[str, str] | None = None,
                  extra: dict | None = None) -> Path:
    """cases: {"id", "image", "geometry", optional "label" (array) and "boxes" (box file entries)}."""
    root = raw_root / folder
    for case in cases:
        write_image(root / "imagesTr" / f"{case['id']}_0000{file_ending}", case["image"], case["geometry"])
        if case.get("label") is not None:
            write_segmentation(root / "labelsTr" / f"{case['id']}{file_ending}", case["label"], case["geometry"])
        if case.get("boxes") is not None:
            write_box_file(root / "boxesTr" / f"{case['id']}.json", case["boxes"])
    meta = {"channel_names": {"0": channel}, "labels": labels, "numTraining": len(cases), "file_ending": file_ending}
    if groups:
        meta["groups"] = groups
    meta.update(extra or {})
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def plane_geometry(spacing: tuple[float, float] = (0.5, 0.5)) -> Geometry:
    return Geometry(spacing=spacing, origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0), kind="sitk")


def volume_geometry(spacing: tuple[float, float, float] = (1.0, 1.0, 3.0)) -> Geometry:
    return Geometry(spacing=spacing, origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), kind="sitk")


def make_2d_masks(raw_root: Path, n_cases: int = 12, per_group: int = 2, blobs: int = 1, empty_every: int = 0,
                  folder: str = "Dataset001_Discs", channel: str = "ultrasound") -> Path:
    """2D cases (40 x 48) with `blobs` discs of label 1; two cases per group; every `empty_every`-th case empty."""
    rng = np.random.default_rng(1)
    cases, groups = [], {}
    for index in range(n_cases):
        label = np.zeros((40, 48), dtype=np.uint8)
        if not (empty_every and index % empty_every == 0):
            for blob in range(blobs):
                label[disc(label.shape, (12 + 16 * (blob % 2), 10 + 28 * blob / max(blobs - 1, 1) + rng.uniform(0, 2)),
                           rng.uniform(4, 6))] = 1
        image = (rng.normal(50, 10, label.shape) + 100 * label).astype(np.float32)
        case_id = f"case{index:02d}"
        groups[case_id] = f"patient{index // per_group}"
        cases.append({"id": case_id, "image": image, "label": label, "geometry": plane_geometry()})
    return write_dataset(raw_root, folder, cases, {"background": 0, "disc": 1}, channel, groups=groups)


def ring_volume(rng: np.random.Generator, depth: int = 6, shape: tuple[int, int] = (40, 48)) -> np.ndarray:
    """Cardiac-like label volume: 1 = blob beside, 2 = ring (myocardium), 3 = its cavity; first slice empty."""
    label = np.zeros((depth, *shape), dtype=np.uint8)
    for z in range(1, depth):
        centre = (20 + rng.uniform(-1, 1), 28 + rng.uniform(-1, 1))
        label[z][disc(shape, centre, 10)] = 2
        label[z][disc(shape, centre, 6)] = 3
        label[z][disc(shape, (20, 9), 5)] = 1
    return label


def make_3d_ring(raw_root: Path, n_cases: int = 6, spacing: tuple[float, float, float] = (1.0, 1.0, 3.0),
                 folder: str = "Dataset002_Heart", declare_ring: bool = True) -> Path:
    """3D cardiac-like volumes, two frames per patient (grouped), coarsest spacing along z by default; dataset.json
    declares MYO a ring around LV unless told not to."""
    rng = np.random.default_rng(2)
    cases, groups = [], {}
    for index in range(n_cases):
        label = ring_volume(rng)
        image = (rng.normal(0.2, 0.05, label.shape) + 0.2 * label).astype(np.float32)
        case_id = f"patient{index // 2:03d}_frame{index % 2 + 1:02d}"
        groups[case_id] = f"patient{index // 2:03d}"
        cases.append({"id": case_id, "image": image, "label": label, "geometry": volume_geometry(spacing)})
    return write_dataset(raw_root, folder, cases, {"background": 0, "RV": 1, "MYO": 2, "LV": 3}, groups=groups,
                         extra={"rings": {"MYO": ["LV"]}} if declare_ring else None)


def make_2d_boxes(raw_root: Path, n_cases: int = 8, folder: str = "Dataset003_Boxes") -> Path:
    """2D cases with boxes only (no labelsTr): one box of label 1 each, the last two cases with none."""
    rng = np.random.default_rng(3)
    cases = []
    for index in range(n_cases):
        mask = disc((40, 48), (20, 24 + rng.uniform(-4, 4)), 8) if index < n_cases - 2 else np.zeros((40, 48), bool)
        image = (rng.normal(50, 10, mask.shape) + 80 * mask).astype(np.float32)
        boxes = [{"label": 1, "box": list(box)} for box in mask_to_boxes(mask)]
        cases.append({"id": f"img{index:02d}", "image": image, "boxes": boxes, "geometry": plane_geometry()})
    return write_dataset(raw_root, folder, cases, {"background": 0, "lesion": 1}, "CT")


def make_3d_boxes(raw_root: Path, n_cases: int = 4, folder: str = "Dataset004_BoxVolumes") -> Path:
    """3D cases with boxes on some slices along the first array axis."""
    rng = np.random.default_rng(4)
    cases = []
    for index in range(n_cases):
        label = ring_volume(rng)
        image = (rng.normal(0.2, 0.05, label.shape) + 0.2 * label).astype(np.float32)
        boxes = [{"label": 3, "box": list(box), "slice": z} for z in (2, 4) for box in mask_to_boxes(label[z] == 3)]
        cases.append({"id": f"vol{index}", "image": image, "boxes": boxes,
                      "geometry": volume_geometry((1.0, 1.0, 1.0))})
    return write_dataset(raw_root, folder, cases, {"background": 0, "RV": 1, "MYO": 2, "LV": 3})


def rectangle_at(left: int, top: int) -> np.ndarray:
    """A 60 x 80 mask with one 12 x 14 rectangle of label 1: moved, it changes no plan (same size everywhere)."""
    mask = np.zeros((60, 80), dtype=np.uint8)
    mask[top:top + 12, left:left + 14] = 1
    return mask


def make_2d_rectangles(raw_root: Path, n_cases: int = 6) -> Path:
    """Noise images, each with one rectangle of the same size at its own place (Dataset001_Rectangles)."""
    rng = np.random.default_rng(0)
    cases = [{"id": f"c{index}", "image": rng.uniform(0, 255, (60, 80)).astype(np.float32),
              "label": rectangle_at(10 + 3 * index, 10), "geometry": plane_geometry()} for index in range(n_cases)]
    return write_dataset(raw_root, "Dataset001_Rectangles", cases, {"background": 0, "object": 1})
