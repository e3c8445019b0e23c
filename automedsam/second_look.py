"""A second look at the object's own scale: re-encode a window around an object the first pass was unsure of.

The foundation model sees every image at its input size (256 px for LiteMedSAM), so an object much smaller than
the labelled ones is seen at a scale the prompt modules hardly know; on HC18 such small heads come out with a mask
that spills into the tissue around them. Their signature is not the mask's size (a spilled mask is as large as a
typical head) but its certainty: the confident core (probability above CORE) is the head, and covers much less of
the mask than on an image the ensemble is sure of. So when the core of a target covers less than CORE_SHARE of its
mask, the image is looked at again through a window centred on the core's box and zoomed so that this box takes
the share of the window that the labelled boxes took of their images (plans.json `second_look.object_size`; zoom
in only, at most MAX_ZOOM: the zoom views train on 0.7-1.3, and zooming out the objects that fill the frame changed
nothing measurable). Each target that triggered has its own window (one extra encoder pass per target and image: a
window around two objects would zoom to neither's scale), the ensemble predicts there, and inside the window that
target's probabilities replace the first pass's, but on the first pass's other objects of the target, which keep
at least their probability (the window is zoomed onto one object: its prediction dropped another one it covered,
such as the other panel's nodule of a dual-view ultrasound capture). Outside the window the first pass stays, less
the object looked at: its pixels there are set to 0 (`pasted_look`), since the window, zoomed at most MAX_ZOOM, can
be a quarter of the image and the spilled mask cut at its border left crescents that outvoted the corrected object
in the largest component; the target's other objects stay. Which targets take it is chosen from the folds'
validation samples, shrunk into small objects (training/second_look_check.py, `choose_second_look`): the check
triggers on, and scores, the first pass before box refinement, so prediction's trigger reads the folds' mean before
box refinement too.
(Measured: documentation/benchmarks.md, Accuracy under the strict protocol, A second look.)
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
from scipy import ndimage

from automedsam.box_refinement import pooled_check_means
from automedsam.boxes import Box, mask_to_boxes
from automedsam.foundation.base import LOW_RES_SIZE

CORE = 0.9
CORE_SHARE = 0.85
MAX_ZOOM = 2.0
WINDOW_MARGIN = 1.2  # the window spans at least this many times the core box's width and height
FOREGROUND = 0.5
CHECK_ZOOM = 0.5  # the validation check shrinks each sample into a black border by this factor
# The check has a few samples per fold, and a second look costs an encoder pass and replaces the first pass's outline:
# it is taken only for a clear gain (the margin's measurement: documentation/benchmarks.md, A second look)
MIN_GAIN = 0.05

Window = tuple[float, float, float, float]  # top, left, height, width in image pixels


class Unsure(NamedTuple):
    """What the trigger found: the box of the confident core (the window is centred on it) and the object's mask
    (what the window's prediction replaces, outside the window too)."""

    core: Box
    component: np.ndarray  # bool (H, W)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2D mask (the mask itself when empty)."""
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return mask
    areas = np.bincount(labelled.ravel())[1:]
    return labelled == int(np.argmax(areas)) + 1


def unsure_object(probability: np.ndarray) -> Unsure | None:
    """The predicted object (the largest component of the mask) and the box of its confident core (the core's
    largest piece inside it) when the core, every confident pixel of the object, covers less than CORE_SHARE of it;
    None when the first pass is sure of the object's extent or found none. Measured inside the object only: a
    smaller object elsewhere that the first pass is sure of is neither the core nor a reason to look again, and a
    core split by a hesitant row is still the whole core."""
    mask = largest_component(probability > FOREGROUND)
    confident = (probability > CORE) & mask
    if not confident.any() or confident.sum() >= CORE_SHARE * mask.sum():
        return None
    return Unsure(mask_to_boxes(largest_component(confident))[0], mask)


def look_window(box: Sequence[int], shape: Sequence[int], *, object_size: float) -> Window | None:
    """A window of the image's aspect, centred on `box` and zoomed by sqrt(object_size / box share of the image)
    (at most MAX_ZOOM, and so that the box with a WINDOW_MARGIN stays inside it on both axes), moved inside the
    image: the box then takes about `object_size` of it. None when the box already takes that share of the whole
    image, or spans it on one axis: the window would be the image, and the second look the first."""
    height, width = int(shape[0]), int(shape[1])
    x0, y0, x1, y1 = (int(value) for value in box)
    share = (x1 - x0 + 1) * (y1 - y0 + 1) / (height * width)
    if share >= object_size:
        return None
    # a long thin box keeps a margin inside the window on both axes: pasted back, it is seen whole
    fits = min(width / ((x1 - x0 + 1) * WINDOW_MARGIN), height / ((y1 - y0 + 1) * WINDOW_MARGIN))
    zoom = min(math.sqrt(object_size / share), MAX_ZOOM, fits)
    if zoom <= 1.0:
        return None
    window_height, window_width = height / zoom, width / zoom
    top = min(max((y0 + y1 + 1) / 2 - window_height / 2, 0.0), height - window_height)
    left = min(max((x0 + x1 + 1) / 2 - window_width / 2, 0.0), width - window_width)
    return top, left, window_height, window_width


def crop_window(image: np.ndarray, window: Window) -> np.ndarray:
    """The window of a normalised 2D image ((H, W) or (H, W, 3)) stretched over the image's own (H, W), bilinear,
    float32; where the window reaches past the image (a zoom out) the border is black, as in the zoom views."""
    rows, columns = _window_grid(image.shape[:2], window)
    height, width = image.shape[:2]
    inside = np.outer((rows > -0.5) & (rows < height - 0.5), (columns > -0.5) & (columns < width - 0.5))
    grid = np.meshgrid(rows, columns, indexing="ij")
    channels = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[-1])]
    zoomed = [np.where(inside, ndimage.map_coordinates(np.asarray(c, dtype=np.float32), grid, order=1,
                                                       mode="nearest"), 0.0).astype(np.float32)
              for c in channels]
    return zoomed[0] if image.ndim == 2 else np.stack(zoomed, axis=-1)


