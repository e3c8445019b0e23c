"""Where datasets live, and how `-d 1`, `-d 001` and `-d Dataset001_Name` find the same dataset folder.

Three roots, as in nnU-Net: raw data (the user's, never modified), preprocessed data and results. Each comes from
an environment variable, defaulting to a folder under `~/automedsam_data/`.
"""
from __future__ import annotations

import itertools
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from automedsam.errors import AutomedsamError

ROOT_VARIABLES = {"raw": "AUTOMEDSAM_RAW", "preprocessed": "AUTOMEDSAM_PREPROCESSED", "results": "AUTOMEDSAM_RESULTS"}
DEFAULT_BASE = Path("~/automedsam_data")
DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9][A-Za-z0-9_.\-]*)$")
ANY_CASE_DATASET_FOLDER = re.compile(DATASET_FOLDER.pattern, re.IGNORECASE)  # a name a case-blind disk reads as one
# the longest dataset folder name (DatasetXXX_Name) automedsam makes, and the longest a shared model may carry: far
# above any real name, and far below the 255 bytes a file system allows a folder name. Folders already longer are
# still read; only making one is refused, so that no dataset is trained whose model cannot be shared
MAX_DATASET_FOLDER_CHARS = 100


def _root(kind: str) -> Path:
    """The root `kind` once the three roots are found apart: every command reads its roots through here, so none
    writes plans into the raw datasets or has its models deleted by a conversion because two roots are one folder."""
    roots = {name: _configured_root(name) for name in ROOT_VARIABLES}
    _check_roots_apart(roots)
    return roots[kind]


def _configured_root(kind: str) -> Path:
    value = os.environ.get(ROOT_VARIABLES[kind], "").strip()
    return Path(value).expanduser() if value else (DEFAULT_BASE / kind).expanduser()


def _check_roots_apart(roots: Mapping[str, Path]) -> None:
    """Refuse roots ({"raw": path, ...}) where one is another or lies inside it, links followed and roots not made
    yet included. With raw and preprocessed one folder, planning wrote its files into the raw dataset, and a
    conversion with --overwrite deleted the preprocessed samples and the trained models kept in its folder."""
    resolved = {kind: path.resolve() for kind, path in roots.items()}
    for (kind, path), (other, folder) in itertools.permutations(resolved.items(), 2):
        if _inside(path, folder):
            overlap = (f"The {kind} and {other} roots are one folder, {path}" if _inside(folder, path)
                       else f"The {kind} root {path} lies inside the {other} root {folder}")
            raise AutomedsamError(f"{overlap} ({_describe(roots)}). automedsam needs three separate folders, none "
                                  "inside another: otherwise planning writes into the raw datasets, which are never "
                                  "to change, and a conversion replacing a dataset deletes its preprocessed data and "
                                  "trained models. Point the three variables at three such folders, e.g. DIR/raw, "
                                  "DIR/preprocessed and DIR/results, then run the command again.")


def _inside(path: Path, folder: Path) -> bool:
    """Whether resolved `path` is `folder` or lies inside it. Existing folders are compared as files too, so that on
    a case-insensitive file system (macOS, Windows) `~/Data` is `~/data`."""
    if path == folder or folder in path.parents:
        return True
    identity = _file_identity(folder)
    return identity is not None and any(_file_identity(place) == identity for place in (path, *path.parents))


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file or folder; None for one that is not there or cannot be looked at."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _describe(roots: Mapping[str, Path]) -> str:
    """`AUTOMEDSAM_RAW=/x, ...`, a variable that is not set marked as giving its default."""
    return ", ".join(f"{ROOT_VARIABLES[kind]}={path}"
                     + ("" if os.environ.get(ROOT_VARIABLES[kind], "").strip() else " (not set: the default)")
                     for kind, path in roots.items())


def raw_root() -> Path:
    """Raw datasets: env AUTOMEDSAM_RAW, default ~/automedsam_data/raw."""
    return _root("raw")


def preprocessed_root() -> Path:
    """Preprocessed datasets: env AUTOMEDSAM_PREPROCESSED, default ~/automedsam_data/preprocessed."""
    return _root("preprocessed")


def results_root() -> Path:
    """Trained models: env AUTOMEDSAM_RESULTS, default ~/automedsam_data/results."""
    return _root("results")


