"""Predict a folder (or one file) of images: pick the model, skip finished cases, stream, summarise.

Images are predicted one at a time while a background thread reads and normalises the next ones and another
finishes (rings, label map, postprocessing) and writes the ones the model is done with (inference.background), so
memory does not grow with the number of images and the model waits on neither. Each
output is renamed into place only when complete, so an interrupted run leaves no half-written file and a rerun
(or a second run into the same folder) finishes the rest. Under torchrun each process takes the images whose
index in the sorted input list is its rank modulo the number of processes, and the counts are summed at the end.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from automedsam import distributed, paths
from automedsam.errors import AutomedsamError
from automedsam.foundation.cache import PlannedEmbeddingCache
from automedsam.foundation.registry import FOUNDATION_MODELS, build_foundation_model
from automedsam.foundation.weights_file import refuse_folder
from automedsam.dataset import load_raw_dataset, spelled_as
from automedsam.inference.agreement import AGREEMENT_FILE, AgreementRecord, FoldAgreement, least_agreed
from automedsam.inference.box_prompted import BoxPredictor, check_planned_labels, read_prompt_boxes
from automedsam.inference.dataset_images import (DatasetImageSegmenter, SegmentedCounts, case_annotations,
                                                 dataset_images)
from automedsam.inference.model_folder import (DEFAULT_CHECKPOINT, FINISHED_CHECKPOINT, ModelFolder,
                                               locate_model_folder, open_model_folder, trained_models)
from automedsam.inference.naming import (FORMATS, ChannelReading, InputImage, channel_reading, check_output_folder,
                                         discover_inputs, ignored_files, list_inputs, model_channel_names,
                                         probabilities_paths, segmentation_path)
from automedsam.inference.background import BackgroundWriter, read_ahead
from automedsam.inference.predictor import (LoadedImage, Predictor, refinement_choices, second_look_choices,
                                            write_prediction)
from automedsam.inference.segmented_record import input_signatures, save_record, up_to_date
from automedsam.io import Geometry
from automedsam.plans import Plans
from automedsam.progress import progress_bar

DEFAULT_FOUNDATION = "litemedsam"
RECORD_EVERY_S = 10.0  # how often a run records what it has written (--dataset-images' record, the folds' agreement)
IGNORED_NAMED = 5  # the files in a format no reader takes that the warning names
# how --dataset-images' summary tells its terminal user to redo the images it kept; the annotation page, which runs
# it for Segment images and has no such control, leaves it out (annotation.segmenting)
OVERWRITE_HINT = "; --overwrite redoes them"
Loaded = TypeVar("Loaded")


@dataclass(frozen=True)
class PredictionSummary:
    """What a prediction run did, for the final one-line report."""

    written: int
    skipped: int
    without_boxes: int
    output_dir: Path
    model: str
    details: str = ""
    kept: str = "already predicted (use --overwrite to redo them)"  # why the skipped outputs were kept as they are
    least_agreed: tuple[tuple[str, float], ...] = ()  # the cases the folds agree on least, least first
    doubtful: int = 0  # segmentations written of images the model cannot read well (warned per image)

    def line(self) -> str:
        text = f"Wrote {self.written} segmentation(s) to {self.output_dir} with {self.model}"
        if self.details:
            text += f": {self.details}"
        if self.doubtful:
            text += (f"; {self.doubtful} of them unreliable: their image is constant, lies outside the model's "
                     "intensity window or is a volume cut across its own slices (see the warnings above)")
        if self.skipped:
            text += f"; skipped {self.skipped} {self.kept}"
        if self.without_boxes:
            text += f"; ignored {self.without_boxes} image(s) that have no entry in the box file"
        doubted = [(case, score) for case, score in self.least_agreed if f"{score:.2f}" != "1.00"]
        if doubted:
            cases = ", ".join(f"{case} ({score:.2f})" for case, score in doubted)
            text += (f". The folds agree least on {cases}: check those first ({AGREEMENT_FILE} ranks every case by "
                     "the folds' agreement, 1 = all alike)")
        elif self.least_agreed:  # naming cases at 1.00 to check first would point at no doubt
            text += f". The folds agree on every case ({AGREEMENT_FILE}: 1.00 each)"
        return text + "."


@dataclass(frozen=True)
class _Run:
    """What both modes need to know about one prediction run, in this process."""

    images: list[InputImage]
    output_dir: Path
    overwrite: bool
    device: torch.device
    show_progress: bool
    context: distributed.DistributedContext

    def __post_init__(self) -> None:
        """Each process listed the inputs itself: shards of different lists would drop one image and do another
        twice, with every process content."""
        if not distributed.same_on_every_rank([image.case_id for image in self.images], self.context):
            raise AutomedsamError("The processes found different input images (files added or removed while torchrun "
                                  "started them). Run the command again once the input folder is complete.")

    def todo(self, images: list[InputImage], save_probabilities: bool) -> list[InputImage]:
        """The images still to predict (all of them with `overwrite`)."""
        return [image for image in images if self.overwrite or not _finished(self.output_dir, image,
                                                                              save_probabilities)]


def predict(input_path: str | Path | None, output_dir: str | Path, *, dataset: str | int | None = None,
            model_folder: str | Path | None = None, folds: Sequence[int] | str | None = None,
            trainer: str = "default", checkpoint: str = DEFAULT_CHECKPOINT, save_probabilities: bool = False,
            boxes: str | Path | None = None, tta: bool = False, device: str | torch.device | None = None,
            overwrite: bool = False, batch_size: int | None = None, foundation_name: str | None = None,
            foundation_checkpoint: str | Path | None = None, box_refinement: str = "auto",
            second_look: str = "auto", dataset_images: bool = False,
            show_progress: bool = True) -> PredictionSummary:
    """Segment every image of `input_path` into `output_dir` (see `automedsam_predict --help`).

    Without `boxes`, the trained model of `model_folder`, or of `dataset` + `trainer`, or the only trained model
    under the results root, is used. With `boxes`, the foundation model alone segments the given boxes: the
    plans' model when `dataset` or `model_folder` is given, else `foundation_name` (default litemedsam).
    `foundation_checkpoint` replaces the foundation weights path stored in the plans; `box_refinement` ("auto",
    "on", "off") says whether the frozen model outlines the predicted objects from their boxes; `second_look`
    ("auto", "on", "off") whether an object the first pass was unsure of is looked at again at its own scale.
    With `dataset_images` (and `dataset`, no `input_path`), the dataset's own images are segmented, the
    annotator's boxes outlined by the frozen model where given (inference.dataset_images).
    """
    _check_foundation_options(foundation_name, foundation_checkpoint)
    if dataset_images:
        return _predict_dataset_images(
            input_path, output_dir, dataset=dataset, model_folder=model_folder, folds=folds, trainer=trainer,
            checkpoint=checkpoint, save_probabilities=save_probabilities, boxes=boxes, tta=tta, device=device,
            overwrite=overwrite, batch_size=batch_size, foundation_name=foundation_name,
            foundation_checkpoint=foundation_checkpoint, box_refinement=box_refinement, second_look=second_look,
            show_progress=show_progress)
    if input_path is None:
        raise AutomedsamError("Give the images to segment with -i (a folder or one file), or --dataset-images to "
                              "segment the images of the dataset given with -d.")
    # the foundation model reads one channel; a trained model's channels say which numbered files are cases
    images = discover_inputs(input_path) if boxes is not None else list_inputs(input_path)
    output_dir = Path(output_dir)
    check_output_folder(input_path, output_dir, images)
    if boxes is None and foundation_name is not None:
        raise AutomedsamError(f"--foundation {foundation_name} only applies with --boxes: a trained model always uses "
                              "the foundation model it was trained with.")
    if boxes is not None:
        unused = [name for name, value in (("-f", folds is not None), ("--save-probabilities", save_probabilities),
                                           ("--tta", tta), ("--box-refinement", box_refinement != "auto"),
                                           ("--second-look", second_look != "auto"),
                                           ("--checkpoint", checkpoint != DEFAULT_CHECKPOINT),
                                           ("--batch-size", batch_size is not None)) if value]
        if unused:
            raise AutomedsamError(f"{', '.join(unused)} apply to a trained model, not to --boxes (which segments the "
                                  "given boxes with the foundation model alone). Drop them or drop --boxes.")
        folder, reading = None, ChannelReading(images)
    else:
        folder = open_model_folder(locate_model_folder(dataset, trainer=trainer, model_folder=model_folder),
                                   folds=folds, checkpoint=checkpoint)
        reading = channel_reading(images, input_path, channel_names=model_channel_names(folder.path))
    with distributed.joined(device) as (context, torch_device):
        if context.is_main:
            _warn_ignored(input_path)
            _tell_channels(reading)
        run = _Run(reading.images, output_dir, overwrite, torch_device, show_progress, context)
        if folder is None:
            return _predict_boxes(run, boxes, dataset=dataset, model_folder=model_folder, trainer=trainer,
                                  foundation_name=foundation_name, foundation_checkpoint=foundation_checkpoint)
        _check_same_model(folder, context)
        return _predict_trained(run, folder, left_out=reading.left_out, save_probabilities=save_probabilities,
                                tta=tta, batch_size=batch_size, foundation_checkpoint=foundation_checkpoint,
                                box_refinement=box_refinement, second_look=second_look)


def _check_same_model(folder: ModelFolder, context: distributed.DistributedContext) -> None:
    """Each process chose the model's folds itself, before joining the others: a fold that finished training while
    torchrun started them would be in one process's ensemble and not another's, and one output folder would mix the
    two ensembles' segmentations."""
    chosen = (folder.path, folder.folds, folder.checkpoint)
    if not distributed.same_on_every_rank(chosen, context):
        raise AutomedsamError(f"The processes chose different folds or checkpoints of {folder.path}: a fold finished "
                              "training while torchrun started them. Run the command again; it predicts with the "
                              "folds finished by then.")


