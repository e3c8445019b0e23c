"""`automedsam_annotate`: draw the boxes of the drawn samples in the browser, or review the trained model."""
from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path
from typing import List, Optional

import typer
import uvicorn
from rich.console import Console
from rich.markup import escape

from automedsam.annotation.retraining import TrainingSettings, unboxed_blocker
from automedsam.annotation.review_queue import REVIEW_SAMPLES, review_items
from automedsam.annotation.server import EVERY_INTERFACE, allowed_hosts_for, create_app, is_loopback, page_url
from automedsam.annotation.session import AnnotationSession
from automedsam.cli.common import INTERRUPTED_NOTE, VersionOption, run_app
from automedsam.conversion import convert_folder
from automedsam.dataset import RawDataset, check_dataset_folder, load_raw_dataset
from automedsam.device import resolve_device
from automedsam.errors import AutomedsamError
from automedsam.paths import (dataset_folder_name, preprocessed_dataset_dir, raw_dataset_dir, raw_root,
                              resolve_dataset_name)
from automedsam.planning.plan_and_preprocess import DEFAULTS, PreprocessSummary, plan_and_preprocess
from automedsam.training.variants import get_variant

HELP = """Open a local web page to draw the boxes of the samples automedsam_plan_and_preprocess drew.

The page shows the queue of drawn samples ("k of N done"), one image at a time (a 3D sample's neighbouring slices
too), with zoom, pan, window/level and the labels of dataset.json. Keys 1-9 choose the label; drag to draw a box of
it, or double-click a structure for the box the frozen model outlines there (double-click that box for the next
outline); drag a box of that label to move it, its corners or edges to resize it (boxes of other labels stay put,
so LV can be drawn inside MYO); Shift + a label's key relabels the selected box; Delete removes it. As a box is
drawn, the frozen foundation model's box-prompted mask is overlaid. S saves the sample's boxes into the raw dataset's
boxesTr/ (checked like imported box files); X marks an image that does not show the structure, and the next drawn sample
replaces it. Two tabs lose nothing: a save that crosses another is merged.

With --review, after training and once every drawn sample is done: the unlabelled samples (the first
--review-samples of the seeded draw order) are shown worst first (largest disagreement between the trained folds)
with the ensemble's prediction; Accept (or a corrected box, then Save) adds the sample to the labelled set
(splits.json) for the next automedsam_plan_and_preprocess and training.

Train (on the page, once every drawn sample is done) runs those next steps in the background: plan and preprocess
the boxes, move the model trained before, whole, to results/DatasetXXX/previous/, train every fold, then show the
new model's review (--epochs N trains shorter folds, for a first look). Download model gives the model as one zip
(automedsam_export_model's), for automedsam_install_model on another machine. The steps' output goes to the
preprocessed folder's page_training.log.

The server listens on 127.0.0.1 only, unless --host says otherwise. Stop it with Ctrl+C. Open the page at the
address printed, which ends with ?token=... (a new one at each start): without that token the server refuses every
request, since other accounts of a shared machine reach 127.0.0.1 too.

From a folder of images to the page in one command: --images imports the folder as the new dataset -d (what
automedsam_convert folder does) and draws the --shots samples to box (automedsam_plan_and_preprocess), then serves.
A draw that fails or is interrupted undoes the import, so that the same command can run again once the cause is fixed.

Examples:

  automedsam_annotate -d 5 --images scans --label nodule --shots 10

  automedsam_annotate -d 5

  automedsam_annotate -d 5 --port 8800

  automedsam_annotate -d 5 --epochs 30

  automedsam_annotate -d 5 --review

  automedsam_annotate -d 5 --review --review-samples 400
"""

app = typer.Typer(add_completion=False, help=HELP, rich_markup_mode=None)
stdout = Console()
stderr = Console(stderr=True)
_UNDONE: list[str] = []  # what an --images import undone by an interruption left: the interruption's note says it


