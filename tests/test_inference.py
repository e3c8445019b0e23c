"""The ensembling predictor: naming, model folders, combination, fold/flip averaging, and prediction end to end."""
from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from PIL import Image

from automedsam import plans as plans_module
from automedsam.benchmarks import speed
from automedsam.checkpoint import save_checkpoint
from automedsam.cli import predict as predict_cli
from automedsam.dataset import Case
from automedsam.errors import AutomedsamError
from automedsam.files import save_json
from automedsam.foundation.frame import logits_to_shape, make_frame
from automedsam.inference import Predictor, locate_model_folder, open_model_folder, predict, trained_models
from automedsam.inference import combine as combine_module
from automedsam.inference import run as run_module
from automedsam.inference.combine import (RunningMean, keep_largest_component, label_map_from, postprocess,
                                          ring_probabilities)
from automedsam.inference.naming import (case_id_of, check_output_folder, discover_inputs, output_extension,
                                         probabilities_paths)
from automedsam.io import read_image, read_segmentation
from automedsam.prompt_module import PromptModule, modules_state_dict
from test_io import write_tiff_with_a_sizeless_second_page
from toy_model import (INNER, OUTER, RING_TARGETS, EncodeCounter, TinyFoundation, box_mask, shared_foundation,
                       toy_image, toy_plans, write_model_folder)

PLAIN_TARGETS = [{"label": 1, "name": "a", "region": [1], "subtract": [], "per_component": False},
                 {"label": 2, "name": "b", "region": [2], "subtract": [], "per_component": False}]


# ---------------------------------------------------------------- naming


def test_case_ids_and_output_names() -> None:
    assert case_id_of("x/CASE_0000.nii.gz") == "CASE"
    assert case_id_of("patient001_frame01.nii.gz") == "patient001_frame01"
    assert case_id_of("benign (3).png") == "benign (3)"
    assert case_id_of("007_HC.png") == "007_HC"
    assert case_id_of("_0000.png") == "_0000"  # was "": its output OUT/.png stopped the run after encoding
    assert output_extension(".jpg") == ".png" and output_extension(".nii.gz") == ".nii.gz"
    assert probabilities_paths(Path("out/p1.nii.gz")) == (Path("out/p1.npz"), Path("out/p1.json"))


def test_discover_inputs_keeps_images_only(tmp_path: Path) -> None:
    for name in ("b_0000.nii.gz", "a (1).png", "notes.txt", ".hidden.png", ".a.png.x1.partial.png"):
        (tmp_path / name).write_bytes(b"x")
    found = discover_inputs(tmp_path)
    assert [(image.case_id, image.extension) for image in found] == [("a (1)", ".png"), ("b", ".nii.gz")]
    (tmp_path / "b.png").write_bytes(b"x")
    with pytest.raises(AutomedsamError, match="both case 'b'"):
        discover_inputs(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AutomedsamError, match="No images found"):
        discover_inputs(empty)


def test_discover_inputs_refuses_the_other_channels_of_an_nnunet_case(tmp_path: Path) -> None:
    """b_0001.nii.gz beside b_0000.nii.gz was predicted as a case of its own."""
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", "c_2019.png"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(AutomedsamError, match=r"a_0001\.nii\.gz, b_0001\.nii\.gz in .*another channel of a case"):
        discover_inputs(tmp_path)
    for name in ("a_0001.nii.gz", "b_0001.nii.gz"):
        (tmp_path / name).unlink()
    assert [image.case_id for image in discover_inputs(tmp_path)] == ["a", "b", "c_2019"]  # no c_0000: a name, kept
    frames = tmp_path / "frames"  # numbered frames of one video, or slices exported one per file: cases
    frames.mkdir()
    for index in range(3):
        (frames / f"frame_{index:04d}.png").write_bytes(b"x")
    assert [image.case_id for image in discover_inputs(frames)] == ["frame", "frame_0001", "frame_0002"]


def test_output_folder_may_not_hit_the_inputs(tmp_path: Path) -> None:
    images_dir = tmp_path / "in"
    images_dir.mkdir()
    (images_dir / "a.png").write_bytes(b"x")
    images = discover_inputs(images_dir)
    with pytest.raises(AutomedsamError, match="inside the input folder"):
        check_output_folder(images_dir, images_dir / "pred", images)
    single = discover_inputs(images_dir / "a.png")
    with pytest.raises(AutomedsamError, match="would overwrite that image"):
        check_output_folder(images_dir / "a.png", images_dir, single)
    with pytest.raises(AutomedsamError, match="is a file"):
        check_output_folder(images_dir, images_dir / "a.png", images)
    check_output_folder(images_dir, tmp_path / "out", images)


def test_an_output_folder_that_cannot_be_written_is_refused_before_anything_is_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images_dir = tmp_path / "in"
    images_dir.mkdir()
    (images_dir / "a.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("a file")
    images = discover_inputs(images_dir)
    with pytest.raises(AutomedsamError, match="notes.txt is a file, not a folder"):
        check_output_folder(images_dir, tmp_path / "notes.txt" / "pred" / "run1", images)
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr("os.access", lambda path, mode: Path(path) != locked)  # as root, chmod would not lock it
    with pytest.raises(AutomedsamError, match="locked is not writable"):
        check_output_folder(images_dir, locked / "pred" / "run1", images)
    assert not (locked / "pred").exists()
    check_output_folder(images_dir, tmp_path / "free" / "pred", images)


# ---------------------------------------------------------------- combination


def disc(radius: float, shape: tuple[int, int] = (41, 41)) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - 20) ** 2 + (cols - 20) ** 2 <= radius**2


def test_ring_is_region_minus_enclosed_structure() -> None:
    region, cavity = disc(15), disc(7)
    probabilities = {1: np.where(region, 0.9, 0.1).astype(np.float32),
                     2: np.where(cavity, 0.8, 0.05).astype(np.float32)}
    combined = ring_probabilities(probabilities, RING_TARGETS)
    np.testing.assert_allclose(combined[1][cavity], 0.2, atol=1e-6)
    np.testing.assert_allclose(combined[1][region & ~cavity], 0.9, atol=1e-6)
    assert combined[2] is probabilities[2]
    label_map = label_map_from(combined)
    np.testing.assert_array_equal(label_map == 2, cavity)
    np.testing.assert_array_equal(label_map == 1, region & ~cavity)
    assert (label_map[~region] == 0).all()


def test_a_ring_around_two_structures_leaves_out_each_of_them() -> None:
    """p_ring = min(p_region, 1 - max(p_subtract)): a pixel likely in either enclosed structure is not the ring's."""
    probabilities = {1: np.array([0.9, 0.9, 0.9]), 2: np.array([0.8, 0.1, 0.1]), 3: np.array([0.1, 0.8, 0.1])}
    targets = [{"label": 1, "subtract": [2, 3]}, {"label": 2}, {"label": 3}]
    np.testing.assert_allclose(ring_probabilities(probabilities, targets)[1], [0.2, 0.2, 0.9])