def box_in_window(box: Sequence[int], window: Window, shape: Sequence[int]) -> Box:
    """An inclusive box of the image in `crop_window`'s output frame (clipped to it)."""
    height, width = int(shape[0]), int(shape[1])
    top, left, window_height, window_width = window
    x0, y0, x1, y1 = (int(value) for value in box)
    to_x = lambda x: (x - left) * width / window_width  # noqa: E731 (pixel edges, not centres)
    to_y = lambda y: (y - top) * height / window_height  # noqa: E731
    return (max(0, int(math.floor(to_x(x0)))), max(0, int(math.floor(to_y(y0)))),
            min(width - 1, int(math.ceil(to_x(x1 + 1))) - 1), min(height - 1, int(math.ceil(to_y(y1 + 1))) - 1))


def centred_window(shape: Sequence[int], zoom: float) -> Window:
    """The window of zoom `zoom` centred on the image (below 1: the image shrunk inside a black border)."""
    height, width = int(shape[0]), int(shape[1])
    return (height - height / zoom) / 2, (width - width / zoom) / 2, height / zoom, width / zoom


def paste_window(probability: np.ndarray, window: Window, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """A probability map predicted on `crop_window`'s output, back on the image grid: (values, covered), where
    `covered` marks the image pixels inside the window (values elsewhere are meaningless)."""
    height, width = int(shape[0]), int(shape[1])
    top, left, window_height, window_width = window
    rows = (np.arange(height) + 0.5 - top) * height / window_height - 0.5
    columns = (np.arange(width) + 0.5 - left) * width / window_width - 0.5
    covered = np.outer((rows >= -0.5) & (rows <= height - 0.5), (columns >= -0.5) & (columns <= width - 0.5))
    grid = np.meshgrid(rows, columns, indexing="ij")
    values = ndimage.map_coordinates(probability.astype(np.float32), grid, order=1, mode="nearest")
    return values, covered


def pasted_look(first: np.ndarray, seen: np.ndarray, window: Window, unsure: Unsure) -> np.ndarray:
    """The first pass's probability with the second look's (`seen`, predicted on `crop_window`'s output) in its
    window, and the object looked at cleared outside it: its pixels there, in the trigger's mask or in the pieces
    of the first pass's mask touching it within its box widened by one low-res pixel (where refinement outlined it
    anew: it cuts each outline to its object's box, in the decoder's LOW_RES_SIZE grid), set to 0. Kept, the
    spilled mask cut at the window's border survived as crescents beside the corrected object; a whole component
    touching it would take along another object that refined outlines joined to it, and the whole box another
    object inside it. The first pass's other objects keep at least their probability inside the window too: the
    window is zoomed onto the object looked at, and its prediction dropped another object it covered (the other
    panel's nodule of a dual-view ultrasound capture) or cut it at the window's border."""
    values, covered = paste_window(seen, window, first.shape)
    margin = math.ceil(max(first.shape) / LOW_RES_SIZE) + 1
    found = first > FOREGROUND
    looked_at = unsure.component | _touching(_widened_box(unsure.component, margin=margin) & found, unsure.component)
    others = found & ~looked_at
    inside = np.where(others, np.maximum(values, first), values)
    return np.where(covered, inside, np.where(looked_at, 0.0, first)).astype(first.dtype)


def _touching(mask: np.ndarray, component: np.ndarray) -> np.ndarray:
    """The 8-connected pieces of `mask` that share a pixel with `component`: an object apart from it inside its box
    stays."""
    labelled, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return np.isin(labelled, np.unique(labelled[component & mask])) & mask


def _widened_box(component: np.ndarray, *, margin: int) -> np.ndarray:
    """The bounding box of a bool mask widened by `margin` pixels on each side (clipped to the image), as a bool
    mask; empty for an empty mask."""
    box = np.zeros_like(component, dtype=bool)
    spans = ndimage.find_objects(component.astype(np.int32))
    if spans:
        box[tuple(slice(max(span.start - margin, 0), span.stop + margin) for span in spans[0])] = True
    return box


def _window_grid(shape: Sequence[int], window: Window) -> tuple[np.ndarray, np.ndarray]:
    """For each output row and column, the image coordinate (pixel centres at integers) it samples."""
    height, width = int(shape[0]), int(shape[1])
    top, left, window_height, window_width = window
    return (top + (np.arange(height) + 0.5) * window_height / height - 0.5,
            left + (np.arange(width) + 0.5) * window_width / width - 0.5)


def choose_second_look(fold_checks: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per target label, whether to take a second look, from the folds' validation checks (`second_look` of each
    fold's validation/summary.json: validation samples zoomed out into small objects, see
    training/second_look_check.py): look when, pooled over the samples where the trigger fired, the second look's
    masks agree with the frozen model's masks of the true boxes better than the first pass's do by at least
    MIN_GAIN (mean Dice). No check, or no sample that triggered: no second look."""
    choices = {}
    for label, (count, first, second) in pooled_check_means(fold_checks, ("first", "second")).items():
        choices[label] = {"look": bool(count) and second - first >= MIN_GAIN, "samples": count, "first": first,
                          "second": second,
                          "reason": (f"on {count} validation samples of the folds zoomed out by {CHECK_ZOOM} where "
                                     "the first pass was unsure, Dice with the frozen model's masks of the true "
                                     f"boxes: second look {second:.3f} vs first pass {first:.3f} (taken from "
                                     f"+{MIN_GAIN})")}
    return choices