def _check_foundation_options(name: str | None, checkpoint: str | Path | None) -> None:
    """Refuse a foundation model name or weights file that could not be built, before any output is looked at: the
    model is built only when an image is left to predict, so with every output present a misspelt name or a missing
    weights file went unnoticed. Cheap checks only: the weights are read when the model is built."""
    if name is not None and name not in FOUNDATION_MODELS:
        raise AutomedsamError(f"Unknown foundation model '{name}'. Choose one of: {', '.join(FOUNDATION_MODELS)}.")
    if checkpoint is None:
        return
    refuse_folder(checkpoint)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise AutomedsamError(f"The foundation weights {path} do not exist. Check the --foundation-checkpoint path.")
    if path.stat().st_size == 0:
        raise AutomedsamError(f"The foundation weights {path} are empty (0 bytes). Download them again.")


def _predict_trained(run: _Run, folder: ModelFolder, *, left_out: Sequence[str], save_probabilities: bool, tta: bool,
                     batch_size: int | None, foundation_checkpoint: str | Path | None, box_refinement: str,
                     second_look: str) -> PredictionSummary:
    """This process's share of the images through the trained model; counts summed over all processes. The reasons
    `left_out` (other channels without their case's channel 0) join the error of the images that could not be read:
    every process found them, the main one counts them."""
    if save_probabilities:
        _check_no_case_named_like_the_agreement_file(run.images)
    mine = distributed.shard(run.images, run.context)
    todo = run.todo(mine, save_probabilities)
    second_looks = doubtful = 0
    unreadable: list[str] = []
    record = AgreementRecord(run.output_dir, warn=_warning, every_s=RECORD_EVERY_S)
    try:
        if todo:
            predictor = Predictor.from_model(folder, device=run.device, tta=tta, batch_size=batch_size,
                                             foundation_checkpoint=foundation_checkpoint,
                                             box_refinement=box_refinement, second_look=second_look)
            loaded_images = read_ahead(
                todo, lambda image: _loaded_or_refusal(predictor, image),
                weight=lambda loaded: 0 if isinstance(loaded, AutomedsamError) else loaded.slices.nbytes)
            with BackgroundWriter() as writer, _progress(len(todo), run.show_progress and run.context.is_main) as bar:
                for image, loaded in bar.images(loaded_images):
                    if isinstance(loaded, AutomedsamError):
                        unreadable.append(str(loaded))
                        _warning(f"Left out: {loaded}")
                        continue
                    doubtful += _warn_doubt(image.case_id, loaded.doubt)
                    agreement = FoldAgreement()
                    probabilities = predictor.slice_probabilities(loaded, agreement=agreement,
                                                                  progress=bar.slices_done)
                    axis, geometry = loaded.axis, loaded.geometry
                    del loaded  # a volume's slices are not held while its result waits for the writer
                    writer.submit(_finish, predictor, probabilities, segmentation_path(run.output_dir, image),
                                  axis=axis, geometry=geometry, save_probabilities=save_probabilities,
                                  written=partial(record.add, image.case_id, agreement.score()),
                                  weight=sum(part.nbytes for part in probabilities.values()))
            second_looks = predictor.second_looks
    finally:  # also with nothing to predict: drops the scores of label maps gone from OUT; never raises
        record.flush()
    refusals = (list(left_out) if run.context.is_main else []) + unreadable
    written, skipped, second_looks, doubtful, refused = distributed.sum_counts(
        [len(todo) - len(unreadable), len(mine) - len(todo), second_looks, doubtful, len(refusals)], run.context,
        run.device)
    summary = PredictionSummary(written, skipped, 0, run.output_dir,
                                _model_text(folder, box_refinement, second_look, second_looks),
                                least_agreed=tuple(least_agreed(run.output_dir)) if len(folder.folds) > 1 else (),
                                doubtful=doubtful)
    _refuse_left_out(summary, refused, refusals, "were left out" if left_out else "could not be read")
    return summary