def test_label_map_takes_most_probable_target_above_half() -> None:
    probabilities = {1: np.array([0.6, 0.4, 0.7, 0.2]), 3: np.array([0.55, 0.45, 0.9, 0.51])}
    np.testing.assert_array_equal(label_map_from(probabilities), [1, 0, 3, 3])


def whole_array_label_map(probabilities: dict[int, np.ndarray]) -> np.ndarray:
    """label_map_from's rule over the whole array at once: the reference the chunked one must equal."""
    labels = sorted(probabilities)
    stacked = np.stack([probabilities[label] for label in labels])
    best = np.argmax(stacked, axis=0)
    winning = np.take_along_axis(stacked, best[None], axis=0)[0]
    return np.where(winning > 0.5, np.asarray(labels)[best], 0)


def test_the_architecture_page_gives_combine_its_parameters() -> None:
    """documentation/architecture.md said `combine(slices, is_volume)`; the method takes the slicing axis."""
    parameters = list(inspect.signature(Predictor.combine).parameters)[1:]
    page = (Path(__file__).parents[1] / "documentation" / "architecture.md").read_text(encoding="utf-8")
    assert f"`combine({', '.join(parameters)})`" in page, parameters


@pytest.mark.parametrize("shape", [(37, 29), (9, 13, 11), (1, 40, 7), (50,)])
@pytest.mark.parametrize("labels", [(1, 2, 3), (4, 300, 7)])
def test_the_chunked_label_map_equals_the_whole_array_one(monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...],
                                                          labels: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape) + max(labels))
    # quarters: many ties between labels and many probabilities of exactly 0.5 (background)
    probabilities = {label: (rng.integers(0, 5, shape) / 4).astype(np.float32) for label in labels}
    expected = whole_array_label_map(probabilities)
    assert len(np.unique(expected)) == len(labels) + 1
    for chunk in (1, 50, 2**18):  # chunks of one row, of several rows not dividing the first axis, and whole
        monkeypatch.setattr(combine_module, "LABEL_MAP_CHUNK", chunk)
        label_map = label_map_from(probabilities)
        assert label_map.dtype == (np.uint16 if max(labels) > 255 else np.uint8)
        np.testing.assert_array_equal(label_map, expected)


def test_a_tie_goes_to_the_lowest_label_and_half_is_background() -> None:
    probabilities = {7: np.array([[0.8, 0.5, 0.6]]), 2: np.array([[0.8, 0.5, 0.3]]), 300: np.array([[0.1, 0.4, 0.6]])}
    label_map = label_map_from(probabilities)
    np.testing.assert_array_equal(label_map, [[2, 0, 7]])
    assert label_map.dtype == np.uint16


def test_the_label_map_of_a_volume_takes_little_memory_beside_its_probabilities() -> None:
    rng = np.random.default_rng(0)
    probabilities = {label: rng.random((40, 256, 256), dtype=np.float32) for label in (1, 2, 3)}
    tracemalloc.start()
    try:
        label_map_from(probabilities)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # taken whole, the stacked probabilities and argmax indices alone need 20 bytes per voxel
    assert peak < 8 * probabilities[1].size


def test_largest_component_postprocessing_follows_the_plans() -> None:
    label_map = np.zeros((12, 12), dtype=np.uint8)
    label_map[1:4, 1:4] = 1
    label_map[8:10, 8:10] = 1
    label_map[6, 1] = 2
    label_map[6, 4] = 2
    kept = postprocess(label_map, {"postprocessing": {"largest_component": {"1": True, "2": False}}}, axis=None)
    assert (kept == 1).sum() == 9 and (kept[8:10, 8:10] == 0).all()
    assert (kept == 2).sum() == 2
    volume = np.zeros((3, 5, 5), dtype=np.uint8)
    volume[0, 0, 0] = volume[1, 1, 1] = 1
    volume[2, 4, 4] = 1
    assert (keep_largest_component(volume, 1) == 1).sum() == 2


def test_running_mean() -> None:
    mean = RunningMean()
    for value in (1.0, 2.0, 6.0):
        mean.add(torch.full((2,), value))
    torch.testing.assert_close(mean.mean(), torch.full((2,), 3.0))


# ---------------------------------------------------------------- model folders


def fake_model(results: Path, dataset: str = "Dataset001_Toy", trainer: str = "default",
               checkpoints: dict[str, list[str]] | None = None) -> Path:
    """A model folder with plans.json (naming `dataset`, as training copies it) and empty checkpoint files: enough for
    discovery and fold selection."""
    model_dir = results / dataset / f"{trainer}__toyPlans"
    save_json(model_dir / "plans.json", {**toy_plans(), "dataset_name": dataset})
    for fold, names in ({"0": ["final"]} if checkpoints is None else checkpoints).items():
        for name in names:
            path = model_dir / f"fold_{fold}" / f"checkpoint_{name}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    return model_dir


def test_fold_selection_and_missing_checkpoints(tmp_path: Path) -> None:
    model_dir = fake_model(tmp_path, checkpoints={"0": ["final"], "1": ["best"], "2": ["best", "final"]})
    assert open_model_folder(model_dir).folds == (0, 2), "the final checkpoint is the default"
    best = open_model_folder(model_dir, checkpoint="best")
    assert (best.folds, best.left_out) == ((2,), (0, 1)), "fold 1 is unfinished, fold 0 has no best checkpoint"
    assert open_model_folder(model_dir, folds=[1], checkpoint="best").folds == (1,), "named: the user's choice"
    with pytest.raises(AutomedsamError, match="automedsam_train 001 fold1"):
        open_model_folder(model_dir, folds=[0, 1])
    with pytest.raises(AutomedsamError, match="automedsam_train 001 all"):
        open_model_folder(model_dir, folds="all")
    only_all = fake_model(tmp_path, dataset="Dataset002_B", checkpoints={"all": ["best"]})
    assert open_model_folder(only_all, folds="all", checkpoint="best").folds == ("all",)
    for checkpoint in ("best", "final"):  # no advice to load the weights of a run still going
        with pytest.raises(AutomedsamError, match=r"no fold has finished training.*automedsam_train 002 fold0.*--c") \
                as error:
            open_model_folder(only_all, checkpoint=checkpoint)
        assert "--checkpoint best" not in str(error.value)
    exported_without_best = fake_model(tmp_path, dataset="Dataset003_C", checkpoints={"0": ["final"]})
    with pytest.raises(AutomedsamError, match="checkpoint_best.pt among its finished ones.*Leave --checkpoint out"):
        open_model_folder(exported_without_best, checkpoint="best")


