"""Volumes at prediction: the planned postprocessing works per 2D slice, and a volume stored in another axis order
than the training volumes is named in a warning that says how to reorder it."""
from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from automedsam.files import load_json, save_json
from automedsam.inference import Predictor, predict
from automedsam.inference import run as run_module
from automedsam.inference.background import BackgroundWriter
from automedsam.inference.combine import postprocess
from automedsam.inference.predictor import LoadedImage
from automedsam.io import Geometry, read_image
from test_inference import PLAIN_TARGETS, FakeFoundation, random_folds
from toy_model import toy_plans, write_model_folder

ACDC_SPACING = (1.37, 1.37, 10.0)  # SimpleITK order (x, y, z): 10 mm between short-axis slices


def split_lv(shape: tuple[int, int, int] = (10, 64, 64)) -> np.ndarray:
    """The reviewer's case: one LV object per slice on slices 0-4 and 7-9, two pieces in 3D (slices 5-6 empty)."""
    label_map = np.zeros(shape, dtype=np.uint8)
    label_map[0:5, 20:40, 20:40] = 1
    label_map[7:10, 22:36, 22:36] = 1
    return label_map


def per_slice(label_map: np.ndarray, label: int) -> list[int]:
    return [int((label_map[z] == label).sum()) for z in range(label_map.shape[0])]


def test_largest_component_is_kept_in_each_slice_not_in_the_volume() -> None:
    """Planning counts objects per 2D sample; in 3D the LV of slices 7-9 was deleted as a second object."""
    label_map = split_lv()
    label_map[2, 50:52, 50:52] = 1  # a speck beside the LV of slice 2: a second object in that image
    plans = toy_plans(PLAIN_TARGETS, axis=0)
    kept = postprocess(label_map, plans, axis=0)
    assert per_slice(kept, 1) == [400] * 5 + [0, 0] + [196] * 3
    sideways = postprocess(np.moveaxis(label_map, 0, 2), plans, axis=2)  # the same volume sliced along axis 2
    np.testing.assert_array_equal(np.moveaxis(sideways, 2, 0), kept)


def test_a_2d_label_map_is_postprocessed_as_before() -> None:
    image = np.zeros((30, 30), dtype=np.uint8)
    image[2:12, 2:12] = 1
    image[20:22, 20:22] = 1
    image[25, 25] = 2
    kept = postprocess(image, {"postprocessing": {"largest_component": {"1": True, "2": False}}}, axis=None)
    assert (kept == 1).sum() == 100 and kept[25, 25] == 2
    with pytest.raises(ValueError, match="slicing axis for a volume"):
        postprocess(split_lv(), {}, axis=None)


def test_the_predictor_keeps_each_slices_own_object() -> None:
    """The label map a predictor combines from a volume's slices (what automedsam_predict writes)."""
    plans = toy_plans(PLAIN_TARGETS, axis=0)
    predictor = Predictor(FakeFoundation(), plans, random_folds(1, plans))
    lv = split_lv()
    slices = {1: np.where(lv == 1, 0.9, 0.1).astype(np.float32), 2: np.zeros(lv.shape, dtype=np.float32)}
    label_map, _ = predictor.combine(slices, 0)
    assert per_slice(label_map, 1) == [400] * 5 + [0, 0] + [196] * 3
    moved, _ = predictor.combine(slices, 1)  # slices cut along axis 1 come back in place, each kept whole
    np.testing.assert_array_equal(moved, np.moveaxis(lv, 0, 1))


def volume_predictor(axis: int = 0) -> Predictor:
    """A predictor of a model planned to cut volumes along `axis`."""
    plans = toy_plans(PLAIN_TARGETS, axis=axis)
    return Predictor(FakeFoundation(), plans, random_folds(1, plans))


def geometry(spacing: tuple[float, float, float]) -> Geometry:
    return Geometry(spacing=spacing, origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()), kind="sitk")


def test_a_volume_stored_in_another_axis_order_is_warned_about_with_the_fix() -> None:
    """A volume permuted with sitk.PermuteAxes((2, 1, 0)) was cut into strips across its slices, with no word."""
    predictor = volume_predictor()
    volume = np.random.default_rng(0).uniform(0, 255, size=(10, 12, 14)).astype(np.float32)
    assert predictor.load_array(volume, is_volume=True, geometry=geometry(ACDC_SPACING)).doubt is None
    permuted = np.swapaxes(volume, 0, 2)  # what sitk.PermuteAxes(image, (2, 1, 0)) stores
    loaded = predictor.load_array(permuted, is_volume=True, geometry=geometry(ACDC_SPACING[::-1]))
    assert loaded.axis == 0 and len(loaded.slices) == 14  # cut as planned: the warning does not guess
    assert "spacing is 10 along array axis 2 but 1.37 along axis 0" in loaded.doubt
    assert "sitk.PermuteAxes(sitk.ReadImage(path), [2, 1, 0])" in loaded.doubt


def test_the_warning_of_a_model_trained_on_2d_images_names_no_training_volumes() -> None:
    """A model trained on 2D images cuts a volume along its first axis: the warning named the axis as planned from
    training volumes the model never had, and told the user to store the volume as they are."""
    permuted = np.random.default_rng(0).uniform(0, 255, size=(14, 12, 10)).astype(np.float32)
    loaded = volume_predictor(None).load_array(permuted, is_volume=True, geometry=geometry(ACDC_SPACING[::-1]))
    assert loaded.axis == 0 and "spacing is 10 along array axis 2 but 1.37 along axis 0" in loaded.doubt
    assert "training volumes" not in loaded.doubt
    assert "a model trained on 2D images cuts a volume into 2D images along" in loaded.doubt
    assert "sitk.PermuteAxes(sitk.ReadImage(path), [2, 1, 0])" in loaded.doubt
    planned = volume_predictor().load_array(permuted, is_volume=True, geometry=geometry(ACDC_SPACING[::-1])).doubt
    assert "planned from the training volumes" in planned and "as the training volumes are" in planned


