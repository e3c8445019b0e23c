"""Metrics on hand-made masks with known answers, folder evaluation and the automedsam_evaluate command."""
from __future__ import annotations

import json
import math
import os
import re
import struct
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial.distance import cdist

from automedsam.cli import evaluate as evaluate_cli
from automedsam.errors import AutomedsamError
from automedsam.evaluation import case_metrics, dice, evaluate_folders, summarise, surface_distances
from automedsam.files import save_json
from automedsam.io import Geometry, read_segmentation, write_image, write_segmentation


def square(shape=(64, 64), top=10, left=10, size=40) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def row_line(row: int, shape=(20, 30)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[row, 2:25] = True
    return mask


def brute_force_distances(ref: np.ndarray, pred: np.ndarray, spacing_numpy: tuple[float, ...]) -> tuple[float, float]:
    """HD95 and ASSD from all surface point pairs, with surfaces found by looking at the 2*ndim neighbours."""

    def surface_points(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1)
        interior = np.ones_like(mask)
        for axis in range(mask.ndim):
            for step in (-1, 1):
                interior &= np.roll(padded, step, axis=axis)[tuple(slice(1, -1) for _ in mask.shape)]
        return np.argwhere(mask & ~interior) * np.asarray(spacing_numpy)

    ref_points, pred_points = surface_points(ref), surface_points(pred)
    distances = cdist(pred_points, ref_points)
    pred_to_ref, ref_to_pred = distances.min(axis=1), distances.min(axis=0)
    hd95 = max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95))
    assd = (pred_to_ref.sum() + ref_to_pred.sum()) / (pred_to_ref.size + ref_to_pred.size)
    return float(hd95), float(assd)


def test_identical_masks_score_perfectly():
    mask = square()
    metrics = case_metrics(mask.astype(np.uint8), mask.astype(np.uint8), [1])[1]
    assert metrics["dice"] == 1.0 and metrics["iou"] == 1.0
    assert metrics["hd95"] == 0.0 and metrics["assd"] == 0.0
    assert metrics["ref_voxels"] == metrics["pred_voxels"] == 1600


def test_disjoint_lines_three_rows_apart():
    metrics = case_metrics(row_line(5).astype(np.uint8), row_line(8).astype(np.uint8), [1])[1]
    assert metrics["dice"] == 0.0 and metrics["iou"] == 0.0
    assert metrics["hd95"] == pytest.approx(3.0)
    assert metrics["assd"] == pytest.approx(3.0)


def test_square_shifted_by_three_pixels():
    ref, pred = square(left=10), square(left=13)
    metrics = case_metrics(ref.astype(np.uint8), pred.astype(np.uint8), [1])[1]
    assert metrics["dice"] == pytest.approx(2 * 37 * 40 / 3200)
    assert metrics["iou"] == pytest.approx(37 * 40 / (43 * 40))
    assert metrics["hd95"] == pytest.approx(3.0)
    assert 0.0 < metrics["assd"] < 3.0


def test_empty_prediction_and_empty_reference():
    mask, empty = square().astype(np.uint8), np.zeros((64, 64), np.uint8)
    for ref, pred in ((mask, empty), (empty, mask)):
        metrics = case_metrics(ref, pred, [1])[1]
        assert metrics["dice"] == 0.0 and metrics["iou"] == 0.0
        assert math.isnan(metrics["hd95"]) and math.isnan(metrics["assd"])
        assert metrics["ref_voxels"] + metrics["pred_voxels"] == 1600


def test_both_empty_is_nan_and_skipped_in_summary():
    empty = np.zeros((64, 64), np.uint8)
    assert math.isnan(dice(empty, empty))
    present = case_metrics(square().astype(np.uint8), square(left=13).astype(np.uint8), [1])
    absent = case_metrics(empty, empty, [1])
    assert all(math.isnan(absent[1][metric]) for metric in ("dice", "iou", "hd95", "assd"))
    summary = summarise({"a": present, "b": absent})
    assert summary["mean"][1]["dice"] == pytest.approx(present[1]["dice"])
    assert summary["mean"][1]["n_cases"] == 1
    assert summary["foreground_mean"]["hd95"] == pytest.approx(3.0)


def test_summary_means_per_label_and_foreground():
    ref = np.zeros((40, 40), np.uint8)
    ref[5:15, 5:15], ref[20:30, 20:30] = 1, 2
    pred_a, pred_b = ref.copy(), ref.copy()
    pred_b[pred_b == 2] = 0
    summary = summarise({"a": case_metrics(ref, pred_a, [0, 1, 2]), "b": case_metrics(ref, pred_b, [0, 1, 2])})
    assert summary["mean"][1]["dice"] == 1.0
    assert summary["mean"][2]["dice"] == pytest.approx(0.5)
    assert summary["mean"][2]["hd95"] == 0.0  # the empty prediction has no surface distance
    assert summary["mean"][2]["n_cases"] == 2 and summary["mean"][2]["n_cases_with_both"] == 1  # ...and says so
    assert summary["foreground_mean"]["dice"] == pytest.approx(0.75)  # label 0 is not foreground
    assert set(summary["per_case"]) == {"a", "b"}


@pytest.mark.parametrize(("spacing", "expected"), [((1.0, 2.0), 6.0), ((2.0, 1.0), 3.0), ((0.5, 0.5), 1.5)])
def test_spacing_in_simpleitk_order_scales_distances(spacing, expected):
    distances = surface_distances(row_line(5), row_line(8), spacing)
    assert distances["hd95"] == pytest.approx(expected)
    assert distances["assd"] == pytest.approx(expected)


