"""What a model archive may hold and how large its members may be: the rules install checks before writing anything.

An archive is untrusted input (a colleague's file, a download). It may hold only the names export writes, each a
plain file within its size limit and a sane compression ratio (a zip bomb declares gigabytes in a few kilobytes).
A checkpoint may be as large as the prompt modules its plans describe (`size_problem`, checked once plans.json is
read; export checks the files it packs against the same limits), never above a hard ceiling. A member whose content
does not match its declared size is caught while it is read, since the declared size is the archive's own claim.
"""
from __future__ import annotations

import re
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from automedsam.errors import AutomedsamError
from automedsam.files import reporting_unwritable
from automedsam.folds import Fold, fold_dir_name
from automedsam.prompt_module import PLANS_RESTORE, build_prompt_module
from automedsam.trained_models import MODEL_CARD

PLANS = "plans.json"
DATASET = "dataset.json"
TOP_LEVEL = (PLANS, DATASET, MODEL_CARD)
LOG = "log.json"
VALIDATION = "validation/summary.json"
FOLD_MEMBER = re.compile(r"fold_(?:\d+|all)/(?:checkpoint_(?:final|best)\.pt|log\.json|validation/summary\.json)")
ALLOWED = "plans.json, dataset.json, model_card.json, fold_K/checkpoint_final.pt, fold_K/checkpoint_best.pt, " \
          "fold_K/log.json, fold_K/validation/summary.json"

MAX_JSON_BYTES = 16 * 2**20  # a log.json of 1,000 epochs is about 1 MB
MAX_CHECKPOINT_BYTES = 8 * 2**30  # ceiling whatever the plans say (100 targets of 128 centre channels: 1 GB)
MAX_TOTAL_BYTES = 64 * 2**30  # ceiling of all members (5 folds of such checkpoints with --best: 10 GB)
MODULE_SAVE_BYTES = 64 * 2**10  # torch.save's own bytes per prompt module besides its tensors (about 4 KB) with room
CHECKPOINT_SAVE_BYTES = 2**20  # and per checkpoint file
MAX_MEMBERS = 3 + 4 * 100  # the top-level files and the four files (--best) of up to 100 folds
MAX_RATIO = 100  # declared / compressed size; JSON deflates about 10x, checkpoints barely
RATIO_FLOOR_BYTES = 2**20  # smaller members cannot fill a disk, whatever their ratio
_CHUNK = 2**20
# What zipfile raises on a damaged or unsupported archive besides BadZipFile: a flipped byte reads as a zip version,
# compression or encryption it does not implement, or as a malformed field
UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError,
              struct.error)
UNSUPPORTED_FLAGS = 0x1 | 0x20 | 0x40  # encrypted, compressed patched data, strong encryption


def fold_members(fold: Fold, checkpoints: Iterable[str]) -> list[str]:
    """The archive names of one fold: its checkpoints (`final`, `best`) and its training log."""
    folder = fold_dir_name(fold)
    return [*(f"{folder}/checkpoint_{which}.pt" for which in checkpoints), f"{folder}/{LOG}"]


def validation_member(fold: Fold) -> str:
    """The archive name of a fold's validation record (optional: fold `all` and older models have none)."""
    return f"{fold_dir_name(fold)}/{VALIDATION}"


def size_limit(name: str) -> int | None:
    """The largest size a member of this name may have; None for a name no model archive holds."""
    if name in TOP_LEVEL or (FOLD_MEMBER.fullmatch(name) and name.endswith(".json")):
        return MAX_JSON_BYTES
    if FOLD_MEMBER.fullmatch(name):
        return MAX_CHECKPOINT_BYTES
    return None


def planned_checkpoint_bytes(plans: Mapping[str, Any]) -> int:
    """The largest checkpoint of the model `plans` describe: one prompt module per target, as training saves them."""
    targets = plans.get("targets")
    if not isinstance(targets, list) or not targets:
        raise AutomedsamError(f"plans.json has no 'targets' list: it is damaged or not automedsam's. To use its "
                              f"checkpoints, {PLANS_RESTORE}; or retrain.")
    with torch.device("meta"):  # sized without allocating: plans may ask for modules of gigabytes
        module = build_prompt_module(plans)
    module_bytes = sum(tensor.numel() * tensor.element_size() for tensor in module.state_dict().values())
    return len(targets) * (module_bytes + MODULE_SAVE_BYTES) + CHECKPOINT_SAVE_BYTES


def size_problem(sizes: Mapping[str, int], plans: Mapping[str, Any]) -> str | None:
    """Why members of these sizes (by archive name) cannot be the model `plans` describe; None when they can.
    Install checks an archive's declared sizes with it, export the files it packs, so export fails first."""
    planned = planned_checkpoint_bytes(plans)
    for name, size in sizes.items():
        limit = size_limit(name)
        if limit is not None and size > limit:
            return f"member '{name}' is {size} bytes, more than the {limit} bytes such a file may have"
        if name.endswith(".pt") and size > planned:
            module = plans["prompt_module"]
            return (f"member '{name}' is {size} bytes, more than the {planned} bytes that the prompt modules of its "
                    f"plans take ({len(plans['targets'])} targets, prompt_module center_channels "
                    f"{module['center_channels']}, num_points {module['num_points']})")
    total = sum(sizes.values())
    if total > MAX_TOTAL_BYTES:
        return f"its members are {total} bytes in all, more than {MAX_TOTAL_BYTES}"
    return None


