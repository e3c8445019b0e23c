"""How much the folds agree on each predicted case: which predictions to check first.

The five folds learned their prompts from different samples; where their masks differ, the ensemble is least
trustworthy (on lesions, it is where the prompt looked in the wrong place: documentation/benchmarks.md, "Which
predictions to check first"). Each fold's first-pass mask of each target (its low-res probability above one half, on
the part of the model's frame the image covers: the input's zero padding never reaches a label map) is compared with
every other fold's: the agreement is the mean Dice over fold pairs and over the targets some fold found, a volume's
slices summed before dividing (two empty masks agree fully; 1 when no fold found anything). automedsam_predict
writes it per case to `OUT/fold_agreement.json` and names the least agreed cases in its summary.
"""
from __future__ import annotations

import math
import threading
import time
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection

import torch

from automedsam.errors import AutomedsamError
from automedsam.files import holding_lock, load_json, save_json
from automedsam.io import is_supported, split_extension

if TYPE_CHECKING:
    from automedsam.box_refinement import Region

AGREEMENT_FILE = "fold_agreement.json"
LOCK_FILE = ".fold_agreement.lock"
SHOWN_IN_SUMMARY = 3


class FoldAgreement:
    """The folds' pairwise overlaps of one case, added batch by batch of its slices, in order."""

    def __init__(self) -> None:
        self._slices: list[torch.Tensor] = []  # per slice, (labels, folds, folds): pixels both folds' masks hold

    def add(self, per_fold: torch.Tensor, *, region: Region) -> None:
        """`per_fold`: (labels, folds, slices, 1, H, W) probabilities of the next batch of the case's slices;
        `region`: the rows and columns of H, W that cover the image (`box_refinement.image_region`): a fold that
        fills the padding disagrees on nothing the label map shows."""
        rows, columns = region
        masks = (per_fold[..., rows, columns] > 0.5).flatten(3).to(torch.float32)
        overlap = torch.einsum("lfsn,lgsn->slfg", masks, masks).to("cpu", torch.float64)
        self._slices.extend(overlap.unbind(0))

    def score(self, *, leave_out: Collection[int] = ()) -> float | None:
        """Mean Dice over fold pairs and the targets some fold found (1.0 when no fold found any); None with a single
        fold (no pair to compare) or no slice left. `leave_out`: slice indices the user has segmented instead (boxed
        or marked empty), whose disagreement no longer needs a check. A target no fold found would count as full
        agreement and hide the disagreement on the others."""
        kept = [overlap for index, overlap in enumerate(self._slices) if index not in leave_out]
        if not kept or kept[0].shape[1] < 2:
            return None
        overlap = torch.stack(kept).sum(0)
        sizes = torch.diagonal(overlap, dim1=1, dim2=2)
        scores = [_dice(float(overlap[label, first, second]), float(sizes[label, first] + sizes[label, second]))
                  for label in range(overlap.shape[0]) if float(sizes[label].sum()) > 0
                  for first, second in combinations(range(overlap.shape[1]), 2)]
        return sum(scores) / len(scores) if scores else 1.0


class AgreementRecord:
    """OUT/fold_agreement.json, kept as the label maps are written: scores are added after each write and the file is
    written every `every_s` seconds and at `flush()` (a killed run keeps what it had recorded; a long run does not
    rewrite the file per image). Only cases whose label map is in OUT stay; a case written again without a score (one
    fold) loses its old one. Recording is a courtesy beside the label maps: a folder that cannot hold it (no file
    locks on some network shares) gets one warning, and the prediction goes on."""

    def __init__(self, output_dir: Path, *, warn: Callable[[str], None], every_s: float = 0.0) -> None:
        self.output_dir = output_dir
        self.every_s = every_s
        self._warn = warn
        self._failed = False
        self._pending: dict[str, float | None] = {}
        self._last = time.monotonic()
        self._lock = threading.Lock()  # the writer thread adds; the main thread flushes at the end

    def add(self, case: str, score: float | None) -> None:
        with self._lock:
            self._pending[case] = score
            due = time.monotonic() - self._last >= self.every_s
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the pending scores, and drop the entries of label maps no longer in OUT (also with nothing
        pending); never raises for the folder's sake (see the class)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._last = time.monotonic()
            scored = any(score is not None for score in pending.values())
            if self._failed or not (scored or (self.output_dir / AGREEMENT_FILE).is_file()):
                return  # nothing to rank (one fold) and nothing recorded: no file, no lock
            try:
                self._merge(pending)
            except (AutomedsamError, OSError) as error:
                self._failed = True
                self._warn(f"Warning: the folds' agreement is not recorded in {self.output_dir / AGREEMENT_FILE} "
                           f"({error}); the label maps are written all the same.")

    def _merge(self, pending: dict[str, float | None]) -> None:
        path = self.output_dir / AGREEMENT_FILE
        with holding_lock(self.output_dir / LOCK_FILE):
            written = _written_cases(self.output_dir)
            recorded = _read(path)
            scores = {known: value for known, value in recorded.items() if known in written}
            for case, score in pending.items():
                scores.pop(case, None)
                if score is not None and case in written:
                    scores[case] = round(score, 4)
            if scores != recorded:  # no file while there is nothing to rank
                save_json(path, dict(sorted(scores.items(), key=_least_first)))


def _dice(overlap: float, total: float) -> float:
    return 1.0 if total == 0 else 2.0 * overlap / total


def least_agreed(output_dir: Path, count: int = SHOWN_IN_SUMMARY) -> list[tuple[str, float]]:
    """The `count` cases of OUT/fold_agreement.json the folds agree on least, least first (cases whose label map
    left OUT left out)."""
    written = _written_cases(output_dir)
    scores = [(case, value) for case, value in _read(output_dir / AGREEMENT_FILE).items() if case in written]
    return sorted(scores, key=_least_first)[:count]


def _least_first(item: tuple[str, float]) -> tuple[float, str]:
    return item[1], item[0]


def _written_cases(output_dir: Path) -> set[str]:
    """The case ids of the label maps in OUT."""
    return {split_extension(path)[0] for path in output_dir.iterdir() if path.is_file()
            and not path.name.startswith(".") and is_supported(path)} if output_dir.is_dir() else set()


def _read(path: Path) -> dict[str, float]:
    """The recorded scores; a missing or damaged file (edited by hand) counts as empty: it is only a ranking."""
    try:
        scores = load_json(path, "fold agreement file") if path.is_file() else {}
    except AutomedsamError:
        return {}
    if not isinstance(scores, dict):
        return {}
    return {case: float(value) for case, value in scores.items() if isinstance(value, (int, float))
            and not isinstance(value, bool) and _finite(value)}


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer of hundreds of digits, typed by hand
        return False