def _refuse_left_out(summary: PredictionSummary, refused: int, reasons: list[str], what: str) -> None:
    """The run's error once every other image is written: `refused` images (over all processes) were left out, this
    process's `reasons` name its own."""
    if refused:  # every process ends in the error (under torchrun too), each naming the images it was given
        named = "\n  ".join(reasons) if reasons else "(named by the other processes)"
        raise AutomedsamError(f"{summary.line()} But {refused} image(s) {what}, and no segmentation was written for "
                              f"them:\n  {named}\nFix or remove them and run the same command again: the "
                              "segmentations written are kept, only the missing ones are predicted.")


def _loaded_or_refusal(predictor: Predictor, image: InputImage) -> LoadedImage | AutomedsamError:
    """The image read for the model, or why it cannot be: one bad file among a thousand stops nothing but itself
    (the run ends in an error that names it, after every other image is written)."""
    try:
        return predictor.load_file(image.path)
    except AutomedsamError as refusal:
        return refusal


def _check_no_case_named_like_the_agreement_file(images: list[InputImage]) -> None:
    """A case's probabilities come with CASE.json: for one case that is the agreement file (kept from an earlier
    run even when this one has a single fold), which either would overwrite; case-insensitive file systems too."""
    clashing = [image.path.name for image in images if f"{image.case_id}.json".casefold() == AGREEMENT_FILE]
    if clashing:
        raise AutomedsamError(f"The image {clashing[0]} would write its probabilities' geometry to {AGREEMENT_FILE}, "
                              "where the folds' agreement goes. Rename that image, or drop --save-probabilities.")


