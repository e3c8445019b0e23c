"""Where an original 2D image sits inside a model's square input, and the maps in and out of it.

A foundation model resizes an image as it was trained: SAM and LiteMedSAM resize the longest side to their input
size (top-left aligned, zero padded; the shorter side rounded to whole pixels), MedSAM ViT-B stretches it to the
whole square. Either way each side has its own scale, resized pixels over original ones. The decoder's low-resolution
logits cover the same square, so the frame's two scales are enough to move boxes and masks into the low-res frame
(where prompts and losses live) and logits back out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

RESIZES = ("longest_side", "stretch")  # how an image reaches a model's input square


@dataclass(frozen=True)
class Frame:
    """Geometry of one image inside the model input: enough to map boxes in and masks out."""

    original_shape: tuple[int, int]
    scale: tuple[float, float]  # input pixels per original pixel: (rows, columns)
    resized_shape: tuple[int, int]


def make_frame(shape: Sequence[int], input_size: int, *, resize: str = "longest_side") -> Frame:
    """The frame of an image of `shape` (H, W) resized to `input_size`: its longest side (aspect kept, padded), or
    each side (`resize="stretch"`)."""
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"image shape {tuple(shape)} has an empty side")
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
    if resize == "stretch":
        rows, columns = input_size, input_size
    else:  # a side shorter than a 2 * input_size-th of the other rounds to 0 rows: keep one (a strip, not a crash)
        resized = ResizeLongestSide.get_preprocess_shape(height, width, input_size)
        rows, columns = (max(int(side), 1) for side in resized)
    # the scales the resize really applies: the shorter side's rounded count over its pixels, not input_size over the
    # longest side, else a side landing on .5 (101 x 512 -> 50.5 rows, resized to 51) maps boxes and masks a row short
    return Frame((height, width), (rows / height, columns / width), (rows, columns))


def box_to_frame(box: Sequence[float], scale: tuple[float, float], size: int) -> list[float]:
    """Map an inclusive pixel box into a frame scaled by `scale` (rows, columns), as inclusive float corners.

    The box covers the pixel edges [x0, x1 + 1); scaled, those edges are [x0*s, (x1+1)*s). Returning
    x1' = (x1+1)*s - 1 makes `frame_pixel` of the corners pick exactly the frame pixels whose centres fall
    inside the box, i.e. the box of `mask_to_frame` of the filled box.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    row_scale, column_scale = scale
    left, top = x0 * column_scale, y0 * row_scale
    right = max((x1 + 1.0) * column_scale - 1.0, left)
    bottom = max((y1 + 1.0) * row_scale - 1.0, top)
    limit = float(size - 1)
    return [min(max(v, 0.0), limit) for v in (left, top, right, bottom)]


def frame_pixel(corner: float) -> int:
    """The frame pixel of a `box_to_frame` corner: rounded half down, since frame pixel j lies inside the box when
    x0 <= (j + 0.5) / s < x1 + 1, i.e. from ceil(x0 * s - 0.5) to ceil(x1' - 0.5). Python's round() sends a half to
    the even side, one pixel off wherever the scale makes halves (512 or 1024 px images)."""
    return int(math.ceil(corner - 0.5))


def mask_to_frame(mask2d: np.ndarray, scale: tuple[float, float], size: int) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) mask by `scale` (rows, columns) into a zero padded (size, size) array.

    Frame pixel j takes the original pixel under its centre, floor((j + 0.5) / scale), the same
    convention as `box_to_frame`.
    """
    mask2d = np.asarray(mask2d)
    if mask2d.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {mask2d.shape}")
    rows = _sources(mask2d.shape[0], scale[0], size)
    cols = _sources(mask2d.shape[1], scale[1], size)
    out = np.zeros((size, size), dtype=mask2d.dtype)
    out[: rows.size, : cols.size] = mask2d[np.ix_(rows, cols)]
    return out


def _sources(extent: int, scale: float, size: int) -> np.ndarray:
    """The original pixel under each frame pixel whose centre falls inside the image: at least one, as make_frame
    keeps a row of a strip whose scaled side rounds to 0."""
    starts = _first_pixels(np.arange(extent + 1) * scale)
    count = min(max(int(starts[-1]), 1), size)
    return (np.searchsorted(starts, np.arange(count), side="right") - 1).clip(max=extent - 1)


def _first_pixels(edges: np.ndarray) -> np.ndarray:
    """The first frame pixel whose centre lies at or past each scaled original pixel edge: the `frame_pixel` of a
    `box_to_frame` corner from the very same float product, so a mask and its box agree also where a centre falls
    on an edge (a scale like 51/101 makes such ties, and a division would round some of them the other way)."""
    return np.ceil(edges - 0.5).astype(np.int64)


def logits_to_shape(low_res: torch.Tensor, frame: Frame, input_size: int) -> torch.Tensor:
    """(B, C, L, L) logits over the padded input square -> (B, C, H, W) over the original image.

    As in segment_anything: upsample to the input size when the logits are smaller, crop the valid
    (unpadded) region, resize bilinearly to the original shape; first, the logits past the image's edge are its
    edge's (`_edge_over_partial_pixels`).
    """
    if low_res.ndim != 4:
        raise ValueError(f"expected (B, C, L, L) logits, got shape {tuple(low_res.shape)}")
    low_res = _edge_over_partial_pixels(low_res, frame, input_size)
    if low_res.shape[-1] != input_size:
        low_res = F.interpolate(low_res, size=(input_size, input_size), mode="bilinear", align_corners=False)
    height, width = frame.resized_shape
    valid = low_res[..., :height, :width]
    return F.interpolate(valid, size=frame.original_shape, mode="bilinear", align_corners=False)


def pixels_inside(frame: Frame, *, size: int, input_size: int) -> tuple[int, int]:
    """The rows and columns of a (size, size) grid over the model input whose centres lie inside the image, as
    `mask_to_frame` counts them: what reaches a label map (the rest is padding, or a pixel mostly past the edge)."""
    factor = size / input_size
    rows, columns = (min(max(frame_pixel(extent * (scale * factor)), 1), size)
                     for extent, scale in zip(frame.original_shape, frame.scale))
    return rows, columns


def _edge_over_partial_pixels(low_res: torch.Tensor, frame: Frame, input_size: int) -> torch.Tensor:
    """The logits with each pixel that the image covers only in part, its centre past the image's edge, set to the
    last pixel inside. `mask_to_frame` and `box_to_frame` leave such a pixel out (the loss pushes it to background),
    yet upsampling spreads it over the image's last rows: a 390 x 1024 image covers 97.5 of a 1024-input model's
    256 low-res rows, and row 97 erased the image's bottom 2 rows. Logits at the input size have no such pixel."""
    size = low_res.shape[-1]
    for axis, inside, resized in zip((-2, -1), pixels_inside(frame, size=size, input_size=input_size),
                                     frame.resized_shape):
        covered = -(-resized * size // input_size)
        if covered > inside:
            index = torch.arange(size, device=low_res.device)
            index[inside:covered] = inside - 1
            low_res = low_res.index_select(axis, index)
    return low_res
