"""Renamed options still work under their old names for one release, each use saying so in one line on stderr; --help
shows only the new names, and giving both names at once is refused."""
from __future__ import annotations

import sys
from types import ModuleType

import numpy as np
import pytest
from synthetic_raw import make_2d_masks

from automedsam.cli import convert as convert_cli
from automedsam.cli import evaluate as evaluate_cli
from automedsam.cli import plan_and_preprocess as plan_cli
from automedsam.cli import train as train_cli
from automedsam.io import Geometry, write_segmentation


def run(module: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str
        ) -> tuple[int, str, str]:
    """(exit code, stdout, stderr as one line) of the command's main() in this process."""
    monkeypatch.setattr(sys, "argv", [module.__name__, *args])
    try:
        module.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, " ".join(captured.err.split())


def test_convert_takes_the_old_dataset_id_option(roots, monkeypatch, capsys):
    code, _, err = run(convert_cli, monkeypatch, capsys, "synthetic", "--dataset-id", "900", "--n-train", "2",
                       "--n-test", "0")
    assert code == 0 and (roots["raw"] / "Dataset900_SyntheticUS" / "dataset.json").is_file()
    assert err.count("Deprecated: --dataset-id is now -d/--dataset") == 1
    code, _, err = run(convert_cli, monkeypatch, capsys, "synthetic", "-d", "901", "--dataset-id", "901")
    assert code == 2 and "--dataset-id is the old name of -d/--dataset; give only -d/--dataset" in err
    code, _, err = run(convert_cli, monkeypatch, capsys, "synthetic")
    assert code == 2 and "Missing option -d/--dataset" in err


def test_evaluate_takes_the_old_ref_and_pred_options(tmp_path, monkeypatch, capsys):
    label_map = np.zeros((20, 20), np.uint8)
    label_map[5:10, 5:10] = 1
    for folder in ("refs", "segs"):
        write_segmentation(tmp_path / folder / "case.png", label_map, Geometry.natural())
    code, out, err = run(evaluate_cli, monkeypatch, capsys, "--ref", str(tmp_path / "refs"), "-p",
                         str(tmp_path / "segs"), "--labels", "1")
    assert code == 0 and "Evaluated 1 cases: foreground Dice 1.000" in out
    assert "Deprecated: --ref is now -r/--refs" in err and "Deprecated: -p/--pred is now -s/--segs" in err
    code, _, err = run(evaluate_cli, monkeypatch, capsys, "-r", str(tmp_path / "refs"), "-s", str(tmp_path / "segs"),
                       "--pred", str(tmp_path / "segs"))
    assert code == 2 and "-p/--pred is the old name of -s/--segs" in err


def test_plan_and_preprocess_takes_the_old_model_and_checkpoint_options(roots, monkeypatch, capsys):
    make_2d_masks(roots["raw"], n_cases=6)
    code, _, err = run(plan_cli, monkeypatch, capsys, "-d", "1", "-np", "1", "--model", "nope")
    assert code == 2 and "Deprecated: --model is now --foundation" in err and "Unknown foundation model 'nope'" in err
    code, _, err = run(plan_cli, monkeypatch, capsys, "-d", "1", "-np", "1", "--checkpoint", "missing.pth")
    assert code == 2 and "Deprecated: --checkpoint is now --foundation-checkpoint" in err
    assert "--foundation-checkpoint missing.pth does not exist" in err


def test_train_takes_the_old_checkpoint_option(roots, monkeypatch, capsys):
    code, _, err = run(train_cli, monkeypatch, capsys, "7", "0", "--checkpoint", "weights.pth")
    assert code == 2 and "Deprecated: --checkpoint is now --foundation-checkpoint" in err and "No dataset '7'" in err


def test_the_old_checkpoint_option_given_best_says_which_checkpoint_it_is(roots, monkeypatch, capsys):
    """`automedsam_train D F --checkpoint best` looked for a foundation weights file named best."""
    for module, args in ((train_cli, ["7", "0"]), (plan_cli, ["-d", "7"])):
        code, _, err = run(module, monkeypatch, capsys, *args, "--checkpoint", "best")
        assert code == 2 and "--checkpoint best chooses the weights automedsam_predict loads" in err


@pytest.mark.parametrize("seed", ["-5", str(2**32), str(2**64)])
def test_seeds_outside_what_the_random_generators_take_are_refused_at_once(roots, monkeypatch, capsys, seed):
    """2**64 was planned, then crashed training with a traceback; --seed -5 crashed convert synthetic."""
    code, _, err = run(convert_cli, monkeypatch, capsys, "synthetic", "-d", "1", "--n-train", "2", "--seed", seed)
    assert code == 2 and "Traceback" not in err and "--seed" in err
    make_2d_masks(roots["raw"], n_cases=4)
    code, _, err = run(plan_cli, monkeypatch, capsys, "-d", "1", "--plan-only", "--shots", "2", "--folds", "2",
                       "--seed", seed)
    assert code == 2 and "--seed must be a whole number from 0 to 4294967295" in err


def test_folds_are_checked_before_fingerprinting_and_a_reduction_is_said(roots, monkeypatch, capsys):
    make_2d_masks(roots["raw"], n_cases=8)
    code, _, err = run(plan_cli, monkeypatch, capsys, "-d", "1", "--plan-only", "--folds", "0")
    assert code == 2 and "--folds must be a whole number >= 2" in err
    assert not (roots["preprocessed"] / "Dataset001_Discs" / "fingerprint.json").exists()
    code, _, err = run(plan_cli, monkeypatch, capsys, "-d", "1", "--plan-only", "--shots", "4", "--folds", "50",
                       "-np", "1")
    assert code == 0 and "Note: 4 folds instead of 50" in err, err
    code, _, err = run(plan_cli, monkeypatch, capsys, "-d", "1", "--plan-only", "--embed-all")
    assert code == 2 and "--embed-all embeds during preprocessing" in err  # was accepted and ignored


def test_every_command_takes_h_for_help(monkeypatch, capsys):
    from automedsam.cli import benchmark as benchmark_cli
    from automedsam.cli import predict as predict_cli

    assert run(benchmark_cli, monkeypatch, capsys, "-h")[0] == 0
    code, out, _ = run(predict_cli, monkeypatch, capsys, "-h")
    assert code == 0 and "-tr" in out  # as automedsam_train and nnU-Net spell it


@pytest.mark.parametrize("module, args, old_names", [
    (convert_cli, ["synthetic"], ["--dataset-id"]),
    (evaluate_cli, [], ["--ref ", "--pred", "-p,"]),
    (plan_cli, [], ["--model", "--checkpoint"]),
    (train_cli, [], ["--checkpoint"]),
])
def test_help_shows_only_the_new_names(monkeypatch, capsys, module, args, old_names):
    code, out, _ = run(module, monkeypatch, capsys, *args, "--help")
    assert code == 0 and not [name for name in old_names if name in out]