def test_anisotropic_3d_spacing_along_z():
    ref = np.zeros((8, 20, 20), bool)
    ref[2:5, 5:15, 5:15] = True
    pred = np.roll(ref, 1, axis=0)
    assert surface_distances(ref, pred, (1.0, 1.0, 5.0))["hd95"] == pytest.approx(5.0)
    assert surface_distances(ref, pred, (5.0, 1.0, 1.0))["hd95"] == pytest.approx(1.0)


def shifted_square() -> tuple[np.ndarray, np.ndarray]:
    return square(size=30), square(size=30, left=12)


def square_in_a_larger_one() -> tuple[np.ndarray, np.ndarray]:
    return square(size=40), square(top=20, left=20, size=20)


@pytest.mark.parametrize("masks", [shifted_square, square_in_a_larger_one])
def test_a_one_slice_volume_is_measured_as_its_2d_image(masks):
    """(1, H, W), nnU-Net's layout for 2D NIfTI: the erosion read outside the slice as background, every voxel was
    surface, and the distances were between the filled regions (ASSD 0.1 instead of 1.0 for a 2-pixel shift)."""
    ref, pred = masks()
    flat = surface_distances(ref, pred, (0.5, 0.8))
    for volume_axis, spacing in ((0, (0.5, 0.8, 3.0)), (1, (0.5, 3.0, 0.8))):  # the size-1 axis first or in between
        got = surface_distances(np.expand_dims(ref, volume_axis), np.expand_dims(pred, volume_axis), spacing)
        assert got == pytest.approx(flat)


