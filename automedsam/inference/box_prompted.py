"""Interactive MedSAM mode: segment boxes given by the user with the foundation model alone, no trained fold.

It is also the reference the learned prompts are measured against. The box file is JSON
`{"CASE": [{"label": 1, "box": [x0, y0, x1, y1], "slice": z}, ...]}` in the boxesTr convention: inclusive pixel
corners, x = column, `slice` (3D only) an index along the first array axis (Z).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from automedsam.boxes import BOX_SLICE_AXIS, rasterise_ellipses, validate_box
from automedsam.errors import AutomedsamError
from automedsam.files import load_json
from automedsam.foundation.base import FoundationModel
from automedsam.inference.predictor import drop_probabilities, intensity_doubt, volume_axis
from automedsam.io import MAX_LABEL, read_image, write_segmentation
from automedsam.plans import Plans

ENTRY_KEYS = {"label", "box", "slice"}
PlaneEmbedding = Callable[[int | None, np.ndarray], torch.Tensor]  # (slice, normalised plane) -> (1, 256, 64, 64)


def read_prompt_boxes(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The box file as case id -> entries, its structure checked (boxes are checked per image later)."""
    data = load_json(path, "box file")
    example = '{"CASE": [{"label": 1, "box": [x0, y0, x1, y1]}]}'
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise AutomedsamError(f"The box file {path} must map case ids to lists of boxes, like {example}.")
    for case, entries in data.items():
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not {"label", "box"} <= entry.keys() or entry.keys() - ENTRY_KEYS:
                raise AutomedsamError(f"box file {path}, case '{case}', entry {index}: expected an object with keys "
                                      f"label, box and (3D only) slice, like {example}; got {entry!r}.")
    return data


def check_planned_labels(entries: Mapping[str, list[dict[str, Any]]], plans: Plans, *, path: str | Path) -> None:
    """Refuse boxes of labels the model's dataset does not define (a typo, a box file of another dataset): they
    would be written into label maps under ids that mean nothing to the dataset. A ring's label is a target like
    any other. Labels that are no label id at all are left to `check_case_boxes`, which names the entry."""
    defined = {target["label"]: target.get("name") for target in plans.targets}
    undefined: dict[int, str] = {}  # label -> the first case giving it
    for case, case_entries in entries.items():
        for entry in case_entries:
            if _is_label_id(entry["label"]) and entry["label"] not in defined:
                undefined.setdefault(entry["label"], case)
    if undefined:
        given = ", ".join(f"{label} (case '{case}')" for label, case in sorted(undefined.items()))
        names = ", ".join(f"{label} ({name})" if name else str(label) for label, name in sorted(defined.items()))
        raise AutomedsamError(f"The box file {path} gives boxes of label(s) the model's dataset does not define: "
                              f"{given}. Its labels are {names}. Fix the labels in the box file, or leave out -d/-m "
                              "to segment the boxes with the foundation model alone, under the ids they give.")


def check_case_boxes(entries: list[dict[str, Any]], shape: tuple[int, ...], *, is_volume: bool,
                     where: str) -> list[dict[str, Any]]:
    """Check one case's entries against its image: labels, slice indices and boxes inside the image."""
    if entries and is_volume:
        _check_boxable_volume(shape, where=where)
    checked = []
    for index, entry in enumerate(entries):
        here = f"{where}, entry {index}"
        label = entry["label"]
        if not _is_label_id(label):
            raise AutomedsamError(f"{here}: label must be a foreground label id (a whole number from 1 to "
                                  f"{MAX_LABEL}, the most a label map holds), got {label!r}.")
        slice_index = entry.get("slice")
        if is_volume:
            if isinstance(slice_index, bool) or not isinstance(slice_index, int):
                raise AutomedsamError(f"{here}: the image is 3D, so the entry needs an integer \"slice\" (index along "
                                      f"the first array axis, 0..{shape[0] - 1}).")
            if not 0 <= slice_index < shape[0]:
                raise AutomedsamError(f"{here}: slice {slice_index} is outside the image's {shape[0]} slices "
                                      f"(valid 0..{shape[0] - 1}).")
        elif slice_index is not None:
            raise AutomedsamError(f"{here}: the image is 2D, so the entry must not have a \"slice\".")
        plane = tuple(shape[1:3]) if is_volume else tuple(shape[:2])
        checked.append({"label": label, "box": validate_box(entry["box"], plane, here), "slice": slice_index})
    return checked


