"""The notebook API: load a results folder, segment arrays and files, and the stages callable as functions."""
from __future__ import annotations

import ast
import inspect
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from automedsam import api
from automedsam import plans as plans_module
from automedsam.conversion import convert_folder, make_synthetic_dataset
from automedsam.errors import AutomedsamError
from automedsam.inference import Predictor, open_model_folder
from automedsam.inference.predictor import UnreliableSegmentationWarning
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.training import train_fold
from toy_model import (INNER, OUTER, EncodeCounter, TinyFoundation, box_mask, shared_foundation, toy_image,
                       write_model_folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    """The toy model folder; building the foundation model is shared with the other tests of the session."""
    foundation = shared_foundation()
    patch = pytest.MonkeyPatch()
    patch.setattr(foundation, "encode", EncodeCounter(foundation))
    patch.setattr(plans_module, "build_foundation_model", lambda *args, **kwargs: foundation)
    yield write_model_folder(tmp_path_factory.mktemp("api") / "results", foundation)
    patch.undo()


def test_load_model_and_segment_an_array(model_dir: Path) -> None:
    model = api.load_model(model_dir, folds=[1])
    assert isinstance(model, Predictor) and len(model.fold_modules) == 1
    label_map = api.segment(model, toy_image(0))
    assert label_map.shape == (60, 80) and label_map.dtype == np.uint8
    core = box_mask(INNER)
    assert ((label_map == 2) & core).sum() >= 0.9 * core.sum()
    assert ((label_map == 1) & box_mask(OUTER) & ~core).sum() >= 0.9 * (box_mask(OUTER) & ~core).sum()
    assert not label_map[~box_mask((17, 12, 62, 47))].any(), "nothing beyond the ring's box"


def test_segment_a_file_or_a_volume_with_probabilities(model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "case_0000.png"
    Image.fromarray(toy_image(0)).save(path)
    label_map, probabilities = api.segment(model_dir, path, return_probabilities=True)
    assert sorted(probabilities) == [1, 2] and probabilities[2].shape == label_map.shape == (60, 80)
    np.testing.assert_array_equal(label_map == 2, probabilities[2] > 0.5)
    volume = np.stack([toy_image(0), toy_image(0)])
    volume_map = api.segment(api.load_model(model_dir), volume)
    assert volume_map.shape == (2, 60, 80)
    np.testing.assert_array_equal(volume_map[0], volume_map[1])
    np.testing.assert_array_equal(volume_map[0], label_map)


def test_stages_are_the_stage_functions() -> None:
    """train and predict wrap their stage (the process's random state kept; batch_size checked first)."""
    assert api.plan_and_preprocess is plan_and_preprocess
    assert api.train.__wrapped__ is train_fold
    from automedsam.inference import predict

    assert api.predict.__wrapped__ is predict
    assert set(api.__all__) == {"load_model", "segment", "plan_and_preprocess", "train", "predict"}


def test_every_call_in_the_python_api_page_binds_to_the_functions_signature():
    """The page's example passed label_name= to convert_folder, which takes label_names: a TypeError at once."""
    page = (Path(__file__).parents[1] / "documentation" / "python_api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    functions = {"convert_folder": convert_folder, **{f"api.{name}": getattr(api, name) for name in api.__all__}}
    checked = 0
    for node in (node for block in blocks for node in ast.walk(ast.parse(block)) if isinstance(node, ast.Call)):
        name = ast.unparse(node.func)
        if name in functions:
            arguments = [None] * len(node.args)
            inspect.signature(functions[name]).bind(*arguments, **{k.arg: None for k in node.keywords})
            checked += 1
    assert checked >= 6


def test_a_channels_last_image_is_the_picture_a_file_would_hold(model_dir: Path) -> None:
    """An (H, W, 1) array was a volume of 60 slices of (80, 1) to a model planned for 2D: 60 encoder passes and a
    (60, 80, 1) label map; (H, W, 4) the same. Read from a file, the same picture was one grey image."""
    model = api.load_model(model_dir)
    image = toy_image(0)
    plain, plain_probabilities = api.segment(model, image, return_probabilities=True)
    opaque = np.full_like(image, 255)
    for array in (image[..., None], np.dstack([image, image, image, opaque])):
        label_map, probabilities = api.segment(model, array, return_probabilities=True)
        assert label_map.shape == (60, 80)
        np.testing.assert_array_equal(label_map, plain)
        for label, probability in plain_probabilities.items():
            np.testing.assert_allclose(probabilities[label], probability, atol=1e-6)
    with pytest.raises(AutomedsamError, match=r"alpha channel .* varies.*image\[\.\.\., :3\].*is_volume=True"):
        api.segment(model, np.dstack([image, image, image, image]))


@pytest.mark.parametrize("channels", [2, 5, 8])
def test_a_few_channels_of_one_image_are_refused_by_a_2d_model_not_read_as_thin_slices(model_dir: Path,
                                                                                      channels: int) -> None:
    """Two MR sequences stacked channels-last were a volume of 60 slices 2 pixels wide: 60 encoder passes of
    nothing, and no word."""
    model = api.load_model(model_dir)
    with pytest.raises(AutomedsamError, match=rf"shape \(60, 80, {channels}\) looks like {channels} channels of "
                                              r"one 2D image.*image\[\.\.\., 0\], or is_volume=True"):
        api.segment(model, np.dstack([toy_image(0)] * channels))


@pytest.mark.parametrize("folds, chosen", [(0, (0,)), ("fold1", (1,)), ("01", (1,)), (["fold_1", 0], (0, 1))])
def test_folds_are_spelt_as_on_the_command_line(model_dir: Path, folds, chosen) -> None:
    """folds=0 was a TypeError, "fold1" a ValueError and "01" the folds 0 and 1 (one per character)."""
    assert open_model_folder(model_dir, folds=folds).folds == chosen
    assert len(api.load_model(model_dir, folds=folds).fold_modules) == len(chosen)


def _predict_one_image(model_dir: Path, tmp_path: Path, **options) -> None:
    """api.predict of one toy image: every check before the model's own must pass for a bad option to reach it."""
    (tmp_path / "in").mkdir()
    Image.fromarray(toy_image(0)).save(tmp_path / "in" / "case.png")
    api.predict(tmp_path / "in", tmp_path / "out", model_folder=model_dir, device="cpu", show_progress=False,
                **options)


BAD_CALLS = {
    "predict batch_size 0": lambda model_dir, tmp_path: _predict_one_image(model_dir, tmp_path, batch_size=0),
    "predict batch_size 1.5": lambda model_dir, tmp_path: _predict_one_image(model_dir, tmp_path, batch_size=1.5),
    "predict folds -1": lambda model_dir, tmp_path: _predict_one_image(model_dir, tmp_path, folds=-1),
    "load_model folds x": lambda model_dir, tmp_path: api.load_model(model_dir, folds="x"),
    "load_model folds 1.5": lambda model_dir, tmp_path: api.load_model(model_dir, folds=1.5),
    "load_model folds True": lambda model_dir, tmp_path: api.load_model(model_dir, folds=True),
    "load_model folds 0 and all": lambda model_dir, tmp_path: api.load_model(model_dir, folds=[0, "all"]),
    "load_model None": lambda model_dir, tmp_path: api.load_model(None),
    "segment a 1D array": lambda model_dir, tmp_path: api.segment(api.load_model(model_dir), np.zeros(80)),
    "segment an empty array": lambda model_dir, tmp_path: api.segment(api.load_model(model_dir), np.zeros((0, 80))),
    "segment None": lambda model_dir, tmp_path: api.segment(api.load_model(model_dir), None),
    "segment text": lambda model_dir, tmp_path: api.segment(api.load_model(model_dir), np.array([["a", "b"]] * 2)),
    "segment with no model": lambda model_dir, tmp_path: api.segment(None, toy_image(0)),
    "predict_array a 2D volume": lambda model_dir, tmp_path: api.load_model(model_dir).predict_array(
        toy_image(0), is_volume=True),
    "segment a 4D SimpleITK image": lambda model_dir, tmp_path: api.segment(
        api.load_model(model_dir), sitk.Image([8, 8, 8, 2], sitk.sitkUInt8)),
    "segment a SimpleITK volume of colours": lambda model_dir, tmp_path: api.segment(
        api.load_model(model_dir), sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3)),
    "predict_array a 2D SimpleITK image as a volume": lambda model_dir, tmp_path: api.load_model(
        model_dir).predict_array(sitk.GetImageFromArray(toy_image(0)), is_volume=True),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_arguments_are_the_users_error_not_a_traceback(model_dir: Path, tmp_path: Path, call) -> None:
    """Each was a bare TypeError or ValueError (batch_size=0 only after the foundation model was built)."""
    with pytest.raises(AutomedsamError):
        call(model_dir, tmp_path)


def _process_state() -> dict:
    """What training changes for its own reproducibility, in a form that compares with ==."""
    numpy_state = np.random.get_state()
    return {"random": random.getstate(), "numpy": (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
            "torch": torch.get_rng_state().tolist(), "deterministic": torch.backends.cudnn.deterministic,
            "benchmark": torch.backends.cudnn.benchmark}


def test_train_gives_the_process_random_state_and_cudnn_flags_back(roots, monkeypatch, capsys) -> None:
    """api.train reseeded Python's, numpy's and torch's generators and left cudnn deterministic, benchmark off: a
    notebook's own random draws after it repeated those of every other run."""
    monkeypatch.setattr(plans_module, "build_foundation_model", lambda *args, **kwargs: TinyFoundation())
    make_synthetic_dataset(902, n_train=4, n_test=1, seed=0)
    plan_and_preprocess(902, shots=4, folds=2, num_workers=1, device="cpu", progress=False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    random.random(), np.random.random(), torch.rand(1)
    before = _process_state()
    result = api.train(902, 0, epochs=1, device="cpu")
    assert result.fold_dir.is_dir() and capsys.readouterr().out.strip(), "the progress goes to stdout"
    assert _process_state() == before


def _across_its_slices(volume: np.ndarray) -> sitk.Image:
    """The volume with its own slices along array axis 2 (spacing 5 there): cut along axis 0, as the toy model
    cuts volumes, its images run across them."""
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((5.0, 1.0, 1.0))
    return image


def test_an_image_the_model_cannot_read_well_is_segmented_with_a_warning(model_dir: Path, tmp_path: Path) -> None:
    """The predictor knew a constant image, or a volume cut across its own slices, made the segmentation unreliable,
    and the command said so; the API segmented it without a word (a file's volume not even judged: read again
    without its spacing)."""
    model = api.load_model(model_dir)
    with pytest.warns(UnreliableSegmentationWarning, match=r"^The segmentation of the image is unreliable: .*constant"):
        api.segment(model, np.zeros((60, 80)))
    Image.fromarray(np.full((60, 80), 40, dtype=np.uint8)).save(tmp_path / "blank.png")
    with pytest.warns(UnreliableSegmentationWarning, match=r"blank\.png is unreliable: the image is constant"):
        api.segment(model, tmp_path / "blank.png")
    volume = _across_its_slices(np.stack([toy_image(0)] * 3))
    sitk.WriteImage(volume, str(tmp_path / "across.nii.gz"))
    for image in (volume, tmp_path / "across.nii.gz"):
        with pytest.warns(UnreliableSegmentationWarning, match="cut across the volume's slices"):
            api.segment(model, image)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableSegmentationWarning)
        api.segment(model, toy_image(0))
        model.predict_array(np.stack([toy_image(0)] * 3))  # an array has no spacing to judge


def test_the_command_warns_of_an_unreliable_image_once(model_dir: Path, tmp_path: Path, capsys) -> None:
    """The command's own warning line, not a Python warning besides it."""
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((60, 80), 40, dtype=np.uint8)).save(tmp_path / "in" / "blank.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableSegmentationWarning)
        summary = api.predict(tmp_path / "in", tmp_path / "out", model_folder=model_dir, device="cpu",
                              show_progress=False)
    assert summary.doubtful == 1
    assert capsys.readouterr().err.count("the image is constant") == 1


def test_non_finite_intensities_are_refused_before_the_encoder(model_dir: Path) -> None:
    """Infinity was clipped to the window and segmented; NaN failed only at its own slice, after the encoder's
    passes over the slices before it. The command refuses such a file at once."""
    model = api.load_model(model_dir)
    image = toy_image(0).astype(np.float32)
    image[3, 4] = np.inf
    with pytest.raises(AutomedsamError, match="contains 1 NaN or infinite intensities"):
        api.segment(model, image)
    volume = np.stack([toy_image(seed) for seed in range(3)]).astype(np.float32)
    volume[2, :2, :3] = np.nan
    encoded = model.foundation.encode.images
    with pytest.raises(AutomedsamError, match="contains 6 NaN or infinite intensities"):
        api.segment(model, volume)
    assert model.foundation.encode.images == encoded, "refused before any slice is encoded"


def test_load_model_refuses_a_folder_as_the_command_does(model_dir: Path, tmp_path: Path) -> None:
    """The dataset's results folder was 'plans.json does not exist', and a folder of weights 'does not exist':
    the command names the model folders there, and asks for the weights file itself."""
    with pytest.raises(AutomedsamError, match=f"not a trained model folder.*Model folders found there: {model_dir}"):
        api.load_model(model_dir.parent)
    with pytest.raises(AutomedsamError, match="is a folder, not a file; give the weights file itself"):
        api.load_model(model_dir, foundation_checkpoint=tmp_path)


def test_a_simpleitk_image_is_segmented_as_its_array(model_dir: Path) -> None:
    """np.asarray of a SimpleITK image is a 1-D array of its pixels: 'The image has shape (4800,)'."""
    model = api.load_model(model_dir)
    image = toy_image(0)
    np.testing.assert_array_equal(api.segment(model, sitk.GetImageFromArray(image)), api.segment(model, image))
    colour = np.dstack([image, image // 2, image])
    np.testing.assert_array_equal(api.segment(model, sitk.GetImageFromArray(colour, isVector=True)),
                                  api.segment(model, colour))
    volume = np.stack([image, toy_image(1)])
    np.testing.assert_array_equal(api.segment(model, sitk.GetImageFromArray(volume)), api.segment(model, volume))
    with pytest.raises(AutomedsamError, match=r"The image \(a list\) has shape \(3,\)"):
        api.segment(model, [1.0, 2.0, 3.0])
