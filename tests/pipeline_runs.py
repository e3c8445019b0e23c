"""Run the console scripts as real subprocesses, interrupt them, and compare what two runs left behind.

Shared by tests/test_interruption.py and tests/test_concurrency.py. Every run gets the same environment (one
CPU thread), so an interrupted-then-resumed run and an uninterrupted one compute bit-identical numbers.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from automedsam.inference.agreement import AGREEMENT_FILE
from automedsam.io import read_segmentation

SCRIPTS = Path(sys.executable).parent
RUN_TIMEOUT_S = 300


@dataclass(frozen=True)
class Roots:
    """One set of automedsam roots; the raw root may be shared between runs, the others are per run."""

    raw: Path
    preprocessed: Path
    results: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "AUTOMEDSAM_RAW": str(self.raw), "AUTOMEDSAM_PREPROCESSED": str(self.preprocessed),
                "AUTOMEDSAM_RESULTS": str(self.results), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Finished:
    code: int
    output: str


def command(script: str, *args: str) -> list[str]:
    return [str(SCRIPTS / f"automedsam_{script}"), *args]


def run(roots: Roots, script: str, *args: str) -> Finished:
    """Run a console script to the end; fails the test when it does not succeed."""
    done = subprocess.run(command(script, *args), env=roots.env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return Finished(done.returncode, done.stdout + done.stderr)


def start(roots: Roots, script: str, *args: str, log: Path) -> subprocess.Popen:
    """Start a console script in the background, its output going to `log` (a pipe could fill up and block it)."""
    handle = log.open("w")
    return subprocess.Popen(command(script, *args), env=roots.env(), stdout=handle, stderr=subprocess.STDOUT)


def interrupt_when(roots: Roots, ready: Callable[[], bool], sig: signal.Signals, script: str, *args: str,
                   log: Path) -> Finished:
    """Start the script, send `sig` as soon as `ready()` holds, and wait for it to end."""
    process = start(roots, script, *args, log=log)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while not ready() and process.poll() is None:
            assert time.monotonic() < deadline, f"{script} never reached the point where it was to be interrupted"
            time.sleep(0.01)
        assert process.poll() is None, f"{script} finished before it could be interrupted:\n{log.read_text()}"
        process.send_signal(sig)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return Finished(process.returncode, log.read_text())


def complete_files(root: Path) -> dict[str, Path]:
    """Every file under `root` except the hidden `.NAME.*.partial*` temporaries an atomic write leaves when killed."""
    return {str(path.relative_to(root)): path for path in sorted(root.rglob("*"))
            if path.is_file() and not (path.name.startswith(".") and ".partial" in path.name)}


def partial_leftovers(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob(".*.partial*"))


def without_times(value):
    """A JSON value with every timing field (time_s, seconds, ...) removed: the one thing two runs may differ in."""
    if isinstance(value, dict):
        return {key: without_times(item) for key, item in value.items()
                if "time" not in key and "seconds" not in key}
    if isinstance(value, list):
        return [without_times(item) for item in value]
    return value


def assert_same_agreement(left: Path, right: Path) -> None:
    """The same cases with the same folds' agreement, up to the last digits: a few pixels of a fold's mask lie at
    probability 0.5 within float rounding, which another number of CPU threads (another process) can flip."""
    a, b = json.loads(left.read_text()), json.loads(right.read_text())
    assert a.keys() == b.keys() and all(abs(a[case] - b[case]) < 0.01 for case in a), (a, b)


def assert_same_file(left: Path, right: Path) -> None:
    """Same content as far as automedsam is concerned: arrays, tensors, JSON (timings aside), label maps."""
    name = left.name
    if name.endswith(".npy"):
        a, b = np.load(left, allow_pickle=False), np.load(right, allow_pickle=False)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    elif name.endswith(".npz"):
        with np.load(left, allow_pickle=False) as a, np.load(right, allow_pickle=False) as b:
            assert sorted(a.files) == sorted(b.files), name
            for key in a.files:
                assert np.array_equal(a[key], b[key]), f"{name}[{key}]"
    elif name.endswith(".pt"):
        a, b = (torch.load(path, weights_only=True) for path in (left, right))
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}[{key}]"
    elif name == AGREEMENT_FILE:
        assert_same_agreement(left, right)
    elif name.endswith(".json"):
        assert without_times(json.loads(left.read_text())) == without_times(json.loads(right.read_text())), name
    elif name == "progress.png":
        return  # its title shows the training time
    elif name.endswith((".png", ".nii.gz")):
        a, b = read_segmentation(left)[0], read_segmentation(right)[0]
        assert np.array_equal(a, b), name
    else:
        assert left.read_bytes() == right.read_bytes(), name


def assert_same_tree(left: Path, right: Path) -> None:
    """The two folders hold the same complete files with the same content."""
    a, b = complete_files(left), complete_files(right)
    assert a.keys() == b.keys(), f"only in one run: {sorted(a.keys() ^ b.keys())}"
    for relative in a:
        assert_same_file(a[relative], b[relative])