def suggested_order(doubt: str) -> list[int]:
    """The sitk.PermuteAxes order a slicing warning suggests."""
    return [int(v) for v in doubt.split("sitk.PermuteAxes(sitk.ReadImage(path), [")[1].split("]")[0].split(", ")]


def test_the_suggested_permutation_stores_the_slices_along_the_planned_axis(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.random.default_rng(1).uniform(0, 255, size=(10, 12, 14)).astype(np.float32))
    image.SetSpacing(ACDC_SPACING)  # its slices along array axis 0
    for order, planned in (((2, 1, 0), 0), ((0, 2, 1), 0), ((0, 1, 2), 2)):
        predictor = volume_predictor(planned)
        path = tmp_path / "stored.nii.gz"
        sitk.WriteImage(sitk.PermuteAxes(image, order), str(path))
        fixed = tmp_path / "fixed.nii.gz"
        sitk.WriteImage(sitk.PermuteAxes(sitk.ReadImage(str(path)), suggested_order(predictor.load_file(path).doubt)),
                        str(fixed))
        assert predictor.load_file(fixed).doubt is None
        assert read_image(fixed)[0].shape[planned] == 10


def test_volumes_cut_along_their_own_slices_or_near_isotropic_get_no_warning() -> None:
    predictor = volume_predictor()
    volume = np.random.default_rng(2).uniform(0, 255, size=(8, 12, 14)).astype(np.float32)
    for spacing in ((0.7, 0.7, 0.625), (1.0, 1.0, 1.0), (1.0, 1.5, 1.0)):  # thin-slice CT, isotropic, mild
        assert predictor.load_array(volume, is_volume=True, geometry=geometry(spacing)).doubt is None
    sagittal = volume[:, :, :1]  # one slice saved as a volume: cut along its one-voxel axis, whatever the spacing
    loaded = predictor.load_array(sagittal, is_volume=True, geometry=geometry((10.0, 1.0, 1.0)))
    assert loaded.axis == 2 and loaded.doubt is None
    assert predictor.load_array(volume, is_volume=True).doubt is None  # an array without geometry: nothing to judge


def test_the_command_names_a_volume_stored_in_another_axis_order(tiny_foundation, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(run_module, "build_foundation_model", lambda *args, **kwargs: tiny_foundation)
    model_dir = write_model_folder(tmp_path / "results", tiny_foundation, folds=(0,))
    plans = load_json(model_dir / "plans.json", "plans")
    plans["slicing"] = {"is_3d": True, "axis": 0, "reason": "test"}
    save_json(model_dir / "plans.json", plans)
    volume = sitk.GetImageFromArray(np.random.default_rng(3).uniform(0, 255, size=(2, 6, 8)).astype(np.float32))
    volume.SetSpacing((1.0, 1.0, 6.0))
    images = tmp_path / "in"
    images.mkdir()
    sitk.WriteImage(volume, str(images / "upright.nii.gz"))
    sitk.WriteImage(sitk.PermuteAxes(volume, (2, 1, 0)), str(images / "permuted.nii.gz"))
    summary = predict(images, tmp_path / "out", model_folder=model_dir, show_progress=False)
    warnings = capsys.readouterr().err
    assert "Warning: permuted: its spacing is 6 along array axis 2" in " ".join(warnings.split())
    assert "upright" not in warnings
    assert summary.written == 2 and summary.doubtful == 1


def test_predict_weighs_each_result_by_its_probabilities_for_the_writer(tiny_foundation, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer holds back a second large volume's result only when predict says what each result weighs; and a
    result waits for the writer without its volume's slices."""
    weights: list[int] = []
    loaded_images: list[weakref.ref] = []
    held: list[bool] = []  # the image of each result handed to the writer still held
    load_file = Predictor.load_file

    def recorded_load(self: Predictor, path: Path) -> LoadedImage:
        loaded = load_file(self, path)
        loaded_images.append(weakref.ref(loaded))
        return loaded

    class RecordingWriter(BackgroundWriter):
        def submit(self, write, *args, weight: int = 0, **kwargs) -> None:
            weights.append(weight)
            held.append(loaded_images[len(held)]() is not None)
            super().submit(write, *args, weight=weight, **kwargs)

    monkeypatch.setattr(Predictor, "load_file", recorded_load)
    monkeypatch.setattr(run_module, "BackgroundWriter", RecordingWriter)
    monkeypatch.setattr(run_module, "build_foundation_model", lambda *args, **kwargs: tiny_foundation)
    model_dir = write_model_folder(tmp_path / "results", tiny_foundation, folds=(0,))
    plans = load_json(model_dir / "plans.json", "plans")
    plans["slicing"] = {"is_3d": True, "axis": 0, "reason": "test"}
    save_json(model_dir / "plans.json", plans)
    images = tmp_path / "in"
    images.mkdir()
    for name, depth in (("thin", 2), ("thick", 5)):
        volume = np.random.default_rng(depth).uniform(0, 255, size=(depth, 6, 8)).astype(np.float32)
        sitk.WriteImage(sitk.GetImageFromArray(volume), str(images / f"{name}.nii.gz"))
    predict(images, tmp_path / "out", model_folder=model_dir, save_probabilities=True, show_progress=False)
    labels = len(plans["targets"])
    assert sorted(weights) == [labels * depth * 6 * 8 * 4 for depth in (2, 5)]  # float32 per label and voxel
    assert held == [False, False]