def test_evaluate_scores_one_slice_nifti_files_as_their_2d_images(tmp_path: Path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    geometry = Geometry(spacing=(0.5, 0.8, 3.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()),
                        kind="sitk")
    for case, masks in (("shifted", shifted_square), ("inside", square_in_a_larger_one)):
        ref, pred = masks()
        write_pair(ref_dir, pred_dir, case, ref[None].astype(np.uint8), pred[None].astype(np.uint8), geometry,
                   ".nii.gz")
    summary = evaluate_folders(ref_dir, pred_dir, labels=[1])
    for case, masks in (("shifted", shifted_square), ("inside", square_in_a_larger_one)):
        flat = surface_distances(*masks(), (0.5, 0.8))
        scored = summary["per_case"][case][1]
        assert (scored["hd95"], scored["assd"]) == pytest.approx((flat["hd95"], flat["assd"]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distances_match_brute_force_on_random_blobs(seed):
    rng = np.random.default_rng(seed)

    def blob() -> np.ndarray:
        noise = ndimage.gaussian_filter(rng.random((24, 30, 28)), 3)
        return noise > np.percentile(noise, 80)

    ref, pred = blob(), blob()
    spacing = (0.7, 1.1, 2.5)
    got = surface_distances(ref, pred, spacing)
    hd95, assd = brute_force_distances(ref, pred, tuple(reversed(spacing)))
    assert got["hd95"] == pytest.approx(hd95, rel=1e-6)
    assert got["assd"] == pytest.approx(assd, rel=1e-6)


def test_wrong_spacing_length_and_shape_mismatch_are_user_errors():
    with pytest.raises(AutomedsamError, match="Spacing"):
        surface_distances(square(), square(), (1.0, 1.0, 1.0))
    with pytest.raises(AutomedsamError, match="shape"):
        case_metrics(np.zeros((4, 4)), np.zeros((4, 5)), [1])


def write_pair(ref_dir: Path, pred_dir: Path, case: str, ref, pred, geometry: Geometry, ending: str) -> None:
    write_segmentation(ref_dir / f"{case}{ending}", ref, geometry)
    write_segmentation(pred_dir / f"{case}{ending}", pred, geometry)


def strict_json(path: Path) -> dict:
    def refuse(constant: str):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_evaluate_png_folders_writes_summary(tmp_path: Path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    geometry = Geometry.natural()
    write_pair(ref_dir, pred_dir, "001_HC", square().astype(np.uint8), square(left=13).astype(np.uint8), geometry,
               ".png")
    write_pair(ref_dir, pred_dir, "002_HC", square().astype(np.uint8), np.zeros((64, 64), np.uint8), geometry, ".png")
    out = tmp_path / "summary.json"
    summary = evaluate_folders(ref_dir, pred_dir, labels=[1], out_json=out)
    on_disk = strict_json(out)
    assert set(on_disk["per_case"]) == {"001_HC", "002_HC"}
    assert on_disk["per_case"]["001_HC"]["1"]["hd95"] == pytest.approx(3.0)
    assert on_disk["per_case"]["002_HC"]["1"]["hd95"] is None
    assert on_disk["mean"]["1"]["dice"] == pytest.approx((0.925 + 0.0) / 2)
    assert summary["foreground_mean"]["dice"] == pytest.approx(on_disk["foreground_mean"]["dice"])
    assert summarise(on_disk["per_case"])["mean"]["1"]["n_cases"] == 2  # a re-read summary can be summarised again


def test_predictions_named_in_another_unicode_normalisation_are_scored_against_their_reference(tmp_path: Path):
    """References written on macOS (decomposed é) and predictions named elsewhere (composed é) were refused:
    "references ... have no prediction: patient é 1"."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    decomposed, composed = unicodedata.normalize("NFD", "patient é 1"), unicodedata.normalize("NFC", "patient é 1")
    write_segmentation(ref_dir / f"{decomposed}.png", square().astype(np.uint8), Geometry.natural())
    write_segmentation(pred_dir / f"{composed}.png", square(left=13).astype(np.uint8), Geometry.natural())
    summary = evaluate_folders(ref_dir, pred_dir, labels=[1])
    assert list(summary["per_case"]) == [decomposed] and summary["predictions_not_scored"] == []
    assert summary["per_case"][decomposed][1]["dice"] == pytest.approx(0.925)
    write_segmentation(pred_dir / f"{decomposed}.png", square().astype(np.uint8), Geometry.natural())
    with pytest.raises(AutomedsamError, match=r"pred holds names that differ only in how their accented letters"):
        evaluate_folders(ref_dir, pred_dir, labels=[1])


@pytest.mark.parametrize("file_ending", [".png", "png", ".PNG"])
def test_file_ending_is_matched_with_or_without_dot_and_in_any_case(tmp_path: Path, file_ending: str):
    ref_dir, pred_dir, mask = tmp_path / "ref", tmp_path / "pred", square().astype(np.uint8)
    write_pair(ref_dir, pred_dir, "a", mask, mask, Geometry.natural(), ".png")
    volume_twin = Geometry(spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0), kind="sitk")
    write_pair(ref_dir, pred_dir, "a", mask, mask, volume_twin, ".nii.gz")  # skipped by the ending, not ambiguous
    summary = evaluate_folders(ref_dir, pred_dir, file_ending=file_ending)
    assert list(summary["per_case"]) == ["a"] and summary["mean"][1]["dice"] == 1.0


def test_evaluate_nifti_uses_reference_spacing(tmp_path: Path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref = np.zeros((8, 20, 20), np.uint8)
    ref[2:5, 5:15, 5:15] = 1
    ref[2:5, 16:19, 16:19] = 2
    geometry = Geometry(spacing=(0.8, 0.8, 4.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()),
                        kind="sitk")
    write_pair(ref_dir, pred_dir, "patient001_frame01", ref, np.roll(ref, 1, axis=0), geometry, ".nii.gz")
    summary = evaluate_folders(ref_dir, pred_dir, out_json=None)
    assert list(summary["mean"]) == [1, 2]
    assert summary["per_case"]["patient001_frame01"][1]["hd95"] == pytest.approx(4.0)


def test_inferred_labels_fill_cases_without_them(tmp_path: Path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    one, two = square().astype(np.uint8), square().astype(np.uint8) * 2
    write_pair(ref_dir, pred_dir, "a", one, one, Geometry.natural(), ".png")
    write_pair(ref_dir, pred_dir, "b", two, two, Geometry.natural(), ".png")
    summary = evaluate_folders(ref_dir, pred_dir)
    assert list(summary["per_case"]["a"]) == [1, 2]
    assert math.isnan(summary["per_case"]["a"][2]["dice"])
    assert summary["mean"][2]["n_cases"] == 1 and summary["mean"][2]["dice"] == 1.0


def test_values_outside_the_asked_labels_are_reported(tmp_path: Path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    mask = square().astype(np.uint8)
    ref = mask * 2
    ref[:4, :4] = 1  # a label map of two labels, not a one-object mask
    write_pair(ref_dir, pred_dir, "case", ref, mask, Geometry.natural(), ".png")
    summary = evaluate_folders(ref_dir, pred_dir, labels=[1])
    assert summary["labels_not_scored"] == [2] and summary["read_as_one_object"] == []
    assert summary["mean"][1]["dice"] == 0.0  # a true label map's other labels are never merged into the scored one


def test_a_file_holding_only_another_label_is_not_read_as_the_scored_one(tmp_path: Path):
    """Scoring label 2 relabelled a prediction of label 1 (the wrong structure) to 2: Dice 1.0 instead of 0."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    mask = square().astype(np.uint8)
    write_pair(ref_dir, pred_dir, "wrong", mask * 2, mask, Geometry.natural(), ".png")
    write_pair(ref_dir, pred_dir, "absent", mask, mask, Geometry.natural(), ".png")
    summary = evaluate_folders(ref_dir, pred_dir, labels=[2])
    assert summary["per_case"]["wrong"][2]["dice"] == 0.0 and math.isnan(summary["per_case"]["absent"][2]["dice"])
    assert summary["read_as_one_object"] == [] and summary["labels_not_scored"] == [1]


def test_one_object_masks_saved_as_0_255_or_colour_are_read_as_the_scored_label(tmp_path: Path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    mask = square().astype(np.uint8)
    write_pair(ref_dir, pred_dir, "grey", mask * 255, mask, Geometry.natural(), ".png")
    Image.fromarray(np.stack([mask * 200, mask * 30, mask * 0], axis=-1)).save(ref_dir / "colour.png")
    write_segmentation(pred_dir / "colour.png", mask, Geometry.natural())
    summary = evaluate_folders(ref_dir, pred_dir, labels=[1])
    assert summary["read_as_one_object"] == ["colour", "grey"] and summary["labels_not_scored"] == []
    assert summary["per_case"]["grey"][1]["dice"] == 1.0 and summary["per_case"]["colour"][1]["dice"] == 1.0
    with pytest.raises(AutomedsamError, match="colour image"):  # several labels scored: nothing is guessed
        evaluate_folders(ref_dir, pred_dir, labels=[1, 2])


def test_a_colour_reference_of_one_label_predictions_is_read_as_that_label_without_labels(tmp_path: Path):
    """Without --labels, a red-on-black reference of a 0/1 prediction was refused as a colour image."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    mask = square().astype(np.uint8)
    write_pair(ref_dir, pred_dir, "plain", mask, mask, Geometry.natural(), ".png")
    Image.fromarray(np.stack([mask * 255, mask * 0, mask * 0], axis=-1)).save(ref_dir / "red.png")
    write_segmentation(pred_dir / "red.png", mask, Geometry.natural())
    summary = evaluate_folders(ref_dir, pred_dir)
    assert list(summary["mean"]) == [1] and summary["per_case"]["red"][1]["dice"] == 1.0
    assert summary["read_as_one_object"] == ["red"]
    write_segmentation(pred_dir / "plain.png", mask * 2, Geometry.natural())
    with pytest.raises(AutomedsamError, match=r"colour or as JPEG.*labels \[1, 2\].*--labels 1"):
        evaluate_folders(ref_dir, pred_dir)  # two labels predicted: which one the colour mask marks is not known


def test_0_255_predictions_of_one_label_references_are_scored_as_that_label_without_labels(tmp_path: Path):
    """0/1 references and 0/255 predictions of the same mask scored labels 1 and 255 at Dice 0 each, no note."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    mask = square().astype(np.uint8)
    write_pair(ref_dir, pred_dir, "grey", mask, mask * 255, Geometry.natural(), ".png")
    summary = evaluate_folders(ref_dir, pred_dir)
    assert list(summary["mean"]) == [1] and summary["mean"][1]["dice"] == 1.0
    assert summary["read_as_one_object"] == ["grey"] and summary["labels_not_scored"] == []


def ellipse(shape=(200, 300)) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return ((((rows - 100) / 60) ** 2 + ((cols - 150) / 90) ** 2) < 1).astype(np.uint8)


@pytest.mark.parametrize("labels", [[1], None])
def test_a_jpeg_mask_is_read_as_one_object(tmp_path: Path, labels):
    """A 0/255 JPEG mask holds noise at ~28 values: with --labels 1 only its pixels exactly 1 were label 1 (Dice 0)."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    Image.fromarray(ellipse() * 255).save(ref_dir / "x.jpg", quality=90)
    assert len(np.unique(np.asarray(Image.open(ref_dir / "x.jpg")))) > 2
    write_segmentation(pred_dir / "x.png", ellipse(), Geometry.natural())
    summary = evaluate_folders(ref_dir, pred_dir, labels=labels)
    assert list(summary["mean"]) == [1] and summary["mean"][1]["dice"] > 0.95
    assert summary["read_as_one_object"] == ["x"] and summary["labels_not_scored"] == []



@pytest.mark.parametrize("labels", [[1], None])
def test_a_0_1_mask_saved_as_jpeg_is_refused_not_scored_from_its_noise(tmp_path: Path, labels):
    """JPEG turns a 0/1 mask into values 0 to 3: half its peak kept a few stray pixels (a Dice near 0, or an empty
    reference) where the file asked to be scored; it is refused with what to save instead."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    Image.fromarray(ellipse()).save(ref_dir / "x.jpg", quality=75)
    assert 0 < np.asarray(Image.open(ref_dir / "x.jpg")).max() < 8
    write_segmentation(pred_dir / "x.png", ellipse(), Geometry.natural())
    with pytest.raises(AutomedsamError, match=r"x\.jpg is a JPEG mask whose brightest value is .*Save the mask "
                                              r"losslessly, as PNG"):
        evaluate_folders(ref_dir, pred_dir, labels=labels)

def smooth_noise(shape: tuple[int, ...], *, colour: bool = False) -> np.ndarray:
    """An image-like field in [0, 1]: smooth blobs of every shade (each colour channel its own)."""
    field = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=shape), (3, 3, 0) if colour else 3)
    return (field - field.min()) / (field.max() - field.min())


VOLUME = Geometry(spacing=(1.0, 1.0, 5.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()), kind="sitk")
IMAGES = {  # what -r imagesTs holds: (pixels, file ending, geometry)
    "float scan": (smooth_noise((4, 64, 64)).astype(np.float32), ".nii.gz", VOLUME),
    "CT": ((smooth_noise((4, 64, 64)) * 2000 - 1000).astype(np.int16), ".nii.gz", VOLUME),
    "colour photo": ((smooth_noise((64, 64, 3), colour=True) * 255).astype(np.uint8), ".png", Geometry.natural()),
    "JPEG photo": ((smooth_noise((64, 64)) * 255).astype(np.uint8), ".jpg", Geometry.natural()),
}


@pytest.mark.parametrize("image", IMAGES)
def test_an_image_given_as_the_reference_of_one_label_is_refused(tmp_path: Path, image: str):
    """With one label scored, an unreadable reference was read as a one-object mask: an image given for it (ACDC's
    float scans, CT with negatives, a photo) scored Dice ~0 under read_as_one_object instead of being refused."""
    pixels, ending, geometry = IMAGES[image]
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    write_image(ref_dir / f"case_0000{ending}", pixels, geometry)
    prediction = np.zeros(pixels.shape[: geometry.ndim], np.uint8)
    prediction[..., 20:40, 20:40] = 1
    write_segmentation(pred_dir / f"case{'.png' if geometry.kind == 'natural' else ending}", prediction, geometry)
    with pytest.raises(AutomedsamError, match="looks like an image, not a segmentation"):
        evaluate_folders(ref_dir, pred_dir, labels=[1])


def test_a_colour_mask_with_soft_edges_is_read_as_one_object(tmp_path: Path):
    """Anti-aliased edges give a colour mask many brightness values, unlike an image only a few mid-tones."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    soft = ndimage.gaussian_filter(ellipse().astype(np.float64), 1.0)
    Image.fromarray(np.stack([soft * 255, soft * 40, soft * 0], axis=-1).round().astype(np.uint8)).save(
        ref_dir / "x.png")
    assert len(np.unique(np.asarray(Image.open(ref_dir / "x.png"))[..., 0])) > 64
    write_segmentation(pred_dir / "x.png", ellipse(), Geometry.natural())
    assert evaluate_folders(ref_dir, pred_dir, labels=[1])["mean"][1]["dice"] > 0.98


def test_a_thin_colour_mask_with_soft_edges_is_read_as_one_object(tmp_path: Path):
    """A 2-pixel anti-aliased line (a needle, a vessel) is all edge: its mid-tones made it refused as an image."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    drawn = Image.new("RGB", (800, 640))
    ImageDraw.Draw(drawn).line([(40, 80), (760, 560)], fill=(255, 0, 0), width=8)
    line = np.asarray(drawn.resize((200, 160), Image.LANCZOS))
    Image.fromarray(line).save(ref_dir / "x.png")
    write_segmentation(pred_dir / "x.png", (line.max(axis=-1) > 127).astype(np.uint8), Geometry.natural())
    assert evaluate_folders(ref_dir, pred_dir, labels=[1])["mean"][1]["dice"] == 1.0


def test_0_255_references_of_one_label_predictions_are_scored_as_that_label_without_labels(tmp_path: Path):
    """Without --labels, 0/255 references and 0/1 predictions scored label 1 and label 255 at Dice 0 each."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    mask = square().astype(np.uint8)
    write_pair(ref_dir, pred_dir, "grey", mask * 255, mask, Geometry.natural(), ".png")
    write_pair(ref_dir, pred_dir, "plain", mask, mask, Geometry.natural(), ".png")
    summary = evaluate_folders(ref_dir, pred_dir, out_json=tmp_path / "summary.json")
    assert list(summary["mean"]) == [1] and summary["mean"][1]["dice"] == 1.0
    assert summary["read_as_one_object"] == ["grey"] and strict_json(tmp_path / "summary.json")["mean"]["1"]
    write_pair(ref_dir, pred_dir, "other", mask * 255, mask * 2, Geometry.natural(), ".png")
    assert set(evaluate_folders(ref_dir, pred_dir)["mean"]) == {1, 2, 255}  # two predicted labels: nothing guessed


VGA_TABLE = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
             (192, 192, 192), (128, 128, 128), (255, 0, 0), (0, 255, 0), (255, 255, 0), (0, 0, 255), (255, 0, 255),
             (0, 255, 255), (255, 255, 255)]


def write_4_bit_bmp(path: Path, indices: np.ndarray, table: list[tuple[int, int, int]]) -> None:
    """A 16-colour bitmap as MS Paint saves one (Pillow writes palette BMPs with 8 bits per pixel only)."""
    height, width = indices.shape
    row_bytes = ((width + 1) // 2 + 3) // 4 * 4
    rows = b""
    for row in indices[::-1]:  # bottom-up
        packed = bytearray(row_bytes)
        for column, index in enumerate(row):
            packed[column // 2] |= int(index) << (4 if column % 2 == 0 else 0)
        rows += bytes(packed)
    colours = b"".join(bytes((blue, green, red, 0)) for red, green, blue in table)
    offset = 14 + 40 + len(colours)
    header = b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 4, 0, len(rows), 2835, 2835, len(table), 0)
    path.write_bytes(header + info + colours + rows)


@pytest.mark.parametrize("labels", [None, [1]])
def test_a_0_255_mask_saved_as_a_16_colour_bitmap_is_read_by_its_grey_values(tmp_path: Path, labels):
    """MS Paint's VGA table has white at index 15 and colours between: the mask read by index scored Dice 0."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    mask = square(shape=(40, 40), size=20).astype(np.uint8)
    write_4_bit_bmp(ref_dir / "c0.bmp", np.where(mask > 0, 15, 0), VGA_TABLE)
    write_segmentation(pred_dir / "c0.png", mask, Geometry.natural())
    assert Image.open(ref_dir / "c0.bmp").mode == "P"
    summary = evaluate_folders(ref_dir, pred_dir, labels=labels)
    assert list(summary["mean"]) == [1] and summary["foreground_mean"]["dice"] == 1.0


def test_the_summary_never_replaces_a_json_file_that_is_not_a_summary(tmp_path: Path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    mask = square().astype(np.uint8)
    write_pair(ref_dir, pred_dir, "case", mask, mask, Geometry.natural(), ".png")
    description = tmp_path / "dataset.json"
    description.write_text('{"labels": {"background": 0, "nodule": 1}}')
    with pytest.raises(AutomedsamError, match="not an evaluation summary"):
        evaluate_folders(ref_dir, pred_dir, out_json=description)
    assert json.loads(description.read_text())["labels"]["nodule"] == 1
    evaluate_folders(ref_dir, pred_dir, out_json=tmp_path / "summary.json")
    evaluate_folders(ref_dir, pred_dir, out_json=tmp_path / "summary.json")  # an earlier summary is replaced


def test_an_image_given_as_reference_or_prediction_is_refused(tmp_path: Path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    mask = square().astype(np.uint8)
    image = (np.arange(64 * 64).reshape(64, 64) % 200).astype(np.uint8)  # 199 grey levels besides 0
    write_pair(ref_dir, pred_dir, "case", image, mask, Geometry.natural(), ".png")
    for labels in ([1], None):
        with pytest.raises(AutomedsamError, match="looks like an image"):
            evaluate_folders(ref_dir, pred_dir, labels=labels)
    write_pair(ref_dir, pred_dir, "case", mask, image, Geometry.natural(), ".png")
    with pytest.raises(AutomedsamError, match="pred.*looks like an image"):
        evaluate_folders(ref_dir, pred_dir, labels=[1])
    many = (np.arange(64 * 64).reshape(64, 64) % 100).astype(np.uint8)  # a label map of 99 structures
    write_pair(ref_dir, pred_dir, "case", many, many, Geometry.natural(), ".png")
    summary = evaluate_folders(ref_dir, pred_dir, labels=range(1, 100))
    assert summary["mean"][99]["dice"] == 1.0


def test_folder_errors_name_the_problem(tmp_path: Path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    with pytest.raises(AutomedsamError, match="No reference"):
        evaluate_folders(ref_dir, pred_dir, labels=[1])
    mask = square().astype(np.uint8)
    write_segmentation(ref_dir / "case_a.png", mask, Geometry.natural())
    write_segmentation(ref_dir / "case_b.png", mask, Geometry.natural())
    write_segmentation(pred_dir / "case_a.png", mask, Geometry.natural())
    with pytest.raises(AutomedsamError, match="case_b"):
        evaluate_folders(ref_dir, pred_dir, labels=[1])
    write_segmentation(pred_dir / "case_b.png", mask[:32], Geometry.natural())
    with pytest.raises(AutomedsamError, match="Case 'case_b'.*shape"):
        evaluate_folders(ref_dir, pred_dir, labels=[1])


def test_predictions_without_a_reference_are_listed_and_named_in_a_warning(tmp_path, monkeypatch, capsys):
    """A reference folder holding 2 of 7 predicted cases gave a summary of 2 cases without a word."""
    ref_dir, pred_dir, mask = tmp_path / "ref", tmp_path / "pred", square().astype(np.uint8)
    for index in range(7):
        write_segmentation(pred_dir / f"case_{index}.png", mask, Geometry.natural())
    for index in (2, 5):
        write_segmentation(ref_dir / f"case_{index}.png", mask, Geometry.natural())
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "--labels", "1") == 0
    output = " ".join(capsys.readouterr().out.split())
    assert (f"Warning: 5 prediction(s) in {pred_dir} have no reference in {ref_dir} and were not scored (case_0, "
            "case_1, case_3, case_4, case_6)") in output
    assert "cover only the 2 case(s) with a reference" in output
    on_disk = strict_json(pred_dir / "summary.json")
    assert sorted(on_disk["per_case"]) == ["case_2", "case_5"]
    assert on_disk["predictions_not_scored"] == ["case_0", "case_1", "case_3", "case_4", "case_6"]
    for index in (0, 1, 3, 4, 6):
        write_segmentation(ref_dir / f"case_{index}.png", mask, Geometry.natural())
    assert evaluate_folders(ref_dir, pred_dir, labels=[1])["predictions_not_scored"] == []


def test_a_prediction_name_that_is_not_utf8_is_named_printably_in_the_warning(tmp_path, monkeypatch, capsys):
    """pred/extra\\xff.png (a Latin-1 name from a Windows zip), without a reference, stopped the command with a
    UnicodeEncodeError while it printed the warning naming it."""
    ref_dir, pred_dir, mask = tmp_path / "ref", tmp_path / "pred", square().astype(np.uint8)
    write_pair(ref_dir, pred_dir, "case_a", mask, mask, Geometry.natural(), ".png")
    write_segmentation(pred_dir / os.fsdecode(b"extra\xff.png"), mask, Geometry.natural())
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "--labels", "1") == 0
    output = " ".join(capsys.readouterr().out.split())
    output.encode("utf-8")  # strict: no lone surrogate reaches the terminal
    assert "were not scored (extra\\xff)" in output, output


def test_a_summary_path_whose_name_is_too_long_is_an_error_not_a_traceback(tmp_path, monkeypatch, capsys):
    """-o out/<300 characters>.json: Path.is_dir() raised "File name too long" before any check could answer."""
    ref_dir, pred_dir, mask = tmp_path / "ref", tmp_path / "pred", square().astype(np.uint8)
    write_pair(ref_dir, pred_dir, "case_a", mask, mask, Geometry.natural(), ".png")
    out_json = tmp_path / "out" / f"{'s' * 300}.json"
    out_json.parent.mkdir()  # in a folder that exists, Path.is_dir() raises where one missing hid the name
    code = run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "--labels", "1", "-o", str(out_json))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Traceback" not in err, err
    assert (f"Error: Cannot use {out_json}: the file name is too long for the file system: the name {'s' * 40}... is "
            "305 bytes") in err, err


def run_main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["automedsam_evaluate", *args])
    try:
        evaluate_cli.main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_a_log_shows_the_evaluation_while_it_runs(tmp_path, monkeypatch, capsys):
    """rich's bar wrote nothing into a log file until every case was scored: a long run looked hung."""
    import automedsam.evaluation as evaluation

    ref_dir, pred_dir, mask = tmp_path / "ref", tmp_path / "pred", square().astype(np.uint8)
    for index in range(3):
        write_pair(ref_dir, pred_dir, f"case_{index}", mask, mask, Geometry.natural(), ".png")
    seen_while_scoring: list[str] = []
    score = evaluation.case_metrics

    def watched_case_metrics(*args, **kwargs):
        seen_while_scoring.append(capsys.readouterr().err)
        return score(*args, **kwargs)

    monkeypatch.setattr(evaluation, "case_metrics", watched_case_metrics)
    evaluate_folders(ref_dir, pred_dir, labels=[1])
    assert re.search(r"^\[\d\d:\d\d:\d\d\] Evaluating: 0/3 \(0%\)$", seen_while_scoring[0], re.MULTILINE)
    assert "Evaluating: 3/3 (100%), done in" in capsys.readouterr().err


def test_cli_with_labels_prints_table_and_writes_summary(tmp_path, monkeypatch, capsys):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref = np.zeros((40, 40), np.uint8)
    ref[5:15, 5:15], ref[20:30, 20:30] = 1, 2
    write_pair(ref_dir, pred_dir, "case", ref, ref, Geometry.natural(), ".png")
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "--labels", "1", "2") == 0
    output = capsys.readouterr().out
    assert "foreground mean" in output and str(pred_dir / "summary.json") in output.replace("\n", "")
    assert "not scored" not in output
    assert set(strict_json(pred_dir / "summary.json")["mean"]) == {"1", "2"}


def test_cli_warns_of_a_prediction_placed_elsewhere_than_its_reference(tmp_path, monkeypatch, capsys):
    """Only the shape was compared: a volume written with a flipped direction was scored without a word."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref = np.zeros((4, 20, 20), np.uint8)
    ref[1:3, 5:15, 5:12] = 1
    geometry = Geometry(spacing=(0.8, 0.8, 4.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()),
                        kind="sitk")
    flipped = Geometry(spacing=(0.8, 0.8, 4.0), origin=(0.0, 0.0, 0.0),
                       direction=tuple(np.diag([-1.0, 1.0, 1.0]).ravel()), kind="sitk")
    write_pair(ref_dir, pred_dir, "same", ref, ref, geometry, ".nii.gz")
    write_pair(ref_dir, pred_dir, "flipped", ref, ref, geometry, ".nii.gz")
    write_segmentation(pred_dir / "flipped.nii.gz", ref, flipped)
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "--labels", "1") == 0
    output = " ".join(capsys.readouterr().out.split())
    assert "Warning: 1 prediction(s) lie elsewhere than their reference" in output and "e.g. flipped" in output
    assert strict_json(pred_dir / "summary.json")["geometry_differs"] == ["flipped"]


def test_2d_files_with_spacing_are_scored_in_mm_and_the_summary_says_so(tmp_path, monkeypatch, capsys):
    """The table said distances of 2D images are in pixels; a 2D .mha at 0.5 mm is scored in mm."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    half_mm = Geometry(spacing=(0.5, 0.5), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0), kind="sitk")
    write_pair(ref_dir, pred_dir, "x", square().astype(np.uint8), square(left=14).astype(np.uint8), half_mm, ".mha")
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir)) == 0
    output = " ".join(capsys.readouterr().out.split())
    on_disk = strict_json(pred_dir / "summary.json")
    assert on_disk["per_case"]["x"]["1"]["hd95"] == pytest.approx(2.0)  # 4 pixels of 0.5 mm
    assert on_disk["distance_unit"] == "mm" and "HD95/ASSD in mm" in output and "HD95 2.000 mm." in output
    assert "pixels" not in output
    write_pair(ref_dir, pred_dir, "x", square().astype(np.uint8), square(left=14).astype(np.uint8),
               Geometry.natural(), ".png")
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "--file-ending", ".png") == 0
    output = " ".join(capsys.readouterr().out.split())
    assert strict_json(pred_dir / "summary.json")["distance_unit"] == "pixel"
    assert "HD95/ASSD in pixels" in output and "HD95 4.000 pixels." in output
    (ref_dir / "x.mha").unlink()
    (pred_dir / "x.png").unlink()
    write_pair(ref_dir, pred_dir, "y", square().astype(np.uint8), square().astype(np.uint8), half_mm, ".mha")
    assert evaluate_folders(ref_dir, pred_dir)["distance_unit"] == "mixed"  # x.png beside y.mha


