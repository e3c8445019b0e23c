"""Every command meets bad input with a clear error: exit code 2, a message naming the file/case and the fix, no
traceback, nothing created or changed in raw/ and no code from a file run.

The cases are in tests/bad_input_cases_raw.py and tests/bad_input_cases_commands.py. Most run the console
script's `main()` in this process (a subprocess costs seconds of torch import); the cases marked `subprocess` run
the installed console script itself. The module reports how many bad inputs it tried and fails when the table
holds fewer than MIN_BAD_INPUTS.
"""
from __future__ import annotations

import hashlib
import json
import os
import importlib
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from automedsam.dataset import load_raw_dataset
from automedsam.io import read_image
import bad_input_cases_commands  # noqa: F401 - registers its cases
import bad_input_cases_raw  # noqa: F401 - registers its cases
from bad_input_world import (BAD_INPUTS, PLAN, BadInput, World, discs, label_png, png_dataset, replace_image,
                             replace_label)

MIN_BAD_INPUTS = 30
SCRIPTS = Path(sys.executable).parent
MODULES = {"convert": "convert", "plan": "plan_and_preprocess", "train": "train", "predict": "predict",
           "evaluate": "evaluate", "plot_overlays": "plot_overlays", "export": "export_model",
           "install": "install_model"}


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its kind, size, modification time and content hash."""
    state = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        state[str(path.relative_to(root))] = (path.is_dir(), stat.st_size if path.is_file() else 0, stat.st_mtime_ns,
                                              digest)
    return state


def run_command(command: str, args: list[str], via_subprocess: bool, capsys: pytest.CaptureFixture,
                monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """(exit code, stdout + stderr) of one command; an escaped exception counts as a traceback."""
    script = f"automedsam_{MODULES[command]}"
    if via_subprocess:
        done = subprocess.run([str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr
    module = importlib.import_module(f"automedsam.cli.{MODULES[command]}")
    monkeypatch.setattr(sys, "argv", [script, *args])
    crash = ""
    try:
        module.main()
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else int(exit_info.code is not None)
    except Exception:  # noqa: BLE001 - any escaped exception is exactly what this suite looks for
        code, crash = -1, traceback.format_exc()
    captured = capsys.readouterr()
    return code, captured.out + captured.err + crash


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest):
    """Counts the bad inputs tried; at the end reports the count and fails a full run that tried too few."""
    tried: list[str] = []
    yield tried
    selected = sum(1 for item in request.session.items if item.nodeid.split("::")[-1].startswith("test_bad_input["))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown even when pytest captures output
            reporter.write_line(f"\nbad-input suite: tried {len(tried)} bad-input cases "
                                f"(table of {len(BAD_INPUTS)}, at least {MIN_BAD_INPUTS} required)")
    split_among_workers = "PYTEST_XDIST_WORKER" in os.environ
    if selected == len(BAD_INPUTS) and not request.session.shouldstop and not split_among_workers:
        assert len(tried) >= MIN_BAD_INPUTS, f"only {len(tried)} bad-input cases were tried"


@pytest.fixture
def world(roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> World:
    return World(roots["raw"], roots["preprocessed"], roots["results"], monkeypatch)


def test_the_table_is_large_enough_and_names_are_unique():
    names = [case.name for case in BAD_INPUTS]
    assert len(names) == len(set(names))
    assert len(BAD_INPUTS) >= MIN_BAD_INPUTS
    assert {case.command for case in BAD_INPUTS} == set(MODULES)
    assert any(case.subprocess for case in BAD_INPUTS)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.name for case in BAD_INPUTS])
def test_bad_input(case: BadInput, world: World, tally: list[str], capsys, monkeypatch):
    args = case.prepare(world)
    before = snapshot(world.raw)
    tally.append(case.name)
    code, output = run_command(case.command, args, case.subprocess, capsys, monkeypatch)
    flat = " ".join(output.split())
    assert "Traceback" not in output, output
    assert code == 2, f"exit code {code}: {flat}"
    missing = [fragment for fragment in case.expect if fragment not in flat]
    assert not missing, f"message lacks {missing}: {flat}"
    assert snapshot(world.raw) == before, "the command created or changed files in raw/"
    assert not world.marker.exists(), "a payload inside a file ran"


def test_a_bad_pixel_limit_is_reported_once_not_per_case(world, capsys, monkeypatch):
    discs(world)
    monkeypatch.setenv("AUTOMEDSAM_MAX_PIXELS", "-5")
    code, output = run_command("plan", PLAN, False, capsys, monkeypatch)
    assert code == 2 and " ".join(output.split()).count("AUTOMEDSAM_MAX_PIXELS='-5'") == 1, output


# --------------------------------------------------------------- inputs that are odd but valid: handled, not refused


def test_all_background_label_is_reported_and_planning_still_works(world, capsys, monkeypatch):
    root = discs(world)
    replace_label(root, "case01", np.zeros((40, 48), np.uint8))
    before = snapshot(world.raw)
    code, output = run_command("plan", PLAN, False, capsys, monkeypatch)
    flat = " ".join(output.split())
    assert code == 0, flat
    assert "case01: the label case01.nii.gz is all background" in flat
    assert (world.preprocessed / "Dataset001_Discs" / "plans.json").is_file()
    assert snapshot(world.raw) == before


def test_one_constant_image_is_reported_and_planning_still_works(world, capsys, monkeypatch):
    root = discs(world)
    replace_image(root, "case02", np.full((40, 48), 7, np.float32))
    code, output = run_command("plan", PLAN, False, capsys, monkeypatch)
    flat = " ".join(output.split())
    assert code == 0, flat
    assert "case02: the image is constant" in flat


def test_nearly_uniform_images_get_a_usable_intensity_window(world, capsys, monkeypatch):
    root = discs(world)
    for case in range(4):
        image = np.zeros((40, 48), np.float32)
        image[20, 20 + case: 24 + case] = 100.0  # 4 of 1920 pixels: the 0.5-99.5 percentiles are both 0
        replace_image(root, f"case{case:02d}", image)
    code, output = run_command("plan", PLAN, False, capsys, monkeypatch)
    assert code == 0, output
    plans = json.loads((world.preprocessed / "Dataset001_Discs" / "plans.json").read_text())
    assert (plans["normalization"]["lower"], plans["normalization"]["upper"]) == (0.0, 100.0)


def test_constant_alpha_and_16_bit_pngs_are_read_as_gray(world):
    rgba = np.zeros((40, 48, 4), np.uint8)
    rgba[..., :3] = np.arange(48, dtype=np.uint8)[None, :, None]
    rgba[..., 3] = 255
    png_dataset(world, rgba, label_png())
    sixteen = (np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) * 30).astype(np.uint16)
    path = world.raw / "Dataset005_Png" / "imagesTr" / "ok0_0000.png"
    Image.fromarray(sixteen).save(path)
    dataset = load_raw_dataset("5")
    assert [case.case_id for case in dataset.cases] == ["bad", "ok0", "ok1", "ok2"]
    gray, _ = read_image(world.raw / "Dataset005_Png" / "imagesTr" / "bad_0000.png")
    np.testing.assert_array_equal(gray, rgba[..., 0])
    wide, _ = read_image(path)
    assert wide.dtype == np.uint16 and wide.max() > 255
    np.testing.assert_array_equal(wide, sixteen)
