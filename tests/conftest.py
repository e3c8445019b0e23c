"""Shared fixtures: isolated automedsam roots, the real data folder beside the checkout, the tiny foundation model."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from automedsam import plans as plans_module
from toy_model import TinyFoundation

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point the three automedsam roots at fresh temporary folders."""
    paths = {name: tmp_path / name for name in ("raw", "preprocessed", "results")}
    for name, path in paths.items():
        path.mkdir()
        monkeypatch.setenv(f"AUTOMEDSAM_{name.upper()}", str(path))
    return paths


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real HC18/ACDC data of ../shared/data; tests that need it are skipped without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def cpu_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test sees a CPU without bf16 arithmetic, so that no outcome depends on the CPU the suite runs on (the
    precision check would otherwise pick bf16 on some machines); the precision tests give the flags back."""
    monkeypatch.setattr("automedsam.device.cpu_flags", lambda: frozenset())


@pytest.fixture(scope="module")
def tiny_foundation() -> Iterator[TinyFoundation]:
    """Every foundation model the stages build is one TinyFoundation (built after the plans' weights checks), so a
    module's tests plan, train and predict in seconds."""
    foundation = TinyFoundation()
    patch = pytest.MonkeyPatch()
    patch.setattr(plans_module, "build_foundation_model", lambda *args, **kwargs: foundation)
    yield foundation
    patch.undo()
