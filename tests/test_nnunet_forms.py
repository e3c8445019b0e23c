"""nnU-Net v2 datasets in the forms automedsam met them wrongly: a one-case multi-channel folder to predict, an ignore
label scored as background, channel_names listed out of order, labels no labelled sample holds, region-based labels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synthetic_raw import disc, plane_geometry, write_dataset
from test_option_names import run

from automedsam.cli import evaluate as evaluate_cli
from automedsam import plotting
from automedsam.cli import plan_and_preprocess as plan_cli
from automedsam.dataset import load_raw_dataset
from automedsam.errors import AutomedsamError
from automedsam.evaluation import evaluate_folders, surface_distances
from automedsam.files import save_json
from automedsam.inference.naming import discover_inputs
from automedsam.io import Geometry, write_image, write_segmentation
from automedsam.planning.planner import plan_normalization


def dataset_json(folder: Path, **changes) -> Path:
    """A raw dataset folder holding only its dataset.json: what the checks of dataset.json read first."""
    save_json(folder / "dataset.json", {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1},
                                        "numTraining": 0, "file_ending": ".nii.gz", **changes})
    return folder


# 1. a folder of one multi-channel case

def test_the_second_channel_of_a_lone_case_is_read_as_its_channel_by_a_model_of_several_channels(tmp_path):
    """case004_0001 beside case004_0000, the only case, was segmented as a case of its own ("case004_0001"), then
    refused: it is case004's second channel, which the model does not read, set aside with a note."""
    from automedsam.inference.naming import channel_reading, model_channel_names, refuse_other_channels
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for name in ("case004_0000.nii.gz", "case004_0001.nii.gz"):
        (folder / name).write_bytes(b"x")
    images = discover_inputs(folder)
    assert [image.case_id for image in images] == ["case004", "case004_0001"]  # one-channel reading: two frames
    model = tmp_path / "model"
    save_json(model / "dataset.json", {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "a": 1}})
    assert model_channel_names(model) == {"0": "CT", "1": "PET"}
    reading = channel_reading(images, folder, channel_names=model_channel_names(model))
    assert [image.case_id for image in reading.images] == ["case004"] and not reading.left_out
    assert reading.note == "ignored channel 1 (PET) of 1 case; the model reads channel 0 (CT)."
    refuse_other_channels(images, folder, channels=1)  # a one-channel model: numbered frames, as before
    (folder / "case004_0001.nii.gz").unlink()
    refuse_other_channels(discover_inputs(folder), folder, channels=2)  # the _0000 image alone is the case
    assert model_channel_names(tmp_path / "no_dataset_json") == {}


def test_numbered_frames_past_a_models_channels_are_cases_not_channels(tmp_path):
    """A two-channel model refused slice_0000 ... slice_0011 (and DICOM IM_0000 ...) as channels of one case: twelve
    numbers are no two-channel layout, and they were predicted as twelve images before."""
    from automedsam.inference.naming import refuse_other_channels
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(12):
        (folder / f"slice_{index:04d}.png").write_bytes(b"x")
    refuse_other_channels(discover_inputs(folder), folder, channels=2)


# 2. nnU-Net's ignore label in the references

def ignore_case(tmp_path: Path) -> tuple[Path, Path]:
    """The reviewer's case: label 1 and an ignore region (2) in the reference, both predicted 1."""
    ref = np.zeros((20, 20), np.uint8)
    ref[2:7, 2:7] = 1
    ref[10:20, 10:20] = 2
    pred = np.where(ref > 0, 1, 0).astype(np.uint8)
    for folder, label_map in (("ref", ref), ("pred", pred)):
        write_segmentation(tmp_path / folder / "a.png", label_map, Geometry.natural())
    return tmp_path / "ref", tmp_path / "pred"


def test_the_ignore_label_is_left_out_of_every_metric(tmp_path):
    """The ignore pixels counted as background: Dice 0.333 where nnU-Net's evaluation gives 1.0."""
    ref_dir, pred_dir = ignore_case(tmp_path)
    assert evaluate_folders(ref_dir, pred_dir, labels=[1])["per_case"]["a"][1]["dice"] == pytest.approx(1 / 3)
    scores = evaluate_folders(ref_dir, pred_dir, labels=[1], ignore_label=2)
    row = scores["per_case"]["a"][1]
    assert (row["dice"], row["iou"], row["hd95"], row["assd"]) == (1.0, 1.0, 0.0, 0.0)
    assert (row["ref_voxels"], row["pred_voxels"], scores["ignore_label"]) == (25, 25, 2)
    inferred = evaluate_folders(ref_dir, pred_dir, ignore_label=2)  # without --labels: 2 is no label to score
    assert list(inferred["mean"]) == [1] and inferred["labels_not_scored"] == []


