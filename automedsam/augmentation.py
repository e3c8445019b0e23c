"""Views: fixed, deterministic transforms of a 2D sample (flips, 90-degree rotations, a gamma change).

A few labelled samples overfit a prompt module, and re-encoding an augmented image on every step would cost an
encoder pass per step. A view is instead applied once at preprocessing to a labelled sample's image, label map and
boxes, and encoded once; training then draws among a sample and its views at no extra cost. A view is a JSON dict
`{"name": "v01", "flip": [1], "rot90": 1, "gamma": 0.8}`: flip the listed array axes (0 = rows, i.e. upside
down; 1 = columns, i.e. left-right), then rotate `rot90` times by 90 degrees counter-clockwise (`np.rot90`), then
raise the [0, 1] intensities to the power `gamma` (1 leaves them). Flips and rotations move whole pixels, so the
label map is transformed exactly and the box of a transformed mask is the transformed box.

batchgenerators offers these transforms only as random draws on numpy's global generator (`augment_mirroring`,
`augment_rot90`, and `augment_gamma`, which moreover rescales each image to its own min-max range), so fixed views
use numpy directly.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import numpy as np

from automedsam.errors import AutomedsamError

View = dict[str, Any]
VIEW_KEYS = ("name", "flip", "rot90", "gamma")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_SLICE_NAME = re.compile(r"z[0-9]+")  # would read as a slice id: CASE__z007


def planned_views(plans: Mapping[str, Any], where: str = "plans.json") -> list[View]:
    """The plans' views, checked and with defaults filled in; none when the plans lack an augmentation section."""
    section = plans.get("augmentation")
    if section is None:
        return []
    views = section.get("views") if isinstance(section, Mapping) else None
    if not isinstance(views, list):
        raise AutomedsamError(f"{where}: augmentation.views must be a list of views such as "
                              '{"name": "v01", "flip": [1], "rot90": 1, "gamma": 0.8}; use [] for none.')
    checked = [check_view(view, f"{where} augmentation.views[{index}]") for index, view in enumerate(views)]
    names = [view["name"] for view in checked]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise AutomedsamError(f"{where}: augmentation view name(s) {', '.join(repeated)} used twice; names must be "
                              "unique (they name the view's sample files).")
    return checked


def check_view(view: Any, where: str) -> View:
    """One view spec as a complete dict; AutomedsamError naming the bad key of a hand-edited one."""
    if not isinstance(view, Mapping):
        raise AutomedsamError(f"{where} must be a dict with keys {', '.join(VIEW_KEYS)}, got {view!r}.")
    unknown = sorted(set(view) - set(VIEW_KEYS))
    if unknown:
        raise AutomedsamError(f"{where} has unknown key(s) {', '.join(unknown)}; a view has {', '.join(VIEW_KEYS)}.")
    name, flip = view.get("name"), view.get("flip", [])
    rot90, gamma = view.get("rot90", 0), view.get("gamma", 1.0)
    if not isinstance(name, str) or not _NAME.fullmatch(name) or _SLICE_NAME.fullmatch(name):
        raise AutomedsamError(f"{where}: name must be letters, digits and '-' (not of the slice form z007), "
                              f"got {name!r}.")
    if not _is_flip(flip):
        raise AutomedsamError(f"{where}: flip must list distinct array axes 0 (rows) and/or 1 (columns), got {flip!r}.")
    if isinstance(rot90, bool) or not isinstance(rot90, int) or rot90 not in range(4):
        raise AutomedsamError(f"{where}: rot90 must be 0, 1, 2 or 3 (quarter turns), got {rot90!r}.")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < math.inf:
        raise AutomedsamError(f"{where}: gamma must be a finite number > 0 (1 leaves intensities unchanged), got "
                              f"{gamma!r}.")
    return {"name": name, "flip": sorted(flip), "rot90": rot90, "gamma": float(gamma)}


def view_sample_id(sample_id: str, view: View) -> str:
    """`CASE__v01`, `CASE__z007__v01`: the sample id of a view of a sample."""
    return f"{sample_id}__{view['name']}"


def transform_image(image: np.ndarray, view: View) -> np.ndarray:
    """A normalised image ((H, W) or (H, W, 3), values in [0, 1]) seen through the view, float32."""
    return np.ascontiguousarray(np.power(_move_pixels(image, view), view["gamma"]), dtype=np.float32)


def transform_label_map(label_map: np.ndarray, view: View) -> np.ndarray:
    """A 2D label map seen through the view: pixels moved, values kept."""
    return np.ascontiguousarray(_move_pixels(label_map, view))


def transform_box(box: Sequence[int], shape: Sequence[int], view: View) -> list[int]:
    """An inclusive box `[x0, y0, x1, y1]` of an image of `shape` (H, W, ...) in the view's frame."""
    x0, y0, x1, y1 = (int(value) for value in box)
    height, width = int(shape[0]), int(shape[1])
    if 0 in view["flip"]:
        y0, y1 = height - 1 - y1, height - 1 - y0
    if 1 in view["flip"]:
        x0, x1 = width - 1 - x1, width - 1 - x0
    for _ in range(view["rot90"]):  # counter-clockwise: pixel (row r, column c) goes to (width - 1 - c, r)
        x0, y0, x1, y1 = y0, width - 1 - x1, y1, width - 1 - x0
        height, width = width, height
    return [x0, y0, x1, y1]


def transform_pair(pair: Sequence[Any], view: View) -> list[Any]:
    """A per-axis pair (shape [H, W] or spacing [sx, sy]) in the view's frame: odd quarter turns swap it."""
    first, second = pair[0], pair[1]
    return [second, first] if view["rot90"] % 2 else [first, second]


def _is_flip(flip: Any) -> bool:
    return (isinstance(flip, list) and all(type(axis) is int and axis in (0, 1) for axis in flip)
            and len(set(flip)) == len(flip))


def _move_pixels(array: np.ndarray, view: View) -> np.ndarray:
    for axis in view["flip"]:
        array = np.flip(array, axis=axis)
    return np.rot90(array, view["rot90"], axes=(0, 1))
