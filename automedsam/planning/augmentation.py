"""Views: fixed, deterministic transforms of a 2D sample (flips, 90-degree rotations, a gamma change, a zoom).

A few labelled samples overfit a prompt module, and re-encoding an augmented image on every step would cost an
encoder pass per step. A view is instead applied once at preprocessing to a labelled sample's image, label map and
boxes, and encoded once; training then draws among a sample and its views at no extra cost. A view is a JSON dict
`{"name": "v01", "flip": [1], "rot90": 1, "gamma": 0.8, "scale": 1.0}`: flip the listed array axes (0 = rows,
i.e. upside down; 1 = columns, i.e. left-right), then rotate `rot90` times by 90 degrees counter-clockwise
(`np.rot90`), then raise the [0, 1] intensities to the power `gamma` (1 leaves them), then zoom by `scale` keeping
the image's size (1 leaves it): below 1 the whole image shrinks into the middle of a black border, above 1 a
window around the sample's boxes fills the image. Flips and rotations move whole pixels, so the label map is
transformed exactly and the box of a transformed mask is the transformed box; a zoom resamples the label map with
the nearest pixel and moves each box to the tight box of its resampled pixels.

batchgenerators offers these transforms only as random draws on numpy's global generator (`augment_mirroring`,
`augment_rot90`, and `augment_gamma`, which moreover rescales each image to its own min-max range), so fixed views
use numpy and scipy directly. The views a dataset uses, checked, come from its plans (`Plans.views`); a view's sample
id is `samples.view_sample_id`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from automedsam.plans import View

Window = tuple[float, float, float, float]  # top, left, height, width in the turned image's pixels


def zoom_window(shape: Sequence[int], boxes: Sequence[Sequence[int]], view: View) -> Window | None:
    """For an image of `shape` (H, W, ...) with its inclusive `boxes`, the part of its flipped and turned version
    that the view's zoom stretches over the whole image; None at scale 1. Below 1 the window is larger than the image
    and centred on it; above 1 it is smaller, centred on the boxes' union and moved inside the image, so that the
    objects stay in view."""
    scale = view["scale"]
    if scale == 1:
        return None
    height, width = (int(size) for size in transform_pair(shape, view))
    boxes = [turn_box(box, shape, view) for box in boxes]
    window_height, window_width = height / scale, width / scale
    if scale < 1 or not boxes:
        centre_y, centre_x = height / 2, width / 2
    else:
        centre_y = (min(box[1] for box in boxes) + max(box[3] for box in boxes) + 1) / 2
        centre_x = (min(box[0] for box in boxes) + max(box[2] for box in boxes) + 1) / 2
    top, left = centre_y - window_height / 2, centre_x - window_width / 2
    if scale > 1:
        top, left = min(max(top, 0.0), height - window_height), min(max(left, 0.0), width - window_width)
    return top, left, window_height, window_width


def transform_image(image: np.ndarray, view: View, window: Window | None = None) -> np.ndarray:
    """A normalised image ((H, W) or (H, W, 3), values in [0, 1]) seen through the view (bilinear zoom), float32."""
    _check_window(view, window)
    moved = np.power(_move_pixels(image, view), view["gamma"])
    return np.ascontiguousarray(_zoom(moved, window, order=1), dtype=np.float32)


def transform_label_map(label_map: np.ndarray, view: View, window: Window | None = None) -> np.ndarray:
    """A 2D label map seen through the view: pixels moved (and zoomed to the nearest pixel), values kept."""
    _check_window(view, window)
    return np.ascontiguousarray(_zoom(_move_pixels(label_map, view), window, order=0))


def transform_box(box: Sequence[int], shape: Sequence[int], view: View,
                  window: Window | None = None) -> list[int] | None:
    """An inclusive box `[x0, y0, x1, y1]` of an image of `shape` (H, W, ...) in the view's frame; None when the
    zoom leaves none of its pixels in view. `window` is the view's `zoom_window` of the image and all its boxes."""
    _check_window(view, window)
    x0, y0, x1, y1 = turn_box(box, shape, view)
    if window is None:
        return [x0, y0, x1, y1]
    height, width = transform_pair(shape, view)
    source_rows, source_columns = _sources(window[0], window[2], height), _sources(window[1], window[3], width)
    rows = np.flatnonzero((y0 <= source_rows) & (source_rows <= y1))
    columns = np.flatnonzero((x0 <= source_columns) & (source_columns <= x1))
    if not len(rows) or not len(columns):
        return None
    return [int(columns[0]), int(rows[0]), int(columns[-1]), int(rows[-1])]


def turn_box(box: Sequence[int], shape: Sequence[int], view: View) -> list[int]:
    """An inclusive box `[x0, y0, x1, y1]` after the view's flips and quarter turns (no zoom)."""
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


def _move_pixels(array: np.ndarray, view: View) -> np.ndarray:
    for axis in view["flip"]:
        array = np.flip(array, axis=axis)
    return np.rot90(array, view["rot90"], axes=(0, 1))


def _check_window(view: View, window: Window | None) -> None:
    """A zoom needs the window `zoom_window` gives it and a view without one takes none: otherwise an image, its
    label map and its boxes could be zoomed differently without anyone noticing."""
    if (window is None) != (view["scale"] == 1):
        needs = "its zoom_window" if window is None else "no window (its scale is 1)"
        raise ValueError(f"view {view['name']!r} (scale {view['scale']}) takes {needs}")


def _sources(start: float, extent: float, size: int) -> np.ndarray:
    """For each of `size` output pixels, the source pixel whose centre the window [start, start + extent) puts
    nearest to it (may lie outside the image: the black border of a zoom out)."""
    return np.floor(start + (np.arange(size) + 0.5) * extent / size)


def _zoom(array: np.ndarray, window: Window | None, order: int) -> np.ndarray:
    """Resample the window of `array` over its own (H, W): bilinear (order 1) or nearest pixel (order 0); an output
    pixel whose nearest source pixel lies outside the image is zero (the border of a zoom out)."""
    if window is None:
        return array
    height, width = array.shape[:2]
    top, left, window_height, window_width = window
    rows = top + (np.arange(height) + 0.5) * window_height / height - 0.5
    columns = left + (np.arange(width) + 0.5) * window_width / width - 0.5
    nearest_rows, nearest_columns = _sources(top, window_height, height), _sources(left, window_width, width)
    if order == 0:
        rows, columns = nearest_rows, nearest_columns
    grid = np.meshgrid(rows, columns, indexing="ij")
    inside = np.outer((nearest_rows >= 0) & (nearest_rows < height), (nearest_columns >= 0) & (nearest_columns < width))
    channels = [array] if array.ndim == 2 else [array[..., c] for c in range(array.shape[-1])]
    zoomed = [np.where(inside, ndimage.map_coordinates(channel, grid, order=order, mode="nearest"), 0)
              .astype(array.dtype) for channel in channels]
    return zoomed[0] if array.ndim == 2 else np.stack(zoomed, axis=-1)