def _model_text(folder: ModelFolder, box_refinement: str, second_look: str, second_looks: int) -> str:
    """The model of the summary line: its folder, folds, checkpoint, and which labels took which extra pass."""
    choices = refinement_choices(folder, box_refinement)
    refined = [f"label {label} ({choice['reason']})" for label, choice in choices.items() if choice["refine"]]
    refined_text = f", box refinement of {'; '.join(refined)}" if refined else ""
    if box_refinement == "on":  # the user asked for every target: those it cannot take are named
        left = [f"label {label} ({choice['reason']})" for label, choice in choices.items() if not choice["refine"]]
        refined_text += f", --box-refinement on cannot refine {'; '.join(left)}" if left else ""
    looked = [f"label {label} ({choice['reason']})"
              for label, choice in second_look_choices(folder, second_look).items() if choice["look"]]
    looked_text = (f", second look of {'; '.join(looked)}: {second_looks} window(s) looked at again"
                   if looked else "")
    return (f"{folder.path} (folds {', '.join(map(str, folder.folds))}{_left_out_text(folder)}, "
            f"checkpoint_{folder.checkpoint}{refined_text}{looked_text})")


def _left_out_text(folder: ModelFolder) -> str:
    """The folds the ensemble left out (no -f) and why: unfinished, or (with --checkpoint best, a model exported
    without --best) finished without that checkpoint."""
    if not folder.left_out:
        return ""
    missing = f"complete checkpoint_{FINISHED_CHECKPOINT}.pt and .json (still training?)"
    if folder.checkpoint != FINISHED_CHECKPOINT:
        missing += f" or no checkpoint_{folder.checkpoint}.pt"
    return f"; fold(s) {', '.join(map(str, folder.left_out))} left out: no {missing}"


