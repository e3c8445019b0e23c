"""Fold names, shared by training (which writes `fold_K/`) and prediction (which reads it).

A fold is written `0`, `fold0` or `fold_0` on the command line, `all` for the model trained on every labelled
sample. Which folds exist is for splits.json to say (as in nnU-Net): a name is only checked for its spelling here.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from automedsam.errors import AutomedsamError
from automedsam.files import load_json

ALL = "all"
SPLITS_FILE = "splits.json"  # in the preprocessed dataset folder: the folds and the labelled samples
SPLITS_LOCK_FILE = ".splits.lock"  # held by every writer of splits.json's annotation record (page and planner)
SPLITS_KEYS = ("seed", "shots", "labelled", "folds")  # what every reader of splits.json may index
ANNOTATION_RECORD = "interactive"  # splits.json's record of a dataset annotated in the browser
RECORD_LISTS = ("order", "rejected", "added", "to_annotate")  # the record's lists of sample ids
PAGE_RECORD_LISTS = ("order", "rejected", "added")  # those the annotation page indexes
SPLITS_FORMAT = "documentation/planning.md, The few-shot protocol"
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


def check_splits(splits: Any, path: Path) -> dict[str, Any]:
    """splits.json as its readers index it, or an AutomedsamError naming the file, the key and the fix: the file is
    there to be edited by hand (documentation/planning.md), so a slip must read as one, not as a traceback."""
    problem = _splits_problem(splits)
    if problem is not None:
        raise AutomedsamError(f"{path}: {problem}. {_splits_fix(splits, path)}")
    return splits


def load_splits(path: Path) -> dict[str, Any]:
    """splits.json read and checked (check_splits): a hand edit that its readers could not index reads as one."""
    return check_splits(load_json(path, "splits file"), path)


def check_page_record(splits: dict[str, Any], path: Path) -> dict[str, Any]:
    """The annotation record of checked `splits` as the annotation page indexes it: check_splits lets a missing
    list through (planning reads an earlier record leniently, and writes it back whole), while the page needs order,
    rejected and added."""
    record = splits[ANNOTATION_RECORD]
    missing = [key for key in PAGE_RECORD_LISTS if key not in record]
    if missing:
        raise AutomedsamError(f"{path}: {ANNOTATION_RECORD} lacks the list(s) {', '.join(missing)}. Run "
                              f"automedsam_plan_and_preprocess -d {path.parent.name} first: it writes the record "
                              "again with all its lists, keeping the samples marked No structure and those added in "
                              "review.")
    return record


def check_fold_members(splits: dict[str, Any], path: Path) -> None:
    """Refuse a fold sample outside `labelled`: preprocessing writes the labelled samples alone, so training on it
    would find no sample file, and it would be labelled outside the annotation budget that `labelled` is."""
    labelled = set(splits["labelled"])
    for index, fold in enumerate(splits["folds"]):
        for part in ("train", "val"):
            outside = [sid for sid in fold[part] if sid not in labelled]
            if outside:
                raise AutomedsamError(f"{path}: folds[{index}].{part} holds {', '.join(outside[:3])}"
                                      f"{' and more' if len(outside) > 3 else ''}, which labelled lacks (a fold trains "
                                      f"and validates on labelled samples alone). {_splits_fix(splits, path)}")


def _splits_problem(splits: Any) -> str | None:
    """What is wrong with splits.json's structure, or None."""
    if not isinstance(splits, dict):
        return f"it must hold a JSON object with {', '.join(SPLITS_KEYS)}, got {_shown(splits)}"
    missing = [key for key in SPLITS_KEYS if key not in splits]
    if missing:
        return f"it lacks the key(s) {', '.join(missing)}"
    seed, shots = splits["seed"], splits["shots"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        return f"seed must be a whole number >= 0, got {_shown(seed)}"
    if shots != "all" and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        return f'shots must be a whole number >= 1 or "all", got {_shown(shots)}'
    if not _sample_ids(splits["labelled"]):
        return f"labelled must be a list of sample ids (strings), got {_shown(splits['labelled'])}"
    if "selection" in splits and not isinstance(splits["selection"], dict):
        return f'selection must be an object like {{"method": "random"}}, got {_shown(splits["selection"])}'
    return _folds_problem(splits["folds"]) or _record_problem(splits)


def _folds_problem(folds: Any) -> str | None:
    """What is wrong with splits.json's folds, or None."""
    shape = '{"train": [sample ids], "val": [sample ids]}'
    if not isinstance(folds, list) or not folds:
        return f"folds must be a non-empty list of {shape}, got {_shown(folds)}"
    for index, fold in enumerate(folds):
        if not isinstance(fold, dict) or not all(_sample_ids(fold.get(part)) for part in ("train", "val")):
            return f"folds[{index}] must be an object {shape}, got {_shown(fold)}"
    return None


def _record_problem(splits: dict[str, Any]) -> str | None:
    """What is wrong with the annotation record of a dataset annotated in the browser, or None (also without one)."""
    if ANNOTATION_RECORD not in splits:
        return None
    record = splits[ANNOTATION_RECORD]
    if not isinstance(record, dict):
        return f"{ANNOTATION_RECORD} must be an object of the lists {', '.join(RECORD_LISTS)}, got {_shown(record)}"
    for key in RECORD_LISTS:
        if key in record and not _sample_ids(record[key]):
            return f"{ANNOTATION_RECORD}.{key} must be a list of sample ids (strings), got {_shown(record[key])}"
    return None


def _splits_fix(splits: Any, path: Path) -> str:
    """What to do about a broken splits.json: planning again reads an annotation record (the page's work) but
    replaces any other splits.json unread."""
    if isinstance(splits, dict) and ANNOTATION_RECORD in splits:
        return (f"Fix it (format: {SPLITS_FORMAT}), or delete it and run automedsam_plan_and_preprocess -d "
                f"{path.parent.name} to draw again from the start, forgetting the samples rejected and added on the "
                "annotation page.")
    return (f"Fix it (format: {SPLITS_FORMAT}), or run automedsam_plan_and_preprocess -d {path.parent.name} without "
            "--preprocess-only to draw it again.")


def _sample_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _shown(value: Any) -> str:
    """A value as an error quotes it: JSON-like, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
