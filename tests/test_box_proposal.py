"""A double-click's box: what the frozen model outlines under the point, as a tight box in the image's pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from automedsam.box_proposal import SAME_BOX_IOU, _box_at, _box_iou, propose_boxes
from automedsam.foundation.frame import Frame
from toy_model import shared_foundation

NODULE_CENTRE, NODULE_RADII = (180, 90), (34, 22)  # (x, y) and (x, y) half axes in a 200 x 300 image


@pytest.fixture(scope="module")
def nodule_scan() -> tuple[torch.Tensor, Frame, list[int]]:
    """A dark ellipse on a bright speckled background (200 x 300): its embedding, its frame and the ellipse's tight
    box."""
    rng = np.random.default_rng(0)
    image = 170 + 12 * rng.standard_normal((200, 300))
    rows, columns = np.mgrid[:200, :300]
    inside = (((columns - NODULE_CENTRE[0]) / NODULE_RADII[0]) ** 2
              + ((rows - NODULE_CENTRE[1]) / NODULE_RADII[1]) ** 2) <= 1
    image[inside] = 60 + 12 * rng.standard_normal(int(inside.sum()))
    found_rows, found_columns = np.nonzero(inside)
    box = [int(found_columns.min()), int(found_rows.min()), int(found_columns.max()), int(found_rows.max())]
    prepared, frame = shared_foundation().prepare(np.clip(image, 0, 255).astype(np.uint8))
    return shared_foundation().encode(prepared[None]), frame, box


def test_a_click_in_a_nodule_proposes_its_tight_box(nodule_scan):
    embedding, frame, true_box = nodule_scan
    proposed = propose_boxes(shared_foundation(), embedding, frame, NODULE_CENTRE)
    assert np.abs(np.array(proposed[0]) - np.array(true_box)).max() <= 2
    assert all(_box_iou(first, second) <= SAME_BOX_IOU for index, first in enumerate(proposed)
               for second in proposed[index + 1:])  # the next ones are other outlines, not the same box again


def test_where_the_model_outlines_nothing_no_box_is_proposed(nodule_scan, monkeypatch):
    embedding, frame, _ = nodule_scan
    foundation = shared_foundation()

    def outlines_nothing(embeddings, sparse, dense):
        return torch.full((len(embeddings), 1, 256, 256), -5.0), torch.zeros(len(embeddings))

    monkeypatch.setattr(foundation, "decode_scored", outlines_nothing)  # the shared model: undone after the test
    assert propose_boxes(foundation, embedding, frame, NODULE_CENTRE) == []


def test_the_box_is_of_the_part_under_the_point_or_else_the_nearest_part():
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:10, 5:15] = True    # left part
    mask[20:30, 40:55] = True  # right part
    assert _box_at(mask, (7, 6)) == [5, 5, 14, 9]
    assert _box_at(mask, (45.4, 24.6)) == [40, 20, 54, 29]
    assert _box_at(mask, (38, 31)) == [40, 20, 54, 29]  # between the parts, nearer the right one
    assert _box_at(np.zeros((4, 4), dtype=bool), (1, 1)) is None