@app.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
def annotate(
    dataset: str = typer.Option(..., "-d", "--dataset", help="Dataset id or name (1, 001, Dataset001_X), or the path "
                                "of its folder in the raw root."),
    port: int = typer.Option(8765, "--port", min=1, max=65535, help="Port of the local web server."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on; anything but 127.0.0.1 lets other "
                             "machines use the page (anyone with the printed address, token included)."),
    review: bool = typer.Option(False, "--review",
                                help="Review the trained model's predictions on unlabelled samples."),
    trainer: str = typer.Option("default", "--trainer", "-tr", help="Trainer of the model reviewed with --review and "
                                "trained by the page's Train."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs of each fold the page's Train trains "
                                         "(a shorter run for a first look; default: the planned schedule)."),
    review_samples: int = typer.Option(REVIEW_SAMPLES, "--review-samples", min=1, help="How many unlabelled samples "
                                       "--review ranks, and the page's review after Train or from Review (the first of "
                                       "the seeded draw order, spread over the groups): each costs an encoder pass and "
                                       "the ensemble's decoding."),
    device: Optional[str] = typer.Option(None, "--device", help="Device of the foundation model and of Train's "
                                          "commands: cpu, cuda, cuda:N (default: CUDA if available)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Start from a folder of images: import it as the new "
                                          "dataset -d (automedsam_convert folder) and draw --shots samples "
                                          "(automedsam_plan_and_preprocess), then open the page."),
    name: Optional[str] = typer.Option(None, "-n", "--name", help="With --images: the dataset's name (default: the "
                                       "folder's name)."),
    label: Optional[List[str]] = typer.Option(None, "--label", metavar="NAME", help="With --images: the structure to "
                                              "box (label 1); repeat it for several structures. Default: foreground."),
    group_pattern: Optional[str] = typer.Option(None, "--group-pattern", metavar="REGEX", help="With --images: the "
                                                "patient/examination in an image name (its named group `group`, else "
                                                "its first group, else the whole match), so that images of one "
                                                "patient stay in one fold."),
    shots: Optional[int] = typer.Option(None, "--shots", min=2, help="With --images: how many images to box "
                                        "(default 10)."),
    version: Optional[bool] = VersionOption,
) -> None:
    _check_port(host, port)  # before anything is imported: a second try would find the dataset there
    resolve_device(device)  # checked now, not at the page's first box preview or Train
    get_variant(trainer)
    if images is not None:
        if review:
            raise AutomedsamError("--images imports a new dataset, which has no trained model to --review yet.")
        dataset = _import_and_draw(dataset, images, name=name, labels=label, group_pattern=group_pattern,
                                   shots=shots)
    elif any(option is not None for option in (name, label, group_pattern, shots)):
        raise AutomedsamError("-n, --label, --group-pattern and --shots describe the folder given with --images. To "
                              f"draw again for an existing dataset: automedsam_plan_and_preprocess -d {dataset} "
                              "--shots N.")
    raw = load_raw_dataset(dataset, check_images=False)
    _check_in_raw_root(raw)
    session = AnnotationSession(raw, preprocessed_dataset_dir(raw.name), device=device)
    if review:
        _refuse_review_with_samples_to_box(session)
        session.start_review(review_items(session, trainer=trainer, device=device, limit=review_samples,
                                          report=_say, bar=True))
    server = create_app(session, allowed_hosts=allowed_hosts_for(host),
                        training=TrainingSettings(trainer=trainer, device=device, epochs=epochs,
                                                   review_samples=review_samples))
    if not is_loopback(host):
        _warn_other_machines(host)
    overview = session.overview()
    url = page_url(host, port, token=server.state.token)
    what = "to review" if review else f"drawn, {overview['done']} done"
    stdout.print(f"{raw.name}: {overview['total']} samples {what}. Open {url} (Ctrl+C stops the server)",
                 markup=False, highlight=False, soft_wrap=True)
    # A closed terminal (SIGHUP) or a kill (SIGTERM) must end the server as Ctrl+C does, or a training command, in a
    # session of its own, runs on orphaned: uvicorn stops gracefully on SIGINT and SIGTERM, then raises the signal
    # again into run_app's handler (a KeyboardInterrupt); SIGHUP, which uvicorn ignores, is turned into SIGINT here
    previous = {}
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # started with nohup: the terminal may close
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda signum, frame: os.kill(os.getpid(),
                                                                                             signal.SIGINT))
    try:
        uvicorn.run(server, host=host, port=port, log_level="warning")
    finally:  # Ctrl+C ends uvicorn.run with KeyboardInterrupt: say where things stand all the same
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.state.training_job.stop()
        final = session.labelled_progress()
        # splits.json's `added`: the samples saved in review and those a Restore kept beyond the draw alike
        added = (f" ({final['added']} of them added beyond the draw, in review or on a Restore)"
                 if final["added"] else "")
        stdout.print(f"{raw.name}: {final['done']} of {final['total']} samples done{added}. Next: Train on the page "
                     f"(automedsam_annotate -d {raw.name}), or automedsam_plan_and_preprocess -d {raw.name} and "
                     "automedsam_train", markup=False, highlight=False, soft_wrap=True)


