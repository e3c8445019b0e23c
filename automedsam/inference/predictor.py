"""The ensembling predictor: one encoder pass per 2D image, shared by every fold and every target.

Per batch of slices: prepare and encode once (per test-time flip), run the prompt module of every fold and target,
decode all those prompts with the frozen decoder in a few large calls, average the sigmoid probabilities over
folds, outline the targets chosen for box refinement with the frozen model from the boxes of their predicted
components (automedsam.box_refinement), map them to the original grid, flip them back and average over flips. The
slices where a chosen target's first pass (the folds' mean before box refinement, as the folds' check measured it) was
unsure of its object are predicted again the same way through a window at the labelled objects' scale, which
replaces that object (automedsam.second_look). Then rings are recovered, overlaps resolved and the planned
postprocessing applied to each 2D image (a volume's slices one by one).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from automedsam.box_refinement import choose_refined_labels, image_region, refine_with_boxes, refinement_applies
from automedsam.errors import AutomedsamError
from automedsam.files import save_json, save_npz
from automedsam.foundation.base import FoundationModel, default_batch_size
from automedsam.foundation.frame import Frame
from automedsam.inference.agreement import FoldAgreement
from automedsam.inference.combine import RunningMean, check_targets, label_map_from, postprocess, ring_probabilities
from automedsam.inference.model_folder import DEFAULT_CHECKPOINT, ModelFolder, fold_remedy, open_model_folder
from automedsam.inference.naming import probabilities_paths
from automedsam.io import Geometry, read_image, write_segmentation
from automedsam.plans import Plans
from automedsam.prompt_module import load_modules
from automedsam.samples import MAX_CHANNELS, numpy_spacing, own_axis_cut_across, slicing_axis, swapping_order
from automedsam.second_look import choose_second_look, crop_window, look_window, pasted_look, unsure_object

# Prompts decoded per encoded slice in one decoder call: sized so that a call holds less memory than the encoder's
# pass over the same slices (memory per pass: documentation/benchmarks.md, Speed).
PROMPTS_PER_SLICE = 4
FLIPS: tuple[tuple[int, ...], ...] = ((), (1,), (0,))  # identity, horizontal (columns), vertical (rows)
BOX_REFINEMENT_MODES = ("auto", "on", "off")
SECOND_LOOK_MODES = ("auto", "on", "off")
IMAGE_CHANNELS = (1, 3, 4)  # a model planned for 2D reads a 3-axis array with this many last-axis values as one image
ARRAY_SHAPES = "a numeric (H, W) or (H, W, 3) image or a (Z, Y, X) volume"
SliceEmbeddings = Callable[[int, int], torch.Tensor]  # (start, stop) -> those slices' (n, 256, 64, 64) embeddings
SliceProgress = Callable[[int, int], None]  # (slices done, slices of the image), called after each batch of slices
OUTSIDE_WINDOW_SHARE = 0.5  # an image with more of its pixels outside the planned window gets a warning
# Windows of every pixel of the dataset's images: an image mostly outside one is unlike them. A CT window covers the
# labelled structures' intensities only, and most of a scan (air, fat, lungs) lies outside it in training too.
WHOLE_IMAGE_WINDOWS = ("percentile_window",)
PROBABILITY_TEXT = ("sigmoid averaged over folds (and flips); for a box-refined target the frozen model's "
                    "probabilities prompted with the boxes of its predicted objects; inside a second look's window "
                    "the window's prediction, and the object looked at 0 outside it; rings already subtracted, "
                    "before postprocessing (largest component)")  # CASE.json: what CASE.npz holds


class UnreliableSegmentationWarning(UserWarning):
    """An image the model cannot read well (`LoadedImage.doubt`): it writes an object all the same, and the command
    warns of it as `Warning: CASE: ...`."""


@dataclass(frozen=True)
class LoadedImage:
    """An image ready for the model: its normalised 2D slices in order, the volume axis they were cut along (None
    for a 2D image), its geometry (None for an array given without a file) and why the model's segmentation of it is
    unreliable (`intensity_doubt`, `slicing_doubt`; None when nothing is wrong with it)."""

    slices: np.ndarray  # (N, H, W[, 3])
    axis: int | None
    geometry: Geometry | None
    doubt: str | None = None

    @property
    def is_volume(self) -> bool:
        return self.axis is not None


@dataclass(frozen=True)
class FirstPass:
    """Per label, (N, H, W) probabilities of slices: `probabilities`, what the label map takes (box-refined where
    chosen; second looks are pasted into them), and `unrefined`, the folds' mean before box refinement of the
    second-look targets that are refined: what their trigger reads, as the folds' check measured it
    (training/second_look_check.py), not the frozen model's outline, which is rarely unsure."""

    probabilities: dict[int, np.ndarray]
    unrefined: dict[int, np.ndarray]

    def trigger(self, label: int) -> np.ndarray:
        """The probabilities the second look's trigger reads for `label`."""
        return self.unrefined.get(label, self.probabilities[label])


