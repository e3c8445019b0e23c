"""Sharing a trained model: export to one zip, install into empty roots under another id, predict there exactly what
the original predicts; foundation weights checked by sha256; an untrusted zip refused before anything is written.

The synthetic dataset is planned, trained (two folds, one epoch) and predicted with the TinyFoundation of
tests/toy_model.py, so the whole pipeline takes seconds; the commands run in this process.
"""
from __future__ import annotations

import errno
import fcntl
import importlib
import io
import json
import os
import shlex
import shutil
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from automedsam import __version__
from automedsam.checkpoint import save_checkpoint
from automedsam.conversion import make_synthetic_dataset
from automedsam.errors import AutomedsamError
from automedsam.files import save_json
from automedsam.foundation.litemedsam import litemedsam_weights_path
from automedsam.foundation.weights_file import PACKAGED_SHA256, TRAINED_WITH, sha256_of
from automedsam.inference import predict
from automedsam.inference.model_folder import open_model_folder
from automedsam.io import read_segmentation
from automedsam.model_sharing.archive_rules import (MAX_MEMBERS, fold_members, planned_checkpoint_bytes,
                                                    validation_member)
from automedsam.model_sharing.export import export_model, shared_dataset_name, shared_description
from automedsam.model_sharing.install import PLANS_SECTIONS, install_model, target_dataset_name
from automedsam.paths import roots_at
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.prompt_module import PromptModule, build_prompt_module, modules_state_dict
from automedsam.trained_models import fold_lock_path
from automedsam.training import train_fold
from bad_input_world import write_malicious_checkpoint
from toy_model import toy_plans

DATASET = "Dataset900_SyntheticUS"
MODEL = f"{DATASET}/default__automedsamPlans"
ROOT_NAMES = ("raw", "preprocessed", "results")
FOLD_FILES = ["fold_0/checkpoint_final.pt", "fold_0/log.json", "fold_0/validation/summary.json",
              "fold_1/checkpoint_final.pt", "fold_1/log.json", "fold_1/validation/summary.json"]
BEST_FILES = ["fold_0/checkpoint_best.pt", "fold_1/checkpoint_best.pt"]
TOP_FILES = ["dataset.json", "model_card.json", "plans.json"]


def make_roots(base: Path) -> dict[str, Path]:
    roots = {name: base / name for name in ROOT_NAMES}
    for path in roots.values():
        path.mkdir(parents=True, exist_ok=True)
    return roots


def run_cli(capsys: pytest.CaptureFixture, command: str, *args: str) -> tuple[int, str]:
    """(exit code, stdout + stderr on one line) of a console script's main() in this process."""
    module = importlib.import_module(f"automedsam.cli.{command}")
    saved, sys.argv = sys.argv, [f"automedsam_{command}", *args]
    try:
        module.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_foundation) -> dict[str, Path]:
    """The synthetic dataset planned (4 shots, 2 folds), both folds trained one epoch, the test images predicted by
    both folds (`reference`) and by fold 0 alone (`reference_fold0`)."""
    roots = make_roots(tmp_path_factory.mktemp("trained"))
    with roots_at(roots):
        make_synthetic_dataset(900, n_train=6, n_test=2, seed=0)
        plan_and_preprocess(900, shots=4, folds=2, num_workers=1, device="cpu", progress=False)
        for fold in (0, 1):
            train_fold(900, fold, epochs=1, device="cpu", console=Console(quiet=True))
        for name, folds in (("reference", None), ("reference_fold0", [0])):
            predict(roots["raw"] / DATASET / "imagesTs", roots["raw"].parent / name, dataset=900, folds=folds,
                    device="cpu", save_probabilities=True, show_progress=False)
    return roots


