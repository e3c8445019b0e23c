"""Weak labels as boxes: tight boxes from masks, box files, box rasterising.

Convention everywhere: `[x0, y0, x1, y1]`, integer pixel indices, inclusive corners, x = column, y = row.
A one-pixel box is `[x, y, x, y]`; its width is `x1 - x0 + 1`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import ndimage

from automedsam.errors import AutomedsamError
from automedsam.files import load_json, save_json

Box = tuple[int, int, int, int]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
BOX_SLICE_AXIS = 0  # a box file gives a volume's boxes per slice along this array axis ("slice" counts along it)
MASK_BOXES = 2  # the rule by which annotator_boxes turns a mask into boxes, recorded beside the samples made with it
# (2: specks left out), so that samples made under an earlier rule are found and written again
SPECK_SHARE = 0.05  # a component under this share of the largest one of its mask is taken as a speck an annotator
# leaves unboxed (documentation/planning.md, label statistics; why: commit 23afcb2)


def mask_to_boxes(mask2d: np.ndarray, per_component: bool = False, min_size: int = 0) -> list[Box]:
    """Tight box of a 2D mask, or one box per 8-connected component when `per_component`.

    Components smaller than `min_size` pixels (annotation specks) are ignored in both modes. Boxes of components
    come in raster order of their top-left-most pixel; an empty mask gives [].
    """
    mask = np.asarray(mask2d).astype(bool, copy=False)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_boxes expects a 2D mask, got shape {mask.shape}")
    if not mask.any():
        return []
    if not per_component and min_size <= 1:
        return [slices_to_box(tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask)))]
    components, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    kept = [(index + 1, slices) for index, slices in enumerate(ndimage.find_objects(components))
            if slices is not None and sizes[index + 1] >= min_size]
    if per_component:
        return [slices_to_box(slices) for _, slices in kept]
    if not kept:
        return []
    return [_union([slices_to_box(slices) for _, slices in kept])]


def label_map_to_boxes(label_map2d: np.ndarray, labels: Iterable[int], *, per_component: bool = False,
                       min_size: int = 0) -> dict[int, list[Box]]:
    """Boxes of each requested label of a 2D label map (an absent label maps to [])."""
    label_map = np.asarray(label_map2d)
    return {int(label): mask_to_boxes(label_map == label, per_component=per_component, min_size=min_size)
            for label in labels}


def without_specks(mask2d: np.ndarray) -> np.ndarray:
    """A 2D mask less its specks: 8-connected components under SPECK_SHARE of its largest one, the stray pixels of
    a drawn mask that an annotator drawing boxes never boxes. A lone small object is its own largest and stays."""
    mask = np.asarray(mask2d).astype(bool, copy=False)
    components, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count < 2:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    kept = sizes >= SPECK_SHARE * sizes.max()
    kept[0] = False
    return kept[components]


def annotator_boxes(label_map2d: np.ndarray, labels: Iterable[int], *,
                    per_component: bool = False) -> dict[int, list[Box]]:
    """The boxes an annotator draws around each requested label of a 2D label map: `label_map_to_boxes`'s, each
    label's specks left out (`without_specks`)."""
    label_map = np.asarray(label_map2d)
    return {int(label): mask_to_boxes(without_specks(label_map == label), per_component=per_component)
            for label in labels}


def volume_to_slice_boxes(label_map3d: np.ndarray, labels: Iterable[int], *, axis: int = 0,
                          per_component: bool = False, min_size: int = 0) -> list[dict[str, Any]]:
    """Per-slice boxes of a 3D label map: `[{"label", "box", "slice"}]`, slice index along `axis`.

    Each slice is the 2D array `np.take(label_map3d, slice, axis)`, so x and y are its column and row.
    """
    volume = np.asarray(label_map3d)
    if volume.ndim != 3:
        raise ValueError(f"volume_to_slice_boxes expects a 3D label map, got shape {volume.shape}")
    labels = [int(label) for label in labels]
    entries = []
    for index in range(volume.shape[axis]):
        slice2d = np.take(volume, index, axis=axis)
        found = label_map_to_boxes(slice2d, labels, per_component=per_component, min_size=min_size)
        for label, boxes in found.items():
            entries.extend({"label": label, "box": list(box), "slice": index} for box in boxes)
    return entries


def rasterise_boxes(boxes: Sequence[Sequence[int]], shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) image that is True inside any of the boxes (clipped to the image)."""
    height, width = shape
    raster = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        raster[max(int(y0), 0): max(int(y1) + 1, 0), max(int(x0), 0): max(int(x1) + 1, 0)] = True
    return raster


def rasterise_ellipses(boxes: Sequence[Sequence[int]], shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) image that is True inside the ellipse inscribed in any of the boxes: the shape a tight box
    implies for a round, convex object (pixel centres at +0.5, the ellipse touching the box's four outer edges)."""
    rows, columns = np.ogrid[:shape[0], :shape[1]]
    raster = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        centre_x, centre_y = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2
        radius_x, radius_y = (x1 - x0 + 1) / 2, (y1 - y0 + 1) / 2
        raster |= ((columns + 0.5 - centre_x) / radius_x) ** 2 + ((rows + 0.5 - centre_y) / radius_y) ** 2 <= 1
    return raster


