"""The accuracy benchmark's tail: what a mean over the test images hides.

A mean of 0.54 can be every image at 0.54 or a quarter of the images missed outright; a clinician needs to know
which. Per method, selection and seed: the 10th percentile of the images' Dice, the images missed (a structure its
reference holds at Dice < 0.1: not found at all, even where the image's other structures are right) and the five
worst images with the size of their object (the share of the image the reference covers), each drawn as an overlay
in WORKDIR/worst/METHOD_SELECTION_seedS/. An image's Dice is the mean over the labels its reference holds.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from automedsam.evaluation import dice
from automedsam.io import read_image
from automedsam.plotting import overlay

MISSED_BELOW = 0.1
WORST_COUNT = 5


def case_dice(predictions: Mapping[str, np.ndarray],
              references: Mapping[str, np.ndarray]) -> dict[str, dict[int, float]]:
    """Dice per test case and per label its reference holds."""
    return {case: {int(label): dice(reference == label, predictions[case] == label)
                   for label in np.unique(reference) if label != 0}
            for case, reference in references.items()}


def label_means(per_case: Mapping[str, Mapping[int, float]]) -> dict[int, float]:
    """Per label, the mean over the cases whose reference holds it."""
    labels = sorted({label for scores in per_case.values() for label in scores})
    return {label: float(np.nanmean([scores[label] for scores in per_case.values() if label in scores]))
            for label in labels}


def object_size(reference: np.ndarray) -> float:
    return float(np.mean(reference > 0))


def tail_row(method: str, selection: str, seed: int | str, per_case: Mapping[str, Mapping[int, float]],
             sizes: Mapping[str, float]) -> dict[str, Any]:
    """p10, missed images and the five worst (case, Dice, object size) of one method, selection and seed."""
    image = {case: float(np.nanmean(list(scores.values()))) for case, scores in per_case.items() if scores}
    values = np.array(list(image.values()))
    worst = sorted(image, key=lambda case: (image[case], case))[:WORST_COUNT]
    return {"method": method, "selection": selection, "seed": str(seed), "images": len(values),
            "mean": float(values.mean()), "p10": float(np.percentile(values, 10)),
            "missed": sum(1 for scores in per_case.values() if scores and min(scores.values()) < MISSED_BELOW),
            "worst": [{"case": case, "dice": image[case], "object_size": sizes[case]} for case in worst]}


def draw_worst(row: Mapping[str, Any], images: Mapping[str, Path], predictions: Mapping[str, np.ndarray],
               references: Mapping[str, np.ndarray], folder: Path) -> None:
    """The row's worst images as overlays (prediction solid, reference dashed) in `folder`, named by case; a rerun's
    folder holds its own five only."""
    shutil.rmtree(folder, ignore_errors=True)
    for entry in row["worst"]:
        case = entry["case"]
        overlay(read_image(images[case])[0], predictions[case], references[case], folder / f"{case}.png",
                title=f"{case}: Dice {entry['dice']:.3f}, object {entry['object_size']:.1%} of the image "
                      f"({row['method']}, seed {row['seed']})")


def summary_line(row: Mapping[str, Any]) -> str:
    return (f"{row['method']} ({row['selection']}) seed {row['seed']}: mean Dice {row['mean']:.3f}, p10 "
            f"{row['p10']:.3f}, missed {row['missed']} of {row['images']}")


def worst_cell(row: Mapping[str, Any]) -> str:
    return ", ".join(f"{entry['case']} {entry['dice']:.2f} ({entry['object_size']:.0%})" for entry in row["worst"])