@contextmanager
def roots_at(roots: Mapping[str, Path]) -> Iterator[None]:
    """Point the roots named in `roots` ({"raw": path, ...}) there for the duration; the environment is restored."""
    saved = {ROOT_VARIABLES[kind]: os.environ.get(ROOT_VARIABLES[kind]) for kind in roots}
    os.environ.update({ROOT_VARIABLES[kind]: str(path) for kind, path in roots.items()})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """`(1, "HC18")` -> `"Dataset001_HC18"`, refusing names that would not resolve back or make a folder name longer
    than MAX_DATASET_FOLDER_CHARS (its models could not be exported or installed)."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise AutomedsamError(f"Dataset id {dataset_id!r} is invalid: use a whole number from 1 to 999.")
    folder = f"Dataset{dataset_id:03d}_{name}"
    if not DATASET_FOLDER.match(folder):
        raise AutomedsamError(f"Dataset name {name!r} is invalid: use ASCII letters (no accents), digits, '_', "
                              "'-' or '.', starting with a letter or digit (no spaces or slashes).")
    if len(folder) > MAX_DATASET_FOLDER_CHARS:
        raise AutomedsamError(f"Dataset name {name[:40]!r}... makes the folder name {folder[:20]}... {len(folder)} "
                              f"characters long, more than the {MAX_DATASET_FOLDER_CHARS} a dataset folder name may "
                              "have (a model trained on it could not be exported or installed). Give a shorter name.")
    return folder


def resolve_dataset_name(identifier: str | int, roots: Iterable[Path] | None = None) -> str:
    """Find the dataset folder name (`Dataset001_Name`) meant by `1`, `"001"` or `"Dataset001_Name"`.

    All roots (raw, preprocessed, results unless `roots` is given) are searched; a full folder name is accepted if
    it exists in any of them. None or several matching names give an error naming the roots searched.
    """
    searched = list(roots) if roots is not None else [raw_root(), preprocessed_root(), results_root()]
    text = str(identifier).strip()
    if DATASET_FOLDER.match(text):
        wanted_id, wanted_name = int(DATASET_FOLDER.match(text).group(1)), text
    elif text.isdigit():
        wanted_id, wanted_name = int(text), None
    else:
        raise AutomedsamError(f"{identifier!r} is not a dataset id. Use the number (1 or 001) or the full folder name "
                              "(Dataset001_Name).")
    found = sorted({folder for root in searched for folder in _dataset_folders(root)
                    if (folder == wanted_name if wanted_name
                        else int(DATASET_FOLDER.match(folder).group(1)) == wanted_id)})
    roots_text = ", ".join(str(root) for root in searched)
    if not found:
        raise AutomedsamError(f"No dataset {identifier!r} found in {roots_text}. Convert or copy the dataset into the "
                              f"raw root first, or set {ROOT_VARIABLES['raw']} (and the preprocessed/results roots) to "
                              "where your datasets are.")
    if len(found) > 1:
        raise AutomedsamError(f"Dataset id {identifier!r} is ambiguous: {', '.join(found)} all exist in {roots_text}. "
                              "Pass the full folder name with -d, or rename one of the folders.")
    return found[0]


def check_outside_raw_datasets(path: str | Path, *, what: str) -> None:
    """Refuse to write into the raw root or one of its dataset folders, links followed: the raw datasets are the
    user's and never modified, and a file written among them would replace a reference label or break the next
    planning. Other folders a user keeps under the raw root are theirs."""
    target, raw = Path(path).expanduser().resolve(), raw_root().resolve()
    if _in_raw_data(target, raw):
        raise AutomedsamError(f"{what} {target} is in the raw data ({ROOT_VARIABLES['raw']}={raw}): automedsam never "
                              "changes the raw datasets, and files written among them would replace reference labels "
                              f"or break the next automedsam_plan_and_preprocess. Choose a folder outside {raw}.")


def _in_raw_data(target: Path, raw: Path) -> bool:
    """Whether `target` (resolved) is the raw root `raw`, lies in one of its dataset folders (also one linked in from
    elsewhere) or would create one. Existing folders are compared as files, so that on a case-insensitive file system
    (macOS, Windows) `raw/dataset001_x` is `raw/Dataset001_X`. A raw root this user cannot read is not one they can
    write into: nothing to guard there."""
    try:
        return _in_readable_raw_data(target, raw)
    except PermissionError:
        return False


def _in_readable_raw_data(target: Path, raw: Path) -> bool:
    if not raw.is_dir():  # nothing to compare as files yet
        return target == raw or (raw in target.parents
                                 and bool(ANY_CASE_DATASET_FOLDER.match(target.relative_to(raw).parts[0])))
    existing = next(folder for folder in (target, *target.parents) if os.path.exists(folder))
    datasets = [(raw / name).resolve() for name in _dataset_folders(raw)]
    for ancestor in (existing, *existing.parents):
        if any(os.path.samefile(ancestor, folder) for folder in datasets):
            return True
        if os.path.samefile(ancestor, raw):
            if ancestor != existing:  # through a folder of the user's under the raw root
                return False
            created = target.relative_to(existing).parts
            return not created or bool(ANY_CASE_DATASET_FOLDER.match(created[0]))
    return False


def raw_dataset_dir(name: str) -> Path:
    return raw_root() / name


def preprocessed_dataset_dir(name: str) -> Path:
    return preprocessed_root() / name


def results_dataset_dir(name: str) -> Path:
    return results_root() / name


def _dataset_folders(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return [entry.name for entry in root.iterdir() if entry.is_dir() and DATASET_FOLDER.match(entry.name)]
