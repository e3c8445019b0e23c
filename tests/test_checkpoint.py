"""Checkpoints: weights-only files, metadata beside them, RNG capture, the resume state, atomic writes."""
from __future__ import annotations

import errno
import json
import random
import re

import numpy as np
import pytest
import torch

from automedsam import checkpoint
from automedsam.errors import AutomedsamError


def small_modules() -> dict[int, torch.nn.Module]:
    torch.manual_seed(0)
    return {1: torch.nn.Linear(3, 2), 3: torch.nn.Conv2d(2, 2, 3)}


def flat_state(modules: dict[int, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{label}.{name}": t for label, module in modules.items() for name, t in module.state_dict().items()}


def test_weights_and_metadata_round_trip(tmp_path):
    weights = flat_state(small_modules())
    checkpoint.save_checkpoint(tmp_path, "best", weights, {"epoch": 7, "metrics": {"box_dice": 0.5}})
    loaded = checkpoint.load_checkpoint(tmp_path, "best")
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert checkpoint.load_metadata(tmp_path, "best") == {"epoch": 7, "metrics": {"box_dice": 0.5}}
    assert torch.load(tmp_path / "checkpoint_best.pt", weights_only=True).keys() == weights.keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_best.json", "checkpoint_best.pt"]


def test_the_same_weights_give_the_same_bytes(tmp_path):
    """torch.save given a path names its archive's folder after it, and the writer's path is a random temporary
    name: two identical runs wrote checkpoints that differed byte for byte."""
    weights = flat_state(small_modules())
    for run in ("a", "b"):
        checkpoint.save_checkpoint(tmp_path / run, "final", weights, {"epoch": 1})
    first, second = ((tmp_path / run / "checkpoint_final.pt").read_bytes() for run in ("a", "b"))
    assert first == second


def test_a_file_with_python_objects_is_refused(tmp_path):
    torch.save({"1.weight": torch.zeros(2), "hook": random.Random(0)}, tmp_path / "checkpoint_final.pt")
    with pytest.raises(AutomedsamError, match="Python objects or code.*refuses to load.*retrain") as refused:
        checkpoint.load_checkpoint(tmp_path, "final")
    assert "weights_only=False" not in str(refused.value), "torch's advice to load unsafely must not reach users"
    (tmp_path / "checkpoint_best.pt").write_bytes(b"truncated")
    with pytest.raises(AutomedsamError, match="cannot be read.*retrain"):
        checkpoint.load_checkpoint(tmp_path, "best")
    (tmp_path / "checkpoint_best.pt").unlink()
    with pytest.raises(AutomedsamError, match="does not exist.*automedsam_train"):
        checkpoint.load_checkpoint(tmp_path, "best")


def test_a_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    checkpoint.save_checkpoint(tmp_path, "final", {"1.w": torch.ones(3)}, {"epoch": 1})

    def crash(obj, stream):
        stream.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(tmp_path, "final", {"1.w": torch.zeros(3)}, {"epoch": 2})
    monkeypatch.undo()
    assert torch.equal(checkpoint.load_checkpoint(tmp_path, "final")["1.w"], torch.ones(3))
    assert checkpoint.load_metadata(tmp_path, "final")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_final.json", "checkpoint_final.pt"]


def test_rng_state_round_trips_through_json():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = json.loads(json.dumps(checkpoint.capture_rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    checkpoint.restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_training_state_restores_optimizer_scheduler_and_weights(tmp_path):
    modules = small_modules()
    parameters = [p for m in modules.values() for p in m.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=1e-2, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        sum(p.square().sum() for p in parameters).backward()
        optimizer.step()
        scheduler.step()
    progress = {"best": {"score": 0.4, "epoch": 2, "val": None}, "config": {"epochs": 10}}
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaler.scale(torch.ones(()))
    scaler.update(new_scale=512.0)  # fp16 steps that overflowed halved it: a resume must not start at 2**16 again
    checkpoint.save_training_state(tmp_path, 3, flat_state(modules), optimizer.state_dict(), scheduler.state_dict(),
                                   progress, scaler=scaler.state_dict())

    state = checkpoint.load_training_state(tmp_path)
    assert state["epoch"] == 3 and state["progress"] == progress
    resumed_scaler = torch.amp.GradScaler("cpu")
    resumed_scaler.load_state_dict(state["scaler"])
    assert resumed_scaler.get_scale() == 512.0
    fresh = small_modules()
    for label, module in fresh.items():
        prefix = f"{label}."
        module.load_state_dict({k[len(prefix):]: v for k, v in state["weights"].items() if k.startswith(prefix)})
    fresh_parameters = [p for m in fresh.values() for p in m.parameters()]
    fresh_optimizer = torch.optim.Adam(fresh_parameters, lr=1e-2, weight_decay=1e-4)
    fresh_scheduler = torch.optim.lr_scheduler.StepLR(fresh_optimizer, step_size=2, gamma=0.1)
    fresh_optimizer.load_state_dict(state["optimizer"])
    fresh_scheduler.load_state_dict(state["scheduler"])
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    for optim, params in ((optimizer, parameters), (fresh_optimizer, fresh_parameters)):
        optim.zero_grad()
        sum(p.square().sum() for p in params).backward()
        optim.step()
    assert all(torch.equal(a, b) for a, b in zip(parameters, fresh_parameters))
    latest = checkpoint.load_metadata(tmp_path, "latest")
    assert latest["epoch"] == 3 and len(latest["rng"]["torch"]) > 0
    assert checkpoint.load_checkpoint(tmp_path, "latest").keys() == state["weights"].keys()


def test_nothing_to_resume_says_to_start_without_c(tmp_path):
    with pytest.raises(AutomedsamError, match="Nothing to resume.*without --c"):
        checkpoint.load_training_state(tmp_path)
    torch.save({"epoch": 1}, tmp_path / checkpoint.TRAINING_STATE)
    with pytest.raises(AutomedsamError, match="not a training state"):
        checkpoint.load_training_state(tmp_path)


def test_a_file_that_is_no_pytorch_file_gets_no_advice_to_load_it_unsafely(tmp_path):
    (tmp_path / "checkpoint_final.pt").write_text('{"a": 1}')
    with pytest.raises(AutomedsamError, match="not a file of PyTorch tensors") as refused:
        checkpoint.load_checkpoint(tmp_path, "final")
    assert "weights_only" not in str(refused.value) and "arbitrary code" not in str(refused.value)


def test_a_checkpoint_this_user_may_not_read_is_named_as_refused_with_no_advice_to_retrain(tmp_path, monkeypatch):
    """Its fold was said to need retraining with --overwrite, which replaces a fold that only needed a permission."""
    path = tmp_path / "checkpoint_final.pt"
    checkpoint.save_checkpoint(tmp_path, "final", flat_state(small_modules()), {"epoch": 2})

    def refused_load(where, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(where))

    monkeypatch.setattr(checkpoint.torch, "load", refused_load)
    with pytest.raises(AutomedsamError, match=rf"^Permission denied for {re.escape(str(path))}: this user may not "
                                              "read") as refused:
        checkpoint.load_checkpoint(tmp_path, "final", retrain="automedsam_train 001 fold1 --overwrite")
    assert not any(advice in str(refused.value) for advice in ("retrain", "--overwrite", "cannot be read"))
