"""Overlays of large images draw from copies reduced to about twice the PNG's resolution, and stay truthful.

A 10000 x 10000 image took 12.5 GB and 73 s to draw as a 1320 x 1100 PNG: the image and every mask went to
matplotlib at full resolution (about 120 bytes a pixel). The spies below check the sizes of the arrays handed to
matplotlib, not a time or a memory figure, so the test is the same on any machine.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from PIL import Image

from automedsam import plotting
from automedsam.plotting import overlay

HEIGHT, WIDTH = 6000, 600  # drawn 1000 pixels tall: three image rows to a PNG row


def png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def count_near(pixels: np.ndarray, hex_colour: str, tolerance: int = 40) -> int:
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - target).max(axis=-1) <= tolerance).sum())


def spy_on_drawing(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[int, ...]], list[Axes]]:
    """The shape of every array handed to imshow or contour, and the axes drawn on."""
    shapes: list[tuple[int, ...]] = []
    panels: list[Axes] = []
    imshow, contour = Axes.imshow, Axes.contour

    def spy_imshow(self, pixels, *args, **kwargs):
        shapes.append(np.shape(pixels))
        panels.append(self)
        return imshow(self, pixels, *args, **kwargs)

    def spy_contour(self, *args, **kwargs):
        shapes.append(np.shape(args[2]))
        return contour(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "imshow", spy_imshow)
    monkeypatch.setattr(Axes, "contour", spy_contour)
    return shapes, panels


def large_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH), dtype=np.uint8)
    seg = np.zeros((HEIGHT, WIDTH), np.uint8)
    seg[1001:3998, 101:500] = 1
    ref = np.zeros((HEIGHT, WIDTH), np.uint8)
    ref[:, 301] = 1  # one pixel wide, full height: touches the top and bottom edges
    return image, seg, ref


@pytest.mark.parametrize("colour", [False, True])
def test_a_large_overlay_hands_matplotlib_arrays_of_about_twice_the_png_resolution(tmp_path, monkeypatch, colour):
    shapes, _ = spy_on_drawing(monkeypatch)
    image, seg, ref = large_case()
    if colour:
        image = np.stack([image // 4, image // 2, image], axis=-1)
    pixels = png(overlay(image, seg, ref, tmp_path / "large.png", title="x"))
    rows, cols = pixels.shape[:2]
    assert len(shapes) == 3  # the image and two contours
    for shape in shapes:
        assert shape[0] <= 2.5 * rows and shape[1] <= 2.5 * cols, (shape, (rows, cols))
    assert shapes[0][2:] == ((3,) if colour else ())
    assert count_near(pixels, plotting.label_colour(1)) > 500 and count_near(pixels, plotting.REFERENCE_COLOUR) > 200


def test_a_reduced_overlay_shows_one_pixel_wide_structures_where_they_are(tmp_path, monkeypatch):
    """Nearest-neighbour reduction (every third row) would lose a one-row prediction and a one-column reference."""
    _, panels = spy_on_drawing(monkeypatch)
    image, _, ref = large_case()
    seg = np.zeros((HEIGHT, WIDTH), np.uint8)
    seg[3001, 50:550] = 1
    pixels = png(overlay(image, seg, ref, tmp_path / "thin.png"))
    assert count_near(pixels, plotting.label_colour(1)) > 50
    assert count_near(pixels, plotting.REFERENCE_COLOUR) > 200
    prediction, reference = panels[0].collections
    (row,) = prediction.get_paths()
    assert row.vertices[:, 1].min() >= 3001 - 3 and row.vertices[:, 1].max() <= 3001 + 3
    assert row.vertices[:, 0].min() == pytest.approx(49.5, abs=3) and row.vertices[:, 0].max() == pytest.approx(
        549.5, abs=3)
    (column,) = reference.get_paths()
    assert column.vertices[:, 0].min() >= 301 - 3 and column.vertices[:, 0].max() <= 301 + 3
    assert column.vertices[:, 1].min() == -0.5 and column.vertices[:, 1].max() == HEIGHT - 0.5  # closed at the edges
    assert panels[0].get_xlim() == (-0.5, WIDTH - 0.5) and panels[0].get_ylim() == (HEIGHT - 0.5, -0.5)


def test_a_reduced_overlay_keeps_the_contour_in_place(tmp_path, monkeypatch):
    _, panels = spy_on_drawing(monkeypatch)
    image, seg, _ = large_case()
    overlay(image, seg, None, tmp_path / "box.png")
    (contour,) = panels[0].collections
    (path,) = contour.get_paths()
    low, high = path.vertices.min(axis=0), path.vertices.max(axis=0)
    assert low == pytest.approx([100.5, 1000.5], abs=3) and high == pytest.approx([499.5, 3997.5], abs=3)


def test_a_reduced_overlay_averages_the_image_and_windows_what_it_shows(tmp_path, monkeypatch):
    """Stripes of 0 and 200 one row each are drawn as their mean, not as every third row's value."""
    drawn: list[np.ndarray] = []
    imshow = Axes.imshow
    monkeypatch.setattr(Axes, "imshow", lambda self, pixels, *a, **k: (drawn.append(pixels), imshow(
        self, pixels, *a, **k))[1])
    image = np.zeros((HEIGHT, WIDTH), np.uint8)
    image[1::2] = 200
    overlay(image, None, None, tmp_path / "stripes.png")
    assert drawn[0].shape[0] < HEIGHT / 2
    assert float(np.median(drawn[0])) == pytest.approx(100, abs=40)
