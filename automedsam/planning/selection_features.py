"""The coverage selections' pooled candidate vectors, kept in `selection_features.npz` beside the embedding cache.

The cache holds embeddings of one precision only (preprocessing clears it when the precision check plans another),
so the selection keeps its own small record: one unit vector per candidate, keyed by what makes it (slicing, the
label-free intensity window, the foundation model and its weights) but not by the encoder's precision, which moves
a pooled vector far less than the selection can tell apart. A rerun, a bf16 plan and a later benchmark seed thus
find the candidates described and encode none of them again. Each vector records the precision it was pooled in
and its image's digest (name, size, modification time): an image imported again under its name is pooled again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np

from automedsam.files import save_npz
from automedsam.plans import Plans, weights_identity, without_reasons

FEATURES_FILE = "selection_features.npz"


def features_key(plans: Plans) -> str:
    """What a pooled vector depends on: slicing, normalisation and the foundation model (its weights' contents too)
    without its precision."""
    model = {key: value for key, value in plans["foundation_model"].items()
             if key not in ("precision", "precision_check")}
    model.update(weights_identity(plans["foundation_model"], where=plans.where))
    parts = [plans.choices("slicing", "normalization"), model]
    return hashlib.sha256(json.dumps(without_reasons(parts), sort_keys=True).encode()).hexdigest()


class StoredFeature(NamedTuple):
    vector: np.ndarray
    precision: str
    image: str  # the digest of the image it was pooled from ("" in a file from before digests were kept)


def load_features(out_dir: Path, *, key: str) -> dict[str, StoredFeature]:
    """sample id -> its stored feature under `key`; empty when the file is absent, unreadable or made under another
    key."""
    path = out_dir / FEATURES_FILE
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if str(arrays["key"]) != key:
                return {}
            images = arrays["images"] if "images" in arrays.files else [""] * len(arrays["sample_ids"])
            return {str(sid): StoredFeature(vector.astype(np.float32), str(precision), str(image)) for
                    sid, vector, precision, image in zip(arrays["sample_ids"], arrays["features"],
                                                         arrays["precisions"], images)}
    except (ValueError, OSError, EOFError, KeyError):
        return {}


def features_written_ns(out_dir: Path) -> int:
    """When the features file was last written (0 when there is none)."""
    path = out_dir / FEATURES_FILE
    return path.stat().st_mtime_ns if path.is_file() else 0


def save_features(out_dir: Path, features: Mapping[str, StoredFeature], *, key: str) -> None:
    """Write every candidate's feature under `key`, replacing the file atomically."""
    ids = sorted(features)
    save_npz(out_dir / FEATURES_FILE, key=np.array(key), sample_ids=np.array(ids, dtype=str),
             features=np.stack([features[sid].vector for sid in ids]).astype(np.float32),
             precisions=np.array([features[sid].precision for sid in ids], dtype=str),
             images=np.array([features[sid].image for sid in ids], dtype=str))


def adopt_features(source_dir: Path, out_dir: Path) -> bool:
    """Give `out_dir` (a fresh preprocessed folder of the same raw data, e.g. another seed's) the features file of
    `source_dir`, hard-linked (copied where links fail); its key still decides whether it is used. False when there
    is none to adopt or `out_dir` has its own."""
    source, target = source_dir / FEATURES_FILE, out_dir / FEATURES_FILE
    if not source.is_file() or target.exists():
        return False
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return True
