"""Foundation-model benchmark on real HC18 images: encoder time per image and box-prompted Dice, fp32 vs bf16.

Decides whether mixed precision is safe: it is kept only if the Dice of the box-prompted masks does not move.
Run: python -m automedsam.benchmarks.foundation --data ../shared/data/HC18 -n 20
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import binary_fill_holes

from automedsam.cli.common import run_app
from automedsam.device import resolve_device
from automedsam.errors import AutomedsamError
from automedsam.foundation.base import FoundationModel
from automedsam.foundation.registry import build_foundation_model
from automedsam.io import read_image, read_segmentation


@dataclass
class Run:
    precision: str
    seconds: list[float]
    cpu_seconds: list[float]
    dice: list[float]


def load_hc18(folder: Path, count: int) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], list[str]]:
    """The first `count` images whose ellipse outline fills to a mask, and the names of those skipped."""
    images_dir = folder / "training_set" if (folder / "training_set").is_dir() else folder
    cases, skipped = [], []
    for image_path in sorted(images_dir.glob("*HC.png")):
        if len(cases) == count:
            break
        outline, _ = read_segmentation(image_path.with_name(image_path.stem + "_Annotation.png"))
        filled = binary_fill_holes(outline > 0)
        if filled.sum() <= 2 * (outline > 0).sum():
            skipped.append(image_path.stem)
            continue
        cases.append((image_path.stem, read_image(image_path)[0], filled))
    return cases, skipped


def tight_box(mask: np.ndarray) -> list[int]:
    rows, cols = np.nonzero(mask)
    return [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    return float(2.0 * np.logical_and(reference, prediction).sum() / (reference.sum() + prediction.sum()))


def benchmark(model: FoundationModel, cases: list[tuple[str, np.ndarray, np.ndarray]]) -> Run:
    """Time the encoder alone (after one warm-up call) and segment each image with its tight box.

    Process CPU time is recorded beside wall time because a shared machine's load inflates the latter.
    """
    model.encode(model.prepare(cases[0][1])[0][None])
    seconds, cpu_seconds, dices = [], [], []
    for _, image, mask in cases:
        prepared, frame = model.prepare(image)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        embedding = model.encode(prepared[None])
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
        with torch.no_grad():
            sparse, dense = model.box_prompt(torch.tensor([model.to_low_res(tight_box(mask), frame)]))
            logits = model.logits_to_original(model.decode(embedding, sparse, dense), frame)
        dices.append(dice(mask, (logits[0, 0] > 0).cpu().numpy()))
    return Run(model.precision, seconds, cpu_seconds, dices)


def report(runs: list[Run], model_name: str, device: torch.device, count: int, skipped: list[str]) -> None:
    print(f"{model_name} on {device} ({torch.get_num_threads()} CPU threads), {count} HC18 images, "
          f"tight box from the filled ellipse; skipped (outline does not fill): {', '.join(skipped) or 'none'}")
    print(f"{'precision':<10}{'encoder wall s/image':>22}{'CPU s/image':>13}{'Dice mean':>11}{'Dice min':>10}")
    for run in runs:
        spread = statistics.stdev(run.seconds) if len(run.seconds) > 1 else 0.0
        print(f"{run.precision:<10}{statistics.mean(run.seconds):>13.3f} ± {spread:<6.3f}"
              f"{statistics.mean(run.cpu_seconds):>13.3f}{statistics.mean(run.dice):>11.4f}{min(run.dice):>10.4f}")
    reference = runs[0]
    for run in runs[1:]:
        change = np.subtract(run.dice, reference.dice)
        print(f"Dice change {run.precision} - {reference.precision}: mean {change.mean():+.4f}, "
              f"largest per image {change[np.argmax(np.abs(change))]:+.4f}; "
              f"speed-up x{statistics.mean(reference.seconds) / statistics.mean(run.seconds):.2f}")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The options, with --data and --device checked before any image is read (args.device: a torch.device)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the HC18 release folder (with training_set/)")
    parser.add_argument("-n", "--num-images", type=int, default=20, help="number of images (default 20)")
    parser.add_argument("--foundation", default="litemedsam", help="foundation model name (default litemedsam)")
    parser.add_argument("--foundation-checkpoint", type=Path, default=None, help="weights file for MedSAM/SAM models")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="first one is the reference")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder; give the HC18 release folder (holding training_set/).")
    try:
        args.device = resolve_device(args.device)
    except AutomedsamError as refusal:
        parser.error(str(refusal))
    return args


def main(argv: list[str] | None = None) -> None:
    """Measure, with a user error (an unknown model, a missing weights file) told in one line, not a traceback."""
    run_app(lambda: measure(parse_arguments(argv)))


def measure(args: argparse.Namespace) -> None:
    """Encode and box-prompt the images in each precision, then compare them to the first."""
    cases, skipped = load_hc18(args.data, args.num_images)
    if not cases:
        raise SystemExit(f"No HC18 images with annotations found under {args.data}.")
    models = (build_foundation_model(args.foundation, args.foundation_checkpoint, device=args.device,
                                     precision=precision)
              for precision in args.precisions)
    runs = [benchmark(model, cases) for model in models]
    report(runs, args.foundation, args.device, len(cases), skipped)


if __name__ == "__main__":
    main()
