"""Augmentation views: pixels, label maps and boxes move together exactly; hand-edited specs fail clearly."""
from __future__ import annotations

import numpy as np
import pytest

from automedsam.boxes import mask_to_boxes
from automedsam.planning.augmentation import (transform_box, transform_image, transform_label_map, transform_pair,
                                              zoom_window)
from automedsam.planning.planner import SYMMETRY_VIEWS, ZOOM_VIEWS
from automedsam.plans import check_view
from automedsam.samples import view_sample_id

VIEWS = [check_view(view, "test") for view in SYMMETRY_VIEWS]
ZOOMED = [check_view(view, "test") for view in ZOOM_VIEWS] + [
    check_view({"name": "turned-in", "flip": [0], "rot90": 3, "scale": 2.5}, "test"),
    check_view({"name": "turned-out", "flip": [1], "rot90": 1, "scale": 0.3}, "test")]
EXTRA = [check_view({"name": "up", "flip": [0]}, "test"), check_view({"name": "all", "flip": [1, 0], "rot90": 3}, "t")]


def random_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A random blob plus a few specks anywhere (the specks stretch the box to odd places, edges included)."""
    mask = np.zeros(shape, bool)
    row, col = rng.integers(shape[0]), rng.integers(shape[1])
    mask[row:row + rng.integers(1, 6), col:col + rng.integers(1, 6)] = True
    return mask | (rng.random(shape) < rng.uniform(0, 0.03))


@pytest.mark.parametrize("shape", [(40, 48), (7, 19), (23, 5), (16, 16)])
@pytest.mark.parametrize("view", VIEWS + EXTRA, ids=lambda view: view["name"])
def test_the_box_of_a_transformed_mask_is_the_transformed_box(shape, view):
    rng = np.random.default_rng(sum(shape))
    for _ in range(40):
        mask = random_mask(rng, shape)
        (box,) = mask_to_boxes(mask)
        moved = transform_label_map(mask.astype(np.uint8) * 3, view)
        assert moved.dtype == np.uint8 and set(np.unique(moved)) <= {0, 3} and moved.sum() == mask.sum() * 3
        assert list(moved.shape) == transform_pair(list(shape), view)
        assert mask_to_boxes(moved) == [tuple(transform_box(box, shape, view))]


@pytest.mark.parametrize("shape", [(40, 48), (23, 35), (9, 30)])
@pytest.mark.parametrize("view", ZOOMED, ids=lambda view: view["name"])
def test_a_zoom_moves_each_box_to_the_tight_box_of_its_zoomed_pixels(shape, view):
    rng = np.random.default_rng(sum(shape))
    for _ in range(40):
        boxes = [[*sorted(rng.integers(0, shape[1], 2)), *sorted(rng.integers(0, shape[0], 2))] for _ in range(2)]
        boxes = [[int(x0), int(y0), int(x1), int(y1)] for x0, x1, y0, y1 in boxes]
        window = zoom_window(shape, boxes, view)
        for box in boxes:
            filled = np.zeros(shape, np.uint8)
            filled[box[1]:box[3] + 1, box[0]:box[2] + 1] = 2
            moved = transform_label_map(filled, view, window)
            assert list(moved.shape) == transform_pair(list(shape), view) and set(np.unique(moved)) <= {0, 2}
            placed = transform_box(box, shape, view, window)
            assert mask_to_boxes(moved) == ([] if placed is None else [tuple(placed)])


def test_zoom_out_shrinks_the_whole_image_and_zoom_in_enlarges_the_part_around_the_boxes():
    image = np.ones((40, 60), np.float32)
    out = check_view({"name": "out", "scale": 0.5}, "test")
    shrunk = transform_image(image, out, zoom_window(image.shape, [], out))
    rows, columns = np.nonzero(shrunk > 0.5)
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (10, 29, 15, 44)
    assert shrunk[:9].max() == shrunk[:, :14].max() == 0, "a black border around the shrunk image"
    zoom_in = check_view({"name": "in", "scale": 2.0}, "test")
    corner_box = [50, 30, 57, 37]
    window = zoom_window(image.shape, [corner_box], zoom_in)
    assert window == (20.0, 30.0, 20.0, 30.0), "centred on the box, then moved back inside the image"
    assert transform_box(corner_box, image.shape, zoom_in, window) == [40, 20, 55, 35]
    assert zoom_window(image.shape, [corner_box], VIEWS[0]) is None, "no zoom at scale 1"
    ramp = np.tile(np.linspace(0, 1, 60, dtype=np.float32), (40, 1))
    enlarged = transform_image(ramp, zoom_in, window)
    assert enlarged.dtype == np.float32 and np.all(np.diff(enlarged, axis=1) >= 0) and enlarged.min() > 0.45


def test_a_zoom_view_refuses_to_move_pixels_or_boxes_without_its_window():
    image, box = np.ones((40, 60), np.float32), [50, 30, 57, 37]
    zoom_in = check_view({"name": "in", "scale": 2.0}, "test")
    for forgot in (lambda: transform_image(image, zoom_in),
                   lambda: transform_label_map(image.astype(np.uint8), zoom_in),
                   lambda: transform_box(box, image.shape, zoom_in)):
        with pytest.raises(ValueError, match="zoom_window"):
            forgot()
    with pytest.raises(ValueError, match="no window"):
        transform_box(box, image.shape, VIEWS[0], zoom_window(image.shape, [box], zoom_in))


def test_the_planned_zooms_shrink_and_enlarge():
    assert [view["scale"] for view in ZOOMED[:2]] == [0.7, 1.3]
    assert all(view["flip"] == [] and view["rot90"] == 0 and view["gamma"] == 1.0 for view in ZOOMED[:2])


def test_default_views_are_the_seven_other_symmetries_of_the_square():
    probe = np.arange(12).reshape(3, 4)
    seen = {(moved.shape, moved.tobytes()) for moved in (transform_label_map(probe, view) for view in VIEWS)}
    assert len(VIEWS) == 7 and len(seen) == 7
    assert (probe.shape, probe.tobytes()) not in seen, "the identity is the sample itself, not a view"
    assert {view["gamma"] for view in VIEWS} == {1.0, 0.8, 1.25}


def test_image_pixels_move_like_the_label_map_and_gamma_changes_intensities():
    rng = np.random.default_rng(0)
    colour = rng.random((6, 9, 3)).astype(np.float32)
    view = check_view({"name": "v", "flip": [1], "rot90": 1, "gamma": 2.0}, "test")
    moved = transform_image(colour, view)
    assert moved.shape == (9, 6, 3) and moved.dtype == np.float32 and moved.flags.c_contiguous
    np.testing.assert_allclose(moved, np.rot90(colour[:, ::-1], 1) ** 2, rtol=1e-6)
    gray = rng.random((5, 7)).astype(np.float32)
    np.testing.assert_array_equal(transform_image(gray, check_view({"name": "i"}, "test")), gray)
    assert transform_pair([0.5, 2.0], view) == [2.0, 0.5] and transform_pair([0.5, 2.0], VIEWS[1]) == [0.5, 2.0]
    assert view_sample_id("case__z007", view) == "case__z007__v"