def _predict_dataset_images(input_path: str | Path | None, output_dir: str | Path, *, dataset: str | int | None,
                            model_folder: str | Path | None, folds: Sequence[int] | str | None, trainer: str,
                            checkpoint: str, save_probabilities: bool, boxes: str | Path | None, tta: bool,
                            device: str | torch.device | None, overwrite: bool, batch_size: int | None,
                            foundation_name: str | None, foundation_checkpoint: str | Path | None,
                            box_refinement: str, second_look: str, show_progress: bool) -> PredictionSummary:
    """The dataset's own images: the annotator's boxes outlined where given, the trained model elsewhere."""
    conflicting = [name for name, value in (("-i", input_path is not None), ("-m", model_folder is not None),
                                            ("--boxes", boxes is not None),
                                            ("--save-probabilities", save_probabilities),
                                            ("--foundation", foundation_name is not None)) if value]
    if conflicting:
        raise AutomedsamError(f"--dataset-images segments the images of the dataset given with -d, with its trained "
                              f"model and its boxes; {', '.join(conflicting)} do not apply. Drop them.")
    if dataset is None:
        raise AutomedsamError("--dataset-images needs -d: the dataset whose images to segment (e.g. -d 5).")
    raw = load_raw_dataset(dataset)
    images = dataset_images(raw)
    output_dir = Path(output_dir)
    check_output_folder(raw.root, output_dir, images)
    folder = open_model_folder(locate_model_folder(raw.name, trainer=trainer), folds=folds, checkpoint=checkpoint)
    annotations = case_annotations(raw)
    options = {"tta": tta, "box_refinement": box_refinement, "second_look": second_look,
               "foundation_checkpoint": foundation_checkpoint}
    with distributed.joined(device) as (context, torch_device):
        run = _Run(images, output_dir, overwrite, torch_device, show_progress, context)
        _check_same_model(folder, context)
        signatures = input_signatures(raw, folder, annotations=annotations, options=options, device=torch_device)
        if context.is_main:  # the cases about to be redone leave the record until they are written
            kept = set() if overwrite else up_to_date(output_dir, images, signatures)
            save_record(output_dir, images, signatures, kept)
        distributed.barrier(context)  # every process decides from the record the main one left
        current = up_to_date(output_dir, images, signatures)
        mine = distributed.shard(run.images, run.context)
        todo = [image for image in mine if image.case_id not in current]
        counts, second_looks, doubtful = SegmentedCounts(), 0, 0
        record = AgreementRecord(output_dir, warn=_warning, every_s=RECORD_EVERY_S)
        try:
            if todo:
                predictor = Predictor.from_model(folder, device=run.device, tta=tta, batch_size=batch_size,
                                                 foundation_checkpoint=foundation_checkpoint,
                                                 box_refinement=box_refinement, second_look=second_look)
                # a weights path other than the planned one may hold other weights: no cached embedding is trusted
                cache = None if foundation_checkpoint is not None else PlannedEmbeddingCache(
                    paths.preprocessed_dataset_dir(raw.name), predictor.plans,
                    images={case.case_id: case.image for case in raw.cases})
                done, saved = set(current), time.monotonic()
                with _progress(len(todo), run.show_progress and run.context.is_main) as bar:
                    segmenter = DatasetImageSegmenter(predictor, raw, annotations, embeddings=cache,
                                                      warn_doubt=_warn_doubt, progress=bar.slices_done)
                    for image, _ in bar.images((image, None) for image in todo):
                        record.add(image.case_id, segmenter.segment(image, segmentation_path(run.output_dir, image)))
                        done.add(image.case_id)
                        # one process alone knows what is done: it records its progress, so a stopped run resumes
                        if not context.is_distributed and time.monotonic() - saved > RECORD_EVERY_S:
                            save_record(output_dir, images, signatures, done)
                            saved = time.monotonic()
                counts, second_looks, doubtful = segmenter.counts, predictor.second_looks, segmenter.doubtful
        finally:  # also with nothing to redo: drops the scores of images gone from the dataset; never raises
            record.flush()
        totals = distributed.sum_counts([len(todo), len(mine) - len(todo), second_looks, doubtful, counts.from_masks,
                                         counts.from_boxes, counts.marked_empty, counts.by_model,
                                         counts.volumes_with_boxed_slices], run.context, run.device)
        if context.is_main:  # a case whose inputs changed while the run read them is made again next time
            after = input_signatures(raw, folder, annotations=case_annotations(raw), options=options,
                                     device=torch_device)
            save_record(output_dir, images, signatures,
                        {case for case, signature in signatures.items() if after.get(case) == signature})
    written, skipped, second_looks, doubtful, *parts = totals
    model_text = _model_text(folder, box_refinement, second_look, second_looks)
    return PredictionSummary(written, skipped, 0, output_dir, f"the boxes of {raw.name} and {model_text}",
                             details=SegmentedCounts(*parts).text() if written else "",
                             kept="up to date (their image, mask, boxes, empty slices and the model did not "
                                  f"change{OVERWRITE_HINT})",
                             least_agreed=tuple(least_agreed(output_dir)) if len(folder.folds) > 1 else (),
                             doubtful=doubtful)