def validate_box(box: Any, shape: tuple[int, int], where: str) -> Box:
    """Return the box as 4 ints if it is a well-formed box inside an image of (H, W) `shape`; else say why.

    `where` names the file and entry in the message (e.g. "boxesTr/case1.json, entry 2").
    """
    if isinstance(box, (str, bytes)) or not isinstance(box, Sequence) or len(box) != 4:
        raise AutomedsamError(f"{where}: a box must be a list of 4 integers [x0, y0, x1, y1], got {box!r}.")
    if any(isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not _whole(v)
           for v in box):
        raise AutomedsamError(f"{where}: box {list(box)} must hold whole pixel indices [x0, y0, x1, y1] "
                              "(inclusive corners, x = column).")
    x0, y0, x1, y1 = (int(v) for v in box)
    height, width = shape
    if x1 == x0 - 1 or y1 == y0 - 1:
        raise AutomedsamError(f"{where}: box {[x0, y0, x1, y1]} has zero area. Corners are inclusive: a box covering "
                              "one pixel is [x, y, x, y]; widen the box.")
    if x1 < x0 or y1 < y0:
        raise AutomedsamError(f"{where}: box {[x0, y0, x1, y1]} is inverted; write it as [x0, y0, x1, y1] with "
                              "x0 <= x1 (columns) and y0 <= y1 (rows).")
    if x0 < 0 or y0 < 0 or x1 >= width or y1 >= height:
        raise AutomedsamError(f"{where}: box {[x0, y0, x1, y1]} lies (partly) outside the image of {width} columns x "
                              f"{height} rows (valid x 0..{width - 1}, y 0..{height - 1}). Fix or clip the box.")
    return x0, y0, x1, y1


def _whole(value: int | float) -> bool:
    """A whole number a pixel index can be (an integer of hundreds of digits overflows a float)."""
    try:
        return float(value).is_integer()
    except OverflowError:
        return False


def read_box_file(path: str | os.PathLike, shape: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
    """Read and check a box file: a JSON list of `{"label": int >= 1, "box": [x0, y0, x1, y1], "slice": int}`.

    `slice` is required for 3D images (index along numpy axis 0) and absent for 2D. With `shape` (the image's
    numpy shape, (H, W) or (Z, Y, X)) every box and slice is also checked against the image.
    """
    path = Path(path)
    return check_box_entries(load_json(path, "box file"), shape, f"box file {path}")


def check_box_entries(entries: Any, shape: tuple[int, ...] | None, where: str) -> list[dict[str, Any]]:
    """The entries of one box file (as parsed JSON) checked like `read_box_file` checks a file; `where` names it."""
    if not isinstance(entries, list):
        raise AutomedsamError(f"The {where} must hold a JSON list of "
                              '{"label": 1, "box": [x0, y0, x1, y1]} entries.')
    return [_checked_entry(entry, shape, f"{where}, entry {index}") for index, entry in enumerate(entries)]


def write_box_file(path: str | os.PathLike, entries: list[dict[str, Any]]) -> None:
    """Write box entries atomically after checking their structure."""
    save_json(path, [_checked_entry(entry, None, f"box entry {index} for {path}")
                     for index, entry in enumerate(entries)])


def _checked_entry(entry: Any, shape: tuple[int, ...] | None, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict) or "label" not in entry or "box" not in entry:
        raise AutomedsamError(f"{where}: expected an object like "
                              f'{{"label": 1, "box": [x0, y0, x1, y1]}}, got {entry!r}.')
    unknown = set(entry) - {"label", "box", "slice"}
    if unknown:
        raise AutomedsamError(f"{where}: unknown keys {sorted(unknown)}; allowed are label, box and slice.")
    label = entry["label"]
    if isinstance(label, bool) or not isinstance(label, int) or label < 1:
        raise AutomedsamError(f"{where}: label must be a foreground label id (integer >= 1), got {label!r}.")
    checked: dict[str, Any] = {"label": label}
    has_slice = "slice" in entry
    if has_slice:
        index = entry["slice"]
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise AutomedsamError(f"{where}: slice must be a slice index (integer >= 0), got {index!r}.")
    plane = (2**31, 2**31)
    if shape is not None:
        if len(shape) == 3 and not has_slice:
            raise AutomedsamError(f"{where}: the image is 3D, so the entry needs a \"slice\" (index along the first "
                                  "array axis, Z).")
        if len(shape) == 2 and has_slice:
            raise AutomedsamError(f"{where}: the image is 2D, so the entry must not have a \"slice\".")
        if has_slice and entry["slice"] >= shape[0]:
            raise AutomedsamError(f"{where}: slice {entry['slice']} is outside the image's {shape[0]} slices "
                                  f"(valid 0..{shape[0] - 1}).")
        plane = (shape[-2], shape[-1])
    checked["box"] = list(validate_box(entry["box"], plane, where))
    if has_slice:
        checked["slice"] = entry["slice"]
    return checked


def slices_to_box(slices: tuple[slice, ...]) -> Box:
    """The inclusive box of a 2D object's (rows, columns) slices, as scipy.ndimage.find_objects gives them."""
    rows, cols = slices
    return cols.start, rows.start, cols.stop - 1, rows.stop - 1


def _union(boxes: list[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
