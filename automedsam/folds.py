"""Fold names, shared by training (which writes `fold_K/`) and prediction (which reads it).

A fold is written `0`, `fold0` or `fold_0` on the command line, `all` for the model trained on every labelled
sample. Which folds exist is for splits.json to say (as in nnU-Net): a name is only checked for its spelling here.
"""
from __future__ import annotations

import re

from automedsam.errors import AutomedsamError

ALL = "all"
SPLITS_FILE = "splits.json"  # in the preprocessed dataset folder: the folds and the labelled samples
SPLITS_LOCK_FILE = ".splits.lock"  # held by every writer of splits.json's annotation record (page and planner)
Fold = int | str  # 0, 1, ... or ALL
_FOLD = re.compile(r"(?:fold_?)?(\d+)")


def parse_fold(fold: str | int) -> Fold:
    """'fold0', 'fold_0', '0' (or 0) -> 0; 'all' -> 'all'. Any fold number passes: splits.json decides if it exists."""
    text = str(fold).strip().lower()
    if text == ALL:
        return ALL
    match = _FOLD.fullmatch(text)
    if match is None:
        raise AutomedsamError(f"Unknown fold '{fold}'. Use a fold number (0, fold0 or fold_0) or all.")
    return int(match.group(1))


def fold_dir_name(fold: Fold) -> str:
    """`fold_0`, ..., `fold_all`: the fold's folder inside a trained model folder."""
    return f"fold_{fold}"
