"""Segment a dataset's own images with the annotator's work first: what a clinician takes home after the loop.

A reference mask (labelsTr/) is the user's own segmentation and is kept as it is. A box drawn (or accepted in
review) on an image says where the structure is better than any learned prompt can, so there the frozen foundation
model outlines the boxes, as the page previewed them (a ring's box excepted: there the trained model's ring is kept
inside the box); an image, or a volume's slice, marked as not showing the structure stays empty; the trained model
segments everything else. A volume with boxes on some slices is segmented by the model, then those slices are
replaced. The images are the dataset's samples, so their embeddings come from the preprocessed folder's cache where
it holds them under the model's plans, and the 2D images encoded here go into it: a run after retraining costs the
decoder only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from automedsam import paths
from automedsam.boxes import check_box_entries
from automedsam.dataset import RawDataset, checked_case_boxes
from automedsam.errors import AutomedsamError
from automedsam.files import load_json
from automedsam.folds import SPLITS_FILE, load_splits
from automedsam.foundation.cache import PlannedEmbeddingCache
from automedsam.inference.agreement import FoldAgreement
from automedsam.inference.box_prompted import BoxPredictor, PlaneEmbedding
from automedsam.inference.naming import InputImage
from automedsam.inference.predictor import LoadedImage, Predictor, SliceEmbeddings, SliceProgress
from automedsam.io import read_image, read_segmentation, slice_placement, split_extension, write_segmentation
from automedsam.samples import case_of, sample_id, slice_of



@dataclass
class CaseAnnotation:
    """What the annotator said about one case: its box file's entries and the samples marked as empty."""

    entries: list[dict[str, Any]] | None = None  # None: no box file
    empty_slices: set[int] = field(default_factory=set)  # slices of a volume marked as not showing the structure


@dataclass
class SegmentedCounts:
    """How each image was segmented, for the run's summary."""

    from_masks: int = 0
    from_boxes: int = 0
    marked_empty: int = 0
    by_model: int = 0
    volumes_with_boxed_slices: int = 0

    def text(self) -> str:
        parts = [f"{self.from_masks} copied from the reference masks"] if self.from_masks else []
        parts += [f"{self.from_boxes} outlined from the annotator's boxes",
                 f"{self.marked_empty} marked as not showing the structure (left empty)",
                 f"{self.by_model} segmented by the model"]
        if self.volumes_with_boxed_slices:
            parts[-1] += f" ({self.volumes_with_boxed_slices} volume(s) with their boxed slices outlined from boxes)"
        return ", ".join(parts)


def dataset_images(dataset: RawDataset) -> list[InputImage]:
    """The dataset's images as prediction inputs, named by case id."""
    return [InputImage(case.case_id, case.image, split_extension(case.image)[1]) for case in dataset.cases]


def case_annotations(dataset: RawDataset) -> dict[str, CaseAnnotation]:
    """Per case, the annotator's boxes (raw boxesTr/) and, for an interactive dataset, the volume slices rejected
    in the page (splits.json; a rejected 2D image is an empty box file)."""
    found: dict[str, CaseAnnotation] = {}
    for case in dataset.cases:
        if case.boxes is not None:
            found[case.case_id] = CaseAnnotation(entries=_box_file_entries(case.boxes))
    splits_path = paths.preprocessed_dataset_dir(dataset.name) / SPLITS_FILE
    if dataset.interactive and splits_path.is_file():
        for rejected in load_splits(splits_path).get("interactive", {}).get("rejected", []):
            slice_index = slice_of(rejected)
            if slice_index is not None:
                found.setdefault(case_of(rejected), CaseAnnotation()).empty_slices.add(slice_index)
    return found


def _box_file_entries(path: Path) -> list[dict[str, Any]]:
    """A box file's entries checked as every box file is (not against its image, which is not read here): a
    hand-edited slip is an error naming the file, never a crash of a reader that trusts the entries' keys."""
    try:
        return check_box_entries(load_json(path, "box file"), None, f"box file {path}")
    except AutomedsamError as error:
        raise AutomedsamError(f"{error} Fix or delete the file.") from None