def test_cli_takes_labels_from_dataset_json(tmp_path, monkeypatch, capsys, roots):
    dataset_dir = roots["raw"] / "Dataset004_Heart"
    save_json(dataset_dir / "dataset.json", {"labels": {"background": 0, "RV": 1, "LV": 3}, "file_ending": ".png",
                                             "channel_names": {"0": "MRI"}, "numTraining": 1})
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref = np.zeros((40, 40), np.uint8)
    ref[5:15, 5:15], ref[20:30, 20:30] = 1, 3
    write_pair(ref_dir, pred_dir, "case", ref, ref, Geometry.natural(), ".png")
    out = tmp_path / "out" / "summary.json"
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "-d", "4", "-o", str(out)) == 0
    assert "LV" in capsys.readouterr().out
    on_disk = strict_json(out)
    assert set(on_disk["mean"]) == {"1", "3"} and on_disk["label_names"] == {"1": "RV", "3": "LV"}


def test_label_names_and_case_ids_with_brackets_are_printed_as_written(tmp_path, monkeypatch, capsys, roots):
    """A label named "cyst [/]" ended the command in a MarkupError traceback, and "kidney [left]" lost its "[left]"."""
    save_json(roots["raw"] / "Dataset006_Brackets" / "dataset.json", {
        "labels": {"background": 0, "kidney [left]": 1, "cyst [/]": 4}, "file_ending": ".png",
        "channel_names": {"0": "US"}, "numTraining": 1})
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref = np.zeros((40, 40), np.uint8)
    ref[5:15, 5:15], ref[20:30, 20:30] = 1, 4
    write_pair(ref_dir, pred_dir, "case", ref, ref, Geometry.natural(), ".png")
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "-d", "6") == 0
    output = capsys.readouterr().out
    assert "1 kidney [left]" in output and "4 cyst [/]" in output
    mask = square().astype(np.uint8)
    write_pair(ref_dir, pred_dir, "scan [red]", mask * 255, mask, Geometry.natural(), ".png")
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "--labels", "1") == 0
    assert "(e.g. scan [red])" in " ".join(capsys.readouterr().out.split())


