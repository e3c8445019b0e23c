"""`automedsam_benchmark`: the few-shot accuracy protocol on HC18, ACDC or THYROID, as one command."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from automedsam.benchmarks.accuracy_report import print_report
from automedsam.benchmarks.protocol import BenchmarkSettings, run_benchmark
from automedsam.cli.common import VersionOption, run_app
from automedsam.errors import AutomedsamError
from automedsam.inference.model_folder import DEFAULT_CHECKPOINT

HELP = """Measure automedsam's accuracy under the few-shot protocol on a public dataset release.

Converts SRC (the HC18, ACDC or DDTI thyroid release folder) into WORKDIR/raw, plans with --shots 10 once per seed
(the seed redraws the 10 labelled samples and the 5 folds), trains the 5 folds of every variant, predicts test
images that no seed labelled with each variant's 5-fold ensemble (their embeddings are computed once and shared),
and the box-prompted reference: the frozen model prompted with the true tight box on every test image
(automedsam_predict --boxes). --select random,diverse,kmeanspp compares how the 10 are chosen (a seeded random draw,
or a coverage order of the frozen model's embeddings of the training images: planned, trained and measured per seed
and method on the same test images, which no seed and no method labelled; the training images are encoded once, for
the first seed, and every later seed reuses them). Random seeds live in WORKDIR/seed_S, the others in
WORKDIR/seed_S_METHOD. Prints per label Dice per seed and mean ± std over seeds; each run's tail (10th percentile,
images with a structure missed (Dice < 0.1), the five worst images with their object's size, drawn in
WORKDIR/worst/); and wall time per stage. Writes WORKDIR/benchmark.json and WORKDIR/benchmark.md. A rerun reuses
finished folds and cached embeddings.

For ACDC, --test-images counts volumes (every slice is predicted, Dice per volume).

Examples:

  automedsam_benchmark hc18 ../shared/data/HC18 --test-images 50 --workdir bench_hc18

  automedsam_benchmark acdc ../shared/data/ACDC --seeds 0,1,2 --test-images 10 --epochs 50

  automedsam_benchmark thyroid ../shared/data/THYROID --variants default --test-images 100

  automedsam_benchmark hc18 ../shared/data/HC18 --seeds 0,1,2 --variants default --select random,diverse
"""

SETTINGS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, help=HELP, rich_markup_mode=None, context_settings=SETTINGS)


@app.callback()
def benchmark(version: Optional[bool] = VersionOption) -> None:
    """Measure automedsam's accuracy under the few-shot protocol (see the subcommands)."""


def _numbers(values: List[str], option: str) -> list[int]:
    """`--seeds 0,1,2` or `--seeds 0 --seeds 1` -> [0, 1, 2]."""
    try:
        return [int(part) for value in values for part in value.split(",") if part.strip()]
    except ValueError:
        raise AutomedsamError(f"{option} takes whole numbers, comma separated (e.g. {option} 0,1,2); "
                              f"got {' '.join(values)}.") from None


def _names(values: List[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _run(dataset: str, source: Path, seeds: List[str], variants: List[str], test_images: int,
         epochs: Optional[int], checkpoint: str, workdir: Path, device: Optional[str], select: List[str]) -> None:
    if not source.is_dir():
        raise AutomedsamError(f"{source} is not a folder. Give the {dataset.upper()} release folder.")
    settings = BenchmarkSettings(dataset, source, workdir, _numbers(seeds, "--seeds"), _names(variants), test_images,
                                 _names(select), epochs, checkpoint, device)
    console = Console()
    report = run_benchmark(settings, console)
    print_report(report, console)
    console.print(f"Wrote {workdir / 'benchmark.json'} and {workdir / 'benchmark.md'}.", markup=False)


SEEDS = typer.Option(["0"], "--seeds", metavar="SEED,...",
                     help="Seeds of the few-shot draw, comma separated or repeated: 0,1,2.")
VARIANTS = typer.Option(["default,paper2024,fullsup"], "--variants", metavar="VARIANT,...",
                        help="Trainer variants to compare, comma separated or repeated.")
TEST_IMAGES = typer.Option(50, "--test-images", min=1, help="Unlabelled test images.")  # acdc's counts volumes
EPOCHS = typer.Option(None, "--epochs", min=1, help="Override the planned epochs (the lr drop keeps its fraction).")
CHECKPOINT = typer.Option(DEFAULT_CHECKPOINT, "--checkpoint",
                          help="Each fold's checkpoint: final or best (box-based choice).")
DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: CUDA when available).")
SELECT = typer.Option(["random"], "--select", metavar="METHOD,...",
                      help="How the 10 labelled samples are chosen, comma separated or "
                      "repeated: random, diverse, kmeanspp (automedsam_plan_and_preprocess --select).")


@app.command("hc18", help=HELP, context_settings=SETTINGS)
def hc18(source: Path = typer.Argument(..., metavar="SRC",
                                       help="The HC18 release folder (training_set/ and its csv)."),
         seeds: List[str] = SEEDS, variants: List[str] = VARIANTS, test_images: int = TEST_IMAGES,
         epochs: Optional[int] = EPOCHS, checkpoint: str = CHECKPOINT,
         workdir: Path = typer.Option(Path("benchmark_hc18"), "--workdir", help="Folder for every artifact."),
         device: Optional[str] = DEVICE, select: List[str] = SELECT,
         version: Optional[bool] = VersionOption) -> None:
    _run("hc18", source, seeds, variants, test_images, epochs, checkpoint, workdir, device, select)


@app.command("acdc", help=HELP, context_settings=SETTINGS)
def acdc(source: Path = typer.Argument(..., metavar="SRC", help="The ACDC release folder (training/patientNNN/)."),
         seeds: List[str] = SEEDS, variants: List[str] = VARIANTS,
         test_images: int = typer.Option(10, "--test-images", min=1, help="Unlabelled test volumes."),
         epochs: Optional[int] = EPOCHS, checkpoint: str = CHECKPOINT,
         workdir: Path = typer.Option(Path("benchmark_acdc"), "--workdir", help="Folder for every artifact."),
         device: Optional[str] = DEVICE, select: List[str] = SELECT,
         version: Optional[bool] = VersionOption) -> None:
    _run("acdc", source, seeds, variants, test_images, epochs, checkpoint, workdir, device, select)


@app.command("thyroid", help=HELP, context_settings=SETTINGS)
def thyroid(source: Path = typer.Argument(..., metavar="SRC",
                                          help="A DDTI thyroid folder (images/ and masks/ of ddti_CASE_K.png)."),
            seeds: List[str] = SEEDS, variants: List[str] = VARIANTS, test_images: int = TEST_IMAGES,
            epochs: Optional[int] = EPOCHS, checkpoint: str = CHECKPOINT,
            workdir: Path = typer.Option(Path("benchmark_thyroid"), "--workdir", help="Folder for every artifact."),
            device: Optional[str] = DEVICE, select: List[str] = SELECT,
            version: Optional[bool] = VersionOption) -> None:
    _run("thyroid", source, seeds, variants, test_images, epochs, checkpoint, workdir, device, select)


def main() -> None:
    run_app(app)
