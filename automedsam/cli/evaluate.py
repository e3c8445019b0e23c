"""`automedsam_evaluate`: score a folder of predictions against reference segmentations."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from automedsam import paths
from automedsam.cli.common import VersionOption, deprecated_option, renamed, run_app
from automedsam.dataset import checked_labels, printable_name
from automedsam.errors import AutomedsamError
from automedsam.evaluation import METRICS, MIXED_UNITS, evaluate_folders
from automedsam.files import load_json

HELP = """Score predictions against references: Dice, IoU, HD95 and ASSD per case and label.

Files are matched by case id (file name without extension and without a `_0000` suffix); every reference needs a
prediction; predictions without a reference are named in a warning, not scored. Distances are in physical units
(mm) from the reference's header spacing for NIfTI/NRRD/MHA, 2D ones included, and in pixels for PNG/BMP/TIFF/JPEG,
which carry no spacing; summary.json's distance_unit says which ("mm", "pixel" or "mixed").
A label absent from both reference and prediction of a case is skipped in the means, not counted as 0 or 1.
With --ignore-label ID (nnU-Net v2's "ignore" label), the reference's unannotated pixels count for no metric.

Labels come from the dataset's dataset.json (-d), from --labels, or, without either, from the label values found.
With one label scored, one-object masks saved as 0/255, in colour or as JPEG are read as that label, as
automedsam_convert folder reads them; without -d or --labels, so are those of predictions (or references) that all
hold one and the same label.

Examples:

\b
  automedsam_evaluate -r labelsTs -s predictions -d 1 -o summary.json
  automedsam_evaluate -r labelsTs -s predictions --labels 1 --ignore-label 2
"""

METRIC_TITLES = {"dice": "Dice", "iou": "IoU", "hd95": "HD95", "assd": "ASSD"}
UNIT_CAPTIONS = {  # summary.json's distance_unit -> what the table says about HD95/ASSD
    "mm": "HD95/ASSD in mm (the references' spacing)",
    "pixel": "HD95/ASSD in pixels (the references are PNG/BMP/TIFF/JPEG files, which carry no spacing)",
    MIXED_UNITS: "HD95/ASSD in mm for NIfTI/NRRD/MHA references and in pixels for PNG/BMP/TIFF/JPEG ones (both here: "
                 "the means mix units)",
}
UNIT_WORDS = {"mm": " mm", "pixel": " pixels", MIXED_UNITS: " (mm and pixels mixed)"}

app = typer.Typer(add_completion=False, help=HELP, rich_markup_mode=None)
stdout = Console()


@app.command(help=HELP, context_settings={"allow_extra_args": True, "help_option_names": ["-h", "--help"]})
def evaluate(
    ctx: typer.Context,
    refs: Optional[Path] = typer.Option(None, "-r", "--refs", help="Folder of reference segmentations (CASE.ext); "
                                        "required."),
    segs: Optional[Path] = typer.Option(None, "-s", "--segs", help="Folder of the predicted segmentations to score "
                                        "(CASE.ext); required."),
    dataset: Optional[str] = typer.Option(
        None, "-d", "--dataset", help="Dataset id or name (1, 001, Dataset001_X): take labels and names from it."
    ),
    labels: Optional[list[str]] = typer.Option(
        None, "-l", "--labels", metavar="IDS", help="Label ids to score, e.g. `--labels 1 2 3` or `--labels 1,2,3`."
    ),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="Where to write summary.json, a path ending in .json (default: SEGS/summary.json)."
    ),
    file_ending: Optional[str] = typer.Option(
        None, "--file-ending", help="Only match files with this ending, e.g. .nii.gz (default: every supported one)."
    ),
    ignore_label: Optional[int] = typer.Option(
        None, "--ignore-label", metavar="ID", help="The id of nnU-Net v2's \"ignore\" label (unannotated pixels): "
        "the pixels the reference marks with it are left out of every metric, as nnU-Net's evaluation does."
    ),
    old_refs: Optional[Path] = deprecated_option("--ref", new="-r/--refs"),
    old_segs: Optional[Path] = deprecated_option("-p", "--pred", new="-s/--segs"),
    version: Optional[bool] = VersionOption,
) -> None:
    ref = _required(renamed(refs, old_refs, old="--ref", new="-r/--refs"), "-r/--refs", "reference segmentations")
    pred = _required(renamed(segs, old_segs, old="-p/--pred", new="-s/--segs"), "-s/--segs", "predicted segmentations")
    label_ids = label_option(labels, ctx.args)
    if dataset is not None and label_ids is not None:
        raise AutomedsamError("Give either -d/--dataset or --labels, not both: -d already defines the labels.")
    names = _dataset_labels(dataset) if dataset is not None else {}
    if names:
        label_ids = sorted(names)
    out_json = output if output is not None else pred / "summary.json"
    summary = evaluate_folders(ref, pred, labels=label_ids, out_json=out_json, file_ending=file_ending,
                               label_names=names or None, ignore_label=ignore_label)
    stdout.print(_summary_table(summary, names))
    if summary["read_as_one_object"] and summary["mean"]:  # no label at all: empty masks, nothing read as one
        cases, label = summary["read_as_one_object"], next(iter(summary["mean"]))
        stdout.print(
            f"[yellow]Note:[/yellow] {len(cases)} case(s) hold one-object masks saved as 0/255, colour or JPEG (e.g. "
            f"{escape(printable_name(cases[0]))}): read as label {label}, as automedsam_convert folder reads masks.",
            highlight=False, soft_wrap=True,
        )
    if summary["geometry_differs"]:
        cases = summary["geometry_differs"]
        stdout.print(
            f"[yellow]Warning:[/yellow] {len(cases)} prediction(s) lie elsewhere than their reference (spacing, "
            f"origin or direction differ, e.g. {escape(printable_name(cases[0]))}): they were scored voxel by voxel, "
            "which is wrong if one of the two is flipped or shifted. Predict from the reference's images, or resample "
            "one onto the other.",
            highlight=False, soft_wrap=True,
        )
    if summary["predictions_not_scored"]:
        cases, scored = summary["predictions_not_scored"], len(summary["per_case"])
        stdout.print(
            f"[yellow]Warning:[/yellow] {len(cases)} prediction(s) in {escape(printable_name(str(pred)))} have no "
            f"reference in {escape(printable_name(str(ref)))} and were not scored ({escape(_first(cases))}): the means "
            f"cover only the {scored} case(s) with a reference. Point -r at the references of every predicted case "
            "if these matter.",
            highlight=False, soft_wrap=True,
        )
    if summary["labels_not_scored"]:
        stdout.print(
            f"[yellow]Note:[/yellow] label values {summary['labels_not_scored']} occur in the files but were not "
            "scored; pass them with --labels if they matter (with one label scored, a 0/255, colour or JPEG "
            "one-object mask is read as that label: -d or --labels 1).",
            highlight=False, soft_wrap=True,
        )
    if summary["labels_not_found"]:
        stdout.print(
            f"[yellow]Warning:[/yellow] label(s) {summary['labels_not_found']} of --labels or -d occur in no reference "
            "or prediction: n/a in the table and summary.json, left out of the foreground mean. Expected if no case "
            "holds that structure; otherwise check the label ids.",
            highlight=False, soft_wrap=True,
        )
    foreground = summary["foreground_mean"]
    unit = UNIT_WORDS[summary["distance_unit"]] if not math.isnan(foreground["hd95"]) else ""
    stdout.print(
        f"Evaluated {len(summary['per_case'])} cases: foreground Dice {_format(foreground['dice'])}, "
        f"HD95 {_format(foreground['hd95'])}{unit}. Summary written to {printable_name(str(out_json))}",
        markup=False, highlight=False, soft_wrap=True,
    )


def main() -> None:
    run_app(app)


def _required(folder: Optional[Path], option: str, what: str) -> Path:
    if folder is None:
        raise AutomedsamError(f"Missing option {option}: the folder of {what}.")
    return folder


def label_option(values: Optional[list[str]], extra: list[str]) -> Optional[list[int]]:
    """`--labels 1 2 3` arrives as ['1'] plus extra arguments ['2', '3']; `--labels 1,2,3` as ['1,2,3']."""
    if values is None:
        if extra:
            raise AutomedsamError(f"Unexpected arguments: {' '.join(extra)}. Label ids go after --labels.")
        return None
    tokens = [token for value in [*values, *extra] for token in re.split(r"[,\s]+", value) if token]
    try:
        ids = sorted({int(token) for token in tokens})
    except ValueError:
        raise AutomedsamError(f"--labels takes label ids (whole numbers), got: {' '.join(tokens)}.") from None
    if not ids or min(ids) < 1:  # 0 is the background: no foreground score to give
        raise AutomedsamError(f"--labels takes foreground label ids such as `--labels 1 2 3`, got: {' '.join(tokens)}.")
    return ids


def _dataset_labels(identifier: str) -> dict[int, str]:
    """Foreground label id -> name from the dataset's dataset.json: raw dataset, else a preprocessed/results copy."""
    name = paths.resolve_dataset_name(identifier)
    candidates = [paths.raw_dataset_dir(name) / "dataset.json", paths.preprocessed_dataset_dir(name) / "dataset.json",
                  *sorted(paths.results_dataset_dir(name).glob("*/dataset.json"))]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise AutomedsamError(
            f"No dataset.json for {name} in {paths.raw_dataset_dir(name)}, {paths.preprocessed_dataset_dir(name)} or "
            f"the trained models in {paths.results_dataset_dir(name)}. Use --labels instead, or restore the dataset."
        )
    meta = load_json(found, "dataset description")
    if not isinstance(meta, dict) or "labels" not in meta:
        raise AutomedsamError(f'{found} must hold a JSON object with "labels", e.g. {{"labels": {{"background": 0, '
                              '"tumour": 1}}. Fix it, or give the ids to score with --labels.')
    labels = checked_labels(meta["labels"], found)
    return {value: name for name, value in sorted(labels.items(), key=lambda item: item[1]) if value != 0}


def _summary_table(summary: dict, names: dict[int, str]) -> Table:
    table = Table(title="Mean per label",
                  caption=f"{UNIT_CAPTIONS[summary['distance_unit']]}, over the cases where reference and "
                          "prediction both hold the label (column 'both'); n/a: no such case")
    table.add_column("label")
    table.add_column("cases", justify="right")
    table.add_column("both", justify="right")
    for metric in METRICS:
        table.add_column(METRIC_TITLES[metric], justify="right")
    for label, means in summary["mean"].items():
        title = f"{label} {escape(names[label])}" if label in names else str(label)  # a table cell is markup
        table.add_row(title, str(means["n_cases"]), str(means.get("n_cases_with_both", "")),
                      *(_format(means[metric]) for metric in METRICS))
    table.add_row("foreground mean", "", "", *(_format(summary["foreground_mean"][metric]) for metric in METRICS),
                  style="bold")
    return table


def _first(cases: list[str], shown: int = 5) -> str:
    """The first case ids of a long list (as `printable_name` shows them): enough to recognise which, few enough to
    read."""
    more = f" and {len(cases) - shown} more" if len(cases) > shown else ""
    return ", ".join(printable_name(case) for case in cases[:shown]) + more


def _format(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"