def _warn_ignored(input_path: str | Path) -> None:
    """Name the input folder's files in a format no reader takes, and its subfolders (not searched): the summary
    counts only the images it read."""
    names = ignored_files(input_path)
    if names:
        shown = ", ".join(names[:IGNORED_NAMED]) + (", ..." if len(names) > IGNORED_NAMED else "")
        _warning(f"Ignored {len(names)} entr{'y' if len(names) == 1 else 'ies'} of {input_path} that "
                 "automedsam_predict does not read (files in another format, DICOM files without an image such as "
                 f"reports or RT structure sets, subfolders other than a DICOM series): {shown}. Convert the images "
                 f"among them to a format it reads ({FORMATS}), and give each folder of images with its own -i.")


def _tell_channels(reading: ChannelReading) -> None:
    """Name the other channels of cases the model does not read, and each one left out for want of its case's
    channel 0: without a word, the ADC image of a T2 model's case was segmented as a case of its own."""
    if reading.note:
        _warning(f"Note: {reading.note}")
    for reason in reading.left_out:
        _warning(f"Left out: {reason}")


def _warning(text: str) -> None:
    Console(stderr=True).print(text, markup=False, highlight=False, soft_wrap=True)


def _warn_doubt(case_id: str, doubt: str | None) -> int:
    """Warn, once per image, that its segmentation is unreliable (`intensity_doubt`, `slicing_doubt`); 1 if so,
    for the summary's count. The model writes an object even into a blank image."""
    if doubt is None:
        return 0
    _warning(f"Warning: {case_id}: {doubt}")
    return 1


