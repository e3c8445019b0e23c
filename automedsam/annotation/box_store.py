"""The boxes of each sample in the raw dataset's boxesTr/, saved atomically and never lost to a concurrent save.

A case's box file holds the boxes of all its samples (2D: the image; 3D: entries with a "slice"). A save replaces
one sample's boxes and keeps the rest of the file, under a lock, and only if the sample's boxes are still those the
page started from (compare-and-swap on a version digest); otherwise it reports the current boxes so the page can
merge them. Entries are checked exactly as imported box files are, and nothing outside boxesTr/ is written.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from automedsam.boxes import check_box_entries
from automedsam.dataset import Case, checked_case_boxes, declared_rings
from automedsam.errors import AutomedsamError
from automedsam.files import load_json, reporting_unwritable, save_json

BOXES_FOLDER = "boxesTr"
NOTHING_SAVED = "none"  # version of a sample that has never been saved


class VersionConflict(Exception):
    """The sample's boxes changed since the page loaded them; `boxes` and `version` are the current ones."""

    def __init__(self, boxes: list[dict[str, Any]], version: str) -> None:
        super().__init__("the boxes changed since they were loaded")
        self.boxes = boxes
        self.version = version


class BoxStore:
    """Read and write the boxes of samples of one raw dataset."""

    def __init__(self, root: Path, labels: dict[str, int]) -> None:
        self.root = Path(root)
        self.folder = self.root / BOXES_FOLDER
        self.labels = labels
        self._lock = threading.Lock()

    def path(self, case: Case) -> Path:
        return self.folder / f"{case.case_id}.json"

    def read(self, case: Case, slice_index: int | None) -> tuple[list[dict[str, Any]] | None, str]:
        """The sample's boxes (None when never saved; [] when saved empty) and their version."""
        entries = self._case_entries(case)
        if entries is None:
            return None, NOTHING_SAVED
        mine = [_plain(entry) for entry in entries if entry.get("slice") == slice_index]
        if slice_index is not None and not mine:
            return None, NOTHING_SAVED
        return mine, version_of(mine)

    def save(self, case: Case, slice_index: int | None, boxes: list[dict[str, Any]], *, version: str,
             shape: tuple[int, ...]) -> str:
        """Replace the sample's boxes if they are still at `version`; returns the new version.

        `boxes` are {"label", "box"} entries in the sample's own pixels; raises AutomedsamError (nothing written) for
        a bad box or label, or a label boxed without the ring dataset.json declares around it (read at each save: the
        dataset may be imported again while the page runs), and VersionConflict when another save came first.
        """
        entries = [{**entry, "slice": slice_index} if slice_index is not None else entry for entry in boxes]
        where = f"boxes of {case.case_id}" + ("" if slice_index is None else f" slice {slice_index}")
        checked = checked_case_boxes(entries, shape=shape, labels=self.labels, rings=declared_rings(self.root),
                                     where=where)
        with self._locked():
            current, current_version = self.read(case, slice_index)
            if current_version != version:
                raise VersionConflict(current or [], current_version)
            others = [entry for entry in self._case_entries(case) or [] if entry.get("slice") != slice_index]
            save_json(self.path(case), others + checked)
        return _version_as_read([_plain(entry) for entry in checked], slice_index=slice_index)

    def remove(self, case: Case, *, version: str) -> str:
        """Delete a 2D image's box file if its boxes are still at `version` (an empty file would read as No
        structure); returns the version of a sample never saved."""
        with self._locked():
            current, current_version = self.read(case, None)
            if current_version != version:
                raise VersionConflict(current or [], current_version)
            with reporting_unwritable(self.path(case)):
                self.path(case).unlink(missing_ok=True)
        return NOTHING_SAVED

    def _case_entries(self, case: Case) -> list[dict[str, Any]] | None:
        """The case's box file, its entries checked as a box file's are (not against the image, which is not read
        here): a hand-edited slip is an error naming the file, never a sample counted done or a server error."""
        path = self.path(case)
        if not path.is_file():
            return None
        entries = load_json(path, "box file")
        try:
            return check_box_entries(entries, None, f"box file {path}")
        except AutomedsamError as error:
            raise AutomedsamError(f"{error} Fix or delete the file.") from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time: threads of this server, and other processes through a lock on boxesTr/ itself. A
        dataset folder this user may not write is the user's to fix, said as a save into boxesTr/ says it."""
        with reporting_unwritable(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            descriptor = os.open(self.folder, os.O_RDONLY)  # a directory can carry a flock: no lock file is written
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
                yield
            finally:
                os.close(descriptor)


def version_of(boxes: list[dict[str, Any]]) -> str:
    """A short digest of a sample's boxes, order-independent."""
    canonical = json.dumps(sorted((entry["label"], list(entry["box"])) for entry in boxes))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _version_as_read(boxes: list[dict[str, Any]], *, slice_index: int | None) -> str:
    """The version `read` reports for a sample holding `boxes`, which a save must answer too, or the tab's next save
    is a false conflict: a volume's slice without entries leaves no trace in its case's file, so it reads as never
    saved, while a 2D image's empty list is saved (No structure)."""
    return NOTHING_SAVED if slice_index is not None and not boxes else version_of(boxes)


def _plain(entry: dict[str, Any]) -> dict[str, Any]:
    """A stored entry as the page sees it: label and box (the slice is the sample's)."""
    return {"label": entry["label"], "box": entry["box"]}
