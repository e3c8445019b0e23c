"""Boxes: tight inclusive boxes from masks (per component, 3D per slice), box files, rasterising, rescaling."""
from __future__ import annotations

import json

import numpy as np
import pytest

from automedsam.boxes import (label_map_to_boxes, mask_to_boxes, rasterise_boxes, rasterise_ellipses, read_box_file,
                              validate_box, volume_to_slice_boxes, write_box_file)
from automedsam.errors import AutomedsamError


def test_tight_box_is_inclusive_with_x_as_column():
    mask = np.zeros((10, 20), bool)
    mask[2:5, 7:15] = True
    assert mask_to_boxes(mask) == [(7, 2, 14, 4)]


def test_single_pixel_and_empty_mask():
    mask = np.zeros((4, 4), bool)
    assert mask_to_boxes(mask) == []
    mask[3, 1] = True
    assert mask_to_boxes(mask) == [(1, 3, 1, 3)]


def test_per_component_boxes_and_speck_removal():
    mask = np.zeros((20, 20), np.uint8)
    mask[1:4, 1:5] = 1
    mask[10:15, 12:18] = 1
    mask[18, 0] = 1
    assert mask_to_boxes(mask, per_component=True) == [(1, 1, 4, 3), (12, 10, 17, 14), (0, 18, 0, 18)]
    assert mask_to_boxes(mask, per_component=True, min_size=2) == [(1, 1, 4, 3), (12, 10, 17, 14)]
    assert mask_to_boxes(mask) == [(0, 1, 17, 18)]
    assert mask_to_boxes(mask, min_size=2) == [(1, 1, 17, 14)]
    assert mask_to_boxes(mask, min_size=100) == []


def test_diagonal_neighbours_form_one_component():
    mask = np.eye(5, dtype=bool)
    assert mask_to_boxes(mask, per_component=True) == [(0, 0, 4, 4)]


def test_label_map_to_boxes_per_label():
    label_map = np.zeros((8, 8), np.uint8)
    label_map[1:3, 1:3] = 1
    label_map[5:7, 2:8] = 3
    assert label_map_to_boxes(label_map, [1, 2, 3]) == {1: [(1, 1, 2, 2)], 2: [], 3: [(2, 5, 7, 6)]}


def test_volume_to_slice_boxes_along_each_axis():
    volume = np.zeros((4, 6, 8), np.uint8)
    volume[1, 2:4, 3:7] = 2
    volume[3, 0, 0] = 1
    assert volume_to_slice_boxes(volume, [1, 2]) == [
        {"label": 2, "box": [3, 2, 6, 3], "slice": 1},
        {"label": 1, "box": [0, 0, 0, 0], "slice": 3},
    ]
    along_x = volume_to_slice_boxes(volume, [2], axis=2)
    assert [entry["slice"] for entry in along_x] == [3, 4, 5, 6]
    assert along_x[0]["box"] == [2, 1, 3, 1]


def test_rasterise_inverts_mask_to_boxes_and_clips():
    mask = np.zeros((9, 11), bool)
    mask[2:6, 3:10] = True
    assert np.array_equal(rasterise_boxes(mask_to_boxes(mask), mask.shape), mask)
    clipped = rasterise_boxes([(8, 7, 30, 30)], (9, 11))
    assert clipped.sum() == 3 * 2 and clipped[8, 10]


def test_the_ellipse_in_a_disc_s_box_is_the_disc_and_the_one_in_a_square_is_not():
    rows, columns = np.ogrid[:64, :64]
    disc = (rows - 31.5) ** 2 + (columns - 31.5) ** 2 <= 20 ** 2
    ellipse = rasterise_ellipses(mask_to_boxes(disc), disc.shape)
    assert 2 * (disc & ellipse).sum() / (disc.sum() + ellipse.sum()) > 0.98
    square = np.zeros((64, 64), bool)
    square[10:50, 10:50] = True
    ellipse = rasterise_ellipses(mask_to_boxes(square), square.shape)
    assert not (ellipse & ~square).any()
    assert 2 * ellipse.sum() / (square.sum() + ellipse.sum()) == pytest.approx(2 * (np.pi / 4) / (1 + np.pi / 4),
                                                                            abs=0.01)


def test_validate_box_accepts_one_pixel_and_whole_image():
    assert validate_box([0, 0, 0, 0], (5, 6), "x") == (0, 0, 0, 0)
    assert validate_box((0, 0, 5.0, 4), (5, 6), "x") == (0, 0, 5, 4)


@pytest.mark.parametrize("box, message", [
    ([0, 0, 6, 4], r"case7\.json, entry 2: box \[0, 0, 6, 4\] lies \(partly\) outside the image of 6 columns x 5 rows"),
    ([-1, 0, 2, 2], r"outside the image"),
    ([4, 1, 2, 3], r"box \[4, 1, 2, 3\] is inverted"),
    ([3, 1, 2, 3], r"box \[3, 1, 2, 3\] has zero area.*\[x, y, x, y\]"),
    ([1, 2, 3], r"must be a list of 4 integers"),
    ([1.5, 2, 3, 4], r"whole pixel indices"),
])
def test_validate_box_errors_name_the_entry(box, message):
    with pytest.raises(AutomedsamError, match=message):
        validate_box(box, (5, 6), "case7.json, entry 2")


def test_box_file_round_trip(tmp_path):
    entries = [{"label": 1, "box": [1, 2, 3, 4]}, {"label": 2, "box": [0, 0, 9, 9], "slice": 3}]
    write_box_file(tmp_path / "case.json", entries)
    assert read_box_file(tmp_path / "case.json") == entries
    assert json.loads((tmp_path / "case.json").read_text()) == entries


def _write(tmp_path, content) -> str:
    path = tmp_path / "case 1.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize("content, shape, message", [
    ("{not json", None, r"case 1\.json is not valid JSON"),
    ({"label": 1}, None, r"case 1\.json must hold a JSON list"),
    ([{"box": [0, 0, 1, 1]}], None, r"case 1\.json, entry 0: expected an object"),
    ([{"label": 0, "box": [0, 0, 1, 1]}], None, r"entry 0: label must be a foreground label id"),
    ([{"label": 1, "box": [0, 0, 1, 1], "colour": "red"}], None, r"unknown keys \['colour'\]"),
    ([{"label": 1, "box": [0, 0, 1, 1]}, {"label": 1, "box": [5, 0, 1, 1]}], None, r"entry 1: box .* is inverted"),
    ([{"label": 1, "box": [0, 0, 20, 1]}], (10, 10), r"entry 0: box \[0, 0, 20, 1\] lies \(partly\) outside"),
    ([{"label": 1, "box": [0, 0, 1, 1]}], (4, 10, 10), r"the image is 3D, so the entry needs a \"slice\""),
    ([{"label": 1, "box": [0, 0, 1, 1], "slice": 4}], (4, 10, 10), r"slice 4 is outside the image's 4 slices"),
    ([{"label": 1, "box": [0, 0, 1, 1], "slice": 0}], (10, 10), r"the image is 2D"),
])
def test_bad_box_files(tmp_path, content, shape, message):
    path = _write(tmp_path, content)
    with pytest.raises(AutomedsamError, match=message):
        read_box_file(path, shape)


def test_write_box_file_refuses_bad_entries(tmp_path):
    with pytest.raises(AutomedsamError, match=r"box entry 0 .* is inverted"):
        write_box_file(tmp_path / "bad.json", [{"label": 1, "box": [3, 3, 1, 1]}])
    assert not (tmp_path / "bad.json").exists()
