"""Generate a small ultrasound-like demo dataset, so the whole pipeline runs on a fresh machine without downloads.

Each image mimics a fetal-head ultrasound frame: a fan-shaped field of view, multiplicative speckle with Rayleigh
statistics, depth attenuation, tissue layers and bright clutter, and one elliptical structure whose rim echoes
brightly where the beam meets it head-on and fades at the sides, around a darker interior with a midline echo.
Cases are drawn from `seed` and their index only, so a case never changes when the dataset grows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from automedsam.conversion.staging import progress_over, staged_dataset, write_dataset_json
from automedsam.io import Geometry, write_image, write_segmentation

IMAGE_SHAPE = (192, 256)
APEX = (-30.0, IMAGE_SHAPE[1] / 2)   # (row, column) of the probe, above the image
FAN_HALF_ANGLE = np.deg2rad(40)
FAN_RADII = (40.0, 235.0)
TRAINING_STREAM, TEST_STREAM = 0, 1


def make_synthetic_dataset(dataset_id: int, *, name: str = "SyntheticUS", n_train: int = 20, n_test: int = 10,
                           seed: int = 0, overwrite: bool = False) -> Path:
    """Write raw/DatasetXXX_Name with `n_train` labelled cases and `n_test` held-out images + reference masks.

    Training cases go to imagesTr/labelsTr, test cases to imagesTs/labelsTs (the reference for the demo's
    evaluation; prediction sees only imagesTs).
    """
    geometry = Geometry.natural()
    work = [("Tr", f"us_{i:03d}", TRAINING_STREAM, i) for i in range(n_train)]
    work += [("Ts", f"us_test_{i:03d}", TEST_STREAM, i) for i in range(n_test)]
    with staged_dataset(dataset_id, name, overwrite) as staging:
        for split, case_id, stream, index in progress_over(work, len(work), "synthetic images"):
            image, mask = synthetic_case(np.random.default_rng([seed, stream, index]))
            write_image(staging.folder / f"images{split}" / f"{case_id}_0000.png", image, geometry)
            write_segmentation(staging.folder / f"labels{split}" / f"{case_id}.png", mask, geometry)
        write_dataset_json(
            staging.folder, name=name, labels={"background": 0, "structure": 1}, channel_names={"0": "ultrasound"},
            file_ending=".png", groups={case_id: case_id for split, case_id, _, _ in work if split == "Tr"},
            description=(f"Synthetic ultrasound-like demo images made by automedsam (seed {seed}): one elliptical "
                         "structure per image; imagesTs/labelsTs hold held-out test images and reference masks."),
            licence="CC0 (generated data)",
        )
    return staging.target


def synthetic_case(rng: np.random.Generator, shape: tuple[int, int] = IMAGE_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """One ultrasound-like image (uint8) and the filled mask (uint8 0/1) of its elliptical structure."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    depth = np.hypot(rows - APEX[0], cols - APEX[1])
    field_of_view = fan_mask(rows, cols, depth)
    radius, centre, axes, angle = _structure_pose(rng, rows, cols, field_of_view)
    echo = _tissue(rng, shape, depth)
    echo = _add_clutter(rng, echo, rows, cols, field_of_view)
    echo = _add_structure(rng, echo, rows, cols, radius, centre, axes, angle)
    echo = ndimage.gaussian_filter(echo, 0.8)
    intensity = echo * _speckle(rng, shape) * (1.0 - 0.35 * (depth - FAN_RADII[0]) / np.ptp(FAN_RADII))
    image = np.log1p(6.0 * intensity) / np.log1p(6.0 * 2.5)
    image = np.clip(image + rng.normal(0.0, 0.02, shape), 0.0, 1.0) * field_of_view
    image[_depth_ticks(shape)] = 0.8
    return np.round(image * 255).astype(np.uint8), (radius <= 1.0).astype(np.uint8)