def check_planned_sizes(members: Mapping[str, zipfile.ZipInfo], plans: Mapping[str, Any], where: Path) -> None:
    """Refuse an archive whose members declare more than the model its plans describe."""
    problem = size_problem({name: info.file_size for name, info in members.items()}, plans)
    if problem:
        raise _refused(where, problem)


def check_checkpoint_records(path: Path, *, member: str, planned: int, where: Path) -> None:
    """A checkpoint is itself a zip, whose records torch.load inflates in memory before its content can be judged:
    refuse a compressed record (torch.save stores every record as it is, so only a crafted file compresses) and
    records that declare more bytes in all than the `planned` checkpoint size, before torch.load reads the file."""
    try:
        with zipfile.ZipFile(path) as checkpoint:
            records = checkpoint.infolist()
    except UNREADABLE:
        raise _refused(where, f"member '{member}' cannot be read as plain weights (not a PyTorch zip file)") from None
    compressed = next((record for record in records if record.compress_type != zipfile.ZIP_STORED
                       or record.compress_size != record.file_size), None)
    if compressed is not None:
        raise _refused(where, f"member '{member}' holds the compressed record '{compressed.filename}', which "
                              "torch.save never writes: a zip bomb inside a checkpoint")
    total = sum(record.file_size for record in records)
    if total > planned:
        raise _refused(where, f"member '{member}' declares records of {total} bytes in all, more than the {planned} "
                              "bytes that the prompt modules of its plans take")


def open_archive(path: Path) -> zipfile.ZipFile:
    """The archive at `path`, opened for reading; a clear error when it is missing or not a zip file."""
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise AutomedsamError(f"The model archive {path} {state}. Give the .zip file that automedsam_export_model "
                              "wrote.")
    try:
        return zipfile.ZipFile(path)
    except UNREADABLE as exc:
        raise AutomedsamError(f"{path} is not a zip archive automedsam can read: it is damaged or unsupported ({exc}). "
                              "Give the .zip file that automedsam_export_model wrote; copy it again if the transfer "
                              "was cut short.") from None


def checked_members(archive: zipfile.ZipFile, where: Path) -> dict[str, zipfile.ZipInfo]:
    """Every member by name, after refusing anything that is not a plain, reasonably sized model file."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise _refused(where, f"it holds {len(infos)} members, more than a model has ({MAX_MEMBERS} at most)")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        _check_name(name, where)
        _check_kind(info, where)
        limit = size_limit(name)
        if limit is None:
            raise _refused(where, f"member '{name}' is not part of an automedsam model (allowed: {ALLOWED})")
        if name in members:
            raise _refused(where, f"member '{name}' appears twice")
        if info.file_size > limit:
            raise _refused(where, f"member '{name}' declares {info.file_size} bytes, more than the {limit} bytes "
                                  "such a file may have")
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise _refused(where, f"member '{name}' would inflate {info.compress_size} bytes to {info.file_size} "
                                  f"(more than {MAX_RATIO} times): a zip bomb")
        members[name] = info
    total = sum(info.file_size for info in infos)
    if total > MAX_TOTAL_BYTES:
        raise _refused(where, f"its members declare {total} bytes in all, more than {MAX_TOTAL_BYTES}")
    return members


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: Path) -> bytes:
    """The member's content, read no further than its declared size."""
    parts: list[bytes] = []
    _copy(archive, info, where, parts.append)
    return b"".join(parts)


def extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: Path, target: Path) -> None:
    """Write the member to `target` (a new file in the install's staging folder), no further than its declared size.
    A failing write (a full disk) is this machine's to fix, not a damaged archive, and says so."""
    with reporting_unwritable(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("xb") as handle:
            _copy(archive, info, where, handle.write)


def _copy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: Path, write: Callable[[bytes], object]) -> None:
    """Only reading is checked for damage: `write`'s own errors pass through as they are."""
    copied = 0
    try:
        source = archive.open(info)
    except UNREADABLE as exc:
        raise _damaged(where, info, exc) from None
    with source:
        while True:
            try:
                block = source.read(_CHUNK)
            except UNREADABLE as exc:
                raise _damaged(where, info, exc) from None
            if not block:
                break
            copied += len(block)
            if copied > info.file_size:
                break
            write(block)
    if copied != info.file_size:
        raise _refused(where, f"member '{info.filename}' declares {info.file_size} bytes but holds "
                              f"{'more' if copied > info.file_size else copied}")


def _damaged(where: Path, info: zipfile.ZipInfo, exc: BaseException) -> AutomedsamError:
    return _refused(where, f"member '{info.filename}' is damaged or not what it declares ({exc}); copy the archive "
                           "again")


def _check_name(name: str, where: Path) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise _refused(where, f"member '{name}' has an absolute path")
    if ".." in parts:
        raise _refused(where, f"member '{name}' has a '..' component that would write outside the model folder")


def _check_kind(info: zipfile.ZipInfo, where: Path) -> None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise _refused(where, f"member '{info.filename}' is a symbolic link")
    if info.is_dir() or stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: no type recorded, as zipfile.writestr
        raise _refused(where, f"member '{info.filename}' is not a plain file")
    if info.flag_bits & UNSUPPORTED_FLAGS:
        raise _refused(where, f"member '{info.filename}' is encrypted or patched (zip flags {info.flag_bits:#x}): "
                              "damaged or unsupported")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _refused(where, f"member '{info.filename}' uses a compression other than deflate or none")


def _refused(where: Path, problem: str) -> AutomedsamError:
    return AutomedsamError(f"Refusing to install {where}: {problem}. Nothing was written. Install only archives "
                           "written by automedsam_export_model, from a source you trust.")