class DatasetImageSegmenter:
    """Segments one case at a time: boxes where the annotator gave them, the trained model elsewhere."""

    def __init__(self, predictor: Predictor, dataset: RawDataset, annotations: Mapping[str, CaseAnnotation], *,
                 embeddings: PlannedEmbeddingCache | None = None,
                 warn_doubt: Callable[[str, str | None], int] | None = None,
                 progress: SliceProgress | None = None) -> None:
        """`warn_doubt(case_id, doubt)` hears why the model cannot read an image it segments (an image imported
        after planning may be a 16-bit export), or None, and returns 1 where it warned; `progress` hears of the
        model's slices done in the image it segments (a volume takes minutes)."""
        self.predictor = predictor
        self.warn_doubt = warn_doubt
        self.progress = progress
        self.doubtful = 0  # images the model segmented that `warn_doubt` warned about
        self.boxes = BoxPredictor(predictor.foundation, predictor.plans)
        self.dataset = dataset
        self.masks = {case.case_id: case.label for case in dataset.cases if case.label is not None}
        self.annotations = annotations
        self.embeddings = embeddings
        self.counts = SegmentedCounts()

    def segment(self, image: InputImage, out_path: Path) -> float | None:
        """Write the case's label map to `out_path` (atomically), with its image's geometry. Returns the folds'
        agreement where the trained model segmented the image (inference.agreement), None where the user's mask,
        boxes or marks made all of it, or a single fold segmented it."""
        if image.case_id in self.masks:
            mask, geometry = read_segmentation(self.masks[image.case_id])
            geometry.placement = slice_placement(image.path)  # a mask ITK wrote lies flat where its slice is tilted
            write_segmentation(out_path, mask, geometry)
            self.counts.from_masks += 1
            return None
        if self.embeddings is not None:
            self.embeddings.note_read(image.case_id)
        pixels, geometry = read_image(image.path)
        is_volume = geometry.ndim == 3
        annotation = self.annotations.get(image.case_id, CaseAnnotation())
        entries = [] if annotation.entries is None else checked_case_boxes(
            annotation.entries, shape=pixels.shape[:geometry.ndim], labels=self.dataset.labels,
            where=f"box file of case '{image.case_id}'")
        entries = [{**entry, "slice": entry.get("slice")} for entry in entries]
        rings = any(entry["label"] in self.boxes.ring_labels for entry in entries)
        if not is_volume and annotation.entries is not None:
            model_map = self._model_map(image.case_id, pixels, is_volume=False) if rings else None
            label_map = self._annotated(image.case_id, pixels, entries, model_map, is_volume=False)
            if entries:
                self.counts.from_boxes += 1
            else:
                self.counts.marked_empty += 1
            agreement = None  # the annotator's boxes, not the folds, say where the structure is
        else:
            agreement = FoldAgreement()
            label_map = self._model_map(image.case_id, pixels, is_volume=is_volume, agreement=agreement)
            self.counts.by_model += 1
            if is_volume:
                label_map = self._with_annotated_slices(image.case_id, label_map, pixels, entries,
                                                        annotation.empty_slices)
        write_segmentation(out_path, label_map, geometry)
        if agreement is None:
            return None
        # a volume's slices the user boxed or marked empty need no check: scored without them where the model's
        # slices are the boxes' (the first axis); the whole volume where it sliced another axis
        corrected = ({entry["slice"] for entry in entries} | annotation.empty_slices
                     if is_volume and self.predictor.volume_axis(pixels.shape) == 0 else set())
        return agreement.score(leave_out=corrected)

    def _model_map(self, case_id: str, pixels: np.ndarray, *, is_volume: bool,
                   agreement: FoldAgreement | None = None) -> np.ndarray:
        """The trained model's label map of the case (the folds' agreement added to `agreement` when given)."""
        loaded = self.predictor.load_array(pixels, is_volume=is_volume)
        if self.warn_doubt is not None:
            self.doubtful += self.warn_doubt(case_id, loaded.doubt)
        probabilities = self.predictor.slice_probabilities(
            loaded, embeddings=self._slice_embeddings(case_id, loaded), agreement=agreement, progress=self.progress)
        return self.predictor.combine(probabilities, loaded.axis)[0]

    def _slice_embeddings(self, case_id: str, loaded: LoadedImage) -> SliceEmbeddings | None:
        """The embeddings of the case's slices along the planned axis (the samples'): read from the cache where
        stored, else encoded, and then stored for a 2D image only: a volume's every slice would cost 2 MB each. A
        volume cut along another axis (one voxel thick there) has no samples of its slices."""
        if self.embeddings is None or (loaded.is_volume and loaded.axis != self.predictor.plans.slicing_axis):
            return None
        is_volume, slices = loaded.is_volume, loaded.slices
        return lambda start, stop: self.embeddings.embeddings(
            self.predictor.foundation, [sample_id(case_id, index if is_volume else None)
                                        for index in range(start, stop)], slices[start:stop], add=not is_volume)

    def _plane_embedding(self, case_id: str, *, is_volume: bool) -> PlaneEmbedding | None:
        """The cached embedding of a boxed plane: box slices index the first axis, the samples the planned one."""
        if self.embeddings is None or (is_volume and self.predictor.plans.slicing_axis != 0):
            return None
        return lambda slice_index, plane: self.embeddings.embeddings(
            self.predictor.foundation, [sample_id(case_id, slice_index)], plane[None], add=not is_volume)

    def _with_annotated_slices(self, case_id: str, label_map: np.ndarray, pixels: np.ndarray,
                               entries: list[dict[str, Any]], empty_slices: set[int]) -> np.ndarray:
        """The model's volume with every boxed slice taken from its boxes and every rejected slice emptied."""
        boxed = {entry["slice"] for entry in entries}
        if boxed:
            from_boxes = self._annotated(case_id, pixels, entries, label_map, is_volume=True)
            label_map = label_map.astype(np.promote_types(label_map.dtype, from_boxes.dtype))
            for slice_index in boxed:
                label_map[slice_index] = from_boxes[slice_index]
            self.counts.volumes_with_boxed_slices += 1
        for slice_index in empty_slices - boxed:
            if 0 <= slice_index < label_map.shape[0]:
                label_map[slice_index] = 0
        return label_map

    def _annotated(self, case_id: str, pixels: np.ndarray, entries: list[dict[str, Any]],
                   model_map: np.ndarray | None, *, is_volume: bool) -> np.ndarray:
        """The label map of the boxed planes: each box outlined by the frozen model, except a ring's. Given a ring's
        box (the myocardium's), the frozen model outlines the cavity inside it, not the ring (ACDC:
        documentation/benchmarks.md), so a ring is the trained model's ring inside its boxes, under the other
        labels' outlines. `model_map` is the model's label map, needed only when a ring label is boxed."""
        ring_entries = [entry for entry in entries if entry["label"] in self.boxes.ring_labels]
        outlined = self.boxes.predict_array(pixels, [entry for entry in entries if entry not in ring_entries],
                                            is_volume, embedding_of=self._plane_embedding(case_id,
                                                                                          is_volume=is_volume))
        if not ring_entries:
            return outlined
        assert model_map is not None, "a boxed ring label needs the model's label map"
        rings = np.zeros(outlined.shape, dtype=np.promote_types(outlined.dtype, model_map.dtype))
        for entry in ring_entries:
            x0, y0, x1, y1 = entry["box"]
            window = (entry["slice"], slice(y0, y1 + 1), slice(x0, x1 + 1)) if is_volume else (
                slice(y0, y1 + 1), slice(x0, x1 + 1))
            rings[window][model_map[window] == entry["label"]] = entry["label"]
        return np.where(outlined > 0, outlined, rings)
