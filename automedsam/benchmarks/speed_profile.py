"""Instruments of the speed benchmark: where prediction time goes, files opened by training steps, peak memory.

- StageProfile: cProfile over whole calls, summed per pipeline stage (encoder, decoder, prompt modules, IO, ...).
- DiskReads: a Python audit hook counting files opened under the workspace while the trainer's epoch function
  runs: the data loader must hold everything in memory, so the count should be 0.
- peak_memory_of_command: runs automedsam_predict as a child process and follows that child's peak resident memory
  (VmHWM), so each run is measured on its own.
"""
from __future__ import annotations

import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from automedsam.training import trainer as trainer_module

# stage -> (file name, function names) of the functions whose cumulative time makes the stage
STAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "encoder": ("base.py", ("encode",)),
    "decoder": ("base.py", ("decode",)),
    "prompt modules": ("prompt_module.py", ("forward",)),
    "prepare (resize to model input)": ("base.py", ("prepare",)),
    "logits to image grid": ("base.py", ("logits_to_original",)),
    "rings, label map, postprocessing": ("combine.py", ("ring_probabilities", "label_map_from", "postprocess")),
    "read": ("io.py", ("read_image",)),
    "normalise": ("plans.py", ("normalise",)),
    "write": ("io.py", ("write_segmentation",)),
}
TOTAL = ("predictor.py", ("predict_file",))
PREDICT_SCRIPT = Path(sys.executable).parent / "automedsam_predict"


class StageProfile:
    """cProfile of the calls made inside `running()`, summarised per stage as seconds and share of predict_file."""

    def __init__(self) -> None:
        self.profile = cProfile.Profile()

    @contextmanager
    def running(self) -> Iterator[None]:
        self.profile.enable()
        try:
            yield
        finally:
            self.profile.disable()

    def seconds(self, file_name: str, functions: tuple[str, ...]) -> float:
        stats: dict[tuple[str, int, str], Any] = pstats.Stats(self.profile).stats  # type: ignore[attr-defined]
        return sum(entry[3] for (path, _, name), entry in stats.items()
                   if path.endswith(f"{os.sep}{file_name}") and name in functions)

    def summary(self) -> str:
        total = self.seconds(*TOTAL)
        parts = [f"{stage} {100 * self.seconds(*where) / total:.1f}%" for stage, where in STAGES.items()]
        return f"{total:.1f} s in all: " + ", ".join(parts)


class DiskReads:
    """Files under `roots` opened while the trainer's epoch function runs (Python-level opens: numpy, torch.load)."""

    def __init__(self, *roots: Path) -> None:
        self.roots = tuple(str(root.resolve()) for root in roots)
        self.paths: list[str] = []
        self._active = False
        sys.addaudithook(self._hook)  # audit hooks cannot be removed; inactive outside `during_training_steps`

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self._active and event == "open" and isinstance(args[0], (str, os.PathLike)):
            path = os.path.abspath(os.fspath(args[0]))
            if path.startswith(self.roots):
                self.paths.append(path)

    @contextmanager
    def during_training_steps(self) -> Iterator[None]:
        """Count while `train_epoch` (the loop over the batches) runs, not while loading, validating or saving: the
        trainer's `train_epoch` is wrapped for the duration and restored afterwards."""
        original = trainer_module.train_epoch

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._active = True
            try:
                return original(*args, **kwargs)
            finally:
                self._active = False

        trainer_module.train_epoch = counted
        try:
            yield
        finally:
            trainer_module.train_epoch = original

    @property
    def count(self) -> int:
        return len(self.paths)

    def examples(self) -> str:
        return f"(e.g. {', '.join(Path(path).name for path in self.paths[:3])})" if self.paths else ""


@dataclass
class MemoryTrace:
    """The peak resident memory (MB) of a command as it ran: (seconds since start, peak so far) samples."""

    samples: list[tuple[float, float]]
    seconds: float

    @property
    def peak_mb(self) -> float:
        return max((peak for _, peak in self.samples), default=0.0)

    def peak_at(self, fraction: float) -> float:
        """The peak reached within the first `fraction` of the run: equal to the final peak when nothing grows."""
        return max((peak for at, peak in self.samples if at <= fraction * self.seconds), default=0.0)


def peak_memory_of_command(arguments: list[str], poll_s: float = 0.05) -> MemoryTrace:
    """Run `automedsam_predict arguments` and follow its peak resident memory (VmHWM, read from /proc).

    ru_maxrss would also count the memory of this (large) benchmark process, which Linux carries into a child
    across fork and exec.
    """
    samples = []
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        child = subprocess.Popen([str(PREDICT_SCRIPT), *arguments], stdout=subprocess.DEVNULL, stderr=errors)
        while (status := child.poll()) is None:
            samples.append((time.perf_counter() - started, _high_water_kb(child.pid) / 1024.0))
            time.sleep(poll_s)
        seconds = time.perf_counter() - started
        if status != 0:
            errors.seek(0)
            raise SystemExit(f"automedsam_predict {' '.join(arguments)} failed:\n{errors.read().decode()[-2000:]}")
    return MemoryTrace(samples, seconds)


def _high_water_kb(pid: int) -> int:
    """VmHWM (peak resident set) of a running process in kB; 0 once it has exited."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("VmHWM:")), 0)