def test_a_model_folder_copied_under_another_name_is_not_given_a_training_command_that_misreads_it(
        tmp_path: Path) -> None:
    """predict -m some/copy/m said "Train it with `automedsam_train copy fold2 --trainer m`": the parent folder was
    taken for the dataset and the folder's name for the trainer. The dataset is the one its plans name; a folder not
    named TRAINER__PLANS tells no trainer, and no command trains it where it is."""
    model_dir = fake_model(tmp_path / "results", dataset="Dataset007_Seven", checkpoints={"0": ["final"]})
    renamed = tmp_path / "copy" / "m"
    shutil.copytree(model_dir, renamed)
    with pytest.raises(AutomedsamError) as missing:
        open_model_folder(renamed, folds=[2])
    with pytest.raises(AutomedsamError, match="cannot be read") as damaged:  # fake_model's checkpoints are empty
        open_model_folder(renamed).load_state(0)
    for refused, fold in ((missing, "fold2"), (damaged, "fold0")):
        message = str(refused.value)
        assert f"train the fold in the model folder this one was copied from (`automedsam_train 007 {fold} --trainer " \
               "NAME`" in message, message
        assert "automedsam_train copy" not in message and "--trainer m" not in message, message
    copied = tmp_path / "copy" / "Dataset007_Seven" / "fullsup__toyPlans"  # placed as training places it
    shutil.copytree(model_dir, copied)
    with pytest.raises(AutomedsamError, match=r"Train it with `automedsam_train 007 fold2 --trainer fullsup`\."):
        open_model_folder(copied, folds=[2])
    downloaded = tmp_path / "Downloads" / "fullsup__toyPlans"  # its name alone would train results' own model
    shutil.copytree(model_dir, downloaded)
    with pytest.raises(AutomedsamError, match="No command trains the folds of") as elsewhere:
        open_model_folder(downloaded, folds=[2])
    assert "automedsam_train 007 fold2 --trainer NAME" in str(elsewhere.value), str(elsewhere.value)
    replaced = tmp_path / "results" / "Dataset007_Seven" / "previous" / "default__toyPlans_1"
    shutil.copytree(model_dir, replaced)
    with pytest.raises(AutomedsamError, match=r"replaced since \(kept in previous/\): no command trains its folds "
                                              r"again\. Leave fold 0 out of -f, or use the current model of "
                                              r"Dataset007_Seven\.") as previous:
        open_model_folder(replaced).load_state(0)
    assert "--overwrite" not in str(previous.value)


def test_a_fold_with_only_its_best_checkpoint_is_unfinished_and_left_out(tmp_path: Path) -> None:
    """checkpoint_best.pt is written at the first validation: with --checkpoint best a fold stopped at epoch 3, or
    still training, joined the ensemble, while with final it was left out."""
    model_dir = fake_model(tmp_path, checkpoints={"0": ["best", "final"], "1": ["best", "final"], "2": ["best"]})
    for checkpoint in ("best", "final"):
        folder = open_model_folder(model_dir, checkpoint=checkpoint)
        assert (folder.folds, folder.left_out) == ((0, 1), (2,)), checkpoint


def test_model_is_found_without_dataset_only_when_unique(roots: dict[str, Path]) -> None:
    with pytest.raises(AutomedsamError, match="No trained model"):
        locate_model_folder()
    first = fake_model(roots["results"])
    fake_model(roots["results"], dataset="Dataset003_Untrained", checkpoints={})
    assert locate_model_folder() == first
    second = fake_model(roots["results"], dataset="Dataset002_Other", trainer="fullsup")
    assert trained_models() == [first, second]
    with pytest.raises(AutomedsamError, match="Several trained models") as error:
        locate_model_folder()
    assert "Dataset001_Toy/default__toyPlans" in str(error.value)
    assert "Dataset002_Other/fullsup__toyPlans" in str(error.value)
    assert locate_model_folder("2", trainer="fullsup") == second
    with pytest.raises(AutomedsamError, match="automedsam_train 002 fold0"):
        locate_model_folder("2")


def test_checkpoint_without_a_planned_target_is_refused(tmp_path: Path) -> None:
    model_dir = fake_model(tmp_path, checkpoints={})
    weights = modules_state_dict({1: PromptModule(center_channels=16)})
    save_checkpoint(model_dir / "fold_0", "final", weights, {})
    with pytest.raises(AutomedsamError, match=r"labels \[1\].*targets \[1, 2\].*automedsam_train 001 fold0"):
        Predictor.from_folder(model_dir)


