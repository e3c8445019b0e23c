"""Turn an ellipse OUTLINE annotation into a filled mask, also when the image border cuts the ellipse open.

A closed outline is filled by hole filling (exactly the annotated region). An open one (cut by the border, or with
gaps) cannot be hole-filled, so an ellipse is fitted to its pixels by the direct least-squares conic fit of
Fitzgibbon et al. (1999) in the numerically stable form of Halir & Flusser (1998) and rasterised. Either way the
result is checked against the outline, so a wrong fill is an error instead of a silently bad label.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from automedsam.errors import AutomedsamError

BOUNDARY_TOLERANCE_PX = 3.0
MIN_BOUNDARY_AGREEMENT = 0.9
MIN_OUTLINE_PIXELS = 10


def fill_outline(outline: np.ndarray, where: str) -> tuple[np.ndarray, bool]:
    """Filled region (bool, includes the outline) of a 2D outline mask, and whether an ellipse fit was needed."""
    outline = np.asarray(outline, dtype=bool)
    if np.count_nonzero(outline) < MIN_OUTLINE_PIXELS:
        raise AutomedsamError(f"{where}: the annotation holds {np.count_nonzero(outline)} outline pixels, too few "
                              "to be an ellipse outline. Check that this is the right annotation file.")
    filled = ndimage.binary_fill_holes(outline)
    fitted = np.count_nonzero(filled & ~outline) <= np.count_nonzero(outline)
    if fitted:
        filled = ndimage.binary_fill_holes(ellipse_interior(outline, where) | outline)
    agreement = boundary_agreement(filled, outline)
    if agreement < MIN_BOUNDARY_AGREEMENT:
        raise AutomedsamError(f"{where}: the filled region does not follow the annotated outline (only "
                              f"{agreement:.0%} of its edge lies within {BOUNDARY_TOLERANCE_PX:g} px of the outline). "
                              "The annotation is not an ellipse outline; fix or remove this case.")
    return filled, fitted


def ellipse_interior(outline: np.ndarray, where: str) -> np.ndarray:
    """Pixels inside the least-squares ellipse through the outline pixels (bool, the outline's shape)."""
    rows, cols = np.nonzero(outline)
    centre = np.array([cols.mean(), rows.mean()])
    scale = max(float(np.sqrt(((cols - centre[0]) ** 2 + (rows - centre[1]) ** 2).mean())), 1.0)
    conic = fit_ellipse_conic((cols - centre[0]) / scale, (rows - centre[1]) / scale, where)
    grid_y, grid_x = np.mgrid[0:outline.shape[0], 0:outline.shape[1]]
    return conic_value(conic, (grid_x - centre[0]) / scale, (grid_y - centre[1]) / scale) <= 0


def fit_ellipse_conic(x: np.ndarray, y: np.ndarray, where: str) -> np.ndarray:
    """Coefficients (a, b, c, d, e, f) of a x^2 + b xy + c y^2 + d x + e y + f = 0, negative inside the ellipse."""
    quadratic = np.stack([x * x, x * y, y * y], axis=1)
    linear = np.stack([x, y, np.ones_like(x)], axis=1)
    s1, s2, s3 = quadratic.T @ quadratic, quadratic.T @ linear, linear.T @ linear
    try:
        reduce_linear = -np.linalg.solve(s3, s2.T)
    except np.linalg.LinAlgError:
        raise _not_an_ellipse(where) from None
    reduced = s1 + s2 @ reduce_linear
    constrained = np.stack([reduced[2] / 2, -reduced[1], reduced[0] / 2])
    _, vectors = np.linalg.eig(constrained)
    vectors = np.real(vectors)
    is_ellipse = 4 * vectors[0] * vectors[2] - vectors[1] ** 2 > 0
    if not is_ellipse.any():
        raise _not_an_ellipse(where)
    quadratic_part = vectors[:, np.flatnonzero(is_ellipse)[0]]
    conic = np.concatenate([quadratic_part, reduce_linear @ quadratic_part])
    if conic[0] < 0:
        conic = -conic
    a, b, c, d, e, _ = conic
    centre = np.linalg.solve(np.array([[2 * a, b], [b, 2 * c]]), -np.array([d, e]))
    if not conic_value(conic, centre[0], centre[1]) < 0:
        raise _not_an_ellipse(where)
    return conic


def conic_value(conic: np.ndarray, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    """Evaluate the conic polynomial at (x, y)."""
    a, b, c, d, e, f = conic
    return a * x * x + b * x * y + c * y * y + d * x + e * y + f


def boundary_agreement(filled: np.ndarray, outline: np.ndarray) -> float:
    """Share of the region's edge pixels (image border excluded) lying near the outline; 0 for an empty region."""
    edge = filled & ~ndimage.binary_erosion(filled, border_value=1)
    if not edge.any():
        return 0.0
    distance_to_outline = ndimage.distance_transform_edt(~outline)
    return float((distance_to_outline[edge] <= BOUNDARY_TOLERANCE_PX).mean())


def _not_an_ellipse(where: str) -> AutomedsamError:
    return AutomedsamError(f"{where}: no ellipse fits the annotated outline pixels (the outline is open and its "
                           "pixels do not lie on an ellipse). Fix or remove this case.")
