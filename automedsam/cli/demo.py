"""`automedsam_demo` (what `make demo` runs): the whole pipeline end to end on data made here (or on a real HC18
release), in one folder.

convert -> plan_and_preprocess (--shots 10) -> train 5 folds -> predict held-out images -> evaluate -> overlays.
Every stage is the same function the console scripts call; the equivalent commands are printed as it goes.
"""
from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from automedsam.benchmarks.held_out import choose_held_out_cases
from automedsam.cli.common import VersionOption, run_app
from automedsam.conversion import convert_hc18, make_synthetic_dataset
from automedsam.dataset import load_raw_dataset
from automedsam.device import resolve_device
from automedsam.evaluation import evaluate_folders
from automedsam.folds import SPLITS_FILE, load_splits
from automedsam.inference import predict
from automedsam.paths import roots_at
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.plotting import plot_overlays_folder
from automedsam.training import train_fold

SYNTHETIC_ID, HC18_ID = 900, 901
HC18_TEST_IMAGES = 20
ROOTS = ("raw", "preprocessed", "results")
HELP = """Run automedsam end to end: generate (or import HC18) data, plan, train 5 folds on 10 boxed samples, predict
held-out images, evaluate and draw overlays, all inside one folder.

WORKDIR holds raw/, preprocessed/ and results/ (the three roots point there for the run), the predictions and the
overlays. The equivalent commands are printed as the demo goes; a rerun starts again from fresh plans and models.

Example:

  automedsam_demo --workdir demo_output --hc18 ~/data/HC18
"""

app = typer.Typer(add_completion=False, help=HELP, rich_markup_mode=None)
console = Console()


@app.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
def demo(
    workdir: Path = typer.Option(Path("demo_output"), "--workdir",
                                 help="Folder for raw/, preprocessed/, results/, predictions and overlays."),
    hc18: Optional[Path] = typer.Option(
        None, "--hc18", help="A real HC18 release folder (training_set/ + csv) instead of the synthetic data."
    ),
    epochs: int = typer.Option(20, "--epochs", min=1,
                               help="Training epochs per fold (short schedule for the demo; the plans say 100)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: CUDA when available)."),
    version: Optional[bool] = VersionOption,
) -> None:
    run_demo(workdir, hc18, epochs, device)


def main() -> None:
    run_app(app, interrupted_note="Interrupted. A rerun of the demo starts again from fresh plans and models.")


def run_demo(workdir: Path, hc18: Path | None, epochs: int, device: str | None) -> dict:
    """Run every stage inside `workdir`, the three roots pointing there while it runs (the caller's environment is
    restored afterwards); returns the evaluation summary. A device that cannot be used is refused first, before
    the previous run's plans and models are cleared."""
    resolve_device(device)
    workdir = workdir.resolve()
    with roots_at({root: workdir / root for root in ROOTS}):
        return _run_stages(workdir, hc18, epochs, device)


def _run_stages(workdir: Path, hc18: Path | None, epochs: int, device: str | None) -> dict:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if hc18 is None:
        _stage(f"automedsam_convert synthetic -d {SYNTHETIC_ID} --overwrite")
        raw_dir = make_synthetic_dataset(SYNTHETIC_ID, overwrite=True)
        dataset_id = SYNTHETIC_ID
    else:
        _stage(f"automedsam_convert hc18 {shlex.quote(str(hc18))} -d {HC18_ID} --overwrite")
        raw_dir = convert_hc18(hc18, HC18_ID, overwrite=True)
        dataset_id = HC18_ID
    _clear_previous_run(workdir, raw_dir.name)
    timings["convert"] = _lap(start)

    on_device = f" --device {device}" if device else ""  # the commands printed are the ones run
    _stage(f"automedsam_plan_and_preprocess -d {dataset_id} --shots 10{on_device}")
    summary = plan_and_preprocess(dataset_id, shots=10, device=device)
    console.print(summary.line(), markup=False)
    timings["plan_and_preprocess"] = _lap(start, timings)

    folds = summary.folds
    for fold in range(folds):
        _stage(f"automedsam_train {dataset_id} {fold} --epochs {epochs}{on_device} --overwrite")
        train_fold(dataset_id, fold, epochs=epochs, device=device, overwrite=True)
    timings["train"] = _lap(start, timings)

    images, references = _test_images(workdir, raw_dir, summary.out_dir)
    predictions = workdir / "predictions"
    _stage(f"automedsam_predict -i {shlex.quote(str(images))} -o {shlex.quote(str(predictions))} -d {dataset_id}"
           f"{on_device} --overwrite")
    result = predict(images, predictions, dataset=dataset_id, device=device, overwrite=True)
    console.print(result.line(), markup=False)
    timings["predict"] = _lap(start, timings)

    _stage(f"automedsam_evaluate -r {shlex.quote(str(references))} -s {shlex.quote(str(predictions))} "
           f"-d {dataset_id}")
    evaluation = evaluate_folders(references, predictions, labels=[1], out_json=predictions / "summary.json")
    overlays = workdir / "overlays"
    _stage(f"automedsam_plot_overlays -i {shlex.quote(str(images))} -s {shlex.quote(str(predictions))} "
           f"-r {shlex.quote(str(references))} -o {shlex.quote(str(overlays))}")
    written = plot_overlays_folder(images, predictions, overlays, refs_dir=references)
    timings["evaluate_and_plot"] = _lap(start, timings)

    dice = evaluation["foreground_mean"]["dice"]
    console.rule("[bold green]demo finished")
    console.print(f"Mean Dice on {len(evaluation['per_case'])} held-out images: [bold]{dice:.3f}[/bold] "
                  f"(trained on {summary.labelled} boxed samples, {folds}-fold ensemble, no prompt at test time)")
    console.print("Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    console.print(f"Look at: overlays {overlays} ({len(written)} PNGs, e.g. {written[0].name}), "
                  f"training curves {workdir / 'results'}/*/*/fold_0/progress.png, "
                  f"predictions {predictions}, scores {predictions / 'summary.json'}", markup=False)
    return evaluation


def _test_images(workdir: Path, raw_dir: Path, preprocessed_dir: Path) -> tuple[Path, Path]:
    """Held-out images and their references: imagesTs/labelsTs, or unlabelled HC18 training cases."""
    if (raw_dir / "imagesTs").is_dir():
        return raw_dir / "imagesTs", raw_dir / "labelsTs"

    labelled = load_splits(preprocessed_dir / SPLITS_FILE)["labelled"]
    # no frame of a labelled examination: its other frames are nearly the same image
    held_out = choose_held_out_cases(load_raw_dataset(raw_dir, check_images=False), labelled, HC18_TEST_IMAGES)
    images, references = workdir / "test_images", workdir / "test_references"
    shutil.rmtree(images, ignore_errors=True)
    shutil.rmtree(references, ignore_errors=True)
    images.mkdir(parents=True)
    references.mkdir(parents=True)
    for case in held_out:
        shutil.copy(case.image, images / case.label.name)
        shutil.copy(case.label, references / case.label.name)
    return images, references


def _clear_previous_run(workdir: Path, dataset_name: str) -> None:
    """A rerun of the demo starts from fresh plans and models (the raw data is regenerated identically)."""
    for root in ("preprocessed", "results"):
        shutil.rmtree(workdir / root / dataset_name, ignore_errors=True)


def _stage(command: str) -> None:
    console.rule(f"[bold]{escape(command)}", align="left")


def _lap(start: float, previous: dict[str, float] | None = None) -> float:
    return time.perf_counter() - start - sum((previous or {}).values())
