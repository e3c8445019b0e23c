"""Foundation weights known by their content: the sha256 that ties a trained model to the weights it was trained with.

A prompt module only works with the frozen model it learned to prompt. A model moved to another machine therefore
names its foundation weights by file name and sha256, and the file given there is checked against that hash, so
another release, a fine-tune or a damaged download is refused before it silently changes every segmentation.
Hashing only (no torch), so the plans accessor can check weights without loading a model.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from automedsam.errors import AutomedsamError

# Weights shipped inside an installed package: nothing to give on the command line when the hash is this one.
PACKAGED_SHA256 = {"litemedsam": "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"}
# The key of a fold's checkpoint metadata that records the sha256 of the weights it trained with (absent in folds
# trained before it was recorded): prediction and export hold the weights at hand to it.
TRAINED_WITH = "foundation_sha256"
# What a foundation weights file is called: the example a folder given in its place is answered with.
WEIGHTS_SUFFIXES = (".pth", ".pt")
TYPICAL_WEIGHTS_FILE = "medsam_vit_b.pth"


def sha256_of(path: str | Path) -> str:
    """The file's sha256 (hex); computed once per process and file version."""
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    return _hash(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def is_packaged(model_name: str, sha256: str) -> bool:
    """Whether `sha256` is the hash of the weights a package ships for `model_name`."""
    return PACKAGED_SHA256.get(model_name) == sha256


def refuse_folder(path: str | Path) -> None:
    """Refuse a folder given as --foundation-checkpoint (the folder the weights were downloaded to, a common slip):
    the checks after this one would call the weights missing and send the user looking in the wrong place. Every
    command that takes the option calls this first, so all answer the slip alike."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise AutomedsamError(f"--foundation-checkpoint {path} is a folder, not a file; give the weights file itself "
                              f"(e.g. {_example_weights(path)}).")


def _example_weights(folder: Path) -> Path:
    """A weights file the folder holds (most likely the one meant), else the usual name in that folder."""
    try:
        held = sorted(child for child in folder.iterdir() if child.suffix in WEIGHTS_SUFFIXES and child.is_file())
    except OSError:  # a folder this user may not list: the example is only a hint
        held = []
    return held[0] if held else folder / TYPICAL_WEIGHTS_FILE


def check_weights(path: str | Path | None, *, model_name: str, sha256: str,
                  weights_file: str | None) -> Path | None:
    """The weights file to build `model_name` with, checked against `sha256`; None means the packaged weights.

    `weights_file` is the file name the model was trained with, named in the errors so the user knows what to find.
    """
    wanted = f"{weights_file or model_name + ' weights'} (sha256 {sha256})"
    if path is None:
        if is_packaged(model_name, sha256):
            return None
        raise AutomedsamError(f"This model was trained with foundation model '{model_name}' and the weights file "
                              f"{wanted}. Give that file with --foundation-checkpoint PATH (automedsam never "
                              "downloads weights).")
    refuse_folder(path)
    path = Path(path).expanduser()
    if not path.is_file():
        raise AutomedsamError(f"The foundation weights {path} do not exist. This model needs {wanted}: give its path "
                              "with --foundation-checkpoint PATH.")
    found = sha256_of(path)
    if found != sha256:
        raise AutomedsamError(f"The foundation weights {path} have sha256 {found}, but this model was trained with "
                              f"{wanted}: other weights give other segmentations. Give the file it was trained with "
                              "via --foundation-checkpoint PATH.")
    return path


@lru_cache(maxsize=8)
def _hash(path: str, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """Size and times are part of the cache key, so a replaced file is hashed again; the change time too, since
    weights of one architecture have one size and a copy may keep the modification time of its source."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