class Predictor:
    """Segments 2D images and 3D volumes with the averaged prompt modules of several folds."""

    def __init__(self, foundation: FoundationModel, plans: Mapping, fold_modules: Sequence[Mapping[int, nn.Module]],
                 *, tta: bool = False, batch_size: int | None = None, refined_labels: Collection[int] = (),
                 second_look: Mapping[int, float] | None = None) -> None:
        if not fold_modules:
            raise ValueError("a Predictor needs the prompt modules of at least one fold")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.foundation = foundation
        self.plans = Plans(plans)
        self.targets = sorted(self.plans.targets, key=lambda target: int(target["label"]))
        check_targets(self.targets, "plans.json")
        self.labels = [int(target["label"]) for target in self.targets]
        for index, modules in enumerate(fold_modules):
            missing = sorted(set(self.labels) - set(modules))
            if missing:
                raise ValueError(f"fold modules {index} lack the prompt module of label(s) {missing}")
        self.fold_modules = [{label: modules[label].to(foundation.device).eval() for label in self.labels}
                             for modules in fold_modules]
        self.prompt_modules = [modules[label] for label in self.labels for modules in self.fold_modules]
        self.flips = FLIPS if tta else FLIPS[:1]
        self.batch_size = batch_size or default_batch_size(foundation.device)
        unknown = sorted(set(refined_labels) - set(self.labels))
        if unknown:
            raise ValueError(f"refined_labels {unknown} are not targets of the plans")
        self.refined_labels = frozenset(int(label) for label in refined_labels)
        unknown = sorted(set(second_look or {}) - set(self.labels))
        if unknown:
            raise ValueError(f"second_look labels {unknown} are not targets of the plans")
        self.second_look = {int(label): float(size) for label, size in (second_look or {}).items()}
        self.refined_looks = sorted(self.refined_labels & set(self.second_look))  # triggered before refinement
        self.second_looks = 0  # windows looked at again so far (per slice and target): the extra encoder passes

    @classmethod
    def from_folder(cls, model_dir: str | Path, *, folds: Sequence[int] | str | None = None,
                    checkpoint: str = DEFAULT_CHECKPOINT, device: str | torch.device | None = None, tta: bool = False,
                    batch_size: int | None = None, foundation_checkpoint: str | Path | None = None,
                    box_refinement: str = "auto", precision: str | None = None,
                    second_look: str = "auto") -> Predictor:
        """Load a trained model folder: its plans, foundation model and the chosen folds' prompt modules.

        `foundation_checkpoint` replaces the weights path stored in the plans (e.g. a model copied to another
        machine); `checkpoint` picks checkpoint_best.pt or checkpoint_final.pt of each fold; `box_refinement` is
        "auto" (as the folds' validation chose, `refinement_choices`), "on" or "off"; `precision` replaces the
        planned one (`Plans.planned_precision`); `second_look` is "auto" (as the folds' validation chose,
        `second_look_choices`), "on" or "off".
        """
        return cls.from_model(open_model_folder(model_dir, folds=folds, checkpoint=checkpoint), device=device,
                              tta=tta, batch_size=batch_size, foundation_checkpoint=foundation_checkpoint,
                              box_refinement=box_refinement, precision=precision, second_look=second_look)

    @classmethod
    def from_model(cls, folder: ModelFolder, *, device: str | torch.device | None = None, tta: bool = False,
                   batch_size: int | None = None, foundation_checkpoint: str | Path | None = None,
                   box_refinement: str = "auto", foundation: FoundationModel | None = None,
                   precision: str | None = None, second_look: str = "auto") -> Predictor:
        """Build the predictor of an already checked model folder (see `open_model_folder`); `foundation`, when
        given, is the planned model already built (its device wins over `device`), else it is built in `precision`
        (None: the planned one). Foundation weights other than those the folds trained with are refused."""
        folder.check_foundation_weights(foundation_checkpoint=foundation_checkpoint)
        targets = sorted(folder.plans.labels)
        modules = []
        for fold in folder.folds:
            where = folder.checkpoint_path(fold)
            fold_modules = load_modules(folder.load_state(fold), folder.plans, where=str(where))
            if sorted(fold_modules) != targets:
                raise AutomedsamError(f"{where} holds prompt modules for labels {sorted(fold_modules)}, but the plans "
                                      f"of {folder.path} have targets {targets}. "
                                      + fold_remedy(folder.path, fold, "Retrain the fold with `{train} --overwrite`."))
            modules.append(fold_modules)
        if foundation is None:
            foundation = folder.plans.build_foundation_model(checkpoint=foundation_checkpoint, device=device,
                                                             precision=precision)
        return cls(foundation, folder.plans, modules, tta=tta, batch_size=batch_size,
                   refined_labels=refined_labels(folder, box_refinement),
                   second_look=second_look_sizes(folder, second_look))

    @property
    def slicing_axis(self) -> int:
        """The planned slicing axis of volumes; the first axis for a volume given to a model planned for 2D."""
        axis = self.plans.slicing_axis
        return 0 if axis is None else int(axis)

    def volume_axis(self, shape: Sequence[int]) -> int:
        """The axis a volume of `shape` is cut along: the planned one, unless the volume is one voxel thick along
        another (the module's `volume_axis`)."""
        return volume_axis(shape, planned=self.slicing_axis)

    def predict_array(self, image: np.ndarray | sitk.Image,
                      is_volume: bool | None = None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Label map and per-label probabilities (float32, the image's spatial shape) of one image (`load_image`);
        an image the model cannot read well is warned of (`UnreliableSegmentationWarning`)."""
        return self.predict_loaded(self.load_image(image, is_volume=is_volume))

    def load_image(self, image: np.ndarray | sitk.Image, *, is_volume: bool | None = None) -> LoadedImage:
        """An image array, or a SimpleITK image, checked, normalised and sliced for `predict_loaded`.

        `image` is (H, W), (H, W, 3) or a (Z, Y, X) volume, sliced along the planned axis (along its axis one
        voxel thick, if it has one: a single slice saved as a volume). With `is_volume` None a
        3-axis array counts as a volume, except for a model planned for 2D, where a last axis of 1 (grey), 3 (colour)
        or 4 (colour with a constant alpha, dropped) holds the channels of one image, as read_image reads it. A
        SimpleITK image is read as the same image in a file is: its dimension says whether it is a volume, and its
        spacing whether the planned axis cuts across its slices (`slicing_doubt`).
        """
        if isinstance(image, sitk.Image):
            return self._load_sitk(image, is_volume=is_volume)
        array = _checked_image_array(image, is_volume=is_volume)
        if is_volume is None:
            array, is_volume = self._as_planned(array)
        return self.load_array(array, is_volume=is_volume)

    def _load_sitk(self, image: sitk.Image, *, is_volume: bool | None) -> LoadedImage:
        """A SimpleITK image loaded with its geometry; an `is_volume` its dimension contradicts is refused."""
        array, geometry = _sitk_pixels(image)
        if is_volume is not None and is_volume != (geometry.ndim == 3):
            raise AutomedsamError(f"is_volume={is_volume} contradicts the SimpleITK image, which is {geometry.ndim}D "
                                  "(its dimension says whether it is a volume): leave is_volume out.")
        array = _checked_image_array(array, is_volume=geometry.ndim == 3)
        if geometry.ndim == 2 and array.ndim == 3:
            array = _one_picture(array)
        return self.load_array(array, is_volume=geometry.ndim == 3, geometry=geometry)

    def _as_planned(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        """The image and whether it is a volume, when the caller did not say: a model planned for 2D reads a
        channels-last array as the same picture read from a file (a grey (H, W, 1) array was a volume of H slices),
        and refuses one of a few channels that no picture has (two MR sequences stacked: H strips 2 pixels wide)."""
        if image.ndim == 2 or self.plans.is_3d or image.shape[-1] > MAX_CHANNELS:
            return image, image.ndim == 3
        if image.shape[-1] not in IMAGE_CHANNELS:
            raise AutomedsamError(f"The image of shape {image.shape} looks like {image.shape[-1]} channels of one 2D "
                                  "image (several MR sequences), which this model, planned for 2D images of one "
                                  "channel, would read as a volume of thin slices. Pass the channel it was trained on, "
                                  "e.g. image[..., 0], or is_volume=True for a volume.")
        return _one_picture(image), False

    def load_file(self, path: str | Path) -> LoadedImage:
        """An image file read, normalised and sliced for `predict_loaded` (safe to run in another thread)."""
        image, geometry = read_image(path)
        return self.load_array(image, is_volume=geometry.ndim == 3, geometry=geometry)

    def predict_loaded(self, loaded: LoadedImage, *,
                       source: str = "the image") -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Label map and per-label probabilities of an image prepared by `load_file` or `load_image`. Its doubt, if
        any, is warned of (naming `source`, its file for one) as the command warns of it: the model writes an object
        even into a blank image. The warning points at the caller of the predictor's public method."""
        if loaded.doubt is not None:
            warnings.warn(f"The segmentation of {source} is unreliable: {loaded.doubt}", UnreliableSegmentationWarning,
                          stacklevel=3)
        return self.combine(self.slice_probabilities(loaded), loaded.axis)

    def slice_probabilities(self, loaded: LoadedImage, *, embeddings: SliceEmbeddings | None = None,
                            agreement: FoldAgreement | None = None,
                            progress: SliceProgress | None = None) -> dict[int, np.ndarray]:
        """The model's part of `predict_loaded`: per label, the (N, H, W) probabilities of the image's slices.
        `combine` finishes them on the CPU alone, so another thread can do that while the model works on the next
        image. `embeddings(start, stop)`: the slices' embeddings when the caller keeps them (a cache); the encoder
        then runs only for test-time flips and second looks. `agreement` collects how much the folds' first passes
        agree on the image; `progress(done, count)` hears of each batch of slices done (a volume takes minutes)."""
        return self._predict_slices(loaded.slices, embeddings=embeddings, agreement=agreement, progress=progress)

    def load_array(self, image: np.ndarray, *, is_volume: bool, geometry: Geometry | None = None) -> LoadedImage:
        """An image array normalised and sliced for `predict_loaded`, with what its intensities, or a volume's
        geometry, make doubtful."""
        axis = self.volume_axis(image.shape) if is_volume else None
        normalised = self.plans.normalise(image)
        stack = normalised[None] if axis is None else np.moveaxis(normalised, axis, 0)
        doubts = [intensity_doubt(image, self.plans, colour=axis is None and image.ndim == 3)]
        if axis is not None and geometry is not None:
            doubts.append(slicing_doubt(image.shape, axis=axis, spacing_xyz=geometry.spacing,
                                        trained_on_volumes=self.plans.is_3d))
        doubt = " Also, ".join(text for text in doubts if text) or None
        return LoadedImage(stack, axis, geometry, doubt)

    @torch.no_grad()
    def predict_embeddings(self, embeddings: torch.Tensor, slice_shape: tuple[int, int], is_volume: bool, *,
                           slices: np.ndarray | None = None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Like `predict_array` for slices already encoded ((N, 256, 64, 64), in slice order), without flips.

        Lets a caller that predicts the same images with many models (the benchmark) run the encoder only once. A
        predictor that takes second looks needs the normalised `slices` too (the windows are encoded anew).
        """
        if self.second_look and slices is None:
            raise ValueError("a predictor that takes second looks needs the normalised slices in predict_embeddings")
        frame = self.foundation.frame_for(slice_shape)
        parts = []
        for start in range(0, len(embeddings), self.batch_size):
            batch = embeddings[start:start + self.batch_size].to(self.foundation.device, torch.float32)
            parts.append(self._on_original_grid(self._fold_mean(batch, frame), batch, frame))
        first_pass = _concatenated(parts)
        if self.second_look:
            self._look_again(slices, first_pass)
        return self.combine(first_pass.probabilities, self.slicing_axis if is_volume else None)

    @torch.no_grad()
    def predict_plane_and_folds(self, embedding: torch.Tensor, plane: np.ndarray
                                ) -> tuple[np.ndarray, dict[int, np.ndarray], list[np.ndarray]]:
        """The ensemble's label map and probabilities of one encoded 2D plane ((1, 256, 64, 64); `plane` normalised),
        and each fold's own label map (first pass, no second look) from the same decoder passes.

        The review ranks unlabelled samples by how much the folds disagree: decoding their prompts once for both
        answers halves what it costs beside the encoder.
        """
        batch = embedding.to(self.foundation.device, torch.float32)
        frame = self.foundation.frame_for(plane.shape[:2])
        per_fold = self._fold_probabilities(batch)
        ensemble = {label: per_fold[index].mean(dim=0) for index, label in enumerate(self.labels)}
        first_pass = self._on_original_grid(ensemble, batch, frame)
        if self.second_look:
            self._look_again(plane[None], first_pass)
        fold_maps = []
        for fold in range(len(self.fold_modules)):
            own = {label: per_fold[index, fold] for index, label in enumerate(self.labels)}
            fold_maps.append(self.combine(self._to_grid(self._refined(own, batch, frame), frame), None)[0])
        return *self.combine(first_pass.probabilities, None), fold_maps

    def combine(self, slices: Mapping[int, np.ndarray],
                axis: int | None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Per-slice probabilities -> the image's label map and probabilities, in the image's shape: rings, overlaps,
        postprocessing. `axis`: the volume axis the slices were cut along (`LoadedImage.axis`), None for a 2D
        image. Reads the predictor's plans only, so it is safe to run in another thread."""
        probabilities = {label: (p[0] if axis is None else np.moveaxis(p, 0, axis))
                         for label, p in slices.items()}
        probabilities = ring_probabilities(probabilities, self.targets)
        return postprocess(label_map_from(probabilities), self.plans, axis=axis), probabilities

    def predict_file(self, path: str | Path, out_path: str | Path, *, save_probabilities: bool = False) -> None:
        """Segment one image file and write the label map with the image's geometry (atomically).

        With `save_probabilities`, `CASE.npz` (float16, one key per label) and `CASE.json` (geometry) are written
        first, so an existing segmentation always means the case is complete.
        """
        loaded = self.load_file(path)
        label_map, probabilities = self.predict_loaded(loaded, source=str(path))
        write_prediction(out_path, label_map, probabilities, loaded.geometry, save_probabilities=save_probabilities)

    def _predict_slices(self, stack: np.ndarray, *, embeddings: SliceEmbeddings | None = None,
                        agreement: FoldAgreement | None = None,
                        progress: SliceProgress | None = None) -> dict[int, np.ndarray]:
        """(N, H, W[, 3]) normalised slices -> per label (N, H, W) probabilities, `batch_size` slices at a time,
        `progress(done, N)` after each batch."""
        count, height, width = stack.shape[:3]
        empty = {label: np.empty((count, height, width), dtype=np.float32) for label in self.labels}
        first_pass = FirstPass(empty, {label: np.empty_like(empty[label]) for label in self.refined_looks})
        for start in range(0, count, self.batch_size):
            stop = min(start + self.batch_size, count)
            given = None if embeddings is None else embeddings(start, stop)
            batch = self._predict_batch(stack[start:stop], embeddings=given, agreement=agreement)
            for out, part in ((first_pass.probabilities, batch.probabilities), (first_pass.unrefined, batch.unrefined)):
                for label, probabilities in part.items():
                    out[label][start:start + len(probabilities)] = probabilities
            if progress is not None:
                progress(stop, count)
        if self.second_look:
            self._look_again(stack, first_pass)
        return first_pass.probabilities

    def _look_again(self, stack: np.ndarray, first_pass: FirstPass) -> None:
        """The second look (automedsam.second_look), in place: each slice where a chosen target's first pass is
        unsure of its object is encoded again through a window around that target's unsure core, zoomed for its
        object size; inside that window the target's probabilities are replaced by the window's (the target's other
        objects keep at least theirs), and outside it that object is cleared (`pasted_look`). Each target has its own
        window: a window around the union of two targets' cores is at neither object's scale."""
        looks = []
        for index in range(len(stack)):
            for label in sorted(self.second_look):
                unsure = unsure_object(first_pass.trigger(label)[index])
                window = None if unsure is None else look_window(unsure.core, stack.shape[1:3],
                                                                 object_size=self.second_look[label])
                if window is not None:
                    looks.append((index, label, window, unsure))
        for start in range(0, len(looks), self.batch_size):
            chunk = looks[start:start + self.batch_size]
            seen = self._predict_batch(np.stack([crop_window(stack[index], window)
                                                 for index, _, window, _ in chunk])).probabilities
            for row, (index, label, window, unsure) in enumerate(chunk):
                probabilities = first_pass.probabilities[label]
                probabilities[index] = pasted_look(probabilities[index], seen[label][row], window, unsure)
        self.second_looks += len(looks)

    def _predict_batch(self, slices: np.ndarray, *, embeddings: torch.Tensor | None = None,
                       agreement: FoldAgreement | None = None) -> FirstPass:
        """Average over test-time flips of the fold-averaged probabilities, on the original grid. `embeddings`: the
        unflipped slices' embeddings, when the caller has them; `agreement` takes the unflipped folds' masks."""
        over_flips = {label: RunningMean() for label in self.labels}
        unrefined = {label: RunningMean() for label in self.refined_looks}
        for axes in self.flips:
            if axes or embeddings is None:
                # a copy: a flipped side of 1 px keeps its negative stride through np.ascontiguousarray, which
                # torch.from_numpy refuses
                prepared = [self.foundation.prepare(np.flip(s, axes).copy() if axes else s) for s in slices]
                frame = prepared[0][1]
                encoded = self.foundation.encode(torch.stack([tensor for tensor, _ in prepared]))
            else:
                frame = self.foundation.frame_for(slices.shape[1:3])
                encoded = embeddings.to(self.foundation.device, torch.float32)
            fold_mean = self._fold_mean(encoded, frame, agreement=None if axes else agreement)
            for means, low_res in ((over_flips, self._refined(fold_mean, encoded, frame)), (unrefined, fold_mean)):
                for label, mean in means.items():
                    original = self.foundation.logits_to_original(low_res[label], frame)[:, 0]
                    mean.add(torch.flip(original, [a + 1 for a in axes]) if axes else original)
        return FirstPass(_means(over_flips), _means(unrefined))

    def _on_original_grid(self, low_res: dict[int, torch.Tensor], embeddings: torch.Tensor,
                          frame: Frame) -> FirstPass:
        """Low-res probabilities of encoded slices, refined where chosen, on the slices' grid."""
        return FirstPass(self._to_grid(self._refined(low_res, embeddings, frame), frame),
                         self._to_grid({label: low_res[label] for label in self.refined_looks}, frame))

    def _to_grid(self, low_res: dict[int, torch.Tensor], frame: Frame) -> dict[int, np.ndarray]:
        """Low-res probabilities as float32 (B, H, W) on the slices' grid."""
        return {label: self.foundation.logits_to_original(p, frame)[:, 0].float().cpu().numpy()
                for label, p in low_res.items()}

    def _refined(self, low_res: dict[int, torch.Tensor], embeddings: torch.Tensor,
                 frame: Frame) -> dict[int, torch.Tensor]:
        """The targets chosen for box refinement outlined by the frozen model from their components predicted on
        the image (the low-res frame's padding left out)."""
        regions = [image_region(self.foundation, frame)] * len(embeddings)
        return {label: refine_with_boxes(p, embeddings, self.foundation, regions=regions)
                if label in self.refined_labels else p for label, p in low_res.items()}

    def _fold_mean(self, embeddings: torch.Tensor, frame: Frame, *,
                   agreement: FoldAgreement | None = None) -> dict[int, torch.Tensor]:
        """Per label, the (B, 1, 256, 256) low-res probability averaged over folds (the folds' own, on the part of
        the frame the image covers, to `agreement`)."""
        per_fold = self._fold_probabilities(embeddings)
        if agreement is not None:
            agreement.add(per_fold, region=image_region(self.foundation, frame))
        means = per_fold.mean(dim=1)
        return {label: means[index] for index, label in enumerate(self.labels)}

    @torch.no_grad()
    def _fold_probabilities(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(labels, folds, B, 1, 256, 256): every fold's low-res probability of every target.

        Every (target, fold) prompt of a few images is decoded in as few decoder calls as memory allows
        (PROMPTS_PER_SLICE per image): the decoder, one pass per prompt, is what the ensemble costs besides the
        encoder, and few large calls spare the per-call overhead of many small ones. The prompt modules run one by
        one (documentation/benchmarks.md, Speed, says what was measured).
        """
        per_call = PROMPTS_PER_SLICE * self.batch_size
        images_per_step = max(1, per_call // len(self.prompt_modules))
        parts = []
        for start in range(0, len(embeddings), images_per_step):
            chunk = embeddings[start:start + images_per_step]
            prompts = [module(chunk) for module in self.prompt_modules]  # (target, fold)-major, then image
            sparse = torch.cat([prompt[0] for prompt in prompts])
            dense = torch.cat([prompt[1] for prompt in prompts])
            owners = torch.arange(len(sparse), device=chunk.device) % len(chunk)
            decoded = [torch.sigmoid(self.foundation.decode(chunk[owners[first:first + per_call]],
                                                            sparse[first:first + per_call],
                                                            dense[first:first + per_call]))
                       for first in range(0, len(sparse), per_call)]
            probabilities = torch.cat(decoded)
            parts.append(probabilities.view(len(self.labels), len(self.fold_modules), len(chunk),
                                            *probabilities.shape[1:]))
        return torch.cat(parts, dim=2)


def _means(running: dict[int, RunningMean]) -> dict[int, np.ndarray]:
    return {label: mean.mean().float().cpu().numpy() for label, mean in running.items()}


def _concatenated(parts: Sequence[FirstPass]) -> FirstPass:
    """The first passes of consecutive batches of slices as one."""
    return FirstPass(_joined([part.probabilities for part in parts]), _joined([part.unrefined for part in parts]))


def _joined(batches: Sequence[dict[int, np.ndarray]]) -> dict[int, np.ndarray]:
    return {label: np.concatenate([batch[label] for batch in batches]) for label in batches[0]}


def volume_axis(shape: Sequence[int], *, planned: int) -> int:
    """The axis a volume of `shape` is cut into 2D images along: `planned`, but an axis one voxel thick first
    (samples.slicing_axis, as planning and the overlays slice): a single slice saved as a volume (a sagittal slice
    exported as NIfTI, (Z, Y, 1)) is that slice, and cut along another axis it gave Z images one pixel wide."""
    return slicing_axis([float(axis == planned) for axis in range(len(shape))], shape)


def slicing_doubt(shape: Sequence[int], *, axis: int, spacing_xyz: Sequence[float],
                  trained_on_volumes: bool) -> str | None:
    """Why a volume cut along `axis` (the planned one, as planning cut every training volume; the first for a model
    trained on 2D images) is cut across its own slices (samples.own_axis_cut_across, as planning notes it), or None:
    its segmentation is unreliable, often empty. A model trained on 2D images had no training volumes to name."""
    own = own_axis_cut_across(shape, axis=axis, spacing_xyz=spacing_xyz)
    if own is None:
        return None
    spacing = numpy_spacing(spacing_xyz)
    order = swapping_order(own, axis)
    chosen, stored = (("the axis the model cuts volumes into 2D images along (planned from the training volumes)",
                       "as the training volumes are") if trained_on_volumes else
                      ("the axis a model trained on 2D images cuts a volume into 2D images along (its first)",
                       "so that each of those images is one of its slices"))
    return (f"its spacing is {spacing[own]:g} along array axis {own} but {spacing[axis]:g} along axis {axis}, "
            f"{chosen}, so its {shape[axis]} images cut across the volume's slices, unlike the images it was trained "
            "on, and the segmentation is unreliable (often empty). Store the volume with its slices along array "
            f"axis {axis}, {stored}: e.g. sitk.WriteImage(sitk.PermuteAxes(sitk.ReadImage(path), {order}), "
            "new_path) swaps the two axes with SimpleITK; then predict it again.")


def intensity_doubt(image: np.ndarray, plans: Plans | None, *, colour: bool) -> str | None:
    """Why the segmentation of `image` is unreliable for its intensities alone, or None. A constant image, or one
    with no pixel inside the planned window, reaches the model as a blank image; one mostly outside a window of the
    dataset's every pixel (`WHOLE_IMAGE_WINDOWS`) loses its detail to the clipping (`Plans.normalise`), as a 16-bit
    export of the 8-bit images a model was trained on does. The model writes an object all the same, so the user
    must be told. `colour`: the last axis holds one pixel's colour."""
    pixels = np.asarray(image)
    low, high = pixels.min().item(), pixels.max().item()
    if low == high:
        return (f"the image is constant (every pixel {low:g}), so the model sees a blank image and what it segments "
                "is not in the image. Check the file: an empty or failed export?")
    if plans is None:
        return None
    scheme, lower, upper = plans.intensity_window
    above = (pixels.max(axis=-1) if colour else pixels) > upper
    below = (pixels.min(axis=-1) if colour else pixels) < lower
    window = f"the intensity window the model was planned with [{lower:g}, {upper:g}]"
    hint = " (a 16-bit export of 8-bit images?)" if upper <= 255 < high and above.sum() > below.sum() else ""
    advice = "Convert the image as the training images were converted (the same bit depth and intensity scale)."
    if high <= lower or low >= upper:
        return (f"none of its pixels lies inside {window} (its values span [{low:g}, {high:g}]){hint}, so the model "
                f"sees a blank image and what it segments is not in the image. {advice}")
    share = np.count_nonzero(above | below) / above.size
    if scheme in WHOLE_IMAGE_WINDOWS and share > OUTSIDE_WINDOW_SHARE:
        return (f"{share:.0%} of its pixels lie outside {window}{hint}: clipped to the window, their detail is lost "
                f"and the segmentation is unreliable. {advice}")
    return None


def _checked_image_array(image: object, *, is_volume: bool | None = None) -> np.ndarray:
    """`image` as a numeric array of 2 or 3 axes, none of them empty, every value finite, or an AutomedsamError
    saying what to pass: anything else failed deep in the model with a bare numpy error, or (NaN, infinity) was
    segmented as clipped intensities or refused only after the encoder's passes over the slices before it."""
    if image is None:
        raise AutomedsamError(f"No image given (None). Pass {ARRAY_SHAPES}.")
    array = np.asarray(image)
    given = "The image" if isinstance(image, np.ndarray) else f"The image (a {type(image).__name__})"
    if array.dtype.kind not in "biuf":
        raise AutomedsamError(f"{given} holds {array.dtype} values, not real numbers. Pass {ARRAY_SHAPES}.")
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise AutomedsamError(f"{given} has shape {array.shape}; pass {ARRAY_SHAPES}, with no empty axis.")
    if is_volume and array.ndim != 3:
        raise AutomedsamError(f"is_volume=True needs a (Z, Y, X) array, got shape {array.shape}.")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise AutomedsamError(f"{given} contains {np.count_nonzero(~np.isfinite(array))} NaN or infinite "
                              "intensities. Replace them (e.g. by the image minimum, with np.nan_to_num) and pass it "
                              "again.")
    return array


def _sitk_pixels(image: sitk.Image) -> tuple[np.ndarray, Geometry]:
    """A SimpleITK image's pixels (numpy axis order) and geometry, refused where read_image refuses such a file: not
    2D or 3D, or several values per voxel (a 2D image may hold a colour: 1, 3 or 4 values per pixel)."""
    dimension, components = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
    if dimension not in (2, 3):
        raise AutomedsamError(f"The SimpleITK image is {dimension}D, of size {image.GetSize()}; automedsam takes 2D "
                              "images and 3D volumes. Pass one 3D frame of a time series or multi-channel image.")
    if components != 1 and (dimension == 3 or components not in IMAGE_CHANNELS):
        raise AutomedsamError(f"The {dimension}D SimpleITK image has {components} values per pixel; automedsam takes "
                              "one channel per image (a 2D colour image: 3 values, or 4 with a constant alpha). "
                              "Pass each channel as its own image.")
    geometry = Geometry(spacing=tuple(image.GetSpacing()), origin=tuple(image.GetOrigin()),
                        direction=tuple(image.GetDirection()), kind="sitk")
    return sitk.GetArrayFromImage(image), geometry


def _one_picture(image: np.ndarray) -> np.ndarray:
    """An (H, W, 1, 3 or 4) channels-last image as the picture read_image reads from a file: grey, colour, or colour
    whose constant alpha is dropped."""
    return image[..., 0] if image.shape[-1] == 1 else _without_constant_alpha(image)


def _without_constant_alpha(image: np.ndarray) -> np.ndarray:
    """The colour channels of an (H, W, 3 or 4) image; a constant alpha channel is dropped, as read_image drops it
    from a file, and one that varies is refused: neither the colour nor the volume reading of it is sure."""
    if image.shape[-1] == 4:
        alpha = image[..., 3]
        if alpha.min() != alpha.max():
            raise AutomedsamError(f"The image of shape {image.shape} has an alpha channel (its 4th value per pixel) "
                                  "that varies, so its meaning is ambiguous. Pass its colour, image[..., :3], or, for "
                                  "a (Z, Y, X) volume of 4 columns, call predict_array(image, is_volume=True).")
        image = image[..., :3]
    return image


def refined_labels(folder: ModelFolder, mode: str = "auto") -> list[int]:
    """The target labels that prediction outlines again from their boxes (see `refinement_choices`)."""
    return [label for label, choice in refinement_choices(folder, mode).items() if choice["refine"]]


def refinement_choices(folder: ModelFolder, mode: str = "auto") -> dict[int, dict]:
    """Per target, whether prediction refines it and why: as the folds' validation checks chose ("auto"), or as the
    user forces it ("on", "off"); a target refinement does not apply to (`refinement_applies`) never is, even with
    "on", and its reason says why, for the user who asked for every target."""
    if mode not in BOX_REFINEMENT_MODES:
        raise AutomedsamError(f"--box-refinement must be one of {', '.join(BOX_REFINEMENT_MODES)}, got {mode!r}.")
    refinable = [int(t["label"]) for t in folder.plans.targets if refinement_applies(t)]
    if mode != "auto":
        chosen = {label: {"refine": mode == "on", "reason": f"--box-refinement {mode}"} for label in refinable}
    else:
        measured = choose_refined_labels(folder.refinement_checks())
        unchecked = {"refine": False, "reason": "no validation check in the folds (fold all, or trained before it)"}
        chosen = {label: measured.get(label, unchecked) for label in refinable}
    never = {int(t["label"]): {"refine": False, "reason": _not_refinable(t)} for t in folder.plans.targets
             if not refinement_applies(t)}
    return dict(sorted({**chosen, **never}.items()))


def _not_refinable(target: Mapping[str, Any]) -> str:
    """Why box refinement never applies to `target` (see `refinement_applies`)."""
    if target.get("subtract"):
        return "a ring: its box prompt outlines the cavity it encloses"
    return (f"planned with pseudo_label {target.get('pseudo_label')}, not box_prompt: it learnt from another "
            "pseudo-label than the frozen model's box masks")


def second_look_sizes(folder: ModelFolder, mode: str = "auto") -> dict[int, float]:
    """The target labels that prediction looks at again, with their labelled objects' size (see
    `second_look_choices`)."""
    return {label: choice["object_size"] for label, choice in second_look_choices(folder, mode).items()
            if choice["look"]}


def second_look_choices(folder: ModelFolder, mode: str = "auto") -> dict[int, dict]:
    """Per target, whether prediction takes a second look and why: as the folds' validation checks chose ("auto"),
    or as the user forces it ("on", "off"). It needs the labelled objects' size (plans.json `second_look`): plans
    written before it get no second look, and "on" says so."""
    if mode not in SECOND_LOOK_MODES:
        raise AutomedsamError(f"--second-look must be one of {', '.join(SECOND_LOOK_MODES)}, got {mode!r}.")
    sizes = folder.plans.get("second_look", {}).get("object_size", {})
    labels = sorted(folder.plans.labels)
    if mode == "off":
        return {label: {"look": False, "reason": "--second-look off"} for label in labels}
    if mode == "on" and not any(str(label) in sizes for label in labels):
        raise AutomedsamError(f"--second-look on needs the labelled objects' size (plans.json `second_look`), which "
                              f"the plans of {folder.path} lack (planned before the second look existed). Re-run "
                              "automedsam_plan_and_preprocess and retrain, or drop --second-look on.")
    measured = choose_second_look(folder.second_look_checks()) if mode == "auto" else {}
    choices = {}
    for label in labels:
        if str(label) not in sizes:
            reason = ("plans written before the second look" if not sizes else
                      "no object size planned (no box of this label among the labelled samples)")
            choices[label] = {"look": False, "reason": reason}
        elif mode == "on":
            choices[label] = {"look": True, "reason": "--second-look on"}
        else:
            choices[label] = measured.get(label, {"look": False, "reason": "no second look check in the folds "
                                                                             "(fold all, or trained before it)"})
        choices[label]["object_size"] = float(sizes[str(label)]) if str(label) in sizes else None
    return choices


def write_prediction(segmentation_path: str | Path, label_map: np.ndarray, probabilities: Mapping[int, np.ndarray],
                     geometry: Geometry, *, save_probabilities: bool = False) -> None:
    """Write the label map (and first, with `save_probabilities`, the probabilities), so an existing segmentation
    always means the case is complete. Without them, an earlier run's probabilities of the case are removed: they
    belong to another model or fold set, and a later run asking for them would take the case as finished."""
    if save_probabilities:
        write_probabilities(segmentation_path, probabilities, geometry)
    else:
        drop_probabilities(segmentation_path)
    write_segmentation(segmentation_path, label_map, geometry)


def drop_probabilities(segmentation_path: str | Path) -> None:
    """Remove an earlier run's probabilities of the case written to `segmentation_path`: they belong to another
    model, fold set or mode, and a later run asking for them would take the case as finished."""
    npz_path, json_path = probabilities_paths(segmentation_path)
    if npz_path.is_file():  # CASE.json alone is no probabilities file: for a case `fold_agreement`, the ranking
        npz_path.unlink()
        json_path.unlink(missing_ok=True)


def write_probabilities(segmentation_path: str | Path, probabilities: Mapping[int, np.ndarray],
                        geometry: Geometry) -> None:
    """`CASE.npz` (float16 probability per label, key = label id) and `CASE.json` (geometry) beside `CASE.ext`."""
    npz_path, json_path = probabilities_paths(segmentation_path)
    save_npz(npz_path, **{str(label): p.astype(np.float16) for label, p in probabilities.items()})
    shape = next(iter(probabilities.values())).shape
    save_json(json_path, {"shape": list(shape), "labels": sorted(int(label) for label in probabilities),
                          "geometry": geometry.to_json(),
                          "probability": PROBABILITY_TEXT})
