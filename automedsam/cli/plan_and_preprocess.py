"""`automedsam_plan_and_preprocess`: turn a raw dataset into plans, few-shot splits, samples and embeddings."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from automedsam.cli.common import VersionOption, deprecated_option, renamed, run_app
from automedsam.distributed import context_from_environment
from automedsam.planning.plan_and_preprocess import plan_and_preprocess

HELP = """Fingerprint a raw dataset, plan its training, draw the few-shot splits, preprocess and embed the samples.

1. Fingerprint (fingerprint.json): shapes, spacings, intensities of every image, and which samples hold
foreground (nothing else of a mask). Reused while the raw files are unchanged. Label statistics
(label_statistics.json): what the labelled samples' boxes say (object sizes, box fill, per-object boxes), and with
--shots N what the frozen model outlines from them; rings and shapes are what dataset.json declares.

2. Plans (plans.json): slicing axis, normalisation, prompt-module size, targets (ring labels as filled regions),
losses, schedule, postprocessing; each with its reason (see documentation/planning.md).

3. Splits (splits.json): --shots N 2D samples holding foreground are chosen (seeded, spread over patients /
examinations) and split into --folds folds by group; --shots all labels every sample. --select random draws them
at random; --select diverse and --select kmeanspp first encode every candidate with the frozen model (one encoder
pass each: about a second per image on a CPU, milliseconds on a GPU; at most a planned cap, a seeded subsample
beyond); diverse then takes the N that best cover the embeddings (typical images first), kmeanspp draws them with
the seed, each with a chance that grows with its distance to those already drawn (k-means++ seeding). Those
embeddings are cached, so preprocessing and the annotation page reuse them.

4. Preprocessing: normalised images, boxes (derived from masks) and masks of the labelled samples, then their
embeddings (computed once, reused by every fold and label). Unlabelled samples are embedded only with --embed-all.
Before embedding, the precision check picks bf16 or fp32 for the foundation model (--precision; plans.json
foundation_model.precision_check records it).

Everything goes to $AUTOMEDSAM_PREPROCESSED/DatasetXXX_Name/. Finished work is skipped, so rerunning is cheap and
an interrupted run resumes. To override a plan, edit plans.json and rerun with --preprocess-only.

Examples:

\b
  automedsam_plan_and_preprocess -d 1
  automedsam_plan_and_preprocess -d Dataset002_ACDC --shots 10 --seed 1 -np 4
  automedsam_plan_and_preprocess -d 1 --shots 10 --select diverse
  automedsam_plan_and_preprocess -d 2 --foundation medsam_vit_b --foundation-checkpoint medsam_vit_b.pth --device cuda
  automedsam_plan_and_preprocess -d 1 --preprocess-only

Several GPUs or CPU processes: launch it with torchrun; rank 0 fingerprints and plans, then each process writes and
embeds its share of the samples (see documentation/scaling.md):

\b
  torchrun --standalone --nproc_per_node 4 $(which automedsam_plan_and_preprocess) -d 2 --embed-all
"""

app = typer.Typer(add_completion=False, help=HELP, rich_markup_mode=None)
stdout = Console()
stderr = Console(stderr=True)


@app.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
def plan_and_preprocess_command(
    dataset: str = typer.Option(
        ..., "-d", "--dataset", help="Dataset id or name (1, 001, Dataset001_X), or the path of a DatasetXXX_Name "
        "folder (outside the raw root, its id must be one no other dataset uses)."),
    foundation: Optional[str] = typer.Option(
        None, "--foundation", help="Foundation model: litemedsam (default), medsam_vit_b, sam_vit_b, sam_vit_l, "
        "sam_vit_h."
    ),
    foundation_checkpoint: Optional[Path] = typer.Option(
        None, "--foundation-checkpoint", help="Weights file of --foundation (needed for the ViT models; litemedsam "
        "ships its own)."
    ),
    old_foundation: Optional[str] = deprecated_option("--model", new="--foundation"),
    old_foundation_checkpoint: Optional[Path] = deprecated_option("--checkpoint", new="--foundation-checkpoint"),
    shots: Optional[str] = typer.Option(None, "--shots", help="Labelled 2D samples: a number (default 10) or 'all'."),
    folds: Optional[int] = typer.Option(None, "--folds", help="Cross-validation folds (default 5)."),
    select: Optional[str] = typer.Option(
        None, "--select", help="How the --shots N samples are chosen: random (seeded draw), diverse (the N that "
        "cover the frozen model's embeddings of all candidates best) or kmeanspp (a seeded draw weighted towards "
        "images unlike those drawn); diverse and kmeanspp cost one encoder pass per candidate. Default: the "
        "planner's choice, with its reason in plans.json selection."
    ),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Seed of the few-shot draw, folds and training (default 0)."
    ),
    num_workers: Optional[int] = typer.Option(
        None, "-np", "--num-workers", help="Worker processes reading and normalising images (default: CPUs, max 4)."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="Encoder device: cpu, cuda, cuda:N (default: auto)."),
    plan_only: bool = typer.Option(False, "--plan-only", help="Stop after fingerprint, plans and splits."),
    preprocess_only: bool = typer.Option(
        False, "--preprocess-only", help="Use the stored (possibly edited) plans.json and splits.json as they are."
    ),
    embed_all: bool = typer.Option(False, "--embed-all", help="Also write and embed the unlabelled samples."),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="Foundation model precision: auto (default: bf16 where the device computes bf16 in "
        "hardware and the labelled samples' box-prompted Dice stays within the tolerance of fp32), fp32 (forces the "
        "full-precision path) or bf16 (refused on a CUDA GPU without bf16 arithmetic). fp32 or bf16 given with "
        "--plan-only is recorded and kept by a later --preprocess-only (a full run plans again and takes its own "
        "--precision); auto given with --plan-only keeps only a precision the check chose, dropping one set by hand. "
        "--preprocess-only without --precision keeps the stored precision, checking it where none was chosen yet "
        "and no preprocessing embedded under the plans; with auto it always checks."
    ),
    version: Optional[bool] = VersionOption,
) -> None:
    summary = plan_and_preprocess(
        dataset, foundation_name=renamed(foundation, old_foundation, old="--model", new="--foundation"),
        foundation_checkpoint=renamed(foundation_checkpoint, old_foundation_checkpoint, old="--checkpoint",
                                      new="--foundation-checkpoint"),
        shots=shots, folds=folds, seed=seed, num_workers=num_workers, device=device, plan_only=plan_only,
        preprocess_only=preprocess_only, embed_all=embed_all, precision=precision, select=select,
    )
    if not context_from_environment().is_main:  # under torchrun, rank 0 reports for every process
        return
    for note in summary.notes:
        stderr.print(f"[yellow]Note:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    stdout.print(summary.line(), markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    run_app(app)