def _warn_other_machines(host: str) -> None:
    """Beyond loopback, only the token keeps the page to its user: say so, and how another machine opens it (by a
    name the server answers: allowed_hosts_for)."""
    there = (f" (from another machine: with this machine's name, {socket.gethostname()}, in place of 127.0.0.1)"
             if host in EVERY_INTERFACE else "")
    stderr.print(f"[yellow]Warning:[/yellow] listening on {escape(host)}: anyone who has the address printed "
                 f"below{escape(there)}, token included, can read the images, change the boxes, start training and "
                 "download the model. The token is what protects the page: keep the address to yourself.",
                 highlight=False, soft_wrap=True)


def _import_and_draw(dataset: str, images: Path, *, name: Optional[str], labels: Optional[list[str]],
                     group_pattern: Optional[str], shots: Optional[int]) -> str:
    """The one-command start: the folder becomes dataset `dataset` and the samples to box are drawn."""
    if not dataset.isdigit() or not 1 <= int(dataset) <= 999:
        raise AutomedsamError(f"With --images, -d is the new dataset's number (1-999), got {dataset!r}.")
    try:
        existing = resolve_dataset_name(dataset)
    except AutomedsamError:
        existing = None
    if existing is not None:
        raise AutomedsamError(f"{existing} exists already: to go on annotating it, run automedsam_annotate -d "
                              f"{dataset} without --images; to import the folder as a new dataset, choose another -d.")
    name = name or images.resolve().name
    folder = dataset_folder_name(int(dataset), name)
    absent = [path for path in (raw_dataset_dir(folder), preprocessed_dataset_dir(folder)) if not path.exists()]
    target = convert_folder(images, dataset_id=int(dataset), name=name, label_names=labels or ["foreground"],
                            group_pattern=group_pattern, report=_say)
    drawn = _draw_or_undo(target.name, created=absent, shots=shots)
    for note in drawn.notes:  # as automedsam_plan_and_preprocess prints them: fewer folds, labels without samples
        stderr.print(f"[yellow]Note:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    _say(f"Imported {images} as {target.name} and {_drawn_text(target.name, drawn=drawn.labelled, shots=shots)}.")
    return target.name


def _draw_or_undo(dataset: str, *, created: list[Path], shots: Optional[int]) -> PreprocessSummary:
    """Draw the samples of the dataset just imported, or undo the import when the draw fails or is interrupted:
    kept, the dataset would make the rerun with --images refuse it as existing, and -d alone finds no draw."""
    try:
        return plan_and_preprocess(dataset, shots=shots, plan_only=True)
    except AutomedsamError as error:
        raise AutomedsamError(f"{error} {_undo_import(dataset, created=created)}. After the fix, run the same "
                              "automedsam_annotate --images command again.") from error
    except BaseException as error:
        undone = _undo_import(dataset, created=created)
        if isinstance(error, KeyboardInterrupt):  # Ctrl+C, a kill or a closed terminal: the interruption's note
            _UNDONE.append(undone)
        else:  # an unexpected failure: said before its report
            stderr.print(f"{undone}.", markup=False, highlight=False, soft_wrap=True)
        raise


def _undo_import(dataset: str, *, created: list[Path]) -> str:
    """Remove the folders that this command's import and draw created (never one that was there before), and say
    what became of them."""
    for path in created:
        shutil.rmtree(path, ignore_errors=True)
    left = [str(path) for path in created if path.exists()]
    if left:
        return f"{dataset} could not be removed entirely: delete {' and '.join(left)} by hand"
    return f"Nothing was kept ({dataset} was removed again)"


def _drawn_text(dataset: str, *, drawn: int, shots: Optional[int]) -> str:
    """How many samples were drawn, and why fewer than --shots asks for: a fresh draw takes every sample of a folder
    that has fewer, and the user should know that more images are needed for more."""
    asked = shots if shots is not None else DEFAULTS["shots"]
    if drawn >= asked:
        return f"drew {drawn} samples to box"
    images = len(load_raw_dataset(dataset, check_images=False).cases)
    holds = f"{images} images" if images == drawn else f"{images} images, {drawn} 2D samples in all"
    given = f"--shots asked for {asked}" if shots is not None else f"--shots is {asked} by default"
    return f"drew {drawn} samples to box (the folder holds {holds}; {given})"


def _interrupted_note() -> str:
    """The note of an interrupted command: the generic one, unless the interruption undid an --images import."""
    if _UNDONE:
        return f"Interrupted. {_UNDONE[-1]}. Run the same command again."
    return INTERRUPTED_NOTE


def _refuse_review_with_samples_to_box(session: AnnotationSession) -> None:
    """The page's Review waits for every drawn sample to be boxed, and so does --review: the review would hide the
    samples still to box (it shows only the ranked ones), after an encoder pass for every sample it ranks."""
    blocker = unboxed_blocker(session)
    if blocker:
        raise AutomedsamError(f"{blocker} Box them first: automedsam_annotate -d {session.dataset.name} without "
                              "--review, then --review.")


def _check_in_raw_root(raw: RawDataset) -> None:
    """Refuse a dataset folder given by a path outside the raw root: the page's Train and Segment images find the
    dataset by its name there, so they would plan another dataset of that name, or none."""
    in_raw_root = raw_root() / raw.name
    is_there = in_raw_root.resolve() == raw.root.resolve()
    if is_there or not in_raw_root.exists():  # a copy of a raw-root dataset: the message below names the one to use
        check_dataset_folder(raw.root)
    if is_there:
        return
    where = (f"is not {in_raw_root}, the dataset of that name that the page's Train and Segment images would use "
             f"instead. Annotate that one with -d {raw.name}" if in_raw_root.exists() else
             f"is outside the raw root {raw_root()}, where the page's Train and Segment images look for {raw.name}. "
             f"Move the folder there")
    raise AutomedsamError(f"{raw.root} {where}, or run automedsam_annotate with AUTOMEDSAM_RAW={raw.root.parent}.")


def _check_port(host: str, port: int) -> None:
    """A clear error now rather than uvicorn's log line when the port is taken or the interface does not exist."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise AutomedsamError(f"Cannot listen on {host}:{port} ({error.strerror}). Choose another --port, or "
                                  "stop the program using it.") from error


def _say(text: str) -> None:
    stdout.print(text, markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    _UNDONE.clear()
    run_app(app, interrupted_note=_interrupted_note)
