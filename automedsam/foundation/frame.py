"""Where an original 2D image sits inside a model's square input, and the maps in and out of it.

A foundation model resizes an image as it was trained: SAM and LiteMedSAM resize the longest side to their input
size (top-left aligned, zero padded: one scale for rows and columns), MedSAM ViT-B stretches it to the whole square
(a scale each). The decoder's low-resolution logits cover the same square, so the frame's two scales are enough to
move boxes and masks into the low-res frame (where prompts and losses live) and logits back out.
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
    if resize == "stretch":
        return Frame((height, width), (input_size / height, input_size / width), (input_size, input_size))
    if resize != "longest_side":
        raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
    resized = ResizeLongestSide.get_preprocess_shape(height, width, input_size)
    scale = input_size / max(height, width)
    # a side shorter than a 2 * input_size-th of the other rounds to 0 rows: keep one (a strip, not a crash)
    return Frame((height, width), (scale, scale), (max(int(resized[0]), 1), max(int(resized[1]), 1)))


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
    centres = np.arange(size) + 0.5
    rows = _sources(np.floor(centres / scale[0]).astype(np.int64), mask2d.shape[0])
    cols = _sources(np.floor(centres / scale[1]).astype(np.int64), mask2d.shape[1])
    out = np.zeros((size, size), dtype=mask2d.dtype)
    out[: rows.size, : cols.size] = mask2d[np.ix_(rows, cols)]
    return out


def _sources(sources: np.ndarray, extent: int) -> np.ndarray:
    """The original pixels under the frame pixels that fall inside the image: at least one, as make_frame keeps a
    row of a strip whose scaled side rounds to 0."""
    return sources[: max(int(np.count_nonzero(sources < extent)), 1)].clip(max=extent - 1)


def logits_to_shape(low_res: torch.Tensor, frame: Frame, input_size: int) -> torch.Tensor:
    """(B, C, L, L) logits over the padded input square -> (B, C, H, W) over the original image.

    As in segment_anything: upsample to the input size when the logits are smaller, crop the valid
    (unpadded) region, resize bilinearly to the original shape.
    """
    if low_res.ndim != 4:
        raise ValueError(f"expected (B, C, L, L) logits, got shape {tuple(low_res.shape)}")
    if low_res.shape[-1] != input_size:
        low_res = F.interpolate(low_res, size=(input_size, input_size), mode="bilinear", align_corners=False)
    height, width = frame.resized_shape
    valid = low_res[..., :height, :width]
    return F.interpolate(valid, size=frame.original_shape, mode="bilinear", align_corners=False)