def test_cli_scores_0_255_masks_of_a_one_label_dataset_as_its_label(tmp_path, monkeypatch, capsys, roots):
    save_json(roots["raw"] / "Dataset005_Thyroid" / "dataset.json", {
        "labels": {"background": 0, "nodule": 1}, "file_ending": ".png", "channel_names": {"0": "US"},
        "numTraining": 1})
    ref_dir, pred_dir = tmp_path / "masks", tmp_path / "pred"
    mask = square().astype(np.uint8)
    write_pair(ref_dir, pred_dir, "ddti_1_1", mask * 255, mask, Geometry.natural(), ".png")
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "-d", "5") == 0
    output = " ".join(capsys.readouterr().out.split())
    assert "foreground Dice 1.000" in output and "read as label 1" in output and "not scored" not in output


def test_cli_errors_exit_2_without_traceback(tmp_path, monkeypatch, capsys):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    write_segmentation(ref_dir / "lonely.png", square().astype(np.uint8), Geometry.natural())
    pred_dir.mkdir()
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "--labels", "1") == 2
    error = capsys.readouterr().err
    assert "lonely" in error and "Traceback" not in error
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "--labels", "one") == 2
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "--labels", "0") == 2  # the background
    assert "foreground label ids" in capsys.readouterr().err
    assert not (pred_dir / "summary.json").exists()



