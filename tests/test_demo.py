"""The demo runs every stage with the three roots inside its workdir, and leaves the caller's environment as it was.
(`make demo` itself runs the whole pipeline; here the stages are replaced by a probe of the roots they would see.)"""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from synthetic_raw import make_2d_masks

from automedsam import paths
from automedsam.cli import demo
from automedsam.errors import AutomedsamError


def test_the_stages_see_the_workdir_roots_and_the_callers_roots_come_back(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMEDSAM_RAW", str(tmp_path / "callers_raw"))
    monkeypatch.delenv("AUTOMEDSAM_RESULTS", raising=False)
    seen = {}

    def probe(workdir, hc18, epochs, device):
        seen.update(raw=paths.raw_root(), preprocessed=paths.preprocessed_root(), results=paths.results_root())
        return {"probe": True}

    monkeypatch.setattr(demo, "_run_stages", probe)
    assert demo.run_demo(tmp_path / "work", None, 1, "cpu") == {"probe": True}
    assert seen == {root: tmp_path / "work" / root for root in ("raw", "preprocessed", "results")}
    assert os.environ["AUTOMEDSAM_RAW"] == str(tmp_path / "callers_raw") and "AUTOMEDSAM_RESULTS" not in os.environ


def test_hc18_test_images_hold_no_frame_of_a_labelled_examination(tmp_path, roots):
    raw = make_2d_masks(roots["raw"], n_cases=6, per_group=2)  # patient0: case00, case01; patient1: case02, case03
    (tmp_path / "pre").mkdir()
    splits = {"seed": 0, "shots": 1, "labelled": ["case02"], "folds": [{"train": ["case02"], "val": []}]}
    (tmp_path / "pre" / "splits.json").write_text(json.dumps(splits))
    images, references = demo._test_images(tmp_path / "work", raw, tmp_path / "pre")
    assert sorted(path.name for path in references.iterdir()) == [f"case{i:02d}.nii.gz" for i in (0, 1, 4, 5)]
    assert sorted(path.name for path in images.iterdir()) == sorted(path.name for path in references.iterdir())


def test_an_unusable_device_is_refused_before_the_previous_run_is_cleared(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    checkpoint = tmp_path / "work" / "results" / "Dataset900_SyntheticUS" / "default__automedsamPlans" / "fold_0"
    checkpoint.mkdir(parents=True)
    (checkpoint / "checkpoint_final.pt").write_bytes(b"the previous run's model")
    raw_dir = tmp_path / "work" / "raw" / "Dataset900_SyntheticUS"
    monkeypatch.setattr(demo, "make_synthetic_dataset", lambda *args, **kwargs: raw_dir)  # no data needed

    def planning(*args, **kwargs):
        raise AutomedsamError("reached planning")

    monkeypatch.setattr(demo, "plan_and_preprocess", planning)
    with pytest.raises(AutomedsamError, match="CUDA is not available"):
        demo.run_demo(tmp_path / "work", None, 1, "cuda:3")
    assert (checkpoint / "checkpoint_final.pt").read_bytes() == b"the previous run's model"


def test_the_commands_printed_for_each_stage_can_be_pasted_into_a_shell(tmp_path, monkeypatch):
    """Paths with spaces were printed unquoted: pasted, `automedsam_predict -i my work/...` split them apart."""
    workdir, hc18 = tmp_path / "my work é", tmp_path / "HC18 données"
    raw_dir = workdir / "raw" / "Dataset901_HC18"
    (raw_dir / "imagesTs").mkdir(parents=True)
    summary = SimpleNamespace(line=lambda: "", folds=1, out_dir=tmp_path, labelled=1)
    stages: list[str] = []
    monkeypatch.setattr(demo, "_stage", stages.append)
    monkeypatch.setattr(demo, "convert_hc18", lambda *args, **kwargs: raw_dir)
    monkeypatch.setattr(demo, "plan_and_preprocess", lambda *args, **kwargs: summary)
    monkeypatch.setattr(demo, "train_fold", lambda *args, **kwargs: None)
    monkeypatch.setattr(demo, "predict", lambda *args, **kwargs: SimpleNamespace(line=lambda: ""))
    monkeypatch.setattr(demo, "evaluate_folders", lambda *args, **kwargs: {"foreground_mean": {"dice": 0.5},
                                                                          "per_case": []})
    monkeypatch.setattr(demo, "plot_overlays_folder", lambda *args, **kwargs: [Path("case.png")])
    demo._run_stages(workdir, hc18, 1, None)
    words = {shlex.split(command)[0]: shlex.split(command) for command in stages}
    assert words["automedsam_convert"][2] == str(hc18)
    predictions = str(workdir / "predictions")
    assert words["automedsam_predict"][1:5] == ["-i", str(raw_dir / "imagesTs"), "-o", predictions]
    assert words["automedsam_evaluate"][1:5] == ["-r", str(raw_dir / "labelsTs"), "-s", predictions]
    assert words["automedsam_plot_overlays"][1:] == ["-i", str(raw_dir / "imagesTs"), "-s", predictions, "-r",
                                                     str(raw_dir / "labelsTs"), "-o", str(workdir / "overlays")]
