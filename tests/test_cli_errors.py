"""How every command ends on an error: one readable message and exit code 2, never a traceback (cli.common)."""
from __future__ import annotations

import errno
import importlib
import shlex
import sys
from pathlib import Path
from typing import Callable

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from automedsam.benchmarks import protocol
from automedsam.cli import convert as convert_cli
from automedsam.cli.common import run_app
from automedsam.conversion import convert_folder
from automedsam.errors import AutomedsamError
from automedsam.files import load_json
from automedsam.foundation.weights_file import refuse_folder
from automedsam.inference.model_folder import locate_model_folder
from automedsam.inference.naming import ignored_files
from automedsam.inference.predictor import refinement_choices
from automedsam.planning.splits import make_splits
from bad_input_world import (PLAN, World, box_prompt_args, discs, exportable_toy_model, fake_preprocessed,
                             model_archive)

CONVERTED_AS = ("masks", "dataset_id", "name", "label_names", "group_pattern")  # what the benchmark's import sets


def failing_app(error: Exception) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def command() -> None:
        raise error
    return app


@pytest.mark.parametrize("error, expected", [
    (AutomedsamError("The dataset [1] is missing."), "Error: The dataset [1] is missing."),
    (PermissionError(errno.EACCES, "Permission denied", "/data/locked/out"),
     "Error: Permission denied for /data/locked/out: this user may not read, write or enter it."),
    (OSError(errno.ENAMETOOLONG, "File name too long", f"/data/{'x' * 300}.json"),
     f"Error: Cannot use /data/{'x' * 300}.json: the file name is too long for the file system: the name {'x' * 40}... "
     "is 305 bytes"),
])
def test_a_user_error_or_a_refused_path_ends_with_one_message_and_exit_code_2(error, expected, monkeypatch, capsys):
    """A folder the user may not enter (Path.exists() raises PermissionError in Python 3.11, before any check of
    ours can say so) ended a command with a traceback."""
    monkeypatch.setattr("sys.argv", ["automedsam_command"])
    with pytest.raises(SystemExit) as ended:
        run_app(failing_app(error))
    assert ended.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("error", [KeyError("bug"), OSError(errno.ENAMETOOLONG, "File name too long")],
                         ids=["bug", "too-long-without-a-path"])
def test_an_unexpected_error_is_not_dressed_as_the_users(error, monkeypatch):
    """A bug must keep its traceback: only the user's errors are turned into a message (a name too long is the
    user's only where the error names the path)."""
    monkeypatch.setattr("sys.argv", ["automedsam_command"])
    with pytest.raises(type(error)) as raised:
        run_app(failing_app(error))
    assert raised.value is error


def test_a_subfolder_of_the_input_that_holds_no_dicom_series_is_named_as_ignored(tmp_path):
    """`automedsam_predict -i DIR` left the images of DIR/sub/ out without a word, where convert folder warned."""
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "notes.gif").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(b"")
    (tmp_path / "series").mkdir()  # a DICOM series folder is one volume to predict, not ignored
    for index in range(2):
        (tmp_path / "series" / f"slice{index}.dcm").write_bytes(b"")
    (tmp_path / ".cache").mkdir()
    assert ignored_files(tmp_path) == ["notes.gif", "sub/"]


class Stop(Exception):
    """Ends a command where its conversion would begin."""


def test_the_thyroid_benchmark_prints_the_convert_command_that_does_what_it_does(tmp_path, monkeypatch):
    """Its convert stage's header said `automedsam_convert thyroid SRC`, a subcommand that does not exist: the
    command printed, run, must import the folder as the benchmark does."""
    source = tmp_path / "DDTI data"
    for sub in ("images", "masks"):
        (source / sub).mkdir(parents=True)
        (source / sub / "ddti_1_1.png").write_bytes(b"")
    calls = []

    def convert_folder(images, **options):
        calls.append({"images": images, **{key: options[key] for key in CONVERTED_AS}})
        raise Stop

    monkeypatch.setattr(protocol, "convert_folder", convert_folder)
    monkeypatch.setattr(convert_cli, "convert_folder", convert_folder)
    console = Console(record=True, width=1000)
    with pytest.raises(Stop):
        protocol.run_benchmark(protocol.BenchmarkSettings("thyroid", source, tmp_path / "work", device="cpu"), console)
    header = console.export_text().split("automedsam_convert ", 1)[1].split("─")[0].strip()
    result = CliRunner().invoke(convert_cli.app, shlex.split(header))
    assert isinstance(result.exception, Stop), result.output
    assert len(calls) == 2 and calls[0] == calls[1]


def test_a_folder_given_for_a_json_file_is_called_a_folder(tmp_path):
    """`automedsam_predict --boxes some_folder` said the box file 'does not exist'."""
    with pytest.raises(AutomedsamError, match=r"The box file .* is a folder, not a JSON file\. Give the path"):
        load_json(tmp_path, "box file")


def sample(case: str, annotation: str) -> dict:
    """One 2D case of a fingerprint, annotated with masks, boxes or nothing."""
    return {"case": case, "group": case, "shape": [32, 32], "annotation": annotation,
            "has_foreground": annotation != "none", "foreground_slices": None}


@pytest.mark.parametrize("annotations", [("boxes", "none", "none"), ("masks", "none", "none")])
def test_too_few_annotated_samples_ask_for_more_samples_not_for_the_shots_given(annotations):
    """--shots 2 on a dataset with one boxed sample said 'Use --shots 2 or more'; with one mask, 'Use --shots 1',
    which --shots refuses."""
    cases = [sample(f"c{index}", annotation) for index, annotation in enumerate(annotations)]
    fingerprint = {"dataset_name": "Dataset009_Test", "cases": cases,
                   "annotation": {kind: annotations.count(kind) for kind in ("masks", "boxes", "none")}}
    with pytest.raises(AutomedsamError, match="Annotate more samples") as refused:
        make_splits(fingerprint, axis=None, shots=2, folds=2)
    assert "--shots 1" not in str(refused.value) and "--shots 2 or more" not in str(refused.value)


