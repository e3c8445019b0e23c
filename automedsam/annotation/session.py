"""What the annotation page works on: the queue of samples to annotate, their pixels, boxes and previews.

The queue is the draw of splits.json (written by automedsam_plan_and_preprocess): the first N samples of the seeded
order that the annotator did not reject, plus those added in review. Rejecting a sample ("does not show the
structure") records it in splits.json, writes an empty box list for a 2D image, and brings in the next sample of
the order; the next plan_and_preprocess redraws exactly this queue. The page lists the rejected samples too, and
Restore takes a rejection back. In review mode the queue is the unlabelled samples ranked by the ensemble's fold
disagreement, each with the ensemble's prediction; saving boxes for one adds it to the labelled set (splits.json
`interactive.added`), and deleting them all takes it out again.
"""
from __future__ import annotations

import copy
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from automedsam.annotation.box_store import NOTHING_SAVED, BoxStore, VersionConflict
from automedsam.annotation.preview import BoxPreview
from automedsam.boxes import BOX_SLICE_AXIS, validate_box
from automedsam.dataset import Case, RawDataset, load_raw_dataset
from automedsam.errors import AutomedsamError
from automedsam.files import holding_lock, load_json, save_json
from automedsam.folds import (ANNOTATION_RECORD, PAGE_RECORD_LISTS, SPLITS_FILE, SPLITS_LOCK_FILE, check_page_record,
                              load_splits)
from automedsam.foundation.base import FoundationModel
from automedsam.io import read_image
from automedsam.plans import Plans
from automedsam.samples import case_of, numpy_spacing, slice_of

# the version of a volume's slice marked No structure: its box file keeps no trace of it, so without its own version a
# tab that loaded the slice before would save its boxes over the decision unasked (a 2D image's empty list has one)
NO_STRUCTURE_SLICE = "no-structure"
ASPECT_LIMITS = (0.1, 10.0)  # a pixel's height over its width outside these is a broken header: drawn clamped


class UnknownSample(KeyError):
    """A sample id the page may not use (not in this session's queue): the server answers 404."""


class MarkedNoStructure(AutomedsamError):
    """An empty save of a sample marked No structure already (in another tab, say): X would only mark it again.
    It carries the sample's `version` as the server holds it, so that the page can take that state and move on."""

    def __init__(self, sample_id: str, *, version: str) -> None:
        super().__init__(f"{sample_id} is marked No structure already (in another tab or window, say): there is no "
                         "box to save. To annotate it instead, draw its boxes and save them.")
        self.sample_id = sample_id
        self.version = version


@dataclass
class ReviewItem:
    """An unlabelled sample shown in review: how much the folds disagree on it and what the ensemble predicts."""

    sample_id: str
    disagreement: float
    boxes: list[dict[str, Any]]  # the ensemble's boxes, {"label", "box"}, proposed to the annotator
    label_map: np.ndarray  # the ensemble's label map of the sample, (H, W)


@dataclass
class _Image:
    pixels: np.ndarray  # (H, W), (H, W, 3) or (Z, Y, X), as stored
    shape: tuple[int, ...]  # spatial shape
    spacing: tuple[float, ...]  # of its spatial axes, in numpy order