def _finish(predictor: Predictor, slices: dict[int, np.ndarray], out_path: Path, *, axis: int | None,
            geometry: Geometry | None, save_probabilities: bool, written: Callable[[], None]) -> None:
    """An image's CPU-only end, in the writer thread: combined into its label map, written, then `written()` (what
    follows a written label map: its agreement recorded). It gets the probabilities and the geometry only, not the
    loaded image, so a waiting write holds no image."""
    label_map, probabilities = predictor.combine(slices, axis)
    write_prediction(out_path, label_map, probabilities, geometry, save_probabilities=save_probabilities)
    written()


def _predict_boxes(run: _Run, boxes: str | Path, *, dataset: str | int | None, model_folder: str | Path | None,
                   trainer: str, foundation_name: str | None,
                   foundation_checkpoint: str | Path | None) -> PredictionSummary:
    """This process's share of the images named in the box file, segmented by the foundation model alone."""
    by_case = {image.case_id: image for image in run.images}
    # a box file typed on one system names the images of another in its own Unicode normalisation
    entries = spelled_as(read_prompt_boxes(boxes), by_case, folders=(boxes, "the input folder"))
    unknown = sorted(set(entries) - set(by_case))
    if unknown:
        raise AutomedsamError(f"The box file {boxes} names case(s) {', '.join(unknown)} that are not among the input "
                              f"images (cases found: {', '.join(sorted(by_case)[:10])}"
                              f"{', ...' if len(by_case) > 10 else ''}). Fix the case ids in the box file.")
    chosen = [image for image in run.images if image.case_id in entries]
    mine = distributed.shard(chosen, run.context)
    todo = run.todo(mine, False)
    plans = _box_mode_plans(dataset, trainer, model_folder)
    if plans is not None:
        check_planned_labels(entries, plans, path=boxes)
    if plans is not None and foundation_name not in (None, plans.foundation_name):
        raise AutomedsamError(f"--foundation {foundation_name} contradicts the plans of the chosen model, which use "
                              f"{plans.foundation_name}. Leave out -d/-m to segment the boxes with {foundation_name}.")
    if plans is not None:
        foundation_name = plans.foundation_name
    foundation_name = foundation_name or DEFAULT_FOUNDATION
    refusals: list[str] = []
    doubtful = 0
    record = AgreementRecord(run.output_dir, warn=_warning, every_s=RECORD_EVERY_S)
    try:
        if todo:
            foundation = (build_foundation_model(foundation_name, foundation_checkpoint, device=run.device)
                          if plans is None
                          else plans.build_foundation_model(checkpoint=foundation_checkpoint, device=run.device))
            refusals, doubtful = _segment_boxes(run, todo, BoxPredictor(foundation, plans), entries, boxes=boxes,
                                                record=record)
    finally:  # never raises; with no ranking in OUT it writes nothing
        record.flush()
    written, skipped, doubtful, refused = distributed.sum_counts(
        [len(todo) - len(refusals), len(mine) - len(todo), doubtful, len(refusals)], run.context, run.device)
    summary = PredictionSummary(written, skipped, len(run.images) - len(chosen), run.output_dir,
                                f"{foundation_name} prompted by the boxes of {boxes}", doubtful=doubtful)
    _refuse_left_out(summary, refused, refusals, "could not be segmented from their boxes")
    return summary


def _segment_boxes(run: _Run, todo: list[InputImage], predictor: BoxPredictor,
                   entries: dict[str, list[dict]], *, boxes: str | Path,
                   record: AgreementRecord) -> tuple[list[str], int]:
    """Segment each image's boxes into OUT; the refusals of the images left out, and how many of those written had
    intensities the model cannot read (warned). A case segmented so leaves the folds' agreement record: the folds
    never segmented its label map."""
    refusals, doubtful = [], 0
    with _progress(len(todo), run.show_progress and run.context.is_main) as bar:
        for image, _ in bar.images((image, None) for image in todo):
            try:  # one unreadable image or unfit box stops nothing but itself, as without --boxes
                doubt = predictor.predict_file(image.path, segmentation_path(run.output_dir, image),
                                               entries=entries[image.case_id],
                                               where=f"box file {boxes}, case '{image.case_id}'")
            except AutomedsamError as refusal:
                refusals.append(str(refusal))
                _warning(f"Left out: {refusal}")
            else:
                doubtful += _warn_doubt(image.case_id, doubt)
                record.add(image.case_id, None)
    return refusals, doubtful


