"""`automedsam_plot_overlays`: contour overlays of segmentations on their images, for a quick visual check."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from automedsam.cli.common import VersionOption, run_app
from automedsam.cli.evaluate import label_option
from automedsam.paths import check_outside_raw_datasets
from automedsam.plotting import plot_overlays_folder, stale_overlays

HELP = """Draw each segmentation's contours on its image and save one PNG per case (OUT/CASE.png).

Prediction contours are solid, one colour per label; reference contours (-r) are dashed green, and the title then
gives the mean foreground Dice, read and scored as automedsam_evaluate scores the same folders (with --labels and
--ignore-label as given to it: the pixels the reference marks with the ignore label are then neither scored nor
drawn). A -r folder holding no drawn case's reference is refused; cases drawn without one are named in a warning.
For 3D volumes the (up to 4) slices with the most foreground are shown side by side.
Files are matched by case id; image names may carry the nnU-Net channel suffix (CASE_0000.nii.gz).

Example:

  automedsam_plot_overlays -i imagesTs -s predictions -r labelsTs -o overlays
"""

app = typer.Typer(add_completion=False, help=HELP, rich_markup_mode=None)
stdout = Console()


@app.command(help=HELP, context_settings={"allow_extra_args": True, "help_option_names": ["-h", "--help"]})
def plot_overlays(
    ctx: typer.Context,
    images: Path = typer.Option(..., "-i", "--images", help="Folder of the images (CASE.ext or CASE_0000.ext; "
                                "DICOM files and series folders too)."),
    segs: Path = typer.Option(..., "-s", "--segs", help="Folder of the segmentations to draw (CASE.ext)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for the overlay PNGs (created if missing; not "
                                "one of the input folders, nor in a raw dataset)."),
    refs: Optional[Path] = typer.Option(None, "-r", "--refs", help="Optional folder of reference segmentations."),
    labels: Optional[list[str]] = typer.Option(
        None, "-l", "--labels", metavar="IDS", help="Label ids scored in the title's Dice, as automedsam_evaluate "
        "--labels: `--labels 1 2 3` or `--labels 1,2,3`; with one, 0/255, colour or JPEG masks are read as it."
    ),
    ignore_label: Optional[int] = typer.Option(
        None, "--ignore-label", metavar="ID", help="The id of nnU-Net v2's \"ignore\" label (unannotated pixels), as "
        "automedsam_evaluate --ignore-label: the reference's pixels of it are left out of the title's Dice and the "
        "drawing."
    ),
    version: Optional[bool] = VersionOption,
) -> None:
    check_outside_raw_datasets(output, what="The output folder")
    written = plot_overlays_folder(images, segs, output, refs_dir=refs, labels=label_option(labels, ctx.args),
                                   ignore_label=ignore_label)
    stdout.print(f"Wrote {len(written)} overlay images to {output}", markup=False, highlight=False, soft_wrap=True)
    stale = stale_overlays(output, written)
    if stale:
        more = f" and {len(stale) - 10} more" if len(stale) > 10 else ""
        shown = ", ".join(path.name for path in stale[:10]) + more
        stdout.print(f"Warning: {len(stale)} other PNG(s) in {output} were not drawn by this run ({shown}): overlays "
                     "of cases no longer in -s, if left from an earlier run. Delete them, or use a fresh -o.",
                     markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    run_app(app)
