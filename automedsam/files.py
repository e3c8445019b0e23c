"""Atomic writes and small JSON helpers: a file either exists complete or not at all."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from automedsam.errors import AutomedsamError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_REFUSED_ERRNOS = (*_DISK_FULL_ERRNOS, errno.EROFS)
_NEARLY_FULL_BYTES = 2**20  # below this, a writer's error without an errno (numpy, torch) is taken for a full disk
# What writers say, without an errno, when the file system takes fewer bytes than given (a quota, a full disk): numpy's
# tofile, and torch's zip writer (the next write's position check, miniz's error, or closing the failed stream)
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$|unexpected pos \d+ vs \d+|"
                          r"PytorchStreamWriter failed .*file write failed|basic_ios::clear: iostream error")
NAME_MAX_BYTES = 255  # the longest file name (not path) that Linux, macOS and Windows file systems take
_PATH_MAX_BYTES = 4096  # the longest whole path Linux takes (PATH_MAX)
_SHOWN_NAME_CHARACTERS = 40  # of a name too long for the file system, in its error (which shows the path)
_KEPT_NAME_BYTES = 64  # of a target's name in its temporary name, which adds 18 bytes and a suffix: within 255
_RMTREE_ERROR_HANDLER = "onexc" if sys.version_info >= (3, 12) else "onerror"  # onerror is deprecated from 3.12


class UnwritableDiskError(AutomedsamError):
    """A write the disk refuses whatever is written (full, over quota, read-only): every later write there fails
    alike, so a run that reports its items' errors together (a conversion's cases) stops at the first instead."""


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    `suffix` keeps the extension that writers such as SimpleITK use to pick a format.
    """
    target = Path(target)
    with reporting_unwritable(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(target.name), suffix=f".partial{suffix}",
                                   dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with reporting_unwritable(target):  # a folder of the target's name, a folder that forbids the rename
            os.chmod(tmp_path, _FILE_MODE)  # mkstemp makes 0600; give the file the permissions open() would
            os.replace(tmp_path, target)
    except (OSError, RuntimeError) as exc:
        if _disk_full(exc, target.parent):
            raise incomplete_write_error(target) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def _temporary_prefix(name: str) -> str:
    """`.NAME.`, NAME cut to its first whole characters within `_KEPT_NAME_BYTES`: a name near the file system's
    limit of 255 bytes, whole, made a temporary name too long to create."""
    return f".{os.fsencode(name)[:_KEPT_NAME_BYTES].decode('utf-8', errors='ignore')}."


def copy_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy `source` to `target` atomically. Callers have read `source` already, so the copy's errors are the
    target's: a full disk or quota, as `atomic_path` reports it, else a refusal such as a file too large for the
    target's file system."""
    with atomic_path(target) as tmp:
        try:
            shutil.copyfile(source, tmp)
        except OSError as exc:
            if exc.errno in _DISK_FULL_ERRNOS:
                raise
            raise _unwritable_error(target, exc) from None


def remove_tree(folder: str | os.PathLike) -> None:
    """Delete `folder` with all it holds. An entry the file system will not delete (no permission, a read-only disk)
    is the user's to fix, named by its full path with the folder being deleted: shutil names the bare file."""
    folder = Path(folder)

    def refused(function: Any, path: str, error: BaseException | tuple[Any, BaseException, Any]) -> None:
        exc = error if isinstance(error, BaseException) else error[1]  # onerror passes sys.exc_info()
        entry = "" if Path(path) == folder else f" ({path})"
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise AutomedsamError(f"Cannot delete {folder}{entry}: {reason}. Choose a location you can write to, or "
                              "change its permissions, then run the command again.") from None

    shutil.rmtree(folder, **{_RMTREE_ERROR_HANDLER: refused})


def incomplete_write_error(target: str | os.PathLike) -> UnwritableDiskError:
    """The user's error for a file that could not be written completely, with the space left where it goes."""
    target = Path(target)
    free = shutil.disk_usage(next(folder for folder in target.parents if folder.exists())).free
    return UnwritableDiskError(f"Cannot write {target}: the file could not be written completely ({free / 2**20:.0f} "
                               "MiB free on that disk; a full disk or a quota). Free some space or choose another "
                               "location, then run the command again.")


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """A full disk or quota: said by the errno, or, for writers that raise without one (numpy's tofile, torch's
    zip writer), by their words for a short write (a quota leaves the disk with space) or by the space left."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in _DISK_FULL_ERRNOS
    return _SHORT_WRITE.search(str(exc)) is not None or shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES


@contextmanager
def reporting_unwritable(target: str | os.PathLike) -> Iterator[None]:
    """Report an OSError of the block (making `target`'s folder or a temporary file in it) as the user's to fix: a
    file in the path, no permission, a read-only disk. Not a bug, so not a traceback."""
    try:
        yield
    except OSError as exc:
        raise _unwritable_error(target, exc) from None


def _unwritable_error(target: str | os.PathLike, exc: OSError) -> AutomedsamError:
    target = Path(target)
    if exc.errno == errno.ENAMETOOLONG:  # the name is at fault, not the place: another location fails alike
        return AutomedsamError(f"Cannot write {target}: {too_long_reason(target)}")
    blocking = next((folder for folder in target.parents  # os.path's checks: no error of their own
                     if os.path.exists(folder) and not os.path.isdir(folder)), None)
    reason = f"{blocking} is a file, not a folder" if blocking is not None else exc.strerror or str(exc)
    return (UnwritableDiskError if exc.errno in _DISK_REFUSED_ERRNOS else AutomedsamError)(
        f"Cannot write {target}: {reason}. Choose a location you can write to, then run the command again.")


def too_long_reason(path: str | os.PathLike) -> str:
    """Why the file system refused `path` as too long (ENAMETOOLONG), and what to do: naming the name at fault, which
    may be a folder of the output path the user typed as well as a file named after an input, else the whole path."""
    long_name = next((part for part in Path(path).parts if len(os.fsencode(part)) > NAME_MAX_BYTES), None)
    if long_name is None:
        return (f"the path is too long for the file system ({len(os.fsencode(path))} bytes; Linux takes at most "
                f"{_PATH_MAX_BYTES}). Choose a location with a shorter path, then run the command again.")
    shown = long_name if len(long_name) <= _SHOWN_NAME_CHARACTERS else f"{long_name[:_SHOWN_NAME_CHARACTERS]}..."
    return (f"the file name is too long for the file system: the name {shown} is {len(os.fsencode(long_name))} "
            f"bytes, more than the {NAME_MAX_BYTES} a file system takes. Shorten that name in the path you gave, or "
            "rename the input the file is named after, then run the command again.")


@contextmanager
def holding_lock(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (made, with its folder, if missing), waiting while another process
    holds it. Failing to make the lock file is the user's to fix (`reporting_unwritable`); the block's own errors
    pass through as they are."""
    with reporting_unwritable(lock_file):
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_file, "a")
    with handle:
        with reporting_unwritable(lock_file):  # a file system without locks (some NFS) says so here
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically, pretty-printed so users can read and edit it."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def load_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read JSON, turning a missing or malformed file into a readable error.

    Python's parser also fails outside JSONDecodeError: RecursionError on deeply nested arrays, ValueError on an
    integer of more than 4300 digits; a damaged or hostile file must read as malformed all the same.
    """
    path = Path(path)
    if path.is_dir():
        raise AutomedsamError(f"The {what} {path} is a folder, not a JSON file. Give the path of the JSON file.")
    if not path.is_file():
        raise AutomedsamError(f"The {what} {path} does not exist.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))  # JSON is UTF-8 whatever the locale
    except RecursionError:
        reason = "nested too deeply to read"
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an over-long integer
        reason = str(exc)
    raise AutomedsamError(f"The {what} {path} is not valid JSON ({reason}). Fix or regenerate it.")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write one array atomically (no pickle)."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write several arrays atomically, compressed (no pickle)."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def files_digest(paths: list[Path | None]) -> str:
    """A short digest of the files' names, sizes and modification times ("-" for an absent one): what a record
    keeps of the files it was made from, so that a file replaced by another, even an older-dated one, shows."""
    parts = []
    for path in paths:
        stat = path.stat() if path is not None and path.is_file() else None
        parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}" if stat is not None else "-")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def permission_denied_error(path: str | os.PathLike | None) -> AutomedsamError:
    """The user's error for a path the file system refuses this user: a permission to grant or a location to change,
    never a damaged file to export, delete or retrain. `path` None: a refusal that names no path. `path` is shown as
    given: a relative name from a call in an open folder (dir_fd, as shutil.rmtree makes them) is not in the current
    folder, and resolving it there would name a false location."""
    where = os.fsdecode(path) if path is not None else "a file or folder"
    return AutomedsamError(f"Permission denied for {where}: this user may not read, write or enter it. Choose a "
                           "location you may use, or change its permissions, then run the command again.")
