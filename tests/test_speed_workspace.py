"""The speed benchmark's scale runs: more inputs than held-out cases, each a link to a real image."""
import argparse
import json
from pathlib import Path

import pytest
import torch
from encoder_counts import plan_bf16
from synthetic_raw import make_2d_masks

from automedsam.benchmarks import foundation, speed, speed_workspace
from automedsam.benchmarks.speed_workspace import repeated_input_folder, repeated_raw_dataset
from automedsam.conversion import make_synthetic_dataset
from automedsam.dataset import Case, load_raw_dataset
from automedsam.errors import AutomedsamError
from automedsam.planning import preprocessing


def test_repeated_input_folder_cycles_through_the_cases_under_new_names(tmp_path: Path):
    cases = []
    for index in range(3):
        image = tmp_path / f"case{index}_0000.nii.gz"
        image.write_bytes(bytes([index]))
        cases.append(Case(f"case{index}", image, None, None, f"case{index}"))
    folder = repeated_input_folder(cases, 7, tmp_path / "scale")
    links = sorted(folder.iterdir())
    assert [link.name for link in links] == [f"img{index:04d}_0000.nii.gz" for index in range(7)]
    assert [link.read_bytes()[0] for link in links] == [0, 1, 2, 0, 1, 2, 0]
    assert repeated_input_folder(cases, 7, tmp_path / "scale") == folder and len(list(folder.iterdir())) == 7


def test_repeated_raw_dataset_links_every_case_in_turn_and_keeps_its_group(roots: dict[str, Path]):
    source = load_raw_dataset(make_2d_masks(roots["raw"], n_cases=4, per_group=2), check_images=False)
    repeated = repeated_raw_dataset(source, source.cases[1:], 7, dataset_id=901)
    assert repeated.name == "Dataset901_Discsx7" and len(repeated.cases) == 7
    sources = [source.cases[1 + index % 3] for index in range(7)]
    for case, original in zip(repeated.cases, sources):
        assert case.image.resolve() == original.image.resolve() and case.label.resolve() == original.label.resolve()
    groups = json.loads((repeated.root / "dataset.json").read_text())["groups"]
    assert [groups[case.case_id] for case in repeated.cases] == ["patient0", "patient1", "patient1"] * 2 + ["patient0"]


def test_held_out_cases_leave_out_every_frame_of_a_labelled_examination(monkeypatch, roots: dict[str, Path]):
    raw = load_raw_dataset(make_2d_masks(roots["raw"], n_cases=6, per_group=2), check_images=False)
    monkeypatch.setattr(speed_workspace, "labelled_cases", lambda raw: {"case02"})
    assert [case.case_id for case in speed_workspace.held_out_cases(raw, 4)] == ["case00", "case01", "case04",
                                                                                "case05"]


def test_speed_arguments_refuse_counts_below_one_and_commands_time_what_the_predictors_time(tmp_path: Path,
                                                                                            monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    data = tmp_path / "data"
    for folder in ("HC18", "ACDC"):
        (data / folder).mkdir(parents=True)
    for bad in (["--images", "0"], ["--repeats", "0"], ["--encoder-batches", "8", "0"], ["--batch-size", "0"]):
        with pytest.raises(SystemExit):
            speed.parse_arguments(["--data", str(data), *bad])
    args = speed.parse_arguments(["--data", str(data), "--batch-size", "4", "--device", "cuda"])
    command = speed.predict_arguments(tmp_path / "in", tmp_path / "out", tmp_path / "model", args)
    assert command[command.index("--batch-size") + 1] == "4" and command[command.index("--device") + 1] == "cuda"
    assert command[command.index("--second-look") + 1] == command[command.index("--box-refinement") + 1] == "off"


def test_every_preprocessing_repeat_pays_the_precision_check(tmp_path: Path):
    state = tmp_path / "preprocessing_state.json"
    state.write_text(json.dumps({"embeddings": {"litemedsam": "k"}, "precision_check": {"key": "c", "passed": True}}))
    speed.forget_precision_check(tmp_path)
    assert json.loads(state.read_text()) == {"embeddings": {"litemedsam": "k"}}


def test_every_timed_preprocessing_of_part_b_measures_the_precision_check_on_the_device_asked(
        roots: dict[str, Path], tiny_foundation, monkeypatch):
    """Part (b) forgot the stored check, then timed --preprocess-only, which never checks: no repeat paid it, and on a
    bf16 CPU the samples were embedded in fp32 where a first run chooses bf16; its planning run took no device."""
    plan_bf16(monkeypatch)
    monkeypatch.setattr("automedsam.planning.planner.MAX_AUGMENTED_LABELLED", 0)
    checks, devices = [], []
    measure, plan = preprocessing.measure_change, speed.plan_and_preprocess

    def measured(*args, **kwargs):
        checks.append(True)
        return measure(*args, **kwargs)

    def planned(*args, **kwargs):
        devices.append(kwargs.get("device"))
        return plan(*args, **kwargs)

    monkeypatch.setattr(preprocessing, "measure_change", measured)
    monkeypatch.setattr(speed, "plan_and_preprocess", planned)
    raw = load_raw_dataset(make_synthetic_dataset(7, n_train=12, n_test=0), check_images=False)
    speed.part_b(raw, argparse.Namespace(num_workers=1, device="cpu", repeats=2))
    assert len(checks) == 2, "each repeat measures bf16 against fp32, as a dataset's first preprocessing does"
    assert devices == ["cpu"] * 3


def releases(folder: Path) -> Path:
    """The folder the speed benchmark reads, with empty HC18/ and ACDC/ releases."""
    for release in ("HC18", "ACDC"):
        (folder / release).mkdir(parents=True)
    return folder


def never(*args, **kwargs):
    raise AssertionError("nothing is read or converted before the options are checked")


@pytest.mark.parametrize("module, conversion", [(speed, "converted"), (foundation, "load_hc18")])
def test_a_device_that_is_not_there_is_refused_before_any_conversion(tmp_path: Path, monkeypatch, capsys, module,
                                                                      conversion):
    """--device cuda on a machine without CUDA converted HC18 and ACDC (minutes) before a traceback."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(module, conversion, never)
    with pytest.raises(SystemExit) as stopped:
        module.main(["--data", str(releases(tmp_path / "data")), "--device", "cuda"])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and "CUDA is not available here. Use --device cpu." in error, error
    assert "Traceback" not in error


@pytest.mark.parametrize("module, stage", [(speed, "run"), (foundation, "load_hc18")])
def test_a_user_error_while_measuring_is_one_message_not_a_traceback(tmp_path: Path, monkeypatch, capsys, module,
                                                                     stage):
    def refused(*args, **kwargs):
        raise AutomedsamError("The weights file is missing. Give --foundation-checkpoint.")

    monkeypatch.setattr(module, stage, refused)
    with pytest.raises(SystemExit) as stopped:
        module.main(["--data", str(releases(tmp_path / "data")), "--device", "cpu"])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and "Error: The weights file is missing." in error, error
    assert "Traceback" not in error
