"""One click instead of a drawn box: the frozen model's outline under a point gives the box.

MedSAM and LiteMedSAM were trained with box prompts: prompted with a point, LiteMedSAM outlines nothing. A click
is therefore turned into square boxes of several sides centred on it; the frozen model outlines each, the part of
each outline under the click (or nearest to it) gives a tight box, and that box prompts the model once more. The
outlines, ordered by the decoder's own quality head, give the proposed boxes: the page shows the first, and a
double-click on it again shows the next, since the best of the first two or three is often much better than the
first alone. The user keeps, adjusts or deletes the proposal as a drawn box. Measured: documentation/benchmarks.md,
"One click instead of a box".
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from scipy import ndimage

from automedsam.boxes import slices_to_box
from automedsam.foundation.frame import Frame

if TYPE_CHECKING:
    from automedsam.foundation.base import FoundationModel

SIDES = (12, 16, 24, 32, 48, 64, 96, 128)  # square sides in the decoder's low-res frame (256 pixels)
SAME_BOX_IOU = 0.9  # two outlines whose boxes overlap more are one proposal
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@torch.no_grad()
def propose_boxes(foundation: FoundationModel, embedding: torch.Tensor, frame: Frame,
                  point: Sequence[int]) -> list[list[int]]:
    """Inclusive [x0, y0, x1, y1] boxes, in the image's pixels, of what the frozen model outlines at `point` ((x, y)
    in the image's pixels) from the image's (1, 256, 64, 64) `embedding`: the best-scored first, each differing from
    those before it (box IoU at most SAME_BOX_IOU); empty when no box outlines anything."""
    x, y = (float(value) for value in point)
    centre = foundation.to_low_res([x, y, x, y], frame)[:2]
    height, width = frame.original_shape
    image = foundation.to_low_res([0, 0, width - 1, height - 1], frame)
    squares = [_square(centre, side, image) for side in SIDES]
    outlines = _outlines(foundation, embedding, squares)[0] > 0
    tight = [box for box in (_box_at(outline.cpu().numpy(), centre) for outline in outlines[:, 0]) if box]
    if not tight:
        return []
    logits, quality = _outlines(foundation, embedding, tight)
    proposals: list[list[int]] = []
    for index in torch.argsort(quality, descending=True).tolist():  # one outline at a time at the image's size
        outline = (foundation.logits_to_original(logits[index:index + 1], frame)[0, 0] > 0).cpu().numpy()
        box = _box_at(outline, (x, y))
        if box and all(_box_iou(box, kept) <= SAME_BOX_IOU for kept in proposals):
            proposals.append(box)
    return proposals


def _outlines(foundation: FoundationModel, embedding: torch.Tensor,
              boxes_low_res: Sequence[Sequence[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen model's logits and quality scores for each box prompt on the one image."""
    sparse, dense = foundation.box_prompt(torch.tensor(boxes_low_res, dtype=torch.float32))
    return foundation.decode_scored(embedding.expand(len(boxes_low_res), -1, -1, -1), sparse, dense)


def _square(centre: Sequence[float], side: float, image: Sequence[float]) -> list[float]:
    """A square box of `side` centred on `centre`, cut to the image's box (its padding holds nothing)."""
    half = side / 2
    return [max(centre[0] - half, image[0]), max(centre[1] - half, image[1]),
            min(centre[0] + half, image[2]), min(centre[1] + half, image[3])]


def _box_at(mask: np.ndarray, point: Sequence[float]) -> list[int] | None:
    """The tight inclusive box of the mask's 8-connected component under `point` (x, y), or of the component
    nearest to it; None for an empty mask."""
    components, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return None
    row = min(max(int(round(point[1])), 0), mask.shape[0] - 1)
    column = min(max(int(round(point[0])), 0), mask.shape[1] - 1)
    chosen = components[row, column]
    if chosen == 0:
        _, (rows, columns) = ndimage.distance_transform_edt(components == 0, return_indices=True)
        chosen = components[rows[row, column], columns[row, column]]
    return list(slices_to_box(ndimage.find_objects(components)[chosen - 1]))


def _box_iou(first: Sequence[int], second: Sequence[int]) -> float:
    """Intersection over union of two inclusive boxes."""
    width = min(first[2], second[2]) - max(first[0], second[0]) + 1
    height = min(first[3], second[3]) - max(first[1], second[1]) + 1
    overlap = max(width, 0) * max(height, 0)
    area = lambda box: (box[2] - box[0] + 1) * (box[3] - box[1] + 1)  # noqa: E731
    return overlap / (area(first) + area(second) - overlap)