@dataclass
class AnnotationSession:
    """One dataset's annotation state, shared by every request of the server (thread-safe writes)."""

    dataset: RawDataset
    preprocessed_dir: Path
    foundation: FoundationModel | Callable[[], FoundationModel] | None = None  # default: the planned model
    review: list[ReviewItem] | None = None
    device: str | None = None  # of the planned model when `foundation` is None
    boxes: BoxStore = field(init=False)
    _images: dict[str, _Image] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _pushed_out: set[str] = field(init=False, default_factory=set)  # left the draw on a Restore, without boxes

    def __post_init__(self) -> None:
        splits_path = self.preprocessed_dir / SPLITS_FILE
        if not splits_path.is_file():
            raise AutomedsamError(f"{splits_path} does not exist: no samples have been drawn yet. Run "
                                  f"automedsam_plan_and_preprocess -d {self.dataset.name} first.")
        self.cases = {case.case_id: case for case in self.dataset.cases}
        self.plans = Plans(load_json(self.preprocessed_dir / "plans.json", "plans file"))
        self.boxes = BoxStore(self.dataset.root, self.dataset.labels)
        self.preview = BoxPreview(self.plans, self.preprocessed_dir, self.foundation, device=self.device,
                                  images=self.images())
        self.splits = self._read_splits()  # last: an image imported since the dataset was read updates the above
        self._review = {item.sample_id: item for item in self.review or []}

    def reload(self) -> None:
        """Read splits.json and plans.json again, after planning ran beside the server (training from the page)."""
        self.splits = self._read_splits()
        plans = Plans(load_json(self.preprocessed_dir / "plans.json", "plans file"))
        if plans["foundation_model"] != self.plans["foundation_model"] or plans["normalization"] != self.plans[
                "normalization"]:
            self.preview = BoxPreview(plans, self.preprocessed_dir, self.foundation, device=self.device,
                                      images=self.images())
        self.plans = plans

    def start_review(self, items: list[ReviewItem]) -> None:
        """Show these unlabelled samples (worst first) with their predictions instead of the draw."""
        self._review = {item.sample_id: item for item in items}  # first: overview() reads it for every queued sample
        self.review = list(items)

    def unlabelled(self) -> list[str]:
        """The samples of the seeded order that are neither drawn, added, nor rejected: the review's candidates
        (whatever the page shows: in review, the queue is the review's own list)."""
        record = self.splits["interactive"]
        taken = set(self.labelled()) | set(record["rejected"])
        return [sid for sid in record["order"] if sid not in taken and not self._annotated(sid)]

    def _annotated(self, sample_id: str) -> bool:
        """A sample the user annotated outside the draw (its case's mask, or its boxes): nothing to review."""
        case = self.cases.get(case_of(sample_id))
        if case is None:
            return False
        if case.label is not None:
            return True
        return self.boxes.path(case).is_file() and bool(self.boxes.read(case, slice_of(sample_id))[0])

    def images(self) -> dict[str, Path]:
        """Case id -> raw image file, for the embedding cache: an image imported again since is encoded again."""
        return {case_id: case.image for case_id, case in self.cases.items()}

    def normalised_plane(self, sample_id: str, plans: Plans | None = None) -> np.ndarray:
        """A sample's plane in the intensity window of `plans` (default the session's: what its model sees), for
        any sample of the dataset; the review passes its trained model's plans, whose window may differ."""
        case = self.cases.get(case_of(sample_id))
        if case is None:
            raise UnknownSample(sample_id)
        return (plans or self.plans).normalise(self._sample_plane(case, sample_id))

    # --- the queue ---------------------------------------------------------------------------------------------

    @property
    def labels(self) -> dict[str, int]:
        return {name: value for name, value in self.dataset.labels.items() if value != 0}

    def queue(self) -> list[str]:
        """The samples shown, in order: the draw (or, in review, the unlabelled samples worst first)."""
        if self.review is not None:
            return [item.sample_id for item in self.review]
        return self.labelled()

    def listed(self) -> list[str]:
        """The page's list: the queue and, outside review, the samples marked No structure at their place in the
        seeded order, so that the annotator sees them and can restore one."""
        if self.review is not None:
            return self.queue()
        record = self.splits["interactive"]
        shown = set(_drawn(self.splits)) | set(record["rejected"])
        in_order = [sid for sid in record["order"] if sid in shown]
        return in_order + [sid for sid in self.labelled() if sid not in shown]

    def labelled(self) -> list[str]:
        """The labelled set: the first N samples of the seeded order not rejected, then those added in review."""
        return _labelled(self.splits)

    def status(self, sample_id: str) -> str:
        """"done" (boxes saved, or its case has a label map), "rejected" (does not show the structure) or "todo".

        Planning reads a label map's case from the map alone, whatever its box file holds, and draws only the
        samples where it holds foreground: a drawn one is annotated, no box asked of it, even with an empty box file
        left from a No structure pressed before the map came."""
        if sample_id in self.splits["interactive"]["rejected"]:
            return "rejected"
        case = self._case(sample_id)
        if case.label is not None:
            return "done"
        boxes, _ = self.boxes.read(case, slice_of(sample_id))
        if boxes is None:
            return "todo"
        return "done" if boxes else "rejected"

    def labelled_progress(self) -> dict[str, int]:
        """The labelled set's boxed samples ("done" of "total"; "added" of them beyond the draw, in review or kept on a
        Restore), whatever the page shows: in review the overview counts the review's own queue, not the drawn
        samples boxed before it."""
        added = set(self.splits["interactive"]["added"])
        labelled = self.labelled()
        done = [sid for sid in labelled if self.status(sid) == "done"]
        return {"done": len(done), "total": len(labelled), "added": len(added.intersection(done))}

    def overview(self) -> dict[str, Any]:
        queue = self.queue()
        statuses = [{"sample": sid, "case": case_of(sid), "slice": slice_of(sid), "status": self.status(sid)}
                    for sid in self.listed()]
        if self.review is not None:
            for entry in statuses:
                entry["disagreement"] = round(self._review[entry["sample"]].disagreement, 4)
                entry["status"] = "added" if entry["sample"] in self.splits["interactive"]["added"] else "todo"
        done = sum(entry["status"] in ("done", "added") for entry in statuses)
        return {"dataset": self.dataset.name, "mode": "review" if self.review is not None else "annotate",
                "labels": self.labels, "samples": statuses, "done": done, "total": len(queue)}

    # --- one sample --------------------------------------------------------------------------------------------

    def sample(self, sample_id: str) -> dict[str, Any]:
        case, slice_index = self._case(sample_id), slice_of(sample_id)
        plane = self._sample_plane(case, sample_id)
        image = self._image(case)
        boxes, version = self.boxes.read(case, slice_index)
        version = self._page_version(sample_id, boxes, version)
        proposed = None
        if sample_id in self._review and boxes is None:
            proposed = self._review[sample_id].boxes
        low, high = np.percentile(plane, [0.5, 99.5])
        return {"sample": sample_id, "case": case.case_id, "slice": slice_index,
                "slices": image.shape[0] if slice_index is not None else 1, "shape": list(plane.shape[:2]),
                "aspect": pixel_aspect(image.spacing),
                "channels": 3 if plane.ndim == 3 else 1, "window": [float(low), float(high)],
                "range": [float(plane.min()), float(plane.max())], "boxes": boxes or [], "version": version,
                "proposed": proposed, "status": self.status(sample_id)}

    def pixels(self, sample_id: str, slice_index: int | None) -> np.ndarray:
        """The stored intensities of the sample's plane (or of another slice of its volume), float32."""
        case = self._case(sample_id)
        image = self._image(case)
        if slice_of(sample_id) is None:
            if slice_index is not None:
                raise AutomedsamError(f"{sample_id} is a 2D image: it has no slices.")
        elif slice_index is None or not 0 <= slice_index < image.shape[0]:
            raise AutomedsamError(f"slice {slice_index} is outside the {image.shape[0]} slices of {case.case_id}.")
        return np.ascontiguousarray(self._plane(image, slice_index), dtype=np.float32)

    def prediction(self, sample_id: str) -> np.ndarray | None:
        """The ensemble's label map of a review sample, (H, W): uint8 while its ids fit a byte (half the bytes to send),
        uint16 for ids above 255 (the masks' type, as the dataset may define them); None outside review."""
        item = self._review.get(sample_id)
        if item is None:
            return None
        return item.label_map.astype(np.uint8 if item.label_map.max(initial=0) <= 255 else np.uint16)

    def save(self, sample_id: str, boxes: list[dict[str, Any]], *, version: str) -> str:
        """Store the sample's boxes (see BoxStore.save); a sample saved with boxes joins the labelled set (in review:
        added; marked No structure before: restored). A 2D image saved without boxes is refused, since the planner
        reads an empty box list as "does not show the structure", which only No structure (reject) records as such;
        in review, where a sample is added with its boxes, saving none takes it out again.

        Returns the version sample() reports now (a slice saved without boxes while marked No structure:
        NO_STRUCTURE_SLICE), or the same tab's next save or Restore with it would be a false conflict."""
        case, slice_index = self._case(sample_id), slice_of(sample_id)
        held = self._held_version(case, sample_id)
        if not boxes and sample_id not in self._review:
            self._refuse_nothing_to_save(sample_id, version=version, held=held)
        version = self._box_version(version, held=held)
        if not boxes and self.review is not None:  # an added sample whose boxes were deleted leaves the labelled set
            new_version = self._remove_boxes(case, slice_index, version=version)
            self._record(remove_from="added", add_to=None, sample_id=sample_id)
        else:
            new_version = self.boxes.save(case, slice_index, boxes, version=version, shape=self._image(case).shape)
            if boxes:
                self._edit_record(lambda splits: self._join(splits, sample_id))
        return self._page_version(sample_id, boxes or None, new_version)  # a slice without boxes reads as None

    def _refuse_nothing_to_save(self, sample_id: str, *, version: str, held: str) -> None:
        """Refuse an empty save with nothing to save. A 2D image's, always: the planner reads an empty 2D box list as
        No structure, which only X records; one marked so already (in another tab, say) is told so, with the version
        the server `held`, any other is asked for its box, or for X. A slice's, when another tab marked it No
        structure meanwhile (the page's `version` says it did not know): told so the same way, not as a conflict over
        boxes this tab does not have."""
        image_2d = slice_of(sample_id) is None
        if held == NO_STRUCTURE_SLICE != version or (image_2d and self.status(sample_id) == "rejected"):
            raise MarkedNoStructure(sample_id, version=held)
        if image_2d:
            raise AutomedsamError(f"No box to save for {sample_id}: draw the structure's box, or press X (No "
                                  "structure) if the image does not show it.")

    def reject(self, sample_id: str, *, version: str) -> str:
        """The sample does not show the structure: record it (2D: an empty box list) so the next draw replaces it.

        A slice's saved boxes are removed: the next plan counts a boxed slice as annotated, not rejected."""
        if self.review is not None:
            raise AutomedsamError("In review, leave a sample you do not want to add unsaved.")
        case, slice_index = self._case(sample_id), slice_of(sample_id)
        if case.label is not None:  # planning would put it back into the draw at the next Train (see status)
            raise AutomedsamError(f"{sample_id} is annotated by its label map {case.label.parent.name}/"
                                  f"{case.label.name}, which planning reads instead of boxes or No structure: edit or "
                                  "remove that file to change its annotation.")
        self.splits = self._read_splits()  # a record the page cannot write refuses before the boxes change
        boxes, new_version = self.boxes.read(case, slice_index)  # a slice without boxes: its version as read
        if slice_index is None or boxes:  # a 2D image's empty list says so too
            new_version = self.boxes.save(case, slice_index, [], version=version, shape=self._image(case).shape)
        if slice_index is not None:
            new_version = NO_STRUCTURE_SLICE
        # one added in review leaves `added` too: rejected yet added, it stayed labelled and blocked every Train
        self._record(remove_from="added", add_to="rejected", sample_id=sample_id)
        return new_version

    def restore(self, sample_id: str, *, version: str) -> str:
        """Take back a No structure: the sample rejoins the labelled set (at its place in the draw, or as added) with
        no boxes, to annotate; a sample the draw brought in for it stays if it has boxes (as added), else leaves."""
        case, slice_index = self._case(sample_id), slice_of(sample_id)
        if sample_id not in self.splits["interactive"]["rejected"]:  # restored or boxed from another tab: a conflict
            boxes, current_version = self.boxes.read(case, slice_index)
            raise VersionConflict(boxes or [], current_version)
        version = self._box_version(version, held=self._held_version(case, sample_id))
        new_version = self._remove_boxes(case, slice_index, version=version)
        self._edit_record(lambda splits: self._join(splits, sample_id))
        return new_version

    def segment(self, sample_id: str, box: list[int]) -> np.ndarray:
        """The frozen model's box-prompted mask of `box` on the sample, bool (H, W)."""
        case = self._case(sample_id)
        read_as = self.preview.note_read(sample_id)
        plane = self._sample_plane(case, sample_id)
        checked = validate_box(box, plane.shape[:2], f"preview box of {sample_id}")
        return self.preview.mask(sample_id, self.plans.normalise(plane), checked, read_as=read_as)

    def propose(self, sample_id: str, point: list[int]) -> list[list[int]]:
        """The boxes the frozen model proposes for a double-click at `point` ([x, y]) on the sample, best first."""
        case = self._case(sample_id)
        read_as = self.preview.note_read(sample_id)
        plane = self._sample_plane(case, sample_id)
        height, width = plane.shape[:2]
        if not (0 <= point[0] < width and 0 <= point[1] < height):
            raise AutomedsamError(f"point {point} of {sample_id} lies outside its {height}x{width} image")
        return self.preview.proposals(sample_id, self.plans.normalise(plane), point, read_as=read_as)

    # --- helpers -----------------------------------------------------------------------------------------------

    def _case(self, sample_id: str) -> Case:
        """The case of a sample the page may show or save: the labelled set stays savable while a review replaces
        the queue (a tab's unsaved boxes when another tab's Train ends), and so does a sample another tab's Restore
        pushed out of the draw (a tab may still be boxing it: saved with boxes, it is added); anything else is
        unknown."""
        allowed = (set(self.labelled()) | set(self._review) | set(self.splits["interactive"]["rejected"])
                   | self._pushed_out)
        if sample_id not in allowed or case_of(sample_id) not in self.cases:
            raise UnknownSample(sample_id)
        return self.cases[case_of(sample_id)]

    def _image(self, case: Case) -> _Image:
        cached = self._images.get(case.case_id)
        if cached is None:
            pixels, geometry = read_image(case.image)
            cached = _Image(pixels, pixels.shape[: geometry.ndim], numpy_spacing(geometry.spacing))
            self._images = {case.case_id: cached}  # one case at a time: volumes can be large
        return cached

    def _sample_plane(self, case: Case, sample_id: str) -> np.ndarray:
        """The sample's own plane; a slice drawn before its volume was imported again with fewer slices has none."""
        image, slice_index = self._image(case), slice_of(sample_id)
        if slice_index is not None and slice_index >= image.shape[0]:
            raise AutomedsamError(f"{sample_id} is slice {slice_index} of {case.case_id}, whose image now has "
                                  f"{image.shape[0]} slices (imported again since the samples were drawn). Run "
                                  f"automedsam_plan_and_preprocess -d {self.dataset.name} to draw again from the "
                                  "images there (it keeps the samples marked No structure and those added in review), "
                                  "then start automedsam_annotate again.")
        return self._plane(image, slice_index)

    def _plane(self, image: _Image, slice_index: int | None) -> np.ndarray:
        """The 2D plane of a sample: the image, or slice `slice_index` along the first axis (that of box files)."""
        return image.pixels if slice_index is None else image.pixels[slice_index]

    def _page_version(self, sample_id: str, boxes: list[dict[str, Any]] | None, version: str) -> str:
        """The version the page holds of a sample whose boxes read at `version`: NO_STRUCTURE_SLICE for a slice
        marked No structure (no boxes saved), else the boxes' own."""
        if slice_of(sample_id) is not None and boxes is None and sample_id in self.splits["interactive"]["rejected"]:
            return NO_STRUCTURE_SLICE
        return version

    def _held_version(self, case: Case, sample_id: str) -> str:
        """The version the page would hold of the sample now: one read of its box file for a save or Restore."""
        return self._page_version(sample_id, *self.boxes.read(case, slice_of(sample_id)))

    def _box_version(self, version: str, *, held: str) -> str:
        """The box store's version for the page's `version` of a sample the server `held` at: a page that did not
        know a slice was marked No structure gets the conflict a changed box list gives (the page asks before saving
        over it)."""
        if held != NO_STRUCTURE_SLICE:
            return version
        if version != NO_STRUCTURE_SLICE:
            raise VersionConflict([], NO_STRUCTURE_SLICE)
        return NOTHING_SAVED

    def _remove_boxes(self, case: Case, slice_index: int | None, *, version: str) -> str:
        """Forget a sample's boxes, if they are still at `version`: a slice's entries go from its case's file, a 2D
        image's file goes whole (the planner reads an empty 2D box list as No structure)."""
        if slice_index is not None:
            return self.boxes.save(case, slice_index, [], version=version, shape=self._image(case).shape)
        return self.boxes.remove(case, version=version)

    def _join(self, splits: dict[str, Any], sample_id: str) -> None:
        """Put a sample with boxes (or restored) into the labelled set of `splits`: out of `rejected`, back at its
        place in the draw, or else added. A drawn sample this pushes out of the draw keeps its boxes' work: with
        boxes it stays as added, without it leaves."""
        record = splits["interactive"]
        before = _drawn(splits)
        record["rejected"] = [sid for sid in record["rejected"] if sid != sample_id]
        after = _drawn(splits)
        pushed_out = [sid for sid in before if sid not in after]
        boxed = [sid for sid in pushed_out if self._has_boxes(sid)]
        self._pushed_out.update(sid for sid in pushed_out if sid not in boxed)
        for sid in boxed + ([] if sample_id in _labelled(splits) else [sample_id]):
            if sid not in record["added"]:
                record["added"].append(sid)

    def _has_boxes(self, sample_id: str) -> bool:
        case = self.cases.get(case_of(sample_id))
        return case is not None and bool(self.boxes.read(case, slice_of(sample_id))[0])

    def _record(self, *, remove_from: str | None, add_to: str | None, sample_id: str) -> None:
        """Move a sample between the lists of splits.json's annotation record."""
        def move(splits: dict[str, Any]) -> None:
            record = splits[ANNOTATION_RECORD]
            if remove_from:
                record[remove_from] = [sid for sid in record[remove_from] if sid != sample_id]
            if add_to and sample_id not in record[add_to]:
                record[add_to].append(sample_id)
        self._edit_record(move)

    def _read_splits(self) -> dict[str, Any]:
        """splits.json as the session indexes it: checked, with an annotation record whose samples all have their
        case among the session's (a folder imported again without an image leaves its samples there; one imported
        with more images while the page runs is read again, since Train's planning adds them to the order)."""
        path = self.preprocessed_dir / SPLITS_FILE
        splits = load_splits(path)
        if ANNOTATION_RECORD not in splits:
            raise AutomedsamError(f"{self.dataset.name} is not a dataset annotated in the browser (its dataset.json "
                                  "has no \"annotation\": \"interactive\"). Import the images with automedsam_convert "
                                  "folder without --masks and --boxes, then run automedsam_plan_and_preprocess.")
        record = check_page_record(splits, path)
        gone = self._unknown_samples(record)
        if gone:  # images imported since the page started: Train's planning put them in the order
            self._read_dataset()
            gone = self._unknown_samples(record)
        if gone:
            raise AutomedsamError(f"{path} names {len(gone)} sample(s) of images that this page did not find in "
                                  f"{self.dataset.root / 'imagesTr'} ({', '.join(gone[:3])}"
                                  f"{' and more' if len(gone) > 3 else ''}): taken out of the folder since they were "
                                  "drawn. Run automedsam_plan_and_preprocess -d "
                                  f"{self.dataset.name} to draw again from the images there (it keeps the samples "
                                  "marked No structure and those added in review), then start automedsam_annotate "
                                  "again.")
        return splits

    def _unknown_samples(self, record: dict[str, Any]) -> list[str]:
        """The samples of the annotation record whose case the session does not know."""
        return sorted({sid for key in PAGE_RECORD_LISTS for sid in record[key] if case_of(sid) not in self.cases})

    def _read_dataset(self) -> None:
        """Read the raw dataset's cases again (the folder imported again while the page runs), and what they feed:
        the cases, the box labels, the preview's images (an image written since is encoded again), the pixels."""
        self.dataset = load_raw_dataset(self.dataset.root, check_images=False)
        self.cases = {case.case_id: case for case in self.dataset.cases}
        self.boxes.labels = self.dataset.labels
        self.preview.cache.images = self.images()
        self._images = {}

    def _edit_record(self, edit: Callable[[dict[str, Any]], None]) -> None:
        """Apply `edit` to splits.json as it is on disk (atomically, one writer at a time, a planner's too)."""
        with self._lock, holding_lock(self.preprocessed_dir / SPLITS_LOCK_FILE):
            splits = self._read_splits()
            before = copy.deepcopy(splits)
            edit(splits)
            if splits != before:
                save_json(self.preprocessed_dir / SPLITS_FILE, splits)
            self.splits = splits