@pytest.fixture(scope="module")
def archive(trained: dict[str, Path]) -> Path:
    """The trained model exported with both checkpoints of both folds."""
    path = trained["raw"].parent / "model.zip"
    with roots_at(trained):
        export_model(trained["results"] / MODEL, path, folds=(0, 1), include_best=True)
    return path


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Empty roots of a machine that never saw the data."""
    roots = make_roots(tmp_path / "elsewhere")
    for name, path in roots.items():
        monkeypatch.setenv(f"AUTOMEDSAM_{name.upper()}", str(path))
    return roots


def written_model(results: Path, *, targets: int = 2, center_channels: int = 16, weights: Path | None = None,
                  supervision: str = "boxes") -> Path:
    """A model folder as training leaves it, without training: plans (litemedsam; `weights` the path of its weights
    file, None the packaged weights), dataset.json, and fold 0's final checkpoint of `targets` freshly initialised
    prompt modules (saved as the trainer saves them), its metadata (the trainer's `supervision`) and log.json."""
    labels = range(1, targets + 1)
    plans = toy_plans(targets=[{"label": label, "name": f"organ{label}", "region": [label], "subtract": [],
                                "per_component": False} for label in labels])
    plans["prompt_module"]["center_channels"] = center_channels
    plans["foundation_model"]["checkpoint"] = None if weights is None else str(weights)
    model_dir = results / "Dataset001_Toy" / "default__toyPlans"
    save_json(model_dir / "plans.json", plans)
    save_json(model_dir / "dataset.json", {"channel_names": {"0": "CT"}, "numTraining": 2, "file_ending": ".png",
                                           "labels": {"background": 0, **{f"organ{label}": label for label in labels}}})
    module = build_prompt_module(plans)
    save_checkpoint(model_dir / "fold_0", "final", modules_state_dict({label: module for label in labels}),
                    {"epoch": 1, "config": {"supervision": supervision}})
    save_json(model_dir / "fold_0" / "log.json", {"epochs": [], "summary": {"epochs": 1}})
    return model_dir


def predictions(folder: Path) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """case -> (label map, probabilities per label)."""
    found = {}
    for path in sorted(folder.glob("*.png")):
        with np.load(path.with_suffix(".npz")) as probabilities:
            found[path.stem] = (read_segmentation(path)[0], {key: probabilities[key] for key in probabilities.files})
    return found


def members(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return sorted(archive.namelist())


def member_json(path: Path, name: str):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(name))


# ------------------------------------------------------------------------------------------------- the acceptance


def test_an_installed_model_predicts_exactly_what_the_original_predicts(trained, tiny_foundation, elsewhere, tmp_path,
                                                                        capsys):
    archive = tmp_path / "shared.zip"
    with roots_at(trained):
        code, output = run_cli(capsys, "export_model", "-d", "900", "-o", str(archive))
    assert code == 0 and f"Exported {MODEL} (folds 0, 1, checkpoint_final" in output, output
    assert members(archive) == sorted(TOP_FILES + FOLD_FILES)

    code, output = run_cli(capsys, "install_model", str(archive), "-d", "42")
    assert code == 0, output
    assert "as " + str(elsewhere["results"] / "Dataset042_SyntheticUS" / "default__automedsamPlans") in output
    assert "automedsam_predict -i IMAGES -o OUTPUT -d 042" in output and "--foundation-checkpoint" not in output
    assert sorted(path.name for path in elsewhere["results"].iterdir()) == ["Dataset042_SyntheticUS"]
    assert not any(elsewhere["raw"].iterdir()) and not any(elsewhere["preprocessed"].iterdir())
    installed_card = json.loads((elsewhere["results"] / "Dataset042_SyntheticUS" / "default__automedsamPlans"
                                 / "model_card.json").read_text())
    assert installed_card["dataset"] == "Dataset042_SyntheticUS"  # the name it is installed and predicted under

    out = tmp_path / "predicted_here"
    code, output = run_cli(capsys, "predict", "-i", str(trained["raw"] / DATASET / "imagesTs"), "-o", str(out),
                           "-d", "42", "--device", "cpu", "--save-probabilities")
    assert code == 0 and "Wrote 2 segmentation(s)" in output, output
    original, installed = predictions(trained["raw"].parent / "reference"), predictions(out)
    assert sorted(installed) == sorted(original) == ["us_test_000", "us_test_001"]
    for case, (label_map, probabilities) in original.items():
        assert 0 < (label_map > 0).mean() < 1, "a label map that is all one value would compare as equal by luck"
        np.testing.assert_array_equal(installed[case][0], label_map)
        assert probabilities.keys() == installed[case][1].keys()
        for label, values in probabilities.items():
            np.testing.assert_array_equal(installed[case][1][label], values)
    one_fold = predictions(trained["raw"].parent / "reference_fold0")
    assert any(not np.array_equal(one_fold[case][1]["1"], original[case][1]["1"]) for case in original), \
        "the comparison must tell the two-fold ensemble from one fold"

    passed_on = tmp_path / "passed_on.zip"
    code, output = run_cli(capsys, "export_model", "-d", "42", "-o", str(passed_on))
    assert code == 0, output
    for member in ("fold_0/validation/summary.json", "fold_1/validation/summary.json"):  # no checkpoint metadata here
        assert member_json(passed_on, member)["checkpoint_epochs"] == member_json(archive, member)["checkpoint_epochs"]
        assert member_json(archive, member)["checkpoint_epochs"], "the original export knew the epochs"
    card, again = member_json(archive, "model_card.json"), member_json(passed_on, "model_card.json")
    assert again["dataset"] == "Dataset042_SyntheticUS" and again["few_shot"] == card["few_shot"] is not None
    assert again["foundation_model"] == card["foundation_model"]


def test_the_card_says_whether_the_model_learnt_from_boxes_or_masks(archive, tmp_path, elsewhere):
    """A model trained on full masks (--trainer fullsup) was described by its card like one trained on boxes."""
    assert member_json(archive, "model_card.json")["supervision"] == "boxes"
    roots = make_roots(tmp_path / "here")
    model_dir = written_model(roots["results"], supervision="masks")
    with roots_at(roots):
        export_model(model_dir, tmp_path / "masks.zip", folds=(0,))
    assert member_json(tmp_path / "masks.zip", "model_card.json")["supervision"] == "masks"
    installed = install_model(tmp_path / "masks.zip", dataset=6).model_dir  # no checkpoint metadata there
    export_model(installed, tmp_path / "again.zip", folds=(0,))
    assert member_json(tmp_path / "again.zip", "model_card.json")["supervision"] == "masks"


def test_the_card_is_installed_with_its_version_date_and_validation_figures_as_exported(archive, elsewhere):
    """Install refuses a card whose version, date or figures are of other types; those of export's cards pass."""
    exported = member_json(archive, "model_card.json")
    installed = json.loads((install_model(archive, dataset=42).model_dir / "model_card.json").read_text())
    assert {key: installed[key] for key in ("automedsam_version", "created", "validation")} \
        == {key: exported[key] for key in ("automedsam_version", "created", "validation")}
    assert exported["validation"]["1"]["final_val"]["box_dice"] is not None


def test_only_the_keys_a_model_needs_leave_with_its_dataset_description() -> None:
    """The training data's licence and citation travel too: a model of non-commercial data left without its terms."""
    written = {"name": "Heads", "channel_names": {"0": "US"}, "labels": {"background": 0, "head": 1},
               "numTraining": 3, "file_ending": ".png", "rings": {}, "shapes": {"head": "ellipse"},
               "annotation": "interactive", "groups": {"us_train_7": "7"}, "spacing": {"us_train_7": 0.1},
               "licence": "CC BY-NC-SA 4.0 (non-commercial research only)", "reference": "Bernard et al., 2018",
               "description": "Imported with automedsam_convert folder from /home/clinic/scans.",
               "training": [{"image": "./imagesTr/us_train_7.png"}]}
    shared = shared_description(written)
    assert shared == {key: written[key] for key in ("name", "channel_names", "labels", "numTraining", "file_ending",
                                                    "rings", "shapes", "annotation", "licence", "reference")}
    assert "us_train" not in json.dumps(shared) and "/home" not in json.dumps(shared)


def training_traces(trained: dict[str, Path]) -> set[str]:
    """What of the training machine an archive must not hold: the raw dataset's case ids (its groups and the stems
    of its image and mask files) and the absolute paths of the roots."""
    raw = trained["raw"] / DATASET
    groups = json.loads((raw / "dataset.json").read_text())["groups"]
    stems = {path.name.split(".")[0].removesuffix("_0000") for path in raw.glob("*/*.png")}
    return {*groups, *stems, str(trained["raw"].parent), *(str(root) for root in trained.values())}


def traces_in(archive: Path, traces: set[str]) -> dict[str, list[str]]:
    """member -> the traces found in its bytes, for every member (checkpoints too)."""
    with zipfile.ZipFile(archive) as opened:
        found = {name: sorted(trace for trace in traces if trace.encode() in opened.read(name))
                 for name in opened.namelist()}
    return {name: hits for name, hits in found.items() if hits}


def test_the_archive_holds_what_prediction_needs_and_no_trace_of_the_training_machine(trained, archive, tmp_path):
    assert members(archive) == sorted(TOP_FILES + FOLD_FILES + BEST_FILES)
    traces = training_traces(trained)
    labelled = json.loads((trained["preprocessed"] / DATASET / "splits.json").read_text())["labelled"]
    assert labelled and set(labelled) <= traces and "us_test_001" in traces  # the ids training used are looked for
    assert traces_in(archive, traces) == {}  # no path, no training case id, in any member
    leaky = rewritten(archive, tmp_path / "leaky.zip", replace={
        "fold_1/checkpoint_best.pt": member_bytes(archive, "fold_1/checkpoint_best.pt") + b"us_003"})
    assert traces_in(leaky, traces) == {"fold_1/checkpoint_best.pt": ["us_003"]}, "the check finds a planted id"
    check = member_json(archive, "fold_0/validation/summary.json")["box_refinement"]["1"]["per_sample"]
    assert check and all(set(sample) == {"learned", "refined"} for sample in check)  # what prediction pools
    looks = member_json(archive, "fold_0/validation/summary.json")["second_look"]
    assert set(looks) == {"1"} and all(set(sample) == {"first", "second"} for sample in looks["1"]["per_sample"])
    record = member_json(archive, "fold_0/validation/summary.json")  # which weights the checks hold for, installed
    assert record["checkpoint"] == "final" and record["checkpoint_epochs"]["final"] == record["epoch"] is not None
    plans = member_json(archive, "plans.json")
    assert plans["foundation_model"]["checkpoint"] is None
    assert plans["foundation_model"]["sha256"] == PACKAGED_SHA256["litemedsam"]
    dataset = member_json(archive, "dataset.json")
    assert "groups" not in dataset and dataset["labels"] == json.loads(
        (trained["raw"] / DATASET / "dataset.json").read_text())["labels"]
    card = member_json(archive, "model_card.json")
    assert card["automedsam_version"] == __version__ and card["created"][:2] == "20"
    assert card["foundation_model"] == {"name": "litemedsam", "weights_file": None,
                                        "sha256": PACKAGED_SHA256["litemedsam"]}
    splits = json.loads((trained["preprocessed"] / DATASET / "splits.json").read_text())
    assert card["few_shot"] == {"shots": 4, "labelled_samples": 4, "seed": 0, "selection": splits["reason"]}
    assert card["few_shot"]["selection"].startswith("--shots 4: 4 samples holding foreground drawn with seed")
    assert card["folds"] == [0, 1] and card["checkpoints"] == ["final", "best"]
    assert card["validation"]["1"]["train_samples"] == 2 and card["validation"]["1"]["epochs"] == 1


def test_export_refuses_to_overwrite_and_exports_only_the_folds_asked_for(trained, archive, tmp_path, capsys):
    with roots_at(trained):
        code, output = run_cli(capsys, "export_model", "-d", "900", "-o", str(archive))
        assert code == 2 and "already exists" in output and "--overwrite" in output
        one = tmp_path / "fold1.zip"
        code, output = run_cli(capsys, "export_model", "-d", "900", "-o", str(one), "-f", "1", "--best")
    assert code == 0, output
    assert "The archive carries the dataset name 'Dataset900_SyntheticUS'" in output  # the user sees what leaves
    assert members(one) == sorted(TOP_FILES + ["fold_1/checkpoint_best.pt", "fold_1/checkpoint_final.pt",
                                               "fold_1/log.json", "fold_1/validation/summary.json"])


def test_export_with_a_new_name_leaves_the_dataset_name_behind_everywhere(trained, tmp_path, elsewhere, capsys):
    """The dataset name travels in four files and names the installed folder; an imported folder's name (the
    default) may name a patient: --name replaces it in every member."""
    shared = tmp_path / "shared.zip"
    with roots_at(trained):
        code, output = run_cli(capsys, "export_model", "-d", "900", "-o", str(shared), "--name", "Shared", "--best")
    assert code == 0 and "The archive carries the dataset name 'Dataset900_Shared'" in output, output
    assert traces_in(shared, {"SyntheticUS"}) == {} and not any("SyntheticUS" in name for name in members(shared))
    assert member_json(shared, "model_card.json")["dataset"] == member_json(shared, "plans.json")["dataset_name"] \
        == member_json(shared, "fold_1/log.json")["summary"]["dataset"] == "Dataset900_Shared"
    assert member_json(shared, "dataset.json")["name"] == "Shared"
    with roots_at(trained):
        code, output = run_cli(capsys, "export_model", "-d", "900", "-o", str(tmp_path / "long.zip"),
                               "--name", "Dataset900_" + "A" * 100)
        assert code == 2 and "more than the 100 that automedsam_install_model accepts" in output, output
        code, output = run_cli(capsys, "export_model", "-d", "900", "-o", str(tmp_path / "long.zip"),
                               "--name", "A" * 100)
    assert code == 2 and "makes the folder name Dataset900_AAAAAAAAA... 111 characters long" in output, output
    assert install_model(shared).model_dir == elsewhere["results"] / "Dataset900_Shared" / "default__automedsamPlans"


def test_install_keeps_only_the_dataset_keys_a_model_shares_and_refuses_a_name_too_long(archive, elsewhere,
                                                                                        tmp_path, capsys):
    """An archive's dataset.json was installed as it came, with whatever keys (a path, a case list) it added."""
    added = rewritten(archive, tmp_path / "added.zip", replace={"dataset.json": edited_json(
        archive, "dataset.json", description="Imported from /home/clinic/Doe_Jane", groups={"Doe_Jane": "1"})})
    installed = install_model(added, dataset=42).model_dir
    description = json.loads((installed / "dataset.json").read_text())
    assert description == member_json(archive, "dataset.json") and "Doe_Jane" not in json.dumps(description)
    code, output = run_cli(capsys, "install_model", str(archive), "-d", "Dataset043_" + "B" * 100)
    assert code == 2 and "is 111 characters long, more than the 100" in output and "Traceback" not in output, output


def test_export_and_install_take_a_dataset_name_of_100_characters_but_not_101(elsewhere):
    """The limit is the longest name a dataset folder may have, so a name of exactly that length must pass both."""
    longest, too_long = ("Dataset042_" + "A" * (length - 11) for length in (100, 101))
    assert shared_dataset_name(DATASET, longest) == longest
    assert target_dataset_name(longest, DATASET) == longest
    with pytest.raises(AutomedsamError, match="is 101 characters long, more than the 100"):
        shared_dataset_name(DATASET, too_long)
    with pytest.raises(AutomedsamError, match="is 101 characters long, more than the 100"):
        target_dataset_name(too_long, DATASET)


def test_export_refuses_a_folder_as_output_even_with_overwrite(trained, tmp_path, capsys):
    """-o naming an existing folder gave IsADirectoryError with --overwrite, and without it advice to add
    --overwrite."""
    folder = tmp_path / "models"
    (folder / "kept.txt").parent.mkdir()
    (folder / "kept.txt").write_text("not to be replaced")
    with roots_at(trained):
        for extra in ([], ["--overwrite"]):
            code, output = run_cli(capsys, "export_model", "-d", "900", "-o", str(folder), "-f", "0", *extra)
            assert code == 2 and "Traceback" not in output, output
            assert "is a folder" in output and str(folder / "model.zip") in output and "pass --overwrite" not in output
    assert [path.name for path in folder.iterdir()] == ["kept.txt"]


@pytest.mark.parametrize("member, content, field", [
    ("fold_0/log.json", "[]", "its content is list"),
    ("fold_0/log.json", '{"summary": [1]}', "summary is list"),
    ("fold_0/validation/summary.json", '{"box_refinement": {"1": []}}', "box_refinement.1 is list"),
    ("fold_0/validation/summary.json", '{"second_look": {"1": {"per_sample": [3]}}}',
     "second_look.1.per_sample is int"),
])
def test_export_names_a_malformed_fold_file(trained, tmp_path, capsys, member, content, field):
    """A malformed log.json or validation summary gave an AttributeError traceback instead of naming the file."""
    roots = make_roots(tmp_path / "copy")
    shutil.copytree(trained["results"] / DATASET, roots["results"] / DATASET)
    (roots["results"] / MODEL / member).write_text(content)
    with roots_at(roots):
        code, output = run_cli(capsys, "export_model", "-d", "900", "-o", str(tmp_path / "m.zip"), "-f", "0")
    assert code == 2 and "Traceback" not in output, output
    assert f"{roots['results'] / MODEL / member} is malformed ({field}" in output and "-f" in output
    assert not (tmp_path / "m.zip").exists()


def test_install_refuses_to_overwrite_an_installed_model_unless_asked(archive, elsewhere, tmp_path, capsys):
    assert run_cli(capsys, "install_model", str(archive))[0] == 0
    model_dir = elsewhere["results"] / MODEL
    (model_dir / "fold_0" / "log.json").write_text("{}")
    code, output = run_cli(capsys, "install_model", str(archive))
    assert code == 2 and "already exists" in output and "--overwrite" in output
    assert (model_dir / "fold_0" / "log.json").read_text() == "{}"
    code, output = run_cli(capsys, "install_model", str(archive), "--overwrite")
    assert code == 0, output
    assert json.loads((model_dir / "fold_0" / "log.json").read_text())["summary"]["fold"] == 0
    assert sorted(path.name for path in elsewhere["results"].iterdir()) == [DATASET]


def test_overwrite_keeps_the_replaced_model_whole_and_waits_for_its_training(archive, elsewhere, capsys):
    """--overwrite deleted the other folds and checkpoints of the model it replaced, for good, even while one of its
    folds was being trained: the replaced model now moves whole to previous/, and not while a fold trains."""
    assert run_cli(capsys, "install_model", str(archive))[0] == 0
    model_dir = elsewhere["results"] / MODEL
    (model_dir / "fold_4").mkdir()
    (model_dir / "fold_4" / "checkpoint_final.pt").write_bytes(b"a fold trained here since")
    with open(fold_lock_path(model_dir, "fold_4"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as automedsam_train holds it while the fold trains
        code, output = run_cli(capsys, "install_model", str(archive), "--overwrite")
        assert code == 2 and "fold_4 of" in output and "is being trained by another process" in output, output
        assert (model_dir / "fold_4" / "checkpoint_final.pt").is_file()
        assert not (model_dir.parent / "previous").exists()
        assert sorted(path.name for path in elsewhere["results"].iterdir()) == [DATASET]  # no staging left
    code, output = run_cli(capsys, "install_model", str(archive), "--overwrite")
    previous = model_dir.parent / "previous" / f"{model_dir.name}_1"
    assert code == 0 and f"The model it replaced was moved whole to {previous}" in output, output
    assert f"-m {previous}" in output
    assert (previous / "fold_4" / "checkpoint_final.pt").read_bytes() == b"a fold trained here since"
    assert (previous / "fold_0" / "checkpoint_best.pt").is_file() and (previous / "plans.json").is_file()
    assert not (model_dir / "fold_4").exists() and (model_dir / "fold_0" / "checkpoint_final.pt").is_file()
    assert run_cli(capsys, "install_model", str(archive), "--overwrite")[0] == 0
    assert (model_dir.parent / "previous" / f"{model_dir.name}_2" / "fold_0").is_dir()  # the one before kept too


def test_install_refuses_an_id_that_another_dataset_uses(archive, elsewhere, capsys):
    (elsewhere["raw"] / "Dataset042_Heart").mkdir()
    code, output = run_cli(capsys, "install_model", str(archive), "-d", "42")
    assert code == 2 and "already used by Dataset042_Heart" in output and "-d NEW_ID" in output
    assert not any(elsewhere["results"].iterdir())
    code, output = run_cli(capsys, "install_model", str(archive), "-d", "Dataset043_Mine")
    assert code == 0 and (elsewhere["results"] / "Dataset043_Mine" / "default__automedsamPlans").is_dir(), output
    plans = json.loads((elsewhere["results"] / "Dataset043_Mine" / "default__automedsamPlans" / "plans.json")
                       .read_text())
    assert plans["dataset_name"] == "Dataset043_Mine"


def test_install_refuses_a_dataset_of_that_name_whose_labels_mean_something_else(archive, elsewhere, capsys):
    labels = member_json(archive, "dataset.json")["labels"]
    local = elsewhere["preprocessed"] / "Dataset044_SyntheticUS"
    local.mkdir()
    (local / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    code, output = run_cli(capsys, "install_model", str(archive), "-d", "44")
    assert code == 2 and "has the labels" in output and "-d NEW_ID" in output and "Traceback" not in output
    assert not any(elsewhere["results"].iterdir())
    (local / "dataset.json").write_text(json.dumps({"labels": labels}))  # the same dataset, here too
    code, output = run_cli(capsys, "install_model", str(archive), "-d", "44")
    assert code == 0 and (elsewhere["results"] / "Dataset044_SyntheticUS" / MODEL.split("/")[-1]).is_dir(), output


# --------------------------------------------------------------------------- foundation weights named by sha256


@pytest.fixture
def vit_model(trained, tmp_path: Path) -> tuple[dict[str, Path], Path]:
    """A copy of the trained model whose plans name medsam_vit_b weights (a small stand-in file) by path, its folds
    recording them as the weights they were trained with."""
    roots = make_roots(tmp_path / "vit")
    shutil.copytree(trained["results"] / DATASET, roots["results"] / DATASET)
    weights = tmp_path / "downloads" / "medsam_vit_b.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"stand-in for the MedSAM ViT-B weights")
    plans_path = roots["results"] / MODEL / "plans.json"
    plans = json.loads(plans_path.read_text())
    plans["foundation_model"].update(name="medsam_vit_b", checkpoint=str(weights), input_size=1024,
                                     reason=f"MedSAM ViT-B; checkpoint {weights}")
    plans_path.write_text(json.dumps(plans))
    for metadata in (roots["results"] / MODEL).glob("fold_*/checkpoint_*.json"):
        save_json(metadata, {**json.loads(metadata.read_text()), TRAINED_WITH: sha256_of(weights)})
    return roots, weights


def test_a_non_default_foundation_model_is_named_by_file_and_verified_by_sha256(trained, vit_model, tiny_foundation,
                                                                               elsewhere, tmp_path, capsys):
    roots, weights = vit_model
    archive = tmp_path / "vit.zip"
    with roots_at(roots):
        code, output = run_cli(capsys, "export_model", "-d", "900", "-o", str(archive))
    assert code == 0, output
    card, plans = member_json(archive, "model_card.json"), member_json(archive, "plans.json")
    assert card["foundation_model"] == {"name": "medsam_vit_b", "weights_file": "medsam_vit_b.pth",
                                        "sha256": sha256_of(weights)}
    assert card["few_shot"] is None  # this copy has no splits.json beside it
    assert plans["foundation_model"]["checkpoint"] is None and str(weights.parent) not in json.dumps(plans)
    assert "checkpoint medsam_vit_b.pth" in plans["foundation_model"]["reason"]

    code, output = run_cli(capsys, "install_model", str(archive), "-d", "7")
    assert code == 0 and "--foundation-checkpoint PATH/medsam_vit_b.pth" in output, output
    code, output = run_cli(capsys, "export_model", "-d", "7", "-o", str(tmp_path / "again.zip"))
    assert code == 0, output  # passed on without the weights file at hand: the card keeps naming it
    assert member_json(tmp_path / "again.zip", "model_card.json")["foundation_model"] == card["foundation_model"]
    images, out = trained["raw"] / DATASET / "imagesTs", tmp_path / "out"
    code, output = run_cli(capsys, "predict", "-i", str(images), "-o", str(out), "-d", "7", "--device", "cpu")
    assert code == 2 and "trained with foundation model 'medsam_vit_b' and the weights file medsam_vit_b.pth" in output
    assert "--foundation-checkpoint PATH" in output
    other = tmp_path / "other" / "medsam_vit_b.pth"
    other.parent.mkdir()
    other.write_bytes(b"another release of the weights")
    code, output = run_cli(capsys, "predict", "-i", str(images), "-o", str(out), "-d", "7", "--device", "cpu",
                           "--foundation-checkpoint", str(other))
    assert code == 2 and f"have sha256 {sha256_of(other)}, but this model was trained with" in output
    code, output = run_cli(capsys, "predict", "-i", str(images), "-o", str(out), "-d", "7", "--device", "cpu",
                           "--foundation-checkpoint", str(weights))
    assert code == 0 and "Wrote 2 segmentation(s)" in output, output

    code, output = run_cli(capsys, "install_model", str(archive), "-d", "8", "--foundation-checkpoint", str(other))
    assert code == 2 and "other weights give other segmentations" in output
    assert not (elsewhere["results"] / "Dataset008_SyntheticUS").exists()
    code, output = run_cli(capsys, "install_model", str(archive), "-d", "8", "--foundation-checkpoint", str(weights))
    assert code == 0 and "--foundation-checkpoint" not in output, output
    code, output = run_cli(capsys, "predict", "-i", str(images), "-o", str(tmp_path / "out8"), "-d", "8", "--device",
                           "cpu")
    assert code == 0, output
    moved = tmp_path / "moved" / "medsam_vit_b.pth"  # installed from a path the weights have left since
    moved.parent.mkdir()
    os.link(weights, moved)
    assert run_cli(capsys, "install_model", str(archive), "-d", "9", "--foundation-checkpoint", str(moved))[0] == 0
    moved.unlink()
    code, output = run_cli(capsys, "export_model", "-d", "9", "-o", str(tmp_path / "again9.zip"))
    assert code == 0, output  # plans.json still says which weights: the archive needs no file at hand
    assert member_json(tmp_path / "again9.zip", "model_card.json")["foundation_model"] == card["foundation_model"]


def test_export_refuses_other_weights_than_the_packaged_ones_a_model_was_trained_with(tmp_path):
    """--foundation-checkpoint always won: a model trained with the packaged weights (checkpoint null) was exported
    pinned to any file given, which install and predict then demanded instead of the right weights."""
    roots = make_roots(tmp_path / "here")
    model_dir = written_model(roots["results"])
    other = tmp_path / "random.bin"
    other.write_bytes(os.urandom(256))
    with roots_at(roots):
        with pytest.raises(AutomedsamError) as refused:
            export_model(model_dir, tmp_path / "m.zip", folds=(0,), foundation_checkpoint=other)
        assert f"{other} (given with --foundation-checkpoint) have sha256 {sha256_of(other)}" in str(refused.value)
        assert "'litemedsam' weights packaged with automedsam" in str(refused.value)
        assert PACKAGED_SHA256["litemedsam"] in str(refused.value) and not (tmp_path / "m.zip").exists()
        packaged = Path(litemedsam_weights_path())  # the same weights, given as a file: accepted
        export_model(model_dir, tmp_path / "m.zip", folds=(0,), foundation_checkpoint=packaged)
    assert member_json(tmp_path / "m.zip", "plans.json")["foundation_model"]["sha256"] == PACKAGED_SHA256["litemedsam"]


def test_export_refuses_other_weights_than_the_file_the_plans_name_while_it_exists(tmp_path):
    """With the plans' weights file still there, a different file given was recorded instead; once that file is gone
    and no hash was recorded, the plans no longer tell, and the file given is taken at its word."""
    roots = make_roots(tmp_path / "here")
    planned = tmp_path / "weights" / "medsam_vit_b.pth"
    planned.parent.mkdir()
    planned.write_bytes(b"the weights the model was trained with")
    model_dir = written_model(roots["results"], weights=planned)
    other = tmp_path / "other.pth"
    other.write_bytes(b"other weights of the same architecture")
    copy = tmp_path / "copy" / "medsam_vit_b.pth"
    copy.parent.mkdir()
    shutil.copyfile(planned, copy)
    with roots_at(roots):
        with pytest.raises(AutomedsamError) as refused:
            export_model(model_dir, tmp_path / "m.zip", folds=(0,), foundation_checkpoint=other)
        assert f"trained with {planned} (named in plans.json) (sha256 {sha256_of(planned)})" in str(refused.value)
        assert not (tmp_path / "m.zip").exists()
        export_model(model_dir, tmp_path / "m.zip", folds=(0,), foundation_checkpoint=copy)
        assert member_json(tmp_path / "m.zip", "model_card.json")["foundation_model"]["sha256"] == sha256_of(planned)
        planned.unlink()
        export_model(model_dir, tmp_path / "m.zip", folds=(0,), foundation_checkpoint=other, overwrite=True)
    assert member_json(tmp_path / "m.zip", "model_card.json")["foundation_model"]["sha256"] == sha256_of(other)


# ------------------------------------------------------------------------------------ an untrusted archive


def rewritten(source: Path, target: Path, *, drop: tuple[str, ...] = (), replace: dict[str, bytes] | None = None,
              add: tuple[tuple[zipfile.ZipInfo | str, bytes], ...] = (), stored: bool = False) -> Path:
    """A copy of the archive `source` with members dropped, replaced or added (added ones may repeat a name); the
    members changed are deflated unless `stored`, the others copied uncompressed (faster)."""
    replace = replace or {}
    compression = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", compression=compression) as copy:
        for name in original.namelist():
            if name in replace:
                copy.writestr(name, replace[name])
            elif name not in drop:
                copy.writestr(name, original.read(name), compress_type=zipfile.ZIP_STORED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zipfile warns of a repeated name, as it should
            for info, data in add:
                copy.writestr(info, data)
    return target


def symlink(name: str, points_to: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16
    return info, points_to.encode()


def lying_about_size(source: Path, target: Path, member: str, declared: int) -> Path:
    """A copy whose central directory declares `declared` bytes for `member` (the size zipfile trusts)."""
    return with_central_field(source, target, member, 24, declared.to_bytes(4, "little"))


def with_central_field(source: Path, target: Path, member: str, offset: int, value: bytes) -> Path:
    """A copy whose central directory entry of `member` holds `value` at `offset` (a flipped byte, as a damaged
    download has): 6 is the zip version needed to extract, 8 the flag bits, 24 the uncompressed size."""
    data = bytearray(source.read_bytes())
    name = member.encode()
    start = data.find(b"PK\x01\x02")
    while start != -1:
        length = int.from_bytes(data[start + 28:start + 30], "little")
        if bytes(data[start + 46:start + 46 + length]) == name:
            data[start + offset:start + offset + len(value)] = value
            break
        start = data.find(b"PK\x01\x02", start + 4)
    assert start != -1, member
    target.write_bytes(bytes(data))
    return target


def without_section(archive: Path, section: str) -> bytes:
    plans = member_json(archive, "plans.json")
    del plans[section]
    return json.dumps(plans).encode()


def edited_json(archive: Path, name: str, **changes) -> bytes:
    value = member_json(archive, name)
    for key, change in changes.items():
        value[key] = change(value[key]) if callable(change) else change
    return json.dumps(value).encode()


def malicious_checkpoint(folder: Path, marker: Path) -> bytes:
    return write_malicious_checkpoint(folder / "evil.pt", marker).read_bytes()


def foreign_checkpoint(folder: Path) -> bytes:
    torch.save({"1.some_other_layer.weight": torch.zeros(3)}, folder / "foreign.pt")
    return (folder / "foreign.pt").read_bytes()


def recompressed_checkpoint(archive: Path, folder: Path) -> bytes:
    """fold 0's final checkpoint with its records deflated, as a zip bomb inside a checkpoint is (torch.save stores
    them): a few kilobytes that torch.load would inflate to gigabytes."""
    with zipfile.ZipFile(archive) as outer:
        original = zipfile.ZipFile(io.BytesIO(outer.read("fold_0/checkpoint_final.pt")))
    assert {record.compress_type for record in original.infolist()} == {zipfile.ZIP_STORED}, "torch.save stores"
    packed = io.BytesIO()
    with original, zipfile.ZipFile(packed, "w", compression=zipfile.ZIP_DEFLATED) as copy:
        for record in original.infolist():
            copy.writestr(record.filename, original.read(record))
    return packed.getvalue()


def checkpoint_declaring(archive: Path, folder: Path, declared: int) -> bytes:
    """fold 0's final checkpoint whose first record declares `declared` bytes, stored and compressed alike."""
    (folder / "plain.pt").write_bytes(member_bytes(archive, "fold_0/checkpoint_final.pt"))
    with zipfile.ZipFile(folder / "plain.pt") as checkpoint:
        first = checkpoint.infolist()[0].filename
    for offset in (20, 24):
        with_central_field(folder / "plain.pt", folder / "plain.pt", first, offset, declared.to_bytes(4, "little"))
    return (folder / "plain.pt").read_bytes()


def member_bytes(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)


def odd_validation_record(content: bytes) -> tuple:
    """An UNTRUSTED entry: fold 1's validation record replaced by `content`, refused as no validation record."""
    return (lambda a, t, m: rewritten(a, t, replace={"fold_1/validation/summary.json": content}),
            ["fold_1/validation/summary.json: it is not a validation record"])


UNTRUSTED = {
    "member_outside_the_model": (lambda a, t, m: rewritten(a, t, add=(("notes.txt", b"hello"),)),
                                 ["member 'notes.txt' is not part of an automedsam model"]),
    "training_state_member": (lambda a, t, m: rewritten(a, t, add=(("fold_0/training_state_latest.pt", b"x"),)),
                              ["member 'fold_0/training_state_latest.pt' is not part of an automedsam model"]),
    "absolute_path": (lambda a, t, m: rewritten(a, t, add=((zipfile.ZipInfo("/tmp/evil.json"), b"{}"),)),
                      ["member '/tmp/evil.json' has an absolute path"]),
    "dot_dot": (lambda a, t, m: rewritten(a, t, add=(("fold_0/../../evil.json", b"{}"),)),
                ["member 'fold_0/../../evil.json' has a '..' component"]),
    "symlink": (lambda a, t, m: rewritten(a, t, drop=("plans.json",), add=(symlink("plans.json", "/etc/passwd"),)),
                ["member 'plans.json' is a symbolic link"]),
    "duplicate": (lambda a, t, m: rewritten(a, t, add=(("plans.json", b"{}"),)), ["member 'plans.json' appears twice"]),
    "oversized_member": (lambda a, t, m: rewritten(a, t, replace={"fold_0/log.json": b"7" * (17 * 2**20)},
                                                   stored=True),
                         ["member 'fold_0/log.json' declares 17825792 bytes, more than the 16777216 bytes"]),
    "zip_bomb": (lambda a, t, m: rewritten(a, t, replace={"fold_0/log.json": b"{}" + b" " * (8 * 2**20)}),
                 ["member 'fold_0/log.json' would inflate", "a zip bomb"]),
    "size_lie": (lambda a, t, m: lying_about_size(a, t, "dataset.json", 10),
                 ["member 'dataset.json' is damaged or not what it declares"]),
    "checkpoint_larger_than_its_plans_modules": (lambda a, t, m: rewritten(a, t, replace={
        "fold_0/checkpoint_final.pt": os.urandom(planned_checkpoint_bytes(member_json(a, "plans.json")) + 1)}),
        ["member 'fold_0/checkpoint_final.pt' is", "bytes that the prompt modules of its plans take"]),
    "checkpoint_of_compressed_records": (lambda a, t, m: rewritten(a, t, replace={
        "fold_0/checkpoint_final.pt": recompressed_checkpoint(a, t.parent)}),
        ["member 'fold_0/checkpoint_final.pt' holds the compressed record", "a zip bomb inside a checkpoint"]),
    "checkpoint_records_larger_than_its_plans_modules": (lambda a, t, m: rewritten(a, t, replace={
        "fold_0/checkpoint_final.pt": checkpoint_declaring(a, t.parent, 2**31 - 1)}),
        ["member 'fold_0/checkpoint_final.pt' declares records of", "bytes that the prompt modules of its plans take"]),
    "card_with_a_dataset_name_too_long_for_a_folder": (lambda a, t, m: rewritten(a, t, replace={
        "model_card.json": edited_json(a, "model_card.json", dataset="Dataset900_" + "A" * 300)}),
        ["dataset 'Dataset900_AAAA", "is 311 characters long, more than the 100 a dataset folder name may have"]),
    "dataset_description_with_a_word_for_a_label": (lambda a, t, m: rewritten(a, t, replace={
        "dataset.json": edited_json(a, "dataset.json", labels={"background": "zero", "structure": [1]})}),
        ["dataset.json has unusable labels", "Export the model again"]),
    "dataset_description_with_two_labels_of_one_id": (lambda a, t, m: rewritten(a, t, replace={
        "dataset.json": edited_json(a, "dataset.json", labels={"background": 0, "head": 1, "skull": 1})}),
        ["dataset.json has unusable labels", "two labels share an id"]),
    "dataset_description_with_a_list_of_channels": (lambda a, t, m: rewritten(a, t, replace={
        "dataset.json": edited_json(a, "dataset.json", channel_names=["US"])}),
        ["dataset.json channel_names ['US'] is not a map of channel numbers"]),
    "card_with_an_unknown_supervision": (lambda a, t, m: rewritten(a, t, replace={
        "model_card.json": edited_json(a, "model_card.json", supervision="pixels")}),
        ["supervision 'pixels' is not one of boxes, masks or null"]),
    "card_with_text_for_validation": (lambda a, t, m: rewritten(a, t, replace={
        "model_card.json": edited_json(a, "model_card.json", validation="good")}),
        ["validation 'good' is not an object of each fold's figures", "export the model again"]),
    "card_with_a_list_for_validation": (lambda a, t, m: rewritten(a, t, replace={
        "model_card.json": edited_json(a, "model_card.json", validation=[0.9])}),
        ["validation [0.9] is not an object of each fold's figures"]),
    "card_with_text_for_a_validation_figure": (lambda a, t, m: rewritten(a, t, replace={
        "model_card.json": edited_json(a, "model_card.json", validation=lambda folds: {
            fold: {**figures, "final_val": {"box_dice": "0.9"}} for fold, figures in folds.items()})}),
        [".final_val {'box_dice': '0.9'} is not null or an object of scores, each a number or null"]),
    "card_with_text_for_a_validation_count": (lambda a, t, m: rewritten(a, t, replace={
        "model_card.json": edited_json(a, "model_card.json", validation=lambda folds: {
            fold: {**figures, "epochs": "1"} for fold, figures in folds.items()})}),
        [".epochs '1' is not a whole number or null"]),
    "card_with_an_unknown_validation_figure": (lambda a, t, m: rewritten(a, t, replace={
        "model_card.json": edited_json(a, "model_card.json", validation={"0": {"epochs": 1, "secret": [1]}})}),
        ["validation.0 {'epochs': 1, 'secret': [1]} is not an object of epochs, train_samples, val_samples, "
         "final_val"]),
    "card_with_true_for_a_validation_count": (lambda a, t, m: rewritten(a, t, replace={
        "model_card.json": edited_json(a, "model_card.json", validation=lambda folds: {
            fold: {**figures, "epochs": True} for fold, figures in folds.items()})}),
        [".epochs True is not a whole number or null"]),
    "card_with_validation_of_a_fold_it_lacks": (lambda a, t, m: rewritten(a, t, replace={
        "model_card.json": edited_json(a, "model_card.json", validation=lambda folds: {**folds, "7": {}})}),
        ["validation names fold '7', which is not one of the card's folds"]),
    "card_with_a_number_for_created": (lambda a, t, m: rewritten(a, t, replace={
        "model_card.json": edited_json(a, "model_card.json", created=1765000000)}),
        ["created 1765000000 is not a date and time as text"]),
    "card_with_a_word_for_created": (lambda a, t, m: rewritten(a, t, replace={
        "model_card.json": edited_json(a, "model_card.json", created="yesterday")}),
        ["created 'yesterday' is not a date and time as text"]),
    "card_with_markup_after_its_automedsam_version": (lambda a, t, m: rewritten(a, t, replace={
        "model_card.json": edited_json(a, "model_card.json", automedsam_version="1.0\n[red]")}),
        ["automedsam_version '1.0\\n[red]' is not a version as text"]),
    "card_with_an_object_for_automedsam_version": (lambda a, t, m: rewritten(a, t, replace={
        "model_card.json": edited_json(a, "model_card.json", automedsam_version={"major": 0})}),
        ["automedsam_version {'major': 0} is not a version as text"]),
    "checkpoint_with_code": (lambda a, t, m: rewritten(a, t, replace={
        "fold_1/checkpoint_best.pt": malicious_checkpoint(t.parent, m)}),
        ["fold_1/checkpoint_best.pt holds Python objects or code besides tensors"]),
    "foreign_checkpoint": (lambda a, t, m: rewritten(a, t, replace={
        "fold_0/checkpoint_final.pt": foreign_checkpoint(t.parent)}),
        ["Refusing to install", "fold_0/checkpoint_final.pt: the prompt module of label 1 does not match plans.json",
         "Export the model again. Nothing was written."]),
    "member_missing": (lambda a, t, m: rewritten(a, t, drop=("fold_1/log.json",)),
                       ["do not match its model card (missing: fold_1/log.json"]),
    "plans_name_with_a_path": (lambda a, t, m: rewritten(a, t, replace={
        "model_card.json": edited_json(a, "model_card.json", plans_name="../../evil")}),
        ["plans_name '../../evil' is not a name"]),
    "plans_with_a_weights_path": (lambda a, t, m: rewritten(a, t, replace={
        "plans.json": edited_json(a, "plans.json", foundation_model=lambda s: {**s, "checkpoint": "/etc/passwd"})}),
        ["holds a weights path ('/etc/passwd')"]),
    "validation_record_of_another_shape": odd_validation_record(b'{"box_refinement": {"1": "refine"}}'),
    "second_look_record_of_another_shape": odd_validation_record(
        b'{"box_refinement": {}, "second_look": {"1": {"per_sample": 3}}}'),
    "validation_record_keyed_by_a_name_not_a_label": odd_validation_record(
        b'{"box_refinement": {"ring": {"per_sample": []}}}'),
    "validation_record_with_a_word_for_a_dice": odd_validation_record(
        b'{"box_refinement": {"1": {"per_sample": [{"learned": "high"}]}}}'),
    "validation_record_of_a_fold_not_in_the_card": (lambda a, t, m: rewritten(a, t, add=(
        ("fold_3/validation/summary.json", b'{"box_refinement": {}}'),)),
        ["not in the card: fold_3/validation/summary.json"]),
    "not_a_zip": (lambda a, t, m: t.write_bytes(b"PK but not really a zip") and t, ["is not a zip archive"]),
    "unsupported_zip_version": (lambda a, t, m: with_central_field(a, t, "plans.json", 6, bytes([102, 0])),
                                ["damaged or unsupported", "zip file version 10.2"]),
    "strong_encryption_flag": (lambda a, t, m: with_central_field(a, t, "dataset.json", 8, bytes([0x40, 0])),
                               ["member 'dataset.json' is encrypted or patched", "damaged or unsupported"]),
    "patched_data_flag": (lambda a, t, m: with_central_field(a, t, "fold_0/log.json", 8, bytes([0x20, 0])),
                          ["member 'fold_0/log.json' is encrypted or patched", "damaged or unsupported"]),
    "card_nested_too_deeply": (lambda a, t, m: rewritten(a, t, replace={"model_card.json": b"[" * 200000}),
                               ["model_card.json cannot be read: it nests lists or objects too deeply"]),
    "plans_with_a_5000_digit_number": (lambda a, t, m: rewritten(a, t, replace={
        "plans.json": b'{"x": ' + b"9" * 5000 + b"}"}),
     ["plans.json cannot be read: it holds a number of thousands of digits"]),
    "plans_without_normalization": (lambda a, t, m: rewritten(a, t, replace={
        "plans.json": without_section(a, "normalization")}), ["plans.json has no usable normalization section"]),
    "plans_without_slicing": (lambda a, t, m: rewritten(a, t, replace={
        "plans.json": without_section(a, "slicing")}), ["plans.json has no usable slicing section"]),
    "plans_with_a_ring_of_no_target": (lambda a, t, m: rewritten(a, t, replace={
        "plans.json": edited_json(a, "plans.json", targets=lambda ts: [{**ts[0], "subtract": [9]}, *ts[1:]])}),
        ["plans.json target 1 is unusable"]),
    "plans_of_a_newer_automedsam": (lambda a, t, m: rewritten(a, t, replace={
        "plans.json": edited_json(a, "plans.json", third_look={"enabled": True}),
        "model_card.json": edited_json(a, "model_card.json", automedsam_version="7.3.0")}),
        ["made by a newer or different automedsam (unknown plans section 'third_look'; its card says automedsam "
         "'7.3.0', this is", "update automedsam"]),
    "plans_with_a_resize_of_a_newer_automedsam": (lambda a, t, m: rewritten(a, t, replace={
        "plans.json": edited_json(a, "plans.json", foundation_model=lambda s: {**s, "resize": "pad_centre"})}),
        ["made by a newer or different automedsam (unknown foundation_model.resize 'pad_centre', this version knows "
         "longest_side, stretch); update automedsam"]),
    "plans_with_a_precision_of_a_newer_automedsam": (lambda a, t, m: rewritten(a, t, replace={
        "plans.json": edited_json(a, "plans.json", foundation_model=lambda s: {**s, "precision": "fp8"})}),
        ["made by a newer or different automedsam (unknown foundation_model.precision 'fp8', this version knows "
         "fp32, bf16); update automedsam"]),
}


REFUSED_BEFORE_TORCH_LOAD = {"checkpoint_of_compressed_records", "checkpoint_records_larger_than_its_plans_modules"}


@pytest.mark.parametrize("case", list(UNTRUSTED))
def test_an_untrusted_archive_is_refused_and_leaves_nothing_behind(case, archive, elsewhere, tmp_path, capsys,
                                                                   monkeypatch):
    """A checkpoint that torch.load would inflate in memory is refused before torch.load reads it."""
    marker = tmp_path / "PAYLOAD_RAN"
    make, expected = UNTRUSTED[case]
    if case in REFUSED_BEFORE_TORCH_LOAD:
        monkeypatch.setattr(torch, "load", lambda *args, **kwargs: pytest.fail("torch.load read the checkpoint"))
    (tmp_path / "work").mkdir()
    bad = make(archive, tmp_path / "work" / "bad.zip", marker)
    code, output = run_cli(capsys, "install_model", str(bad), "-d", "42")
    assert code == 2 and "Traceback" not in output, output
    missing = [fragment for fragment in expected if fragment not in output]
    assert not missing, output
    assert list(elsewhere["results"].iterdir()) == [], "a refused archive left something in the results root"
    assert not marker.exists(), "code inside the archive ran"


def test_every_plans_section_the_planner_writes_is_one_install_knows(trained):
    """Install refuses plans sections it does not know (a newer automedsam's); the planner has no constant of its
    sections, so a section added to it must be added to install's PLANS_SECTIONS too, or its models stop installing."""
    plans = json.loads((trained["preprocessed"] / DATASET / "plans.json").read_text())
    assert {"second_look", "selection", "protocol"} <= set(plans), "plans of the current planner"
    assert set(plans) <= PLANS_SECTIONS


def test_plans_of_200000_targets_are_refused_before_any_per_target_work_in_a_short_message(archive, elsewhere,
                                                                                            tmp_path, capsys):
    """Each target's subtract was checked against a set of all other labels built anew: 40,000 targets kept install
    busy for minutes, and the refusal that followed listed every label."""
    targets = [{"label": label} for label in range(1, 200_001)]
    bad = rewritten(archive, tmp_path / "bad.zip", replace={
        "plans.json": edited_json(archive, "plans.json", targets=targets)})
    code, output = run_cli(capsys, "install_model", str(bad), "-d", "42")
    assert code == 2 and "plans.json has 200000 targets, more than a model has (1000 at most)" in output, output
    assert len(output) < 400, output
    assert list(elsewhere["results"].iterdir()) == []


def test_the_best_checkpoint_of_a_fold_installed_without_one_is_not_sent_to_training(tmp_path, elsewhere):
    """predict -f 0 --checkpoint best on a model exported without --best said `Train it with automedsam_train 001
    fold0`, on a machine without the data; without -f the same request was worded right."""
    roots = make_roots(tmp_path / "here")
    model_dir = written_model(roots["results"])
    with roots_at(roots):
        export_model(model_dir, tmp_path / "m.zip", folds=(0,))
    installed = install_model(tmp_path / "m.zip").model_dir
    with pytest.raises(AutomedsamError) as refused:
        open_model_folder(installed, folds=[0], checkpoint="best")
    message = str(refused.value)
    assert "finished without checkpoint_best.pt (a model exported without --best has none" in message, message
    assert "Leave --checkpoint out to use checkpoint_final.pt" in message and "automedsam_train" not in message


def test_a_checkpoint_of_an_installed_model_is_mended_by_installing_its_zip_again_not_by_training(tmp_path, elsewhere):
    """A truncated or lost checkpoint of an installed model said "Its fold must be retrained: `automedsam_train 043
    fold0 --overwrite`", which fails on a machine with the model alone (its dataset is not preprocessed there)."""
    roots = make_roots(tmp_path / "here")
    model_dir = written_model(roots["results"])
    with roots_at(roots):
        export_model(model_dir, tmp_path / "m.zip", folds=(0,))
    installed = install_model(tmp_path / "m.zip", dataset=43).model_dir
    checkpoint = installed / "fold_0" / "checkpoint_final.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(AutomedsamError) as damaged:
        open_model_folder(installed).load_state(0)
    with pytest.raises(AutomedsamError) as exported:  # export reads the checkpoints too
        export_model(installed, tmp_path / "again.zip", folds=(0,))
    checkpoint.unlink()
    with pytest.raises(AutomedsamError) as lost:
        open_model_folder(installed)
    with pytest.raises(AutomedsamError) as lost_named:
        open_model_folder(installed, folds=[0])
    reinstall = "install the zip again with `automedsam_install_model ZIP -d Dataset043_Toy --overwrite`"
    with pytest.raises(AutomedsamError) as exported_lost:
        export_model(installed, tmp_path / "again.zip", folds=(0,))
    for refused in (damaged, exported, lost, lost_named, exported_lost):
        message = str(refused.value)
        assert reinstall in message and "automedsam_train" not in message, message
    assert "cannot be read" in str(damaged.value)
    with pytest.raises(AutomedsamError, match=r"zip it was installed from held fold\(s\) 0 only.*Leave fold 3 out "
                                              "of -f") as never_installed:
        open_model_folder(installed, folds=[3])
    assert "automedsam_train" not in str(never_installed.value)


def test_a_checkpoint_of_30_prompt_modules_of_128_channels_exports_and_installs(tmp_path, elsewhere):
    """A checkpoint was capped at 256 MiB, a prompt module taken for 1 MB (it is 9.3 MiB at 128 centre channels):
    28 such targets exported, then install refused the archive as not written by automedsam_export_model."""
    roots = make_roots(tmp_path / "here")
    model_dir = written_model(roots["results"], targets=30, center_channels=128)
    size = (model_dir / "fold_0" / "checkpoint_final.pt").stat().st_size
    assert size > 256 * 2**20
    with roots_at(roots):
        export_model(model_dir, tmp_path / "large.zip", folds=(0,))
    summary = install_model(tmp_path / "large.zip", dataset=5)
    assert (summary.model_dir / "fold_0" / "checkpoint_final.pt").stat().st_size == size


def test_export_refuses_a_checkpoint_larger_than_its_plans_prompt_modules(tmp_path):
    """Export checks the sizes install checks, so it fails first instead of writing an archive install refuses."""
    roots = make_roots(tmp_path / "here")
    model_dir = written_model(roots["results"], targets=2, center_channels=16)
    save_checkpoint(model_dir / "fold_0", "final", modules_state_dict({1: PromptModule(center_channels=64)}), {})
    size = (model_dir / "fold_0" / "checkpoint_final.pt").stat().st_size
    with roots_at(roots), pytest.raises(AutomedsamError) as refused:
        export_model(model_dir, tmp_path / "m.zip", folds=(0,))
    limit = planned_checkpoint_bytes(json.loads((model_dir / "plans.json").read_text()))
    assert f"Cannot export: member 'fold_0/checkpoint_final.pt' is {size} bytes, more than the {limit} bytes" \
        in str(refused.value)
    message = str(refused.value)
    assert "(2 targets, prompt_module center_channels 16, num_points 1)" in message and "-f" in message
    assert not (tmp_path / "m.zip").exists()


def test_a_full_disk_during_install_is_said_as_such_not_as_a_damaged_archive(archive, elsewhere, capsys,
                                                                              monkeypatch):
    real_open = Path.open

    class FullDisk:
        def __init__(self, handle) -> None:
            self.handle = handle

        def __enter__(self) -> "FullDisk":
            return self

        def __exit__(self, *exc_info) -> None:
            self.handle.close()

        def write(self, block: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def opened(path: Path, mode: str = "r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return FullDisk(handle) if mode == "xb" else handle  # the install's checkpoint copies
    monkeypatch.setattr(Path, "open", opened)
    code, output = run_cli(capsys, "install_model", str(archive), "-d", "42")
    assert code == 2 and "Traceback" not in output, output
    assert "No space left on device" in output and "damaged" not in output and "copy the archive" not in output
    assert list(elsewhere["results"].iterdir()) == []


def test_a_model_trained_with_fold_all_exports_with_its_best_checkpoint(trained, tmp_path, capsys):
    """--best on a model whose only fold is `all` ended in ValueError: invalid literal for int() with base 10."""
    roots = make_roots(tmp_path / "all_only")
    model = roots["results"] / DATASET / MODEL.split("/")[-1]
    shutil.copytree(trained["results"] / MODEL, model)
    shutil.rmtree(model / "fold_0")
    (model / "fold_1").rename(model / "fold_all")
    archive = tmp_path / "all.zip"
    with roots_at(roots):
        code, output = run_cli(capsys, "export_model", "-d", "900", "-o", str(archive), "--best")
    assert code == 0 and "Traceback" not in output, output
    assert {"fold_all/checkpoint_best.pt", "fold_all/checkpoint_final.pt"} <= set(members(archive))


def test_an_archive_of_as_many_folds_as_a_card_allows_with_best_checkpoints_is_within_the_member_limit():
    """--best writes four files a fold: from 76 folds a genuine archive was refused as holding too many members."""
    per_fold = len(fold_members(99, ("final", "best"))) + len([validation_member(99)])
    assert MAX_MEMBERS >= len(TOP_FILES) + 100 * per_fold == 403


@pytest.mark.parametrize("targets", [None, [], {}])
def test_plans_without_targets_are_named_damaged_when_checkpoints_are_sized(targets):
    """A local plans.json without its targets made export end in a KeyError traceback (or size every checkpoint
    against 0 targets and refuse it under a misleading message)."""
    plans = {"prompt_module": {"center_channels": 16, "num_points": 1}}
    if targets is not None:
        plans["targets"] = targets
    with pytest.raises(AutomedsamError, match="no 'targets' list.*put back the model folder's plans.json as training "
                                              "or install wrote it"):
        planned_checkpoint_bytes(plans)


@pytest.mark.parametrize("inside", ["Dataset062_HC18/imagesTr", "Dataset062_HC18", "."])
def test_export_refuses_an_archive_in_the_raw_data(tmp_path, inside):
    """-o raw/Dataset062_HC18/imagesTr/model.zip was written among the raw images, where predict, evaluate and
    plot_overlays refuse their outputs."""
    roots = make_roots(tmp_path)
    (roots["raw"] / "Dataset062_HC18" / "imagesTr").mkdir(parents=True)
    output = roots["raw"] / inside / "model.zip"
    with roots_at(roots), pytest.raises(AutomedsamError, match=r"The archive's folder \(set with -o\) .* is in the "
                                                                 r"raw data .*Choose a folder outside"):
        export_model(roots["results"] / MODEL, output, folds=(0,))
    assert not output.exists()


def test_the_install_command_printed_after_an_export_can_be_pasted_into_a_shell(tmp_path, elsewhere):
    """`automedsam_install_model partage é/modèle 1.zip` was printed unquoted: pasted, it named two archives."""
    roots = make_roots(tmp_path / "here")
    model_dir = written_model(roots["results"])
    (tmp_path / "a b").mkdir()
    with roots_at(roots):
        summary = export_model(model_dir, tmp_path / "a b" / "m 1.zip", folds=(0,))
    command = summary.line().split("Install it with: ")[1]
    assert shlex.split(command) == ["automedsam_install_model", str(tmp_path / "a b" / "m 1.zip")]