def test_cli_lists_the_trained_models_to_choose_from(roots: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    fake_model(roots["results"])
    fake_model(roots["results"], dataset="Dataset002_Other")
    images_dir = tmp_path / "in"
    images_dir.mkdir()
    Image.fromarray(toy_image()).save(images_dir / "a.png")
    monkeypatch.setattr(sys, "argv", ["automedsam_predict", "-i", str(images_dir), "-o", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main()
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "Several trained models" in message and "Dataset002_Other" in message and "Traceback" not in message


def test_fold_option_parsing() -> None:
    assert predict_cli.parse_folds(None, []) is None
    assert predict_cli.parse_folds(["0"], ["1", "3"]) == [0, 1, 3]
    assert predict_cli.parse_folds(["fold2,0"], []) == [0, 2]
    assert predict_cli.parse_folds(["all"], []) == "all"
    with pytest.raises(AutomedsamError, match="Unknown fold 'x'"):
        predict_cli.parse_folds(["x"], [])
    with pytest.raises(AutomedsamError, match="`all` alone"):
        predict_cli.parse_folds(["all", "0"], [])
    with pytest.raises(AutomedsamError, match="Unexpected arguments"):
        predict_cli.parse_folds(None, ["1"])


# ---------------------------------------------------------------- predictor logic on a fake foundation model


class FakeFoundation:
    """Stands in for a FoundationModel: cheap, deterministic, and flip-equivariant (so flips must cancel exactly).

    The embedding is the prepared image pooled to 64x64; the decoder returns that map plus a per-prompt offset.
    """

    input_size = 256
    low_res_size = 256
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.images_encoded = 0
        self.encode_calls = 0

    def prepare(self, image2d: np.ndarray) -> tuple[torch.Tensor, object]:
        frame = make_frame(image2d.shape[:2], self.input_size)
        pixels = torch.from_numpy(np.ascontiguousarray(image2d, dtype=np.float32))[None, None]
        padded = torch.zeros((3, self.input_size, self.input_size))
        padded[:, : frame.resized_shape[0], : frame.resized_shape[1]] = F.interpolate(
            pixels, size=frame.resized_shape, mode="bilinear", align_corners=False)[0]
        return padded, frame

    def frame_for(self, shape: tuple[int, ...]) -> object:
        return make_frame(shape[:2], self.input_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        self.images_encoded += len(images)
        return F.avg_pool2d(images[:, :1], 4).repeat(1, 256, 1, 1)

    def decode(self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        offset = sparse.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return F.interpolate(embeddings[:, :1] * 8 - 4 + offset, size=(256, 256), mode="nearest")

    def logits_to_original(self, low_res: torch.Tensor, frame) -> torch.Tensor:
        return logits_to_shape(low_res, frame, self.input_size)


def random_folds(count: int, plans: dict, labels=(1, 2)) -> list[dict[int, PromptModule]]:
    torch.manual_seed(0)
    folds = []
    for _ in range(count):
        modules = {}
        for label in labels:
            module = PromptModule(center_channels=16)
            with torch.no_grad():
                module.sparse_linear.bias.uniform_(-3, 3)
            modules[label] = module
        folds.append(modules)
    return folds


def gradient_volume(shape: tuple[int, ...]) -> np.ndarray:
    """An asymmetric test volume in [0, 255] (a ramp plus a bright off-centre block)."""
    volume = np.linspace(0, 150, num=int(np.prod(shape)), dtype=np.float32).reshape(shape)
    index = tuple(slice(s // 5, s // 2) for s in shape)
    volume[index] += 100
    return volume


def test_encoder_runs_once_per_slice_whatever_the_folds_and_labels() -> None:
    plans = toy_plans(PLAIN_TARGETS, axis=0)
    fake = FakeFoundation()
    predictor = Predictor(fake, plans, random_folds(3, plans), batch_size=2)
    label_map, probabilities = predictor.predict_array(gradient_volume((3, 24, 32)))
    assert (fake.images_encoded, fake.encode_calls) == (3, 2)
    assert label_map.shape == (3, 24, 32) and set(probabilities) == {1, 2}
    assert all(p.shape == (3, 24, 32) and p.dtype == np.float32 for p in probabilities.values())
    tta = Predictor(fake, plans, random_folds(2, plans), tta=True)
    tta.predict_array(gradient_volume((24, 32)))
    assert fake.images_encoded == 3 + 3


def test_fold_average_is_mean_of_single_fold_probabilities() -> None:
    plans = toy_plans(PLAIN_TARGETS)
    folds = random_folds(3, plans)
    image = gradient_volume((60, 80))
    singles = [Predictor(FakeFoundation(), plans, [fold]).predict_array(image)[1] for fold in folds]
    _, ensemble = Predictor(FakeFoundation(), plans, folds).predict_array(image)
    for label in (1, 2):
        expected = np.mean([single[label] for single in singles], axis=0)
        assert np.ptp(expected) > 0.1
        np.testing.assert_allclose(ensemble[label], expected, atol=1e-6)


def test_one_decoding_gives_the_ensemble_and_each_folds_own_map() -> None:
    """The review's shortcut: the folds' maps and the ensemble's from the same decoder passes are what predicting
    with each fold alone and with the ensemble gives."""
    plans = toy_plans(PLAIN_TARGETS)
    folds = random_folds(3, plans)
    fake = FakeFoundation()
    plane = plans_module.Plans(plans).normalise(gradient_volume((60, 80)))
    embedding = fake.encode(torch.stack([fake.prepare(plane)[0]]))
    ensemble = Predictor(fake, plans, folds)
    label_map, probabilities, fold_maps = ensemble.predict_plane_and_folds(embedding, plane)
    expected_map, expected = ensemble.predict_embeddings(embedding, plane.shape, is_volume=False)
    assert np.array_equal(label_map, expected_map)
    for label in (1, 2):
        np.testing.assert_allclose(probabilities[label], expected[label], atol=1e-6)
    singles = [Predictor(fake, plans, [fold]).predict_embeddings(embedding, plane.shape, is_volume=False)[0]
               for fold in folds]
    assert len({single.tobytes() for single in singles}) > 1  # the folds disagree, so the maps can tell them apart
    assert all(np.array_equal(mine, single) for mine, single in zip(fold_maps, singles, strict=True))


class SeeingFoundation(FakeFoundation):
    """FakeFoundation that keeps every image it is given to prepare."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[np.ndarray] = []

    def prepare(self, image2d: np.ndarray) -> tuple[torch.Tensor, object]:
        self.seen.append(np.array(image2d))
        return super().prepare(image2d)


def test_flips_are_undone_before_averaging() -> None:
    """The fake is flip-equivariant, so undone flips give the plain result; which images the encoder saw shows that
    the flips were made (three unflipped passes would give the same average)."""
    plans = toy_plans(PLAIN_TARGETS)
    folds = random_folds(2, plans)
    image = gradient_volume((60, 80))
    plain_model, tta_model = SeeingFoundation(), SeeingFoundation()
    _, plain = Predictor(plain_model, plans, folds).predict_array(image)
    _, flipped = Predictor(tta_model, plans, folds, tta=True).predict_array(image)
    assert np.ptp(plain[1]) > 0.1
    np.testing.assert_allclose(flipped[1], plain[1], atol=1e-4)
    [seen] = plain_model.seen
    assert len(tta_model.seen) == 3
    for expected in (seen, seen[:, ::-1], seen[::-1]):
        assert sum(np.array_equal(expected, other) for other in tta_model.seen) == 1


def test_a_colour_image_of_one_pixel_is_predicted_with_flips() -> None:
    """The flip of a side of 1 px keeps a negative stride; where the other side is 1 px too, np.ascontiguousarray
    takes the colour planes as contiguous and does not copy, and torch.from_numpy raised a ValueError (a traceback)
    for a (1, 1, 3) image with --tta."""
    plans = toy_plans(PLAIN_TARGETS)
    predictor = Predictor(TinyFoundation(), plans, random_folds(1, plans), tta=True)
    for shape in ((1, 1, 3), (1, 12, 3), (12, 1, 3)):
        image = np.linspace(0, 255, num=int(np.prod(shape)), dtype=np.float32).reshape(shape)
        label_map, probabilities = predictor.predict_array(image)
        assert label_map.shape == shape[:2] and probabilities[1].shape == shape[:2]


def test_volume_is_sliced_along_the_planned_axis() -> None:
    plans = toy_plans(PLAIN_TARGETS, axis=2)
    fake = FakeFoundation()
    predictor = Predictor(fake, plans, random_folds(1, plans))
    volume = gradient_volume((24, 32, 3))
    _, probabilities = predictor.predict_array(volume)
    assert fake.images_encoded == 3 and probabilities[1].shape == volume.shape
    _, middle = predictor.predict_array(volume[:, :, 1], is_volume=False)
    np.testing.assert_allclose(probabilities[1][:, :, 1], middle[1], atol=1e-6)


# ---------------------------------------------------------------- the real model, end to end


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory):
    """A toy model folder, PNG and NIfTI inputs, and one prediction of each, with the encoder counted."""
    root = tmp_path_factory.mktemp("toy")
    foundation = shared_foundation()
    counter = EncodeCounter(foundation)
    patch = pytest.MonkeyPatch()
    patch.setattr(foundation, "encode", counter)
    patch.setattr(plans_module, "build_foundation_model", lambda *args, **kwargs: foundation)
    patch.setattr(run_module, "build_foundation_model", lambda *args, **kwargs: foundation)
    model_dir = write_model_folder(root / "results", foundation)
    pngs = root / "pngs"
    pngs.mkdir()
    Image.fromarray(toy_image(0)).save(pngs / "scan_0000.png")
    Image.fromarray(toy_image(1)).save(pngs / "benign (3).png")
    volumes = root / "volumes"
    volumes.mkdir()
    volume = sitk.GetImageFromArray(np.stack([toy_image(0), toy_image(1)]).astype(np.int16))
    volume.SetSpacing((0.7, 0.8, 5.0))
    volume.SetOrigin((10.0, -4.0, 2.5))
    volume.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(volume, str(volumes / "patient001_frame01.nii.gz"))
    png_summary = predict(pngs, root / "png_out", model_folder=model_dir, show_progress=False)
    png_images = counter.images
    nifti_summary = predict(volumes, root / "nifti_out", model_folder=model_dir, save_probabilities=True,
                            show_progress=False)
    yield {"root": root, "model": model_dir, "pngs": pngs, "volumes": volumes, "counter": counter,
           "foundation": foundation, "png_summary": png_summary, "nifti_summary": nifti_summary,
           "png_images": png_images, "nifti_images": counter.images - png_images}
    patch.undo()


def assert_ring_and_core(label_map: np.ndarray) -> None:
    """The ring target came back as a ring around the core, and nothing was found in the background."""
    core, outer = box_mask(INNER), box_mask(OUTER)
    assert ((label_map == 2) & core).sum() >= 0.9 * core.sum()
    assert ((label_map == 1) & outer & ~core).sum() >= 0.9 * (outer & ~core).sum()
    assert (label_map[~box_mask((17, 12, 62, 47))] == 0).all()


def test_png_folder_prediction(toy) -> None:
    out = toy["root"] / "png_out"
    assert sorted(p.name for p in out.iterdir()) == [".fold_agreement.lock", "benign (3).png", "fold_agreement.json",
                                                     "scan.png"]
    assert toy["png_summary"].written == 2 and toy["png_summary"].skipped == 0
    agreement = json.loads((out / "fold_agreement.json").read_text())
    assert sorted(agreement) == ["benign (3)", "scan"] and all(0.5 < score <= 1 for score in agreement.values())
    assert [case for case, _ in toy["png_summary"].least_agreed] == list(agreement)  # least agreed first
    scores = [score for _, score in toy["png_summary"].least_agreed]
    assert scores == sorted(scores) and scores == [agreement[case] for case in agreement]
    assert toy["png_images"] == 2
    for name in ("benign (3).png", "scan.png"):
        label_map, geometry = read_segmentation(out / name)
        assert label_map.shape == (60, 80) and geometry.kind == "natural"
        assert_ring_and_core(label_map)


def test_a_case_named_like_the_agreement_file_is_refused_with_probabilities(toy, tmp_path: Path) -> None:
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(toy["pngs"] / "scan_0000.png", images / "fold_agreement.png")
    for folds in (None, [0]):  # one fold scores nothing, but an earlier run's file may be there
        with pytest.raises(AutomedsamError, match="fold_agreement.png would write its probabilities' geometry"):
            predict(images, tmp_path / "out", model_folder=toy["model"], folds=folds, save_probabilities=True,
                    show_progress=False)
    assert not (tmp_path / "out").exists()
    predict(images, tmp_path / "out", model_folder=toy["model"], show_progress=False)  # no CASE.json: no clash
    assert json.loads((tmp_path / "out" / "fold_agreement.json").read_text()).keys() == {"fold_agreement"}


def test_a_case_predicted_again_without_probabilities_loses_the_earlier_ones(toy, tmp_path: Path) -> None:
    """--overwrite without --save-probabilities left the first model's CASE.npz: a later run asking for them took
    the case as finished and kept probabilities of another model."""
    out = tmp_path / "out"
    predict(toy["pngs"], out, model_folder=toy["model"], folds=[0], save_probabilities=True, show_progress=False)
    assert (out / "scan.npz").is_file() and (out / "scan.json").is_file()
    predict(toy["pngs"], out, model_folder=toy["model"], folds=[1], overwrite=True, show_progress=False)
    assert (out / "scan.png").is_file() and not (out / "scan.npz").exists() and not (out / "scan.json").exists()


def test_a_case_segmented_from_boxes_loses_the_folds_probabilities_and_score(toy, tmp_path: Path) -> None:
    """--boxes --overwrite left the trained model's CASE.npz, CASE.json and agreement score: the next run with
    --save-probabilities skipped the case as predicted, and the summary named a case the folds never segmented."""
    out, boxes = tmp_path / "out", tmp_path / "boxes.json"
    predict(toy["pngs"], out, model_folder=toy["model"], save_probabilities=True, show_progress=False)
    assert json.loads((out / "fold_agreement.json").read_text()).keys() == {"scan", "benign (3)"}
    save_json(boxes, {"scan": [{"label": 1, "box": list(OUTER)}, {"label": 2, "box": list(INNER)}]})
    predict(toy["pngs"], out, boxes=boxes, overwrite=True, show_progress=False)
    assert (out / "scan.png").is_file() and not (out / "scan.npz").exists() and not (out / "scan.json").exists()
    assert (out / "benign (3).npz").is_file() and (out / "benign (3).json").is_file()
    assert json.loads((out / "fold_agreement.json").read_text()).keys() == {"benign (3)"}
    summary = predict(toy["pngs"], out, model_folder=toy["model"], save_probabilities=True, show_progress=False)
    assert (summary.written, summary.skipped) == (1, 1)
    assert (out / "scan.npz").is_file()
    assert json.loads((out / "fold_agreement.json").read_text()).keys() == {"scan", "benign (3)"}


def test_boxes_of_labels_the_models_dataset_does_not_define_are_refused_before_writing(toy, tmp_path: Path) -> None:
    """-d/-m with a box file of labels 9 and 300 wrote label maps holding them, ids the dataset gives no meaning."""
    out, boxes = tmp_path / "out", tmp_path / "boxes.json"
    save_json(boxes, {"scan": [{"label": 1, "box": list(OUTER)}, {"label": 9, "box": list(INNER)}],
                      "benign (3)": [{"label": 300, "box": list(INNER)}, {"label": 2, "box": list(INNER)}]})
    with pytest.raises(AutomedsamError, match=r"does not define: 9 \(case 'scan'\), 300 \(case 'benign \(3\)'\)\. "
                                              r"Its labels are 1 \(ring\), 2 \(core\)\."):
        predict(toy["pngs"], out, boxes=boxes, model_folder=toy["model"], show_progress=False)
    assert not list(out.glob("*.png"))
    save_json(boxes, {"scan": [{"label": 1, "box": list(OUTER)}, {"label": 2, "box": list(INNER)}]})  # 1: the ring
    assert predict(toy["pngs"], out, boxes=boxes, model_folder=toy["model"], show_progress=False).written == 1
    assert set(np.unique(read_segmentation(out / "scan.png")[0])) == {0, 1, 2}


def damaged_before_good(toy, tmp_path: Path) -> tuple[Path, Path]:
    """(input folder, output folder): a truncated a_damaged.png, then a readable scan.png."""
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    shutil.copy(toy["pngs"] / "benign (3).png", images / "a_damaged.png")
    (images / "a_damaged.png").write_bytes((images / "a_damaged.png").read_bytes()[:60])
    shutil.copy(toy["pngs"] / "scan_0000.png", images / "scan.png")
    return images, out


def test_an_unreadable_image_stops_nothing_but_itself(toy, tmp_path: Path) -> None:
    """A damaged file among the inputs stopped the run at its turn, and at the same file on every rerun."""
    images, out = damaged_before_good(toy, tmp_path)
    with pytest.raises(AutomedsamError, match=r"(?s)Wrote 1 segmentation.*But 1 image\(s\) could not be read.*"
                                              r"a_damaged\.png.*run the same command again"):
        predict(images, out, model_folder=toy["model"], show_progress=False)
    assert sorted(path.name for path in out.glob("*.png")) == ["scan.png"]
    (images / "a_damaged.png").unlink()
    summary = predict(images, out, model_folder=toy["model"], show_progress=False)
    assert (summary.written, summary.skipped) == (0, 1)


def test_a_tiff_that_pillow_cannot_size_stops_nothing_but_itself(toy, tmp_path: Path) -> None:
    """A TIFF whose second page has no size raised Pillow's TypeError: a traceback after the first images, the rest
    never predicted."""
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    write_tiff_with_a_sizeless_second_page(images / "a_damaged.tif")
    shutil.copy(toy["pngs"] / "scan_0000.png", images / "b.png")
    shutil.copy(toy["pngs"] / "benign (3).png", images / "c.png")
    with pytest.raises(AutomedsamError, match=r"(?s)Wrote 2 segmentation.*But 1 image\(s\) could not be read.*"
                                              r"a_damaged\.tif could not be read \(Missing dimensions\)"):
        predict(images, out, model_folder=toy["model"], show_progress=False)
    assert sorted(path.name for path in out.glob("*.png")) == ["b.png", "c.png"]


def test_files_in_a_format_no_reader_takes_are_named_in_a_warning(toy, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """An .mhd volume beside a PNG was ignored without a word: the summary said "Wrote 1 segmentation(s)"."""
    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(toy["pngs"] / "scan_0000.png", images / "p.png")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 60, 80), np.int16)), str(images / "m.mhd"))
    assert (images / "m.raw").is_file()
    (images / "p.json").write_text("{}")  # a sidecar beside its image: metadata, not an image left out
    summary = predict(images, tmp_path / "out", model_folder=toy["model"], show_progress=False)
    assert summary.written == 1
    warning = " ".join(capsys.readouterr().err.split())
    assert "Ignored 1 entry of " in warning and "subfolders other than a DICOM series): m.mhd. Convert" in warning
    (images / "sub").mkdir()
    predict(images, tmp_path / "out", model_folder=toy["model"], show_progress=False)
    warning = " ".join(capsys.readouterr().err.split())
    assert "Ignored 2 entries of " in warning and "): m.mhd, sub/. Convert" in warning


def test_every_process_ends_in_the_error_when_another_could_not_read_an_image(toy, tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch):
    """Under torchrun a process without an unreadable image reported success and waited at the barrier for one that
    had already failed: the count is summed over processes, and each one raises."""
    real = run_module.distributed.sum_counts

    def another_refused(counts, context, device):
        return [*real(counts, context, device)[:-1], 1]

    monkeypatch.setattr(run_module.distributed, "sum_counts", another_refused)
    with pytest.raises(AutomedsamError, match=r"(?s)But 1 image\(s\) could not be read.*named by the other processes"):
        predict(toy["pngs"], tmp_path / "out", model_folder=toy["model"], show_progress=False)


def test_the_summary_names_a_fold_left_out_for_want_of_its_checkpoint(toy, tmp_path: Path) -> None:
    """Without -f, a fold still training was left out of the ensemble without a word."""
    model = tmp_path / "model"
    shutil.copytree(toy["model"], model)
    (model / "fold_2").mkdir()
    (model / "fold_2" / "log.json").write_text("{}")
    summary = predict(toy["pngs"], tmp_path / "out", model_folder=model, show_progress=False)
    assert ("(folds 0, 1; fold(s) 2 left out: no complete checkpoint_final.pt and .json (still training?), "
            "checkpoint_final") in summary.line()
    assert "left out" not in predict(toy["pngs"], tmp_path / "out_named", model_folder=model, folds=[0],
                                     show_progress=False).line()
    shutil.copy(model / "fold_0" / "checkpoint_best.pt", model / "fold_2")  # as at its first validation
    summary = predict(toy["pngs"], tmp_path / "out_best", model_folder=model, checkpoint="best", show_progress=False)
    assert ("(folds 0, 1; fold(s) 2 left out: no complete checkpoint_final.pt and .json (still training?) or no "
            "checkpoint_best.pt, "
            "checkpoint_best") in summary.line()


def test_nifti_folder_prediction_keeps_geometry(toy) -> None:
    out = toy["root"] / "nifti_out"
    assert toy["nifti_images"] == 2
    image, image_geometry = read_image(toy["volumes"] / "patient001_frame01.nii.gz")
    label_map, geometry = read_segmentation(out / "patient001_frame01.nii.gz")
    assert label_map.shape == image.shape == (2, 60, 80)
    assert geometry == image_geometry
    for z in range(2):
        assert_ring_and_core(label_map[z])
    with np.load(out / "patient001_frame01.npz", allow_pickle=False) as arrays:
        assert sorted(arrays.files) == ["1", "2"]
        assert arrays["2"].dtype == np.float16 and arrays["2"].shape == (2, 60, 80)
        np.testing.assert_array_equal(arrays["2"] > 0.5, label_map == 2)
    saved = json.loads((out / "patient001_frame01.json").read_text())
    assert saved["geometry"] == image_geometry.to_json() and saved["labels"] == [1, 2]


def test_real_folds_average_as_probabilities(toy) -> None:
    image = toy_image(0)
    singles = [Predictor.from_folder(toy["model"], folds=[fold]).predict_array(image)[1] for fold in (0, 1)]
    _, ensemble = Predictor.from_folder(toy["model"]).predict_array(image)
    np.testing.assert_allclose(ensemble[2], (singles[0][2] + singles[1][2]) / 2, atol=1e-5)
    assert np.abs(singles[0][2] - singles[1][2]).max() > 0.05


def test_existing_outputs_are_kept_unless_overwrite(toy) -> None:
    out = toy["root"] / "png_out"
    marker = np.full((60, 80), 7, dtype=np.uint8)
    Image.fromarray(marker).save(out / "scan.png")
    before = toy["counter"].images
    summary = predict(toy["pngs"], out, model_folder=toy["model"], show_progress=False)
    assert (summary.written, summary.skipped) == (0, 2) and "skipped 2" in summary.line()
    assert toy["counter"].images == before
    np.testing.assert_array_equal(read_segmentation(out / "scan.png")[0], marker)
    summary = predict(toy["pngs"] / "scan_0000.png", out, model_folder=toy["model"], overwrite=True,
                      show_progress=False)
    assert summary.written == 1
    assert_ring_and_core(read_segmentation(out / "scan.png")[0])
    assert not [p for p in out.iterdir() if "partial" in p.name]


def test_box_prompted_mode_needs_no_trained_fold(toy, roots: dict[str, Path]) -> None:
    boxes = toy["root"] / "boxes.json"
    save_json(boxes, {"scan": [{"label": 1, "box": list(OUTER)}, {"label": 2, "box": list(INNER)}]})
    out = toy["root"] / "box_out"
    summary = predict(toy["pngs"], out, boxes=boxes, show_progress=False)
    assert (summary.written, summary.without_boxes) == (1, 1)
    label_map = read_segmentation(out / "scan.png")[0]
    core = box_mask(INNER)
    assert ((label_map == 2) & core).sum() >= 0.9 * core.sum()
    assert ((label_map == 1) & box_mask(OUTER) & ~core).sum() >= 0.8 * (box_mask(OUTER) & ~core).sum()
    save_json(boxes, {"scan": [{"label": 1, "box": [50, 10, 20, 30]}]})
    with pytest.raises(AutomedsamError, match="case 'scan', entry 0.*inverted"):
        predict(toy["pngs"], out, boxes=boxes, overwrite=True, show_progress=False)
    save_json(boxes, {"scan": [{"label": 1, "box": [0, 0, 80, 10]}]})
    with pytest.raises(AutomedsamError, match="case 'scan', entry 0.*outside"):
        predict(toy["pngs"], out, boxes=boxes, overwrite=True, show_progress=False)
    with pytest.raises(AutomedsamError, match="--tta apply to a trained model"):
        predict(toy["pngs"], out, boxes=boxes, tta=True, show_progress=False)
    for ignored in ({"checkpoint": "best"}, {"batch_size": 4}):  # were accepted and silently ignored
        with pytest.raises(AutomedsamError, match="apply to a trained model"):
            predict(toy["pngs"], out, boxes=boxes, show_progress=False, **ignored)
    save_json(boxes, {"ghost": [{"label": 1, "box": [0, 0, 5, 5]}]})
    with pytest.raises(AutomedsamError, match="ghost"):
        predict(toy["pngs"], out, boxes=boxes, show_progress=False)


class CavityOutliner:
    """A frozen model as it treats a myocardium's box on ACDC: it outlines the cavity inside the box, not the ring."""

    def segment_boxes(self, image, boxes, embedding=None):
        masks = []
        for x0, y0, x1, y1 in boxes:
            mask = np.zeros(image.shape[:2], bool)
            inset_x, inset_y = (x1 - x0) // 4, (y1 - y0) // 4
            mask[y0 + inset_y: y1 - inset_y + 1, x0 + inset_x: x1 - inset_x + 1] = True
            masks.append(mask)
        return masks


def test_a_ring_box_is_its_inscribed_ellipse_cut_back_by_the_enclosed_outline() -> None:
    """A ring's box went to the frozen model, whose cavity the core's outline then covered: the ring vanished."""
    from automedsam.boxes import rasterise_ellipses
    from automedsam.inference import BoxPredictor

    shape = (120, 160)
    ring_box, core_box = [30, 20, 129, 99], [55, 40, 104, 79]
    label_map = BoxPredictor(CavityOutliner(), toy_plans()).predict_array(
        np.random.default_rng(0).random(shape).astype(np.float32),
        [{"label": 2, "box": core_box, "slice": None}, {"label": 1, "box": ring_box, "slice": None}], False)
    core = CavityOutliner().segment_boxes(np.zeros(shape), [core_box])[0]
    expected_ring = rasterise_ellipses([ring_box], shape) & ~core
    assert np.array_equal(label_map == 1, expected_ring) and np.array_equal(label_map == 2, core)


def test_a_fold_the_plans_do_not_have_is_not_offered_for_training(toy, roots: dict[str, Path]) -> None:
    """-f 7 of a 2-fold model said "Train it with automedsam_train 001 fold7", which the trainer refuses."""
    with pytest.raises(AutomedsamError, match="Train it with"):  # splits.json not here (an installed model)
        open_model_folder(toy["model"], folds=[7])
    save_json(roots["preprocessed"] / Path(toy["model"]).parent.name / "splits.json", {"folds": [{}]})
    with pytest.raises(AutomedsamError, match="Fold 7 does not exist.*planned with 1 folds"):
        open_model_folder(toy["model"], folds=[7])
    assert open_model_folder(toy["model"], folds=[1]).folds == (1,)  # replanned with fewer folds: still trained


def test_a_trainer_given_with_the_model_folder_itself_is_refused(toy, roots: dict[str, Path]) -> None:
    """-m FOLDER --trainer paper2024 predicted with FOLDER's default model and said nothing."""
    with pytest.raises(AutomedsamError, match="--trainer paper2024 chooses a model of -d"):
        locate_model_folder(model_folder=toy["model"], trainer="paper2024")
    assert locate_model_folder(model_folder=toy["model"]) == Path(toy["model"])


def test_box_prompted_mode_refuses_to_pick_one_of_several_models(toy, roots: dict[str, Path]) -> None:
    """-d took the first of several 'default' models' plans, whose intensity windows may differ; without --boxes
    the same choice is refused."""
    for plans_name in ("default__a", "default__b"):
        shutil.copytree(toy["model"], roots["results"] / "Dataset001_Toy" / plans_name)
    boxes = toy["root"] / "several_boxes.json"
    save_json(boxes, {"scan": [{"label": 1, "box": list(OUTER)}]})
    with pytest.raises(AutomedsamError, match="several 'default' models: default__a, default__b.*-m FOLDER"):
        predict(toy["pngs"], toy["root"] / "several_out", boxes=boxes, dataset=1, show_progress=False)


@pytest.mark.slow
@pytest.mark.realdata
def test_box_prompted_mode_on_real_images(shared_data: Path, tmp_path: Path) -> None:
    """Tight boxes from the references of two HC18 images and one ACDC volume give plausible masks, in place."""
    from scipy import ndimage

    from automedsam.boxes import mask_to_boxes
    from automedsam.evaluation import dice

    images, references, entries = tmp_path / "images", {}, {}
    images.mkdir()
    for case in ("000_HC", "001_HC"):
        (images / f"{case}.png").symlink_to(shared_data / "HC18" / "training_set" / f"{case}.png")
        outline = read_segmentation(shared_data / "HC18" / "training_set" / f"{case}_Annotation.png",
                                    binarise=True)[0]
        references[case] = (ndimage.binary_fill_holes(outline), 1)
        entries[case] = [{"label": 1, "box": list(mask_to_boxes(references[case][0])[0])}]
    acdc = shared_data / "ACDC" / "training" / "patient001"
    (images / "patient001_frame01_0000.nii.gz").symlink_to(acdc / "patient001_frame01.nii.gz")
    cavity = read_segmentation(acdc / "patient001_frame01_gt.nii.gz")[0] == 3
    references["patient001_frame01"] = (cavity, 3)
    entries["patient001_frame01"] = [{"label": 3, "box": list(mask_to_boxes(cavity[z])[0]), "slice": z}
                                     for z in range(cavity.shape[0]) if cavity[z].any()]
    save_json(tmp_path / "boxes.json", entries)
    summary = predict(images, tmp_path / "out", boxes=tmp_path / "boxes.json", show_progress=False)
    assert summary.written == 3
    for case, (reference, label) in references.items():
        extension = ".nii.gz" if case.startswith("patient") else ".png"
        prediction, geometry = read_segmentation(tmp_path / "out" / f"{case}{extension}")
        assert prediction.shape == reference.shape
        if case.startswith("patient"):
            assert geometry == read_image(acdc / "patient001_frame01.nii.gz")[1]
        score = dice(reference, prediction == label)
        print(f"box-prompted LiteMedSAM Dice {case}: {score:.3f}")
        assert score > 0.7


def test_background_reading_and_writing_give_the_files_of_one_image_at_a_time(toy, tmp_path: Path) -> None:
    """The command reads ahead and writes in the background; each file equals what predicting that image alone in
    this thread writes."""
    predictor = Predictor.from_folder(toy["model"])
    for folder, out, name in ((toy["pngs"], "png_out", "scan"), (toy["volumes"], "nifti_out", "patient001_frame01")):
        source = next(folder.glob(f"{name}*"))
        target = tmp_path / (name + ("".join(source.suffixes) if source.suffix == ".gz" else source.suffix))
        predictor.predict_file(source, target, save_probabilities=True)
        alone, background = read_segmentation(target), read_segmentation(toy["root"] / out / target.name)
        np.testing.assert_array_equal(alone[0], background[0])
        assert alone[1] == background[1]
    with np.load(tmp_path / "patient001_frame01.npz") as alone, \
            np.load(toy["root"] / "nifti_out" / "patient001_frame01.npz") as background:
        for label in ("1", "2"):
            np.testing.assert_array_equal(alone[label], background[label])


def test_the_command_finishes_each_image_in_the_writer_thread(toy, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Rings, label map and postprocessing run beside the model (in the writer thread), not in the thread that
    runs the model on the next image."""
    threads = []
    combine = Predictor.combine

    def recording(self: Predictor, slices: dict, is_volume: bool) -> tuple:
        threads.append(threading.current_thread().name)
        return combine(self, slices, is_volume)

    monkeypatch.setattr(Predictor, "combine", recording)
    predict(toy["pngs"], tmp_path / "out", model_folder=toy["model"], show_progress=False)
    assert len(threads) == 2 and all(name.startswith("automedsam-write") for name in threads)
    for name in ("benign (3).png", "scan.png"):
        np.testing.assert_array_equal(read_segmentation(tmp_path / "out" / name)[0],
                                      read_segmentation(toy["root"] / "png_out" / name)[0])


def test_speed_benchmark_times_the_command_between_its_first_and_last_output(toy, tmp_path: Path) -> None:
    """Part (a)'s figure for the command's own loop runs the real command and leaves out its first output."""
    cases = [Case(path.name.split("_0000")[0].split(".")[0], path, None, None, path.name)
             for folder in ("pngs", "volumes") for path in sorted(toy[folder].iterdir())]
    slices = {speed.output_name(case): 2 if case.image.name.endswith(".nii.gz") else 1 for case in cases}
    args = argparse.Namespace(device="cpu", batch_size=None)
    seconds = speed.command_seconds_per_slice(toy["model"], cases, tmp_path, args, slices=slices)
    written = sorted((path.stat().st_mtime, path.name) for path in (tmp_path / "command").iterdir()
                     if path.name in slices)
    assert (tmp_path / "command" / "fold_agreement.json").is_file()  # beside the label maps, not timed
    assert sorted(name for _, name in written) == sorted(slices)
    assert seconds == pytest.approx((written[-1][0] - written[0][0]) / (4 - slices[written[0][1]]))
    assert seconds > 0


def test_with_boxes_too_an_unreadable_image_stops_nothing_but_itself(toy, tmp_path: Path) -> None:
    """--boxes stopped at the first damaged image: the images after it were never segmented, on every rerun."""
    images, out = damaged_before_good(toy, tmp_path)
    boxes = tmp_path / "boxes.json"
    save_json(boxes, {case: [{"label": 1, "box": list(OUTER)}] for case in ("a_damaged", "scan")})
    with pytest.raises(AutomedsamError, match=r"(?s)Wrote 1 segmentation.*But 1 image\(s\) could not be segmented "
                                              r"from their boxes.*a_damaged\.png"):
        predict(images, out, boxes=boxes, show_progress=False)
    assert sorted(path.name for path in out.glob("*.png")) == ["scan.png"]


def test_a_case_named_like_the_agreement_file_leaves_the_other_cases_scores(toy, tmp_path: Path) -> None:
    """Predicting a case `fold_agreement` without probabilities removed its 'stale probabilities', i.e. the ranking
    of every other case."""
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    shutil.copy(toy["pngs"] / "scan_0000.png", images / "scan.png")
    predict(images, out, model_folder=toy["model"], show_progress=False)
    assert "scan" in json.loads((out / "fold_agreement.json").read_text())
    shutil.copy(toy["pngs"] / "benign (3).png", images / "fold_agreement.png")
    predict(images, out, model_folder=toy["model"], show_progress=False)
    assert json.loads((out / "fold_agreement.json").read_text()).keys() == {"scan", "fold_agreement"}


def test_a_ranking_edited_out_of_range_or_left_with_a_case_gone_is_mended_by_the_next_run(toy, tmp_path: Path):
    images, out = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    for name in ("scan.png", "other.png"):
        shutil.copy(toy["pngs"] / "scan_0000.png", images / name)
    predict(images, out, model_folder=toy["model"], show_progress=False)
    (out / "fold_agreement.json").write_text('{"scan": 1' + "0" * 400 + ', "other": 0.9}')
    (out / "other.png").unlink()
    (images / "other.png").unlink()
    summary = predict(images, out, model_folder=toy["model"], show_progress=False)
    assert (summary.written, summary.skipped) == (0, 1)
    assert json.loads((out / "fold_agreement.json").read_text()) == {}, "nothing predicted, yet the file is mended"