def test_the_overlays_title_gives_evaluates_dice_with_the_ignore_label(tmp_path, monkeypatch):
    """automedsam_plot_overlays had no --ignore-label: its title gave 0.333 where evaluate gives 1.0, and it drew the
    unannotated region as a reference structure."""
    ref_dir, pred_dir = ignore_case(tmp_path)
    write_image(tmp_path / "images" / "a.png", np.full((20, 20), 90, np.uint8), Geometry.natural())
    drawn = []
    monkeypatch.setattr(plotting, "overlay", lambda image, seg, ref, out, **options: drawn.append((seg, ref, options)))
    plotting.plot_overlays_folder(tmp_path / "images", pred_dir, tmp_path / "overlays", refs_dir=ref_dir,
                                  ignore_label=2)
    seg, ref, options = drawn[0]
    assert options["title"] == "a  (Dice 1.000)" and set(np.unique(ref)) == {0, 1} and set(np.unique(seg)) == {0, 1}
    with pytest.raises(AutomedsamError, match="both scored .* and ignored"):
        plotting.plot_overlays_folder(tmp_path / "images", pred_dir, tmp_path / "overlays", refs_dir=ref_dir,
                                      labels=[1, 2], ignore_label=2)


def test_the_ignore_label_scores_as_nnunet_counts_and_measures_the_rest(tmp_path):
    """A partial prediction: tp, fp and fn counted outside the ignore region only, as nnU-Net's compute_metrics."""
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 3, (30, 30)).astype(np.uint8)
    ref[ref == 2] = 0
    ref[:, 18:] = 5
    pred = rng.integers(0, 2, (30, 30)).astype(np.uint8)
    for folder, label_map in (("ref", ref), ("pred", pred)):
        write_segmentation(tmp_path / folder / "b.png", label_map, Geometry.natural())
    row = evaluate_folders(tmp_path / "ref", tmp_path / "pred", labels=[1], ignore_label=5)["per_case"]["b"][1]
    valid = ref != 5
    tp, fp, fn = [int(np.sum(mask & valid)) for mask in ((ref == 1) & (pred == 1), (ref != 1) & (pred == 1),
                                                         (ref == 1) & (pred != 1))]
    assert row["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert row["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert row["pred_voxels"] == tp + fp and row["ref_voxels"] == tp + fn
    assert row["hd95"] == pytest.approx(surface_distances(ref == 1, (pred == 1) & valid)["hd95"])


def test_a_255_ignore_region_of_a_case_without_the_structure_is_not_read_as_its_mask(tmp_path):
    """With one label scored, a file whose one value is 255 is a 0/255 mask of it: not where 255 is the ignore."""
    ref = np.zeros((20, 20), np.uint8)
    ref[5:15, 5:15] = 255
    for folder, label_map in (("ref", ref), ("pred", np.zeros_like(ref))):
        write_segmentation(tmp_path / folder / "c.png", label_map, Geometry.natural())
    scores = evaluate_folders(tmp_path / "ref", tmp_path / "pred", labels=[1], ignore_label=255)
    assert scores["per_case"]["c"][1]["ref_voxels"] == 0 and scores["read_as_one_object"] == []


def test_evaluate_takes_ignore_label_and_refuses_scoring_it(tmp_path, monkeypatch, capsys):
    ref_dir, pred_dir = ignore_case(tmp_path)
    code, out, _ = run(evaluate_cli, monkeypatch, capsys, "-r", str(ref_dir), "-s", str(pred_dir), "--labels",
                       "1", "--ignore-label", "2")
    assert code == 0 and "foreground Dice 1.000" in out
    assert json.loads((pred_dir / "summary.json").read_text())["ignore_label"] == 2
    code, _, err = run(evaluate_cli, monkeypatch, capsys, "-r", str(ref_dir), "-s", str(pred_dir), "--labels",
                       "1,2", "--ignore-label", "2")
    assert code == 2 and "Label 2 is both scored (--labels or -d) and ignored (--ignore-label)" in err
    code, _, err = run(evaluate_cli, monkeypatch, capsys, "-r", str(ref_dir), "-s", str(pred_dir),
                       "--ignore-label", "0")
    assert code == 2 and "--ignore-label takes the id of the label marking unannotated pixels" in err


def test_the_refusal_of_an_ignore_label_points_at_evaluate_ignore_label(tmp_path):
    root = dataset_json(tmp_path / "Dataset503_Ignore", labels={"background": 0, "organ": 1, "ignore": 2})
    with pytest.raises(AutomedsamError) as error:
        load_raw_dataset(root, check_images=False)
    assert "use automedsam_evaluate --labels 1 --ignore-label 2 instead of -d" in str(error.value)


# 3. channel_names out of order

def test_the_ct_window_follows_channel_0_not_the_first_listed():
    """{"1": "PET", "0": "CT"} got the non-CT window: the first entry was taken for the channel read."""
    intensity = {"p0_5": -1000.0, "p99_5": 1500.0, "min": -1024.0, "max": 3000.0}
    statistics = {"foreground_intensity": {"p0_5": 20.0, "p99_5": 80.0, "min": 10.0, "max": 90.0},
                  "foreground_source": "boxes"}
    ct_first_read = {"channel_names": {"1": "PET", "0": "CT"}, "intensity": {"all": intensity}}
    assert plan_normalization(ct_first_read, statistics)["scheme"] == "ct_foreground_window"
    pet_read = {"channel_names": {"1": "CT", "0": "PET"}, "intensity": {"all": intensity}}
    assert plan_normalization(pet_read, statistics)["scheme"] == "percentile_window"


def test_channel_names_without_channel_0_are_refused(tmp_path):
    root = dataset_json(tmp_path / "Dataset505_Order", channel_names={"1": "PET", "2": "CT"})
    with pytest.raises(AutomedsamError, match=r"channel_names names no channel \"0\" \('1', '2'\), the channel of "
                                              r"the CASE_0000 images"):
        load_raw_dataset(root, check_images=False)


# 4. a label no labelled sample holds

def cases_without_lesion(count: int = 4) -> list[dict]:
    """2D cases with a disc of label 1; none holds label 2."""
    rng = np.random.default_rng(5)
    cases = []
    for index in range(count):
        label = disc((40, 48), (20, 24), 6).astype(np.uint8)
        image = (rng.normal(50, 10, label.shape) + 100 * label).astype(np.float32)
        cases.append({"id": f"case{index}", "image": image, "label": label, "geometry": plane_geometry()})
    return cases


@pytest.mark.parametrize("shots, remedy", [
    ("2", "draw samples that hold them (a larger --shots, or another --seed), or give boxes of them in boxesTr/"),
    ("all", "annotate them (labelsTr/ masks or boxesTr/ boxes), or remove them from dataset.json's labels"),
], ids=["few-shot", "all"])
def test_planning_names_a_label_no_labelled_sample_holds(roots, monkeypatch, capsys, shots, remedy):
    """Such a label was planned and trained with only a fragment of plans.json's reason, and never predicted."""
    write_dataset(roots["raw"], "Dataset507_Rare", cases_without_lesion(), {"background": 0, "organ": 1, "lesion": 2},
                  channel="US")
    code, _, err = run(plan_cli, monkeypatch, capsys, "-d", "507", "--shots", shots, "--folds", "2", "-np", "1",
                       "--plan-only", "--device", "cpu")
    labelled = 2 if shots == "2" else 4
    assert code == 0 and (f"Note: label(s) lesion (2) in none of the {labelled} labelled samples: trained on "
                          f"nothing, they will not be predicted. To learn them, {remedy}, then run this command "
                          "again.") in err
    assert "organ (1)" not in err


# 5. region-based labels

def test_region_based_labels_are_refused_with_the_plain_labels_to_write(tmp_path):
    root = dataset_json(tmp_path / "Dataset502_Regions", labels={"background": 0, "whole": [1, 2, 3], "core": [2, 3],
                                                                 "enhancing": 3}, regions_class_order=[1, 2, 3])
    with pytest.raises(AutomedsamError) as error:
        load_raw_dataset(root, check_images=False)
    message = str(error.value)
    assert "label(s) whole, core are nnU-Net region-based labels" in message
    assert ('list as labels the plain class ids its labelsTr/ files hold, each named after its structure, e.g. '
            '{"background": 0, "class1": 1, "class2": 2, "class3": 3}, without regions_class_order, in a copy of '
            'dataset.json') in message
