"""What Segment images on the annotation page runs, and the label maps Download segmentations hands out.

The page runs `automedsam_predict --dataset-images` (the annotator's boxes outlined, the trained model elsewhere)
into a folder of its own, starting from the last segmentations so that only the images whose inputs (image, mask,
boxes, marks, model) changed are segmented again, and puts it in place of results/DatasetXXX/segmentations/ only
once every image is done, so a stopped or failed run never leaves a half-updated folder behind (the next run goes on
from where it stopped). Segmentations made before the latest box, rejection or model are out of date, and the page
says so: whenever the command would segment an image again, by the record it keeps of each label map's inputs (a
Train stopped before its model replaced the last one rewrites splits.json and changes nothing).
"""
from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from automedsam import paths
from automedsam.annotation.retraining import TrainingSettings
from automedsam.annotation.session import AnnotationSession
from automedsam.annotation.training_job import CallStep, CommandStep, Output, Step
from automedsam.dataset import load_raw_dataset
from automedsam.device import resolve_device
from automedsam.errors import AutomedsamError
from automedsam.inference.agreement import AGREEMENT_FILE
from automedsam.inference.dataset_images import case_annotations, dataset_images
from automedsam.inference.model_folder import open_model_folder
from automedsam.inference.naming import segmentation_path
from automedsam.inference.run import OVERWRITE_HINT
from automedsam.inference.segmented_record import RECORD_FILE, input_signatures, up_to_date
from automedsam.io import is_supported

SEGMENTATIONS_FOLDER = "segmentations"  # results/DatasetXXX/segmentations/: the last complete Segment images
IN_PROGRESS_FOLDER = ".segmentations_in_progress"  # beside it: the run going on (hidden: not a model folder)
# The prediction options of the page's command (automedsam_predict's defaults), as its record signs them.
PAGE_OPTIONS = {"tta": False, "box_refinement": "auto", "second_look": "auto", "foundation_checkpoint": None}


def segmentations_dir(session: AnnotationSession) -> Path:
    return paths.results_dataset_dir(session.dataset.name) / SEGMENTATIONS_FOLDER


def segmentation_steps(session: AnnotationSession, settings: TrainingSettings) -> list[Step]:
    """The last segmentations linked into the in-progress folder, the images whose inputs changed segmented again
    there (the command keeps the others: inference.segmented_record), then published."""
    final = segmentations_dir(session)
    running = final.with_name(IN_PROGRESS_FOLDER)
    device = ("--device", settings.device) if settings.device else ()
    return [CallStep("Starting from the last segmentations",
                     lambda output, stop: _start_from(final, running, dataset=session.dataset.name)),
            _SegmentingCommand("Segmenting the images", "automedsam_predict",
                               ("-d", session.dataset.name, "--dataset-images", "-o", str(running), "--trainer",
                                settings.trainer, *device), published_as=(str(running), str(final))),
            CallStep("Publishing the segmentations", lambda output, stop: _publish(running, final, output))]


def segmentation_files(session: AnnotationSession) -> list[Path]:
    """The label maps of the last complete Segment images (none before the first)."""
    folder = segmentations_dir(session)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith(".")
                  and is_supported(path))


def agreement_file(session: AnnotationSession) -> Path | None:
    """The folds' agreement with the model's segmentations of the last Segment images (which to check first), if
    it was written."""
    path = segmentations_dir(session) / AGREEMENT_FILE
    return path if path.is_file() else None


def segmentations_out_of_date(session: AnnotationSession, model_dir: Path | None, *, device: str | None) -> bool:
    """Whether Segment images would segment an image again: its image, mask, boxes or No structure marks, or the
    model (on the page's `device`), differ from those its label map was made from, or it has none. Compared by
    content, as the command compares them, not by modification time: planning rewrites splits.json unchanged.
    A damaged box file raises AutomedsamError naming it, whether the page's queue shows its case or not."""
    folder = segmentations_dir(session)
    if not folder.is_dir():
        return False
    if model_dir is None:  # the model they were made from is gone
        return True
    raw = load_raw_dataset(session.dataset.name, check_images=False)
    annotations = case_annotations(raw)
    try:
        signatures = input_signatures(raw, open_model_folder(model_dir), annotations=annotations,
                                      options=PAGE_OPTIONS, device=resolve_device(device))
    except AutomedsamError:  # a damaged model: Segment images says what is wrong
        return True
    images = dataset_images(raw)
    return len(up_to_date(folder, images, signatures)) < len(images)


def _start_from(final: Path, running: Path, *, dataset: str) -> None:
    """The in-progress folder the command runs in. A stopped run's folder (it holds the command's record) goes on
    as it is, so its finished label maps are kept; otherwise a fresh folder holds the published ones as hard links
    (copies where links fail): the command replaces a label map by writing a new file, so the published ones stay as
    they are until the swap. Only the label maps of the images the raw folder holds now are kept (and the record
    and the folds' agreement, whose entries the command keeps for the label maps it keeps)."""
    carried = {segmentation_path(running, image).name for image in dataset_images(load_raw_dataset(dataset))}
    carried.update((RECORD_FILE, AGREEMENT_FILE))
    if (running / RECORD_FILE).is_file():
        for path in running.iterdir():
            if path.name in carried:
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return
    shutil.rmtree(running, ignore_errors=True)
    running.mkdir(parents=True)
    for name in sorted(carried):
        source = final / name
        if source.is_file():
            try:
                os.link(source, running / name)
            except OSError:
                shutil.copy2(source, running / name)


def _publish(running: Path, final: Path, output: Output) -> None:
    """Swap the finished run's folder in; the previous segmentations go only once the new ones are in place."""
    replaced = final.with_name(f"{IN_PROGRESS_FOLDER}.replaced")
    shutil.rmtree(replaced, ignore_errors=True)
    if final.exists():
        final.rename(replaced)
    running.rename(final)
    shutil.rmtree(replaced, ignore_errors=True)
    output(f"The segmentations are in {final}.")


@dataclass(frozen=True)
class _SegmentingCommand(CommandStep):
    """The predict command, run in the in-progress folder. Its summary ("Wrote 16 segmentation(s) to ...") is what
    the page shows once the run is published, when that folder is gone: it names the published folder instead, and
    leaves out the --overwrite the command offers its terminal user (the page has no such control)."""

    published_as: tuple[str, str] = ("", "")  # (the in-progress folder, the published one)

    def run(self, output: Output, stop: threading.Event) -> None:
        running, final = self.published_as

        def summary_naming_the_published_folder(line: str, *, live: bool = False) -> None:
            output(_as_the_page_says(line, running=running, final=final) if line.startswith("Wrote ") else line,
                   live=live)
        super().run(summary_naming_the_published_folder, stop)


def _as_the_page_says(summary: str, *, running: str, final: str) -> str:
    """The command's summary line as the page shows it: the published folder, no option the page lacks."""
    return summary.replace(running, final).replace(OVERWRITE_HINT, "")
