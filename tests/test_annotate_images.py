"""`automedsam_annotate --images`: a draw that fails or is interrupted undoes the import (kept, it made the same
command refuse the dataset as existing, and -d alone found no draw), and a draw that goes through says what the
planning noticed and why fewer samples than --shots were drawn."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from automedsam.cli import annotate as annotate_cli
from test_annotation_api import run_cli
from toy_model import toy_image


def image_folder(folder: Path, count: int, *, first: int = 0) -> Path:
    """`count` toy PNG images (each its own group) in `folder`, numbered from `first`."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(first, first + count):
        Image.fromarray(toy_image(seed)).save(folder / f"img{seed}.png")
    return folder


def datasets(roots: dict[str, Path]) -> dict[str, list[str]]:
    """The dataset folders of each root."""
    return {kind: sorted(path.name for path in root.iterdir() if path.name.startswith("Dataset"))
            for kind, root in roots.items()}


@pytest.fixture
def served(monkeypatch) -> list[int]:
    """The ports the page would be served on; nothing listens."""
    ports: list[int] = []
    monkeypatch.setattr(annotate_cli.uvicorn, "run", lambda app, host, port, **_: ports.append(port))
    return ports


def test_a_failed_draw_keeps_nothing_so_the_same_command_works_once_images_are_added(tmp_path: Path, roots, served,
                                                                                      monkeypatch, capsys):
    """One image: the draw failed after the import, which stayed; the rerun with more images was refused as an
    existing dataset, and -d 31 alone found no splits.json."""
    image_folder(roots["raw"] / "Dataset030_Other" / "imagesTr", 1)  # another dataset: left alone
    folder = image_folder(tmp_path / "scans", 1)
    code, _, err = run_cli(monkeypatch, capsys, "-d", "31", "--images", str(folder), "--shots", "3")
    assert code == 2 and "Only 1 sample of Dataset031_scans is labelled" in err, err
    assert "Nothing was kept (Dataset031_scans was removed again)" in err
    assert "run the same automedsam_annotate --images command again" in err
    assert datasets(roots) == {"raw": ["Dataset030_Other"], "preprocessed": [], "results": []} and served == []
    assert (roots["raw"] / "Dataset030_Other" / "imagesTr" / "img0.png").is_file()
    image_folder(folder, 2, first=1)
    code, out, err = run_cli(monkeypatch, capsys, "-d", "31", "--images", str(folder), "--shots", "3")
    assert code == 0 and served == [8765], err
    assert "Imported" in out and "as Dataset031_scans and drew 3 samples to box." in out
    drawn = json.loads((roots["preprocessed"] / "Dataset031_scans" / "splits.json").read_text())
    assert len(drawn["labelled"]) == 3


def test_an_interrupted_draw_keeps_nothing_and_says_so(tmp_path: Path, roots, served, monkeypatch, capsys):
    """Ctrl+C (or a kill) while drawing: the import and the preprocessed folder the draw began are removed."""
    def interrupted(dataset: str, **_) -> None:
        (roots["preprocessed"] / dataset).mkdir()
        (roots["preprocessed"] / dataset / "fingerprint.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(annotate_cli, "plan_and_preprocess", interrupted)
    folder = image_folder(tmp_path / "scans", 3)
    code, _, err = run_cli(monkeypatch, capsys, "-d", "32", "--images", str(folder))
    assert code == 130 and served == []
    assert "Interrupted. Nothing was kept (Dataset032_scans was removed again). Run the same command again." in err
    assert "Finished work is kept" not in err
    assert datasets(roots) == {"raw": [], "preprocessed": [], "results": []}


@pytest.mark.parametrize(("shots", "said"), [([], "--shots is 10 by default"), (["--shots", "10"],
                                                                                "--shots asked for 10")])
def test_the_planning_notes_and_a_draw_short_of_shots_are_said(tmp_path: Path, roots, served, monkeypatch, capsys,
                                                              shots: list[str], said: str):
    """Three images under --shots 10: only "drew 3 samples to box", and not a word of the 3 folds planned instead
    of 5, which automedsam_plan_and_preprocess prints."""
    folder = image_folder(tmp_path / "few", 3)
    code, out, err = run_cli(monkeypatch, capsys, "-d", "9", "--images", str(folder), *shots)
    assert code == 0 and served == [8765], err
    assert f"as Dataset009_few and drew 3 samples to box (the folder holds 3 images; {said})." in out
    assert "Note: 3 folds instead of 5: the labelled samples come from 3 groups" in err


def test_a_full_draw_adds_nothing_to_the_count(tmp_path: Path, roots, served, monkeypatch, capsys):
    folder = image_folder(tmp_path / "few", 3)
    code, out, err = run_cli(monkeypatch, capsys, "-d", "9", "--images", str(folder), "--shots", "3")
    assert code == 0, err
    assert "as Dataset009_few and drew 3 samples to box." in out and "--shots" not in out