def pixel_aspect(spacing: Sequence[float]) -> float:
    """How much taller than wide a sample's pixel is in the world (its rows' spacing over its columns'), for the page
    to draw the anatomy unstretched. `spacing` is the image's, in numpy order: a 2D image's (rows, columns), a
    volume's with the axis its samples are cut along (BOX_SLICE_AXIS, as `_plane` cuts them) dropped. A spacing that
    is not a positive number draws square pixels; an aspect outside ASPECT_LIMITS is clamped to it."""
    rows, columns = spacing if len(spacing) == 2 else [value for axis, value in enumerate(spacing)
                                                        if axis != BOX_SLICE_AXIS]
    if not all(math.isfinite(value) and value > 0 for value in (rows, columns)):
        return 1.0
    return min(max(rows / columns, ASPECT_LIMITS[0]), ASPECT_LIMITS[1])


def _drawn(splits: dict[str, Any]) -> list[str]:
    """The draw: the first N samples of the seeded order that were not rejected."""
    record = splits["interactive"]
    rejected = set(record["rejected"])
    drawn = [sid for sid in record["order"] if sid not in rejected]
    return drawn if splits["shots"] == "all" else drawn[:int(splits["shots"])]


def _labelled(splits: dict[str, Any]) -> list[str]:
    """The draw, then the samples added in review (not rejected since)."""
    drawn = _drawn(splits)
    rejected = set(splits["interactive"]["rejected"])
    return drawn + [sid for sid in splits["interactive"]["added"] if sid not in drawn and sid not in rejected]