def _box_mode_plans(dataset: str | int | None, trainer: str, model_folder: str | Path | None) -> Plans | None:
    """Plans for box mode: the model folder's, else the dataset's preprocessed plans; None without -d / -m."""
    if model_folder is None and dataset is None:
        return None
    if model_folder is not None:
        return Plans.load(locate_model_folder(model_folder=model_folder) / "plans.json", "model plans")
    name = paths.resolve_dataset_name(dataset)
    if any(model.parent.name == name and model.name.startswith(f"{trainer}__") for model in trained_models()):
        # several models of the trainer may window intensities differently: -m chooses, as without --boxes
        return Plans.load(locate_model_folder(dataset, trainer=trainer) / "plans.json", "model plans")
    planned = paths.preprocessed_dataset_dir(name) / "plans.json"
    if not planned.is_file():
        raise AutomedsamError(f"{name} has no plans yet ({planned} is missing). Run `automedsam_plan_and_preprocess "
                              f"-d {dataset}`, or leave -d out to segment the boxes with --foundation alone.")
    return Plans.load(planned, "plans")


def _finished(output_dir: Path, image: InputImage, save_probabilities: bool) -> bool:
    """A case is finished when its segmentation (and, if asked for, its probabilities) exist."""
    segmentation = segmentation_path(output_dir, image)
    wanted = [segmentation, *probabilities_paths(segmentation)] if save_probabilities else [segmentation]
    return all(path.is_file() for path in wanted)


class _Bar:
    """The run's progress bar: one step per image, moved through an image's slices as the model finishes them (one
    large volume takes minutes, and a bar that counted images only stood at 0/1 with no time left all that while)."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress = progress
        self.task = progress.add_task("Predicting", total=total)
        self.case_id, self.before = "", 0  # the image being predicted, and how many came before it

    def images(self, items: Iterable[tuple[InputImage, Loaded]]) -> Iterator[tuple[InputImage, Loaded]]:
        """The (image, anything) pairs, counted: each as begun when it is taken, as done when the next is asked for.
        An iterator that keeps no pair while the caller works on it: a generator's frame would keep the pair it
        yielded, and with it a volume's slices, while the volume's result waits for the writer."""
        return _Counted(self, iter(items))

    def slices_done(self, done: int, count: int) -> None:
        """`done` of the current image's `count` slices are predicted (a `SliceProgress`)."""
        where = f": slice {done}/{count}" if count > 1 else ""
        self.progress.update(self.task, description=f"Predicting {self.case_id}{where}",
                             completed=self.before + done / count)


class _Counted(Iterator[tuple[InputImage, Loaded]]):
    """The pairs of `_Bar.images`, counted on its bar."""

    def __init__(self, bar: _Bar, items: Iterator[tuple[InputImage, Loaded]]) -> None:
        self.bar = bar
        self.items = items
        self.taken = 0

    def __next__(self) -> tuple[InputImage, Loaded]:
        bar = self.bar
        if self.taken:
            bar.progress.update(bar.task, description=f"Predicting {bar.case_id}", completed=self.taken)
        image, loaded = next(self.items)
        bar.case_id, bar.before = image.case_id, self.taken
        bar.progress.update(bar.task, description=f"Predicting {image.case_id}", completed=self.taken)
        self.taken += 1
        return image, loaded


@contextmanager
def _progress(total: int, show: bool) -> Iterator[_Bar]:
    """A progress bar (on stderr) over `total` images."""
    with progress_bar(show) as progress:
        yield _Bar(progress, total)
