"""Test helpers: a bf16 plan forced on this CPU, and the images the frozen encoder sees, counted."""
from __future__ import annotations

from contextlib import nullcontext

import pytest

from automedsam.device import BF16_CPU_FLAGS
from automedsam.foundation.base import FoundationModel
from automedsam.planning.precision import CheckResult


def plan_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU with bf16 arithmetic where the precision check passes, so preprocessing plans a bf16 encoder. The
    encoder still computes in fp32: what these tests follow is the plan and the caches, and a CPU without bf16
    hardware emulates it at about 50 s per LiteMedSAM encoder call."""
    monkeypatch.setattr("automedsam.device.cpu_flags", lambda: frozenset(BF16_CPU_FLAGS))
    monkeypatch.setattr(FoundationModel, "_precision", lambda self: nullcontext())
    passed = {"candidate": "bf16", "samples": 4, "pairs": 4, "mean_abs_dice_change": 0.0, "worst_dice_change": 0.0,
              "passed": True}
    monkeypatch.setattr("automedsam.planning.preprocessing.measure_change",
                        lambda *args, **kwargs: CheckResult(passed, {"fp32": {}, "bf16": {}}))


def count_encoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Images through the frozen encoder, counted (one entry per batch)."""
    encode, counts = FoundationModel.encode, []

    def counted(self, images):
        counts.append(len(images))
        return encode(self, images)

    monkeypatch.setattr(FoundationModel, "encode", counted)
    return counts
