"""The accuracy benchmark's table: per method, selection and label, Dice per seed and mean ± std over seeds.

Rows are the box-prompted reference, then the trainer variants, each with the way its labelled samples were chosen
(selection: random, diverse or kmeanspp; "-" for the reference, which labels nothing); the last row of each is the
mean over the foreground labels. The standard deviation is the sample one (ddof 1) over seeds, absent for a single
seed.
A second table gives each run's tail (benchmarks.tails): p10, images missed, the five worst images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from automedsam.benchmarks.tails import MISSED_BELOW, worst_cell
from automedsam.files import atomic_path, save_json

MEAN_ROW = "mean"
TAIL_COLUMNS = ("method", "selection", "seed", "images", "mean", "p10", f"missed (Dice < {MISSED_BELOW})",
                "five worst: case Dice (object size)")


def accuracy_table(scores: Mapping[tuple[str, str], Mapping[int, Mapping[int, float]]], labels: Mapping[int, str],
                   timings: Mapping[str, float], description: Mapping[str, Any],
                   tails: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """scores[method, selection][seed][label] -> the report: rows of (method, selection, label name, per seed, mean,
    std), the runs' tails (benchmarks.tails.tail_row), timings."""
    rows = []
    for (method, selection), per_seed in scores.items():
        seeds = sorted(per_seed)
        for label, name in [*sorted(labels.items()), (None, MEAN_ROW)]:
            values = [_label_value(per_seed[seed], label, labels) for seed in seeds]
            rows.append({"method": method, "selection": selection, "label": name,
                         "per_seed": dict(zip(map(str, seeds), values)), "mean": float(np.mean(values)),
                         "std": float(np.std(values, ddof=1)) if len(values) > 1 else None})
    return {**description, "rows": rows, "tails": list(tails),
            "timings_s": {key: round(value, 1) for key, value in timings.items()}}


def write_report(report: Mapping[str, Any], workdir: Path) -> None:
    """benchmark.json and benchmark.md in the workdir."""
    save_json(workdir / "benchmark.json", report)
    with atomic_path(workdir / "benchmark.md", suffix=".md") as tmp:
        Path(tmp).write_text(markdown(report), encoding="utf-8")


def markdown(report: Mapping[str, Any]) -> str:
    seeds = list(report["rows"][0]["per_seed"]) if report["rows"] else []
    head = ["method", "selection", "label", *(f"seed {seed}" for seed in seeds), "mean ± std"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        cells = [row["method"], _selection(row), row["label"], *(f"{row['per_seed'][seed]:.3f}" for seed in seeds),
                 _mean_std(row)]
        lines.append("| " + " | ".join(cells) + " |")
    times = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in report["timings_s"].items())
    return (f"{report['dataset']}: {len(report['test_cases'])} test images, {report['shots']} labelled samples, "
            f"{report['folds']} folds, epochs {report['epochs']}, checkpoint {report['checkpoint']}, planned under "
            f"{report['protocol']}\n\n"
            + "\n".join(lines) + _tail_markdown(report) + f"\n\nWall time per stage: {times}\n")


def print_report(report: Mapping[str, Any], console: Console) -> None:
    seeds = list(report["rows"][0]["per_seed"]) if report["rows"] else []
    table = Table(title=f"{report['dataset']}: Dice on {len(report['test_cases'])} unlabelled test images")
    for column in ["method", "selection", "label", *(f"seed {seed}" for seed in seeds), "mean ± std"]:
        table.add_column(column)
    for row in report["rows"]:
        table.add_row(row["method"], _selection(row), row["label"], *(f"{row['per_seed'][seed]:.3f}" for seed in seeds),
                      _mean_std(row))
    console.print(table)
    if report.get("tails"):
        tails = Table(title="The tail: per run, images below the mean")
        for column in TAIL_COLUMNS:
            tails.add_column(column)
        for row in report["tails"]:
            tails.add_row(*_tail_cells(row))
        console.print(tails)
    console.print("Wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report["timings_s"].items()))


def _tail_markdown(report: Mapping[str, Any]) -> str:
    if not report.get("tails"):
        return ""
    lines = ["| " + " | ".join(TAIL_COLUMNS) + " |", "|" + "---|" * len(TAIL_COLUMNS)]
    lines += ["| " + " | ".join(_tail_cells(row)) + " |" for row in report["tails"]]
    return "\n\n" + "\n".join(lines) + "\n\nOverlays of the five worst images of each run: worst/."


def _tail_cells(row: Mapping[str, Any]) -> list[str]:
    return [row["method"], row["selection"], row["seed"], str(row["images"]), f"{row['mean']:.3f}",
            f"{row['p10']:.3f}", f"{row['missed']} ({row['missed'] / row['images']:.0%})", worst_cell(row)]


def _selection(row: Mapping[str, Any]) -> str:
    return row.get("selection", "random")  # reports written before --select drew at random


def _label_value(per_label: Mapping[int, float], label: int | None, labels: Mapping[int, str]) -> float:
    if label is not None:
        return float(per_label.get(label, float("nan")))
    return float(np.nanmean([per_label.get(key, float("nan")) for key in labels]))


def _mean_std(row: Mapping[str, Any]) -> str:
    return f"{row['mean']:.3f}" if row["std"] is None else f"{row['mean']:.3f} ± {row['std']:.3f}"