def model_folder(path: Path) -> Path:
    """A folder -m takes: plans.json in it."""
    path.mkdir(parents=True)
    (path / "plans.json").write_text("{}")
    return path


def test_a_model_folder_option_at_a_folder_next_to_a_model_names_the_model_folders_there(tmp_path):
    """-m at the dataset's results folder, at a fold folder or at a misspelt trainer__plans said only 'not a trained
    model folder': the model folders found there are the fix."""
    dataset = tmp_path / "results" / "Dataset001_Toy"
    models = [model_folder(dataset / "default__plans"), model_folder(dataset / "paper2024__plans")]
    (models[0] / "fold_0").mkdir()
    for given, named in ((dataset, models), (models[0] / "fold_0", models[:1]), (dataset / "defualt__plans", models)):
        with pytest.raises(AutomedsamError, match="is not a trained model folder") as refused:
            locate_model_folder(model_folder=given)
        assert f"Model folders found there: {', '.join(map(str, named))}." in str(refused.value)
    with pytest.raises(AutomedsamError) as refused:
        locate_model_folder(model_folder=tmp_path / "elsewhere")
    assert "found there" not in str(refused.value)


@pytest.mark.parametrize("name", ["", " "])
def test_an_empty_label_name_is_called_empty(tmp_path, name):
    """`automedsam_convert folder --label ''` was told nnU-Net reserves 'background' and 'ignore'."""
    with pytest.raises(AutomedsamError, match=r"--label '\s*' is empty: give the structure's name") as refused:
        convert_folder(tmp_path, dataset_id=9, name="Empty", label_names=[name])
    assert "reserves" not in str(refused.value)


def test_an_unknown_box_refinement_names_the_option():
    """The check the command line and the Python API both reach said 'box refinement must be ...'."""
    with pytest.raises(AutomedsamError, match=r"^--box-refinement must be one of auto, on, off, got 'sometimes'\.$"):
        refinement_choices(None, "sometimes")


def run_command(module: str, args: list[str], monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture) -> tuple[int | str | None, str]:
    """(exit code, output on one line) of automedsam_`module` run in this process."""
    monkeypatch.setattr(sys, "argv", [f"automedsam_{module}", *args])
    with pytest.raises(SystemExit) as ended:
        importlib.import_module(f"automedsam.cli.{module}").main()
    captured = capsys.readouterr()
    return ended.value.code, " ".join((captured.out + captured.err).split())


def plan_args(world: World) -> list[str]:
    discs(world)
    return PLAN


def train_args(world: World) -> list[str]:
    fake_preprocessed(world)
    return ["1", "0", "--device", "cpu"]


def export_args(world: World) -> list[str]:
    exportable_toy_model(world)
    return ["-d", "1", "-o", str(world.results.parent / "model.zip")]


def install_args(world: World) -> list[str]:
    return [str(model_archive(world)), "-d", "42"]


def predict_args(world: World) -> list[str]:
    return box_prompt_args(world, {"img0": [{"label": 1, "box": [1, 1, 5, 5]}]})


# Each command that takes --foundation-checkpoint, with the arguments that get it as far as reading the weights.
WEIGHTS_TAKERS: dict[str, Callable[[World], list[str]]] = {
    "plan_and_preprocess": plan_args, "train": train_args, "export_model": export_args,
    "install_model": install_args, "predict": predict_args}


@pytest.mark.parametrize("module", list(WEIGHTS_TAKERS))
def test_a_folder_given_as_the_foundation_weights_is_called_a_folder_by_every_command(module, roots, monkeypatch,
                                                                                       capsys):
    """Four of the five commands that take --foundation-checkpoint said a weights folder 'does not exist' (predict
    alone said it was a folder): the user looked for a missing path, not for the file inside it."""
    world = World(roots["raw"], roots["preprocessed"], roots["results"], monkeypatch)
    folder = world.inbox / "weights"
    folder.mkdir()
    (folder / "sam_vit_b_01ec64.pth").write_bytes(b"weights")
    code, output = run_command(module, [*WEIGHTS_TAKERS[module](world), "--foundation-checkpoint", str(folder)],
                               monkeypatch, capsys)
    assert code == 2, output
    assert (f"--foundation-checkpoint {folder} is a folder, not a file; give the weights file itself (e.g. "
            f"{folder / 'sam_vit_b_01ec64.pth'})") in output, output
    assert "not exist" not in output, output


def test_an_empty_weights_folder_is_answered_with_the_usual_file_name(tmp_path):
    with pytest.raises(AutomedsamError) as refused:
        refuse_folder(tmp_path)
    assert f"give the weights file itself (e.g. {tmp_path / 'medsam_vit_b.pth'})" in str(refused.value)


def test_a_file_given_as_the_dataset_is_called_a_file(roots, monkeypatch, capsys):
    """`automedsam_plan_and_preprocess -d notes.txt` said the dataset folder notes.txt 'does not exist'."""
    given = roots["raw"] / "notes.txt"
    given.write_text("not a dataset")
    code, output = run_command("plan_and_preprocess", ["-d", str(given), "--plan-only"], monkeypatch, capsys)
    assert code == 2 and f"{given} is a file, not a dataset folder. Give the dataset id" in output, output
    assert "not exist" not in output, output