def _is_label_id(label: Any) -> bool:
    """Whether a box entry's label is a foreground label id a label map can hold."""
    return isinstance(label, int) and not isinstance(label, bool) and 1 <= label <= MAX_LABEL


def _check_boxable_volume(shape: tuple[int, ...], *, where: str) -> None:
    """Refuse boxes on a volume one voxel thick along an axis other than the boxes' slice axis: a single slice saved
    so (a sagittal slice exported as NIfTI, (Z, Y, 1)) is that slice, but the box file's slices cut it into
    images one pixel wide, where no box outlines anything."""
    thin = volume_axis(shape[:3], planned=BOX_SLICE_AXIS)
    if thin != BOX_SLICE_AXIS:
        raise AutomedsamError(f"{where}: the image is a single slice saved as a volume of shape {tuple(shape[:3])}, "
                              f"one voxel thick along array axis {thin}, but a box file's \"slice\" counts slices "
                              f"along the first axis, each one pixel wide here. Save the slice as a 2D image (PNG) and "
                              "give its boxes without \"slice\", or as a volume of size X Y 1 (ITK's order) and give "
                              "them \"slice\": 0.")


class BoxPredictor:
    """Segments given boxes with a foundation model; later entries win where two masks overlap, except that the
    boxes of a ring target (plans `subtract`, e.g. myocardium around the cavity) go first, filled with the ellipse
    inscribed in the box, which the enclosed structures' outlines then cut back to the ring. Given a ring's box the
    frozen model outlines the cavity, not the ring (documentation/benchmarks.md, ACDC), so the ring's region is the
    ellipse the planner trains it from."""

    def __init__(self, foundation: FoundationModel, plans: Mapping | None = None) -> None:
        self.foundation = foundation
        self.plans = None if plans is None else Plans(plans)
        self.ring_labels = set() if self.plans is None else {
            int(target["label"]) for target in self.plans.targets if target.get("subtract")}

    def predict_array(self, image: np.ndarray, entries: list[dict[str, Any]], is_volume: bool, *,
                      embedding_of: PlaneEmbedding | None = None) -> np.ndarray:
        """Label map of `image` from checked entries (see `check_case_boxes`). `embedding_of(slice, plane)`: a boxed
        plane's embedding when the caller keeps them (slice None for a 2D image), else each plane is encoded."""
        pixels = self.plans.normalise(image) if self.plans is not None else np.asarray(image)
        shape = pixels.shape[:3] if is_volume else pixels.shape[:2]
        peak = max((entry["label"] for entry in entries), default=0)
        label_map = np.zeros(shape, dtype=np.uint8 if peak <= 255 else np.uint16)
        slices = sorted({entry["slice"] for entry in entries}, key=lambda s: -1 if s is None else s)
        for slice_index in slices:
            chosen = [entry for entry in entries if entry["slice"] == slice_index]
            plane = pixels[slice_index] if is_volume else pixels
            target = label_map[slice_index] if is_volume else label_map
            for entry in chosen:
                if entry["label"] in self.ring_labels:
                    target[rasterise_ellipses([entry["box"]], target.shape)] = entry["label"]
            outlined = [entry for entry in chosen if entry["label"] not in self.ring_labels]
            if not outlined:  # rings alone: no encoder pass
                continue
            embedding = None if embedding_of is None else embedding_of(slice_index, plane)
            masks = self.foundation.segment_boxes(plane, [entry["box"] for entry in outlined], embedding=embedding)
            for entry, mask in zip(outlined, masks):
                target[mask] = entry["label"]
        return label_map

    def predict_file(self, path: str | Path, out_path: str | Path, *, entries: list[dict[str, Any]],
                     where: str) -> str | None:
        """Check the entries against the image at `path`, segment them and write the label map atomically, without
        an earlier run's probabilities of the case (the folds' probabilities, not this label map's). Returns why
        the image's intensities make the label map unreliable (`intensity_doubt`), None when nothing is wrong."""
        image, geometry = read_image(path)
        is_volume = geometry.ndim == 3
        checked = check_case_boxes(entries, image.shape, is_volume=is_volume, where=where)
        label_map = self.predict_array(image, checked, is_volume)
        drop_probabilities(out_path)
        write_segmentation(out_path, label_map, geometry)
        return intensity_doubt(image, self.plans, colour=not is_volume and image.ndim == 3)
