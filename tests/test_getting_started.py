"""The newcomer's path works as written: documented commands exist, their options exist, and the getting-started
commands run end to end on tiny demo data."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from automedsam import __version__
from automedsam.conversion import make_synthetic_dataset
from automedsam.files import load_json
from automedsam.inference.naming import output_extension
from documented_commands import (REPOSITORY, console_scripts, declared_options, help_text, invocations,
                                 script_module, shell_lines, subcommands)

README = REPOSITORY / "README.md"
GETTING_STARTED = REPOSITORY / "documentation" / "getting_started.md"
CLI_REFERENCE = REPOSITORY / "documentation" / "cli.md"
PAGES_WITH_COMMANDS = (README, GETTING_STARTED, CLI_REFERENCE)
FIVE_STEPS = ("automedsam_convert", "automedsam_plan_and_preprocess", "automedsam_train", "automedsam_predict",
              "automedsam_evaluate")
QUICK_EPOCHS = "--epochs 2"
RUN_TIMEOUT_S = 900
_CLI_HEADING = re.compile(r"^#{2,3} `(automedsam_\w+)(?: (\w+))?`")


@pytest.fixture(scope="module")
def scripts() -> dict:
    return console_scripts()


@pytest.fixture(scope="module")
def groups(scripts: dict) -> dict[str, set[str]]:
    return {name: subcommands(script_module(entry)) for name, entry in scripts.items()}


def documented_invocations(groups: dict[str, set[str]]) -> list:
    return [call for page in PAGES_WITH_COMMANDS for line in shell_lines(page) for call in invocations(line, groups)]


def cli_reference_sections() -> dict[tuple[str, str | None], set[str]]:
    """(script, subcommand) -> the options listed under its heading in cli.md (backticked, first table column)."""
    sections: dict[tuple[str, str | None], set[str]] = {}
    current = None
    for line in CLI_REFERENCE.read_text(encoding="utf-8").splitlines():
        heading = _CLI_HEADING.match(line)
        if heading:
            current = (heading.group(1), heading.group(2))
            sections[current] = set()
        elif line.startswith("#"):
            current = None
        elif current is not None and line.startswith("|"):
            first_cell = line.split("|")[1]
            sections[current].update(re.findall(r"`(-{1,2}[A-Za-z][\w-]*)", first_cell))
    return sections


def test_readme_shows_exactly_the_two_set_up_commands_and_make_has_them() -> None:
    make_lines = [line for line in shell_lines(README) if line.split()[0] == "make"]
    assert [line.split("#")[0].split() for line in make_lines if "DATA=" not in line] == [["make", "demo"],
                                                                                          ["make", "test"]]
    targets = re.findall(r"^([\w-]+):", (REPOSITORY / "Makefile").read_text(), flags=re.MULTILINE)
    assert {"demo", "test"} <= set(targets)


def test_every_documented_command_is_a_console_script_with_those_options(scripts: dict, groups: dict) -> None:
    calls = documented_invocations(groups)
    assert {call.script for call in calls} >= set(FIVE_STEPS) | {"automedsam_plot_overlays"}
    for call in calls:
        assert call.script in scripts, f"{call.line!r}: {call.script} is not a console script of automedsam"
        module = script_module(scripts[call.script])
        if groups[call.script]:
            assert call.subcommand is not None, f"{call.line!r}: {call.script} needs one of {groups[call.script]}"
        unknown = set(call.options) - declared_options(module, call.subcommand)
        assert not unknown, f"{call.line!r}: {sorted(unknown)} not accepted by {call.script} {call.subcommand or ''}"


def test_cli_reference_lists_every_command_and_exactly_its_options(scripts: dict, groups: dict) -> None:
    sections = cli_reference_sections()
    expected = {(name, sub) for name in scripts for sub in (sorted(groups[name]) or [None])}
    assert set(sections) == expected
    for (name, sub), listed in sections.items():
        module = script_module(scripts[name])
        assert listed == declared_options(module, sub), f"cli.md section {name} {sub or ''}"


def test_every_command_has_help_with_an_example_and_a_version(scripts: dict, groups: dict) -> None:
    for name, entry in scripts.items():
        module = script_module(entry)
        code, output = help_text(module, "--version")
        assert code == 0 and output.strip() == f"automedsam {__version__}", name
        for sub in sorted(groups[name]) or [None]:
            code, output = help_text(module, *([sub] if sub else []), "--help")
            assert code == 0, f"{name} {sub or ''} --help"
            assert re.search(r"Example", output) and re.search(rf"{name}\b", output), f"{name} {sub or ''} --help"
            assert "\\b" not in output, f"{name} {sub or ''} --help prints click's no-rewrap marker as text"


def getting_started_commands() -> list[str]:
    lines = shell_lines(GETTING_STARTED, tested_only=True)
    assert lines, f"{GETTING_STARTED} has no block marked with <!-- test: ... -->"
    return lines


def test_getting_started_block_holds_the_five_steps(groups: dict) -> None:
    scripts_in_order = [call.script for line in getting_started_commands() for call in invocations(line, groups)]
    positions = [scripts_in_order.index(step) for step in FIVE_STEPS]
    assert positions == sorted(positions)


def _user_folders(work: Path, scratch_raw: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """my_data/{images,masks,new_images,new_masks} as a user would have them, made from the demo generator."""
    monkeypatch.setenv("AUTOMEDSAM_RAW", str(scratch_raw))
    made = make_synthetic_dataset(999, name="Made", n_train=12, n_test=2, seed=3)
    for folder in ("images", "masks", "new_images", "new_masks"):
        (work / "my_data" / folder).mkdir(parents=True)
    for image in (made / "imagesTr").iterdir():
        shutil.copy(image, work / "my_data" / "images" / image.name.replace("_0000", ""))
    for mask in (made / "labelsTr").iterdir():
        shutil.copy(mask, work / "my_data" / "masks" / mask.name)
    for source, target in (("imagesTs", "new_images"), ("labelsTs", "new_masks")):
        shutil.copytree(made / source, work / "my_data" / target, dirs_exist_ok=True)


def test_the_output_formats_the_page_promises_are_those_prediction_writes() -> None:
    """The page said outputs keep the input's format; a JPEG input gives a PNG label map and a DICOM one a .nii.gz,
    as automedsam_predict --help says."""
    text = " ".join(GETTING_STARTED.read_text(encoding="utf-8").split())
    assert (output_extension(".jpg"), output_extension(".dcm")) == (".png", ".nii.gz")
    assert "a JPEG input gives a PNG label map" in text and "a DICOM file or series a `.nii.gz`" in text
    assert "format and geometry." not in text


@pytest.mark.slow
def test_getting_started_commands_run_on_tiny_demo_data(tmp_path: Path, roots: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    _user_folders(work, tmp_path / "scratch_raw", monkeypatch)
    environment = {**os.environ, **{f"AUTOMEDSAM_{name.upper()}": str(path) for name, path in roots.items()},
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for line in getting_started_commands():
        command = re.sub(r"(automedsam_train\b[^;&|]*?)(\s*(;|&&|\|\||$))", rf"\1 {QUICK_EPOCHS}\2", line)
        done = subprocess.run(["bash", "-c", command], cwd=work, env=environment, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    predictions = sorted(path.name for path in (work / "my_predictions").glob("*.png"))
    assert predictions == sorted(path.name for path in (work / "my_data" / "new_masks").iterdir())
    summary = load_json(work / "my_predictions" / "summary.json", "evaluation summary")
    assert len(summary["per_case"]) == 2
    assert sorted(path.name for path in (work / "my_overlays").iterdir()) == predictions