def fan_mask(rows: np.ndarray, cols: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """The sector a curved probe images: within the opening angle and between the near and far radius."""
    angle = np.arctan2(cols - APEX[1], rows - APEX[0])
    return (np.abs(angle) <= FAN_HALF_ANGLE) & (depth >= FAN_RADII[0]) & (depth <= FAN_RADII[1])


def _structure_pose(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray, field_of_view: np.ndarray
                    ) -> tuple[np.ndarray, tuple[float, float], tuple[float, float], float]:
    """Draw an ellipse that lies inside the field of view; returns its normalised radius map and pose."""
    while True:
        major = rng.uniform(30.0, 66.0)
        axes = (major, major * rng.uniform(0.72, 0.92))
        angle = rng.uniform(0.0, np.pi)
        centre = (rng.uniform(0.3, 0.7) * rows.shape[0], rng.uniform(0.3, 0.7) * rows.shape[1])
        radius = elliptic_radius(rows, cols, centre, axes, angle)
        inside = radius <= 1.08
        if inside.any() and field_of_view[inside].all() and not _touches_border(inside):
            return radius, centre, axes, angle


def elliptic_radius(rows: np.ndarray, cols: np.ndarray, centre: tuple[float, float], axes: tuple[float, float],
                    angle: float) -> np.ndarray:
    """1 on the ellipse, < 1 inside, > 1 outside."""
    along = (cols - centre[1]) * np.cos(angle) + (rows - centre[0]) * np.sin(angle)
    across = -(cols - centre[1]) * np.sin(angle) + (rows - centre[0]) * np.cos(angle)
    return np.hypot(along / axes[0], across / axes[1])


def _tissue(rng: np.random.Generator, shape: tuple[int, int], depth: np.ndarray) -> np.ndarray:
    """Background echogenicity: slowly varying soft tissue, dark fluid pools, bright curved layers near the probe."""
    variation = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), 12.0)
    echo = 0.5 + 0.18 * variation / variation.std()
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    for _ in range(rng.integers(0, 3)):
        centre = (rng.uniform(0, shape[0]), rng.uniform(0, shape[1]))
        pool = elliptic_radius(rows, cols, centre, (rng.uniform(15, 40), rng.uniform(10, 25)), rng.uniform(0, np.pi))
        echo = echo * (1.0 - 0.8 * np.exp(-(pool ** 4)))
    for _ in range(rng.integers(1, 4)):
        layer_depth = rng.uniform(FAN_RADII[0] + 5, FAN_RADII[0] + 45)
        echo += rng.uniform(0.4, 0.9) * np.exp(-0.5 * ((depth - layer_depth) / rng.uniform(1.5, 3.5)) ** 2)
    return np.clip(echo, 0.15, None)


def _add_clutter(rng: np.random.Generator, echo: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                 field_of_view: np.ndarray) -> np.ndarray:
    """Bright specular blobs and streaks elsewhere in the image, so brightness alone does not give the structure."""
    candidates = np.argwhere(field_of_view)
    for _ in range(rng.integers(2, 6)):
        row, col = candidates[rng.integers(len(candidates))]
        axes = (rng.uniform(3.0, 14.0), rng.uniform(1.5, 4.0))
        blob = elliptic_radius(rows, cols, (row, col), axes, rng.uniform(0.0, np.pi))
        echo = echo + rng.uniform(1.0, 2.0) * np.exp(-2.0 * blob ** 2)
    return echo


def _add_structure(rng: np.random.Generator, echo: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                   radius: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], angle: float
                   ) -> np.ndarray:
    """Dark interior with a midline echo, bright rim strongest where the beam hits it perpendicularly."""
    interior = radius < 1.0
    echo = np.where(interior, rng.uniform(0.2, 0.35) * (1.0 + 0.5 * (echo - 0.55)), echo)
    midline = np.abs(((cols - centre[1]) * -np.sin(angle) + (rows - centre[0]) * np.cos(angle))) / axes[1]
    echo = echo + interior * (radius < 0.7) * 0.6 * np.exp(-0.5 * (midline * axes[1] / 1.2) ** 2)
    thickness = rng.uniform(3.0, 5.5) / min(axes)
    rim = np.exp(-0.5 * ((radius - (1.0 - thickness / 2)) / (thickness / 2.5)) ** 2)
    normal_rows, normal_cols = np.gradient(radius)
    beam_rows, beam_cols = rows - APEX[0], cols - APEX[1]
    facing = np.abs(normal_rows * beam_rows + normal_cols * beam_cols) / (
        np.hypot(normal_rows, normal_cols) * np.hypot(beam_rows, beam_cols) + 1e-9)
    return echo + rng.uniform(1.6, 2.4) * rim * (0.3 + 0.7 * facing ** 2)


def _speckle(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Fully developed speckle: the magnitude of smoothed complex Gaussian noise (Rayleigh), mean 1."""
    real = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), (0.8, 1.6))
    imaginary = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), (0.8, 1.6))
    magnitude = np.hypot(real, imaginary)
    return magnitude / magnitude.mean()


def _depth_ticks(shape: tuple[int, int]) -> np.ndarray:
    """The depth scale printed beside real ultrasound images: short marks at the left edge."""
    ticks = np.zeros(shape, dtype=bool)
    ticks[20::24, 4:9] = True
    return ticks


def _touches_border(region: np.ndarray) -> bool:
    return bool(region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any())
