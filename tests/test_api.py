"""The notebook API: load a results folder, segment arrays and files, and the stages callable as functions."""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automedsam import api
from automedsam import plans as plans_module
from automedsam.conversion import convert_folder
from automedsam.inference import Predictor
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.training import train_fold
from toy_model import INNER, OUTER, EncodeCounter, box_mask, shared_foundation, toy_image, write_model_folder


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
    assert api.plan_and_preprocess is plan_and_preprocess
    assert api.train is train_fold
    from automedsam.inference import predict

    assert api.predict is predict
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
