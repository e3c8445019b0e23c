"""Write a raw dataset all at once: build it in a hidden temporary folder, then rename it into place.

An interrupted or failed conversion therefore never leaves a half dataset in the raw root, and an existing
dataset is only replaced when the user asked for it (`overwrite`) and the new one is complete.
"""
from __future__ import annotations

import filecmp
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

from rich.console import Console

from automedsam.errors import AutomedsamError
from automedsam.files import reporting_unwritable, save_json
from automedsam.paths import DATASET_FOLDER, dataset_folder_name, preprocessed_root, raw_root, results_root
from automedsam.progress import progress_bar

Item = TypeVar("Item")
REPLACED_SUFFIX = ".replaced"  # an old dataset set aside by --overwrite, until it is deleted


def target_dataset_dir(dataset_id: int, name: str, overwrite: bool) -> Path:
    """The folder a new raw dataset goes to, refusing ids that are taken (unless replacing the same dataset)."""
    root = raw_root()
    target = root / dataset_folder_name(dataset_id, name)
    for searched in (root, preprocessed_root(), results_root()):  # -d 7 would be ambiguous with any of them
        same_id = [p.name for p in sorted(searched.iterdir()) if p.is_dir() and p.name != target.name
                   and DATASET_FOLDER.match(p.name) and int(DATASET_FOLDER.match(p.name).group(1)) == dataset_id
                   ] if searched.is_dir() else []
        if same_id:
            raise AutomedsamError(f"Dataset id {dataset_id:03d} is already used by {', '.join(same_id)} in "
                                  f"{searched}. Choose another -d, or delete that folder if you no longer need it.")
    if target.exists() and not overwrite:
        raise AutomedsamError(f"{target} already exists. Add --overwrite to replace it, or choose another -d.")
    return target


@dataclass(frozen=True)
class Staging:
    """A dataset being written: `folder` (hidden, temporary) becomes `target` when the conversion succeeds."""

    folder: Path
    target: Path


@contextmanager
def staged_dataset(dataset_id: int, name: str, overwrite: bool = False) -> Iterator[Staging]:
    """Yield an empty temporary folder; on success it becomes `raw_root()/DatasetXXX_Name`, on failure it vanishes."""
    target = target_dataset_dir(dataset_id, name, overwrite)
    with reporting_unwritable(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)  # mkdtemp makes 0700: the dataset takes the mode mkdir would give it
    try:
        yield Staging(folder, target)
        _move_into_place(folder, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _move_into_place(staging: Path, target: Path) -> None:
    """Swap the finished folder in; an old dataset is set aside first and deleted only after the swap, with what
    earlier replacements of this dataset left."""
    if target.exists():
        _settle_file_times(staging, target)
        _swap(staging, target)
    else:
        staging.rename(target)
    _delete_replaced(target)


def _swap(staging: Path, target: Path) -> None:
    """Replace `target` by `staging`, the old dataset set aside in a hidden `.replaced` folder. A failed or
    interrupted swap (Ctrl-C, or a kill turned into one) puts it back: otherwise the dataset would stay hidden while
    the new one, in the staging folder, is deleted."""
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=REPLACED_SUFFIX, dir=target.parent))
    retired.rmdir()
    try:
        target.rename(retired)
        staging.rename(target)
    except BaseException:
        if retired.exists() and not target.exists():
            retired.rename(target)
        raise


def _delete_replaced(target: Path) -> None:
    """Delete the old copies of `target` set aside by replacements, an interrupted deletion's leftovers included.
    An interrupt here stops only this deletion, with a note: the new dataset is in place, so the conversion is
    done and the command's note that nothing was written would be wrong; the next conversion of it deletes the
    rest."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[^.]+{re.escape(REPLACED_SUFFIX)}")
    replaced = [path for path in target.parent.iterdir() if pattern.fullmatch(path.name) and path.is_dir()]
    try:
        for path in replaced:
            shutil.rmtree(path, ignore_errors=True)
    except KeyboardInterrupt:
        left = [str(path) for path in replaced if path.exists()]
        Console(stderr=True).print(
            f"Interrupted while deleting the old copy of {target.name}: the new dataset is in place. What is left of "
            f"the old one ({', '.join(left)}) is deleted by the next conversion to {target.name}, or delete it "
            "yourself.", markup=False, highlight=False, soft_wrap=True)


def _settle_file_times(staging: Path, previous: Path) -> None:
    """A file imported again with the same bytes keeps its modification time, any other takes the time it replaces
    the dataset: preprocessing and the embedding cache take a file newer than what was made of it for a changed one.
    Kept, an import that only adds images does not encode every image again; taken now, a changed image is newer
    than an embedding made of the old one while the import was being staged."""
    for staged in staging.rglob("*"):
        before = previous / staged.relative_to(staging)
        try:
            if not staged.is_file():
                continue
            if before.is_file() and filecmp.cmp(staged, before, shallow=False):
                kept = before.stat()
                os.utime(staged, ns=(kept.st_atime_ns, kept.st_mtime_ns))
            else:
                os.utime(staged)
        except OSError:
            continue  # an unreadable old file: the new one keeps its own time


def write_dataset_json(folder: Path, *, name: str, labels: dict[str, int], channel_names: dict[str, str],
                       file_ending: str, groups: dict[str, str], **extra: Any) -> None:
    """Write dataset.json in nnU-Net v2 form plus our optional keys (groups and whatever `extra` holds)."""
    content: dict[str, Any] = {
        "name": name,
        "channel_names": channel_names,
        "labels": labels,
        "numTraining": len(groups),
        "file_ending": file_ending,
        "groups": dict(sorted(groups.items())),
    }
    content.update(extra)
    save_json(folder / "dataset.json", content)


def progress_over(items: Iterable[Item], total: int, description: str) -> Iterator[Item]:
    """Iterate with a progress bar (on stderr, so stdout stays clean for summaries)."""
    with progress_bar(transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
