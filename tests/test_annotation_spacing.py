"""The annotation API tells the page how much taller than wide a sample's pixels are in the world, so that an image
with anisotropic pixels (a volume's in-plane spacing, a 2D NIfTI's) is drawn unstretched; natural images have square
pixels."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from automedsam.annotation.server import TOKEN_HEADER, create_app
from automedsam.annotation.session import AnnotationSession, pixel_aspect
from automedsam.conversion import convert_folder
from automedsam.dataset import load_raw_dataset
from automedsam.io import Geometry, write_image
from automedsam.paths import preprocessed_dataset_dir
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from toy_model import shared_foundation, toy_image

FROM_THE_PAGE = {"X-Automedsam-Page": "1"}


def first_sample(dataset_id: int) -> dict:
    """The first queued sample's description as the page reads it."""
    raw = load_raw_dataset(dataset_id, check_images=False)
    session = AnnotationSession(raw, preprocessed_dataset_dir(raw.name), foundation=shared_foundation)
    app = create_app(session)
    client = TestClient(app, base_url="http://127.0.0.1", headers={**FROM_THE_PAGE, TOKEN_HEADER: app.state.token})
    sample = client.get("/api/session").json()["samples"][0]["sample"]
    return client.get(f"/api/samples/{sample}").json()


def import_images(folder: Path, arrays: list[np.ndarray], *, spacing: tuple[float, ...], dataset_id: int) -> None:
    """NIfTI images of `spacing` (SimpleITK order, x first), imported unannotated and planned with 2 samples."""
    folder.mkdir()
    geometry = Geometry(spacing=spacing, origin=(0.0,) * len(spacing),
                        direction=tuple(np.eye(len(spacing)).ravel()), kind="sitk")
    for index, array in enumerate(arrays):
        write_image(folder / f"img{index}.nii.gz", array, geometry)
    convert_folder(folder, dataset_id=dataset_id, name="Aniso", label_names=["organ"])
    plan_and_preprocess(dataset_id, shots=2, folds=2, num_workers=1, plan_only=True, progress=False)


def test_a_volume_slice_carries_its_in_plane_pixel_aspect(tmp_path: Path, roots):
    """88 x 56 slices of 1.25 x 1.9 mm pixels cover about 110 x 106 mm: drawn with square pixels they were 1.57:1."""
    rng = np.random.default_rng(0)
    import_images(tmp_path / "vols", [rng.normal(size=(4, 56, 88)).astype(np.float32) for _ in range(2)],
                  spacing=(1.25, 1.9, 3.0), dataset_id=31)
    meta = first_sample(31)
    assert meta["slice"] is not None and meta["shape"] == [56, 88]
    assert meta["aspect"] == pytest.approx(1.9 / 1.25)


def test_a_2d_image_carries_its_rows_over_columns_spacing(tmp_path: Path, roots):
    rng = np.random.default_rng(1)
    import_images(tmp_path / "slices", [rng.normal(size=(40, 60)).astype(np.float32) for _ in range(2)],
                  spacing=(0.5, 1.5), dataset_id=32)
    meta = first_sample(32)
    assert meta["slice"] is None and meta["shape"] == [40, 60] and meta["aspect"] == pytest.approx(3.0)


def test_a_png_has_square_pixels(tmp_path: Path, roots):
    folder = tmp_path / "toys"
    folder.mkdir()
    for seed in range(2):
        Image.fromarray(toy_image(seed)).save(folder / f"toy{seed}.png")
    convert_folder(folder, dataset_id=33, name="Toys", label_names=["ring", "core"])
    plan_and_preprocess(33, shots=2, folds=2, num_workers=1, plan_only=True, progress=False)
    assert first_sample(33)["aspect"] == 1.0


@pytest.mark.parametrize(("spacing", "aspect"), [
    ((3.0, 1.9, 1.25), 1.9 / 1.25),  # a volume's (Z, Y, X): the slice axis is left out
    ((2.0, 0.5), 4.0),  # a 2D image's (rows, columns)
    ((1.0, 100.0, 1.0), 10.0),  # a broken header's aspect is clamped, not drawn a hundred times taller
    ((1.0, 1.0, 1000.0), 0.1),
    ((1.0, 0.0, 1.0), 1.0),  # no usable spacing: square pixels
    ((1.0, math.nan), 1.0),
    ((-2.0, 1.0), 1.0),
])
def test_pixel_aspect_reads_the_plane_of_the_samples_and_guards_against_broken_spacing(spacing, aspect):
    assert pixel_aspect(spacing) == pytest.approx(aspect)