@pytest.mark.parametrize("content, message", [
    ([{"background": 0, "LV": 1}], r'must hold a JSON object with "labels"'),
    ({"labels": ["background", "LV"]}, r"labels must map names to integer ids"),
    ({"labels": {"background": 0, "LV": "one"}}, r"label\(s\) LV must have a non-negative integer id"),
    ({"file_ending": ".png"}, r'must hold a JSON object with "labels"'),
])
def test_cli_refuses_a_dataset_json_without_a_labels_object(tmp_path, monkeypatch, capsys, roots, content, message):
    """A dataset.json that is a list, or whose labels are a list, gave an AttributeError traceback."""
    save_json(roots["raw"] / "Dataset006_Bad" / "dataset.json", content)
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    write_pair(ref_dir, pred_dir, "case", square().astype(np.uint8), square().astype(np.uint8), Geometry.natural(),
               ".png")
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "-d", "6") == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "Dataset006_Bad/dataset.json" in error and "Traceback" not in error
    assert re.search(message, error), error
    assert not (pred_dir / "summary.json").exists()


@pytest.mark.realdata
def test_acdc_references_against_a_grown_left_ventricle(tmp_path: Path, shared_data: Path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    for gt in sorted((shared_data / "ACDC" / "training").glob("*/*_gt.nii.gz"))[:3]:
        case = gt.name.replace("_gt.nii.gz", "")
        (ref_dir / f"{case}.nii.gz").symlink_to(gt)
        seg, geometry = read_segmentation(gt)
        grown = seg.copy()
        grown[ndimage.binary_dilation(seg == 3, iterations=2) & (seg == 0)] = 3
        write_segmentation(pred_dir / f"{case}.nii.gz", grown, geometry)
    summary = evaluate_folders(ref_dir, pred_dir, labels=[1, 2, 3])
    assert len(summary["per_case"]) == 3
    assert summary["mean"][1]["dice"] == 1.0 and summary["mean"][2]["hd95"] == 0.0
    assert 0.5 < summary["mean"][3]["dice"] < 1.0 and summary["mean"][3]["hd95"] > 0.0


def test_labels_that_no_reference_or_prediction_holds_are_refused(tmp_path, monkeypatch, capsys):
    """`-l 2` on files of label 1 (a typo) wrote a summary of n/a and exited 0."""
    ref_dir, pred_dir, mask = tmp_path / "ref", tmp_path / "pred", square().astype(np.uint8)
    write_pair(ref_dir, pred_dir, "a", mask, mask, Geometry.natural(), ".png")
    write_pair(ref_dir, pred_dir, "b", mask, mask, Geometry.natural(), ".png")
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "-l", "2") == 2
    error = " ".join(capsys.readouterr().err.split())
    assert (f"None of the labels asked for ([2]) occurs in the references in {ref_dir} or the predictions in "
            f"{pred_dir}: they hold the label values [1]") in error
    assert "--labels 1" in error and "-d" in error and "Traceback" not in error
    assert not (pred_dir / "summary.json").exists()
    with pytest.raises(AutomedsamError, match=r"label values \[1, 2\]"):
        write_segmentation(pred_dir / "b.png", mask * 2, Geometry.natural())
        evaluate_folders(ref_dir, pred_dir, labels=[3, 4])


def test_labels_that_some_but_not_all_occur_nowhere_are_named_in_a_warning(tmp_path, monkeypatch, capsys):
    """A structure may be absent from every test case: scored n/a with a warning, not refused."""
    ref_dir, pred_dir, mask = tmp_path / "ref", tmp_path / "pred", square().astype(np.uint8)
    write_pair(ref_dir, pred_dir, "a", mask, mask, Geometry.natural(), ".png")
    assert run_main(monkeypatch, "-r", str(ref_dir), "-s", str(pred_dir), "-l", "1", "3") == 0
    output = " ".join(capsys.readouterr().out.split())
    assert "Warning: label(s) [3] of --labels or -d occur in no reference or prediction" in output
    assert "foreground Dice 1.000" in output
    assert strict_json(pred_dir / "summary.json")["labels_not_found"] == [3]
    assert evaluate_folders(ref_dir, pred_dir, labels=[1])["labels_not_found"] == []
    empty = np.zeros_like(mask)  # only background: no label to name instead, the labels are not refused
    write_pair(ref_dir, pred_dir, "a", empty, empty, Geometry.natural(), ".png")
    assert evaluate_folders(ref_dir, pred_dir, labels=[1])["labels_not_found"] == [1]
