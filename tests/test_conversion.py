"""Importers (HC18, ACDC, folder) and the synthetic demo data: outputs load as raw datasets and keep their content."""
from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image, ImageDraw
from scipy import ndimage
from typer.testing import CliRunner

from automedsam.benchmarks.protocol import BenchmarkSettings, convert_ddti, run_benchmark
from automedsam.cli import convert as convert_cli
from automedsam.cli.common import INTERRUPTED, stopped_like_ctrl_c
from automedsam.conversion import folder as folder_module
from automedsam.conversion import staging as staging_module
from automedsam.conversion import convert_acdc, convert_folder, convert_hc18, make_synthetic_dataset
from automedsam.conversion.ellipse import fill_outline
from automedsam.conversion.synthetic import elliptic_radius
from automedsam.dataset import MAX_CASE_ID_BYTES, load_raw_dataset, max_case_id_bytes
from automedsam.errors import AutomedsamError
from automedsam.files import copy_file
from automedsam.io import (SUPPORTED_EXTENSIONS, Geometry, read_image, read_segmentation, write_image,
                           write_segmentation)
from automedsam.samples import LONGEST_FILE_ENDING

HC18_CASES = ("000_HC", "014_HC", "014_2HC", "186_HC", "346_HC", "787_HC")
BORDER_CUT_CASES = ("186_HC", "346_HC", "787_HC")
HC18_CSV = "training_set_pixel_size_and_HC.csv"


def _ellipse_outline(shape: tuple[int, int], centre: tuple[float, float], axes: tuple[float, float],
                     angle: float) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    radius = elliptic_radius(rows, cols, centre, axes, angle)
    filled = radius <= 1.0
    return filled & ~ndimage.binary_erosion(filled, border_value=0) & (radius > 0.9), filled


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _leftovers(raw: Path) -> list[str]:
    return sorted(p.name for p in raw.iterdir())


# ---------------------------------------------------------------- outline filling


def test_closed_outline_is_hole_filled_exactly():
    outline, filled = _ellipse_outline((120, 160), (60, 80), (50, 30), 0.4)
    mask, fitted = fill_outline(outline, "closed")
    assert not fitted
    assert np.array_equal(mask, ndimage.binary_fill_holes(outline))
    assert _dice(mask, filled) > 0.98


def test_border_cut_outline_is_completed_by_an_ellipse_fit():
    outline, filled = _ellipse_outline((120, 160), (20, 80), (60, 35), 0.2)
    assert outline[0].any() and not ndimage.binary_fill_holes(outline)[~outline].any()
    mask, fitted = fill_outline(outline, "cut")
    assert fitted
    assert np.all(mask[outline])
    assert _dice(mask, filled) > 0.97


def test_outline_that_is_no_ellipse_is_an_error():
    outline = np.zeros((100, 100), dtype=bool)
    outline[50, 10:90] = True
    outline[10:50, 10] = True
    with pytest.raises(AutomedsamError, match="zigzag.png"):
        fill_outline(outline, "zigzag.png")


# ---------------------------------------------------------------- HC18


@pytest.fixture
def hc18_release(shared_data: Path, tmp_path: Path) -> Path:
    """A few real HC18 pairs (three cut by the image border) in the release layout, with a trimmed csv."""
    source = shared_data / "HC18"
    release = tmp_path / "HC18"
    (release / "training_set").mkdir(parents=True)
    for case in HC18_CASES:
        for suffix in ("", "_Annotation"):
            shutil.copy(source / "training_set" / f"{case}{suffix}.png", release / "training_set")
    with (source / HC18_CSV).open(newline="") as handle:
        rows = list(csv.reader(handle))
    kept = [rows[0]] + [row for row in rows[1:] if row[0].removesuffix(".png") in HC18_CASES]
    with (release / HC18_CSV).open("w", newline="") as handle:
        csv.writer(handle).writerows(kept)
    return release


def test_hc18_masks_are_filled_and_contain_their_outline(hc18_release: Path, roots: dict[str, Path]):
    target = convert_hc18(hc18_release, 1)
    assert target == roots["raw"] / "Dataset001_HC18"
    dataset = load_raw_dataset(1)
    assert sorted(case.case_id for case in dataset.cases) == sorted(HC18_CASES)
    meta = json.loads((target / "dataset.json").read_text())
    assert meta["groups"]["014_2HC"] == meta["groups"]["014_HC"] == "014"
    assert "shapes" not in meta and "rings" not in meta, "the planner decides the head's shape from the boxes"
    assert all(name in meta["description"] for name in BORDER_CUT_CASES)
    for case in dataset.cases:
        mask = read_segmentation(case.label)[0].astype(bool)
        outline = np.asarray(Image.open(hc18_release / "training_set" / f"{case.case_id}_Annotation.png")) > 127
        assert mask.any(), case.case_id
        assert np.all(mask[outline]), f"{case.case_id}: outline pixels outside the mask"
        assert np.array_equal(ndimage.binary_fill_holes(mask), mask), f"{case.case_id}: mask has holes"
        assert np.count_nonzero(mask) > 20 * np.count_nonzero(outline), f"{case.case_id}: mask is not filled"
        edge = mask & ~ndimage.binary_erosion(mask, border_value=1)
        assert ndimage.distance_transform_edt(~outline)[edge].max() <= 3, f"{case.case_id}: edge leaves the outline"
        assert np.array_equal(read_image(case.image)[0], np.asarray(Image.open(
            hc18_release / "training_set" / f"{case.case_id}.png")))


def test_hc18_spacing_reproduces_the_released_head_circumference(hc18_release: Path, roots: dict[str, Path]):
    target = convert_hc18(hc18_release, 1)
    spacing = json.loads((target / "dataset.json").read_text())["spacing"]
    with (hc18_release / HC18_CSV).open(newline="") as handle:
        circumference = {row["filename"].removesuffix(".png"): float(row["head circumference (mm)"])
                         for row in csv.DictReader(handle)}
    for case in HC18_CASES:
        mask = read_segmentation(target / "labelsTr" / f"{case}.png")[0]
        rows, cols = np.nonzero(mask)
        variances = np.linalg.eigvalsh(np.cov(np.stack([cols, rows])))
        major, minor = 2 * np.sqrt(variances[1]), 2 * np.sqrt(variances[0])
        ratio = ((major - minor) / (major + minor)) ** 2
        perimeter = np.pi * (major + minor) * (1 + 3 * ratio / (10 + np.sqrt(4 - 3 * ratio)))
        assert spacing[case][0] == spacing[case][1]
        assert perimeter * spacing[case][0] == pytest.approx(circumference[case], rel=0.03), case


def test_hc18_reports_missing_annotations_and_leaves_nothing(hc18_release: Path, roots: dict[str, Path]):
    (hc18_release / "training_set" / "014_2HC_Annotation.png").unlink()
    with pytest.raises(AutomedsamError, match="014_2HC_Annotation.png"):
        convert_hc18(hc18_release, 1)
    assert _leftovers(roots["raw"]) == []


def test_hc18_needs_its_csv(tmp_path: Path, roots: dict[str, Path]):
    outline, _ = _ellipse_outline((60, 80), (30, 40), (20, 12), 0.0)
    _save_png(tmp_path / "training_set" / "001_HC.png", np.full((60, 80), 90, np.uint8))
    _save_png(tmp_path / "training_set" / "001_HC_Annotation.png", outline.astype(np.uint8) * 255)
    with pytest.raises(AutomedsamError, match=HC18_CSV):
        convert_hc18(tmp_path, 1)
    (tmp_path / HC18_CSV).write_text("filename,pixel size(mm),head circumference (mm)\n001_HC.png,0.1,12.0\n")
    target = convert_hc18(tmp_path, 1)
    assert json.loads((target / "dataset.json").read_text())["spacing"] == {"001_HC": [0.1, 0.1]}


# ---------------------------------------------------------------- ACDC


def test_acdc_keeps_volumes_labels_geometry_and_patients(shared_data: Path, tmp_path: Path,
                                                          roots: dict[str, Path]):
    release = tmp_path / "ACDC"
    shutil.copytree(shared_data / "ACDC" / "training" / "patient001", release / "training" / "patient001")
    shutil.copytree(shared_data / "ACDC" / "training" / "patient002", release / "testing" / "patient002")
    target = convert_acdc(release, 2)
    dataset = load_raw_dataset("Dataset002_ACDC")
    frames = sorted(p.name[: -len(".nii.gz")] for p in (release / "training" / "patient001").glob("*_frame??.nii.gz"))
    assert len(frames) == 2 and [case.case_id for case in dataset.cases] == frames
    assert {case.group for case in dataset.cases} == {"patient001"}
    assert dataset.labels == {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
    assert dataset.rings == {2: [3]} and dataset.shapes == {}, "the myocardium is declared a ring around the LV"
    for case in dataset.cases:
        source = release / "training" / "patient001" / f"{case.case_id}.nii.gz"
        image, geometry = read_image(case.image)
        source_image, source_geometry = read_image(source)
        assert np.array_equal(image, source_image) and geometry == source_geometry
        label, label_geometry = read_segmentation(case.label)
        assert np.array_equal(label, read_segmentation(source.with_name(f"{case.case_id}_gt.nii.gz"))[0])
        assert label_geometry == geometry
        assert set(np.unique(label)) <= {0, 1, 2, 3}
    test_images = sorted(p.name for p in (target / "imagesTs").iterdir())
    assert test_images and all(name.startswith("patient002_frame") for name in test_images)
    assert len(list((target / "labelsTs").iterdir())) == len(test_images)


def test_acdc_without_volumes_is_an_error(tmp_path: Path, roots: dict[str, Path]):
    (tmp_path / "training" / "patient001").mkdir(parents=True)
    with pytest.raises(AutomedsamError, match="no ACDC volumes"):
        convert_acdc(tmp_path, 2)


# ---------------------------------------------------------------- any folder


@pytest.fixture
def busi_like(tmp_path: Path) -> Path:
    """Images with spaces and parentheses in their names; masks as 0/255, colour and numbered parts."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "data"
    for name in ("benign (3)", "benign (4)", "case one"):
        _save_png(folder / "images" / f"{name}.png", rng.integers(0, 255, (40, 50), dtype=np.uint8))
    mask = np.zeros((40, 50), np.uint8)
    mask[5:15, 10:30] = 255
    _save_png(folder / "masks" / "benign (3)_mask.png", mask)
    part_one, part_two = np.zeros((40, 50), np.uint8), np.zeros((40, 50), np.uint8)
    part_one[2:6, 2:6], part_two[30:35, 40:45] = 255, 255
    _save_png(folder / "masks" / "benign (4)_mask.png", part_one)
    _save_png(folder / "masks" / "benign (4)_mask_1.png", part_two)
    colour = np.zeros((40, 50, 3), np.uint8)
    colour[20:30, 5:12] = (255, 0, 0)
    _save_png(folder / "masks" / "case one.png", colour)
    return folder


def test_folder_pairs_images_and_masks_by_name(busi_like: Path, roots: dict[str, Path]):
    target = convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions",
                            label_names=["lesion"])
    dataset = load_raw_dataset(3)
    assert sorted(case.case_id for case in dataset.cases) == ["benign (3)", "benign (4)", "case one"]
    assert dataset.labels == {"background": 0, "lesion": 1}
    labels = {case.case_id: read_segmentation(case.label)[0] for case in dataset.cases}
    assert np.count_nonzero(labels["benign (3)"]) == 200 and labels["benign (3)"].max() == 1
    assert np.count_nonzero(labels["benign (4)"]) == 16 + 25
    assert np.count_nonzero(labels["case one"]) == 70 and labels["case one"].max() == 1
    original = np.asarray(Image.open(busi_like / "images" / "case one.png"))
    assert np.array_equal(read_image(target / "imagesTr" / "case one_0000.png")[0], original)


def test_folder_declares_rings_and_shapes_when_told_and_refuses_unknown_ones(busi_like: Path,
                                                                            roots: dict[str, Path], monkeypatch,
                                                                            capsys):
    convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions",
                   label_names=["lesion"], shapes={"lesion": "ellipse"})
    assert load_raw_dataset(3).shapes == {1: "ellipse"} and load_raw_dataset(3).rings == {}
    convert_folder(busi_like / "images", dataset_id=4, name="Heart", label_names=["RV", "MYO", "LV"],
                   rings={"MYO": ["LV"]})
    assert load_raw_dataset(4).rings == {2: [3]}
    with pytest.raises(AutomedsamError, match="--shape: shapes must map"):
        convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=5, name="Other",
                       shapes={"foreground": "square"})
    with pytest.raises(AutomedsamError, match="--ring: rings name label.*PA"):
        convert_folder(busi_like / "images", dataset_id=5, name="Other", label_names=["MYO"], rings={"MYO": ["PA"]})
    assert not list(roots["raw"].glob("Dataset005_*"))
    monkeypatch.setattr(sys, "argv", ["automedsam_convert", "folder", "--images", str(busi_like / "images"), "-d", "5",
                                      "-n", "Other", "--label", "MYO", "--label", "LV", "--label", "RV", "--ring",
                                      "MYO:LV", "--ring", "MYO:RV"])
    with pytest.raises(SystemExit) as exit_info:
        convert_cli.main()
    said = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--ring names MYO twice" in said and "MYO:LV,RV" in said, said
    assert not list(roots["raw"].glob("Dataset005_*"))


def test_folder_imported_again_keeps_the_times_of_unchanged_files(busi_like: Path, roots: dict[str, Path],
                                                                  monkeypatch: pytest.MonkeyPatch):
    """Each --overwrite import (more images into a loop) gave every file a new time, so the next preprocessing took
    every labelled sample for changed and encoded it and its views again."""
    target = convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions")
    files = sorted(path.relative_to(target) for path in target.rglob("*.png"))
    for relative in files:
        os.utime(target / relative, ns=(10**18, 10**18))
    _save_png(busi_like / "images" / "benign (4).png", np.full((40, 50), 7, np.uint8))
    real_move = staging_module._move_into_place

    def staged_long_ago(staging: Path, target: Path) -> None:  # an embedding of the old image made meanwhile
        for path in staging.rglob("*.png"):
            os.utime(path, ns=(10**18 + 1, 10**18 + 1))
        real_move(staging, target)

    monkeypatch.setattr(staging_module, "_move_into_place", staged_long_ago)
    convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions", overwrite=True)
    changed = [str(relative) for relative in files if (target / relative).stat().st_mtime_ns != 10**18]
    assert changed == ["imagesTr/benign (4)_0000.png"] and len(files) == 6
    assert (target / changed[0]).stat().st_mtime_ns > 10**18 + 1, "the changed image dates from the swap"
    assert np.array_equal(read_image(target / changed[0])[0], np.full((40, 50), 7, np.uint8))


def test_folder_accepts_images_and_masks_in_one_folder(busi_like: Path, roots: dict[str, Path]):
    shared = busi_like / "images"
    for mask in (busi_like / "masks").iterdir():
        target_name = mask.name if "_mask" in mask.name else mask.name.replace(".png", "_mask.png")
        shutil.copy(mask, shared / target_name)
    convert_folder(shared, masks=shared, dataset_id=3, name="Lesions")
    assert sorted(case.case_id for case in load_raw_dataset(3).cases) == ["benign (3)", "benign (4)", "case one"]
    convert_folder(shared, masks=busi_like / "masks" / ".." / "images", dataset_id=3, name="Lesions", overwrite=True)
    assert np.count_nonzero(read_segmentation(load_raw_dataset(3).cases[0].label)[0]) == 200, "not the image itself"



@pytest.mark.parametrize("masks", [None, "masks"])
def test_folder_refuses_a_file_named_as_a_mask_unless_the_masks_are_there(busi_like: Path, roots: dict[str, Path],
                                                                           masks: str | None):
    """Without --masks (or with masks elsewhere) scan1_label.png beside scan1.png was left out without a word."""
    shutil.copy(busi_like / "images" / "case one.png", busi_like / "images" / "case one_label.png")
    with pytest.raises(AutomedsamError, match=r"named as the mask of another image there: case one_label\.png\. "
                                              r"If they are masks, give this folder as --masks"):
        convert_folder(busi_like / "images", masks=masks and busi_like / masks, dataset_id=3, name="Lesions")
    assert _leftovers(roots["raw"]) == []

def test_folder_groups_images_by_the_pattern_on_their_names(busi_like: Path, roots: dict[str, Path]):
    convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions",
                   group_pattern=r"^(?P<group>\w+)")
    groups = {case.case_id: case.group for case in load_raw_dataset(3).cases}
    assert groups == {"benign (3)": "benign", "benign (4)": "benign", "case one": "case"}


def test_folder_without_a_pattern_keeps_each_image_its_own_group(busi_like: Path, roots: dict[str, Path]):
    convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions")
    assert all(case.group == case.case_id for case in load_raw_dataset(3).cases)


@pytest.mark.parametrize("pattern, message", [(r"^(\d+)", "matches no part"), ("(", "not a valid"),
                                              ("e", "one group"), (r"benign \((\d)\)|case", "matches no part")])
def test_folder_refuses_a_group_pattern_that_does_not_split_patients(busi_like: Path, roots: dict[str, Path],
                                                                     pattern: str, message: str):
    with pytest.raises(AutomedsamError, match=message):
        convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions",
                       group_pattern=pattern)
    assert not (roots["raw"] / "Dataset003_Lesions").exists()


def test_folder_lists_unpaired_files_and_leaves_nothing(busi_like: Path, roots: dict[str, Path]):
    (busi_like / "masks" / "case one.png").rename(busi_like / "masks" / "case 1.png")
    with pytest.raises(AutomedsamError) as error:
        convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions")
    assert "case one.png" in str(error.value) and "case 1.png" in str(error.value)
    assert _leftovers(roots["raw"]) == []




def test_folder_refuses_a_file_name_that_is_not_utf8_before_writing(busi_like: Path, roots: dict[str, Path],
                                                                    monkeypatch, capsys):
    """A Latin-1 name from a Windows zip was imported; automedsam_plan_and_preprocess then crashed with a traceback."""
    for folder in ("images", "masks"):
        shutil.copy(busi_like / folder / "case one.png", os.fsencode(busi_like / folder) + b"/patient\xe9 1.png")
    monkeypatch.setattr(sys, "argv", ["automedsam_convert", "folder", "--images", str(busi_like / "images"),
                                      "--masks", str(busi_like / "masks"), "-d", "3", "-n", "Lesions"])
    with pytest.raises(SystemExit) as exit_info:
        convert_cli.main()
    said = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2 and r"patient\xe9 1.png (is not valid UTF-8" in said, said
    said.encode("utf-8")  # printable: a lone surrogate stopped the printing with a UnicodeEncodeError
    assert _leftovers(roots["raw"]) == []


def test_folder_refuses_a_name_too_long_for_the_files_made_from_it(busi_like: Path, roots: dict[str, Path]):
    """A 245-byte name converted, then automedsam_plan_and_preprocess failed writing embeddings/.../NAME__v01.image."""
    long_name = "é" * 120 + "x" * 5
    shutil.copy(busi_like / "images" / "case one.png", busi_like / "images" / f"{long_name}.png")
    shutil.copy(busi_like / "masks" / "case one.png", busi_like / "masks" / f"{long_name}.png")
    with pytest.raises(AutomedsamError, match=rf"image\(s\) whose name is too long for a case id: {long_name}\.png: "
                                              rf"245 bytes; at most {MAX_CASE_ID_BYTES},"):
        convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions")
    assert _leftovers(roots["raw"]) == []


def _volumes(tmp_path: Path, names: tuple[str, ...], shape: tuple[int, int, int] = (5, 20, 30)) -> None:
    """Volumes and their masks named `names` in tmp_path/scans and tmp_path/masks."""
    geometry = Geometry(spacing=(1.0, 1.0, 2.0), origin=(0.0,) * 3, direction=tuple(np.eye(3).ravel()), kind="sitk")
    for name in names:
        write_image(tmp_path / "scans" / f"{name}.nii.gz", np.zeros(shape, np.int16), geometry)
        write_segmentation(tmp_path / "masks" / f"{name}.nii.gz", np.ones(shape, np.uint8), geometry)


def _remove_case(tmp_path: Path, name: str) -> None:
    """Take the refused case out of the folders, so that the rest converts."""
    (tmp_path / "scans" / f"{name}.nii.gz").unlink()
    (tmp_path / "masks" / f"{name}.nii.gz").unlink()


def test_folder_refuses_a_volume_name_too_long_for_its_slices_files(tmp_path: Path, roots: dict[str, Path]):
    """A 240-byte volume name fit a 2D case's budget, converted, then automedsam_plan_and_preprocess refused it: its
    slices' names (NAME__z029__v01.image) add more."""
    most = max_case_id_bytes(slices=30)  # cut along any axis: its longest has 30 slices
    _volumes(tmp_path, ("a" * most, "b" * (most + 1)))
    with pytest.raises(AutomedsamError, match=rf"{'b' * (most + 1)}\.nii\.gz: {most + 1} bytes; at most {most},"
                                              r".*for a volume whose longest side has at most 1000 voxels"):
        convert_folder(tmp_path / "scans", masks=tmp_path / "masks", dataset_id=6, name="Scans")
    assert _leftovers(roots["raw"]) == []
    _remove_case(tmp_path, "b" * (most + 1))
    convert_folder(tmp_path / "scans", masks=tmp_path / "masks", dataset_id=6, name="Scans")
    assert [case.case_id for case in load_raw_dataset(6).cases] == ["a" * most]


def test_folder_tells_a_volume_name_too_long_for_a_2d_image_the_volumes_limit_at_once(tmp_path: Path,
                                                                                      roots: dict[str, Path]):
    """A 244-byte volume name was refused with a 2D image's limit (243), then, renamed to 243 bytes, with a volume's
    (238): two rounds of renaming where one was needed."""
    name = "c" * (MAX_CASE_ID_BYTES + 1)
    _volumes(tmp_path, (name,))
    with pytest.raises(AutomedsamError) as error:
        convert_folder(tmp_path / "scans", masks=tmp_path / "masks", dataset_id=6, name="Scans")
    message = str(error.value)
    assert (f"volume(s) whose name is too long for a case id: {name}.nii.gz: {MAX_CASE_ID_BYTES + 1} bytes; at most "
            f"{max_case_id_bytes(slices=1000)}, as" in message), message
    assert _leftovers(roots["raw"]) == []


def test_folder_names_every_volume_name_too_long_before_writing_any_image(tmp_path: Path, roots: dict[str, Path],
                                                                         monkeypatch: pytest.MonkeyPatch):
    """Each volume's name was checked when its turn came to be written: after the cases before it were read and
    written (minutes on real data), naming only the first."""
    most = max_case_id_bytes(slices=1000)
    _volumes(tmp_path, ("case01", "y" * (most + 2), "z" * (most + 2)))

    def no_writing(*args, **kwargs):
        raise AssertionError("an image was written before the names were checked")

    monkeypatch.setattr(folder_module, "_write_image", no_writing)
    with pytest.raises(AutomedsamError) as error:
        convert_folder(tmp_path / "scans", masks=tmp_path / "masks", dataset_id=6, name="Scans")
    message = str(error.value)
    assert f"{'y' * (most + 2)}.nii.gz: {most + 2} bytes, {'z' * (most + 2)}.nii.gz: {most + 2} bytes; " \
           f"at most {most}, as" in message, message
    assert "case01" not in message and _leftovers(roots["raw"]) == []


def test_folder_refuses_a_long_volume_name_for_its_slices_once_its_size_is_read(tmp_path: Path,
                                                                                roots: dict[str, Path]):
    """A volume longer than 1000 voxels along any side names its last slice with 4 digits (NAME__z1000__v99.image):
    its name, which fit any shorter volume's, is refused once its image is read, saying what was checked, not "a
    volume of 1001 slices" of one cut along a side of 2 voxels, and without a doubled "))"."""
    most = max_case_id_bytes(slices=1000)
    _volumes(tmp_path, ("a" * most,), shape=(2, 1001, 2))
    with pytest.raises(AutomedsamError) as error:
        convert_folder(tmp_path / "scans", masks=tmp_path / "masks", dataset_id=6, name="Scans")
    assert str(error.value).endswith(
        f"{'a' * most}.nii.gz: {most} bytes; at most {most - 1}, as the names of automedsam's files add up to "
        f"{255 - most + 1} bytes to it (CASE__z1000__v99.image for a volume whose longest side has 1001 to 10000 "
        "voxels: it may be cut along any axis). Rename them to shorter names."), str(error.value)
    assert _leftovers(roots["raw"]) == []


def test_folder_refuses_a_2d_nifti_name_too_long_for_its_raw_image_name(tmp_path: Path, roots: dict[str, Path]):
    """A 244-byte name fit the budget of CASE__v01.image but not of imagesTr/CASE_0000.nii.gz (256 bytes): the
    conversion failed with a write error instead of the case id's limit."""
    geometry = Geometry(spacing=(1.0, 1.0), origin=(0.0,) * 2, direction=(1.0, 0.0, 0.0, 1.0), kind="sitk")
    most = MAX_CASE_ID_BYTES
    for name in ("a" * most, "b" * (most + 1)):
        write_image(tmp_path / "scans" / f"{name}.nii.gz", np.zeros((20, 30), np.int16), geometry)
        write_segmentation(tmp_path / "masks" / f"{name}.nii.gz", np.ones((20, 30), np.uint8), geometry)
    with pytest.raises(AutomedsamError, match=rf": {most + 1} bytes; at most {most}, .* add up to 12 bytes to it "
                                              r"\(CASE_0000\.nii\.gz\)"):
        convert_folder(tmp_path / "scans", masks=tmp_path / "masks", dataset_id=6, name="Flat")
    assert _leftovers(roots["raw"]) == []
    _remove_case(tmp_path, "b" * (most + 1))
    target = convert_folder(tmp_path / "scans", masks=tmp_path / "masks", dataset_id=6, name="Flat")
    assert [path.name for path in (target / "imagesTr").iterdir()] == [f"{'a' * most}_0000.nii.gz"]
    assert [case.case_id for case in load_raw_dataset(6).cases] == ["a" * most]


def test_the_case_id_budget_counts_the_longest_file_ending_a_raw_image_takes():
    """The 2D budget counts imagesTr/CASE_0000.nii.gz: a longer ending read and written would shorten it."""
    assert LONGEST_FILE_ENDING == max(SUPPORTED_EXTENSIONS, key=len)
    assert max_case_id_bytes(slices=None) == 255 - len(f"_0000{LONGEST_FILE_ENDING}")


def test_the_documented_case_id_limits_are_those_checked():
    """dataset_format.md said 237 bytes for every case id after the limit became one per kind of case."""
    page = " ".join((Path(__file__).parents[1] / "documentation" / "dataset_format.md").read_text().split())
    assert (f"{max_case_id_bytes(slices=None)} bytes for a 2D image" in page
            and f"{max_case_id_bytes(slices=1000)} bytes when its longest side has at most 1000 voxels, "
                f"{max_case_id_bytes(slices=10_000)} up to 10,000, fewer beyond" in page)
    assert max_case_id_bytes(slices=1001) == max_case_id_bytes(slices=10_000) > max_case_id_bytes(slices=10_001)


def test_a_file_name_too_long_to_write_is_reported_as_such(busi_like: Path, tmp_path: Path):
    """Copying an image to imagesTr/NAME_0000.png of 257 bytes said "Choose a location you can write to": the name,
    not the place, was at fault."""
    with pytest.raises(AutomedsamError) as error:
        copy_file(busi_like / "images" / "case one.png", tmp_path / "out" / f"{'x' * 247}_0000.png")
    assert "file name is too long" in str(error.value), str(error.value)
    assert "location you can write to" not in str(error.value) and not list((tmp_path / "out").iterdir())


def test_folder_pairs_masks_and_boxes_named_in_another_unicode_normalisation(busi_like: Path, tmp_path: Path,
                                                                            roots: dict[str, Path]):
    """macOS writes café decomposed (NFD); the mask folder and the boxes file, typed elsewhere, say café composed:
    "image without a mask: café.png / mask without an image: café.png", "no boxes for image café"."""
    decomposed, composed = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    (busi_like / "images" / "case one.png").rename(busi_like / "images" / f"{decomposed}.png")
    (busi_like / "masks" / "case one.png").rename(busi_like / "masks" / f"{composed}_mask.png")
    convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions")
    cases = {case.case_id: case for case in load_raw_dataset(3).cases}
    assert sorted(cases) == sorted(["benign (3)", "benign (4)", decomposed])  # the image's own spelling is kept
    assert np.count_nonzero(read_segmentation(cases[decomposed].label)[0]) == 70
    boxes = {"benign (3)": [], "benign (4)": [], f"{composed}.png": [{"box": [5, 20, 11, 29]}]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    target = convert_folder(busi_like / "images", boxes=tmp_path / "boxes.json", dataset_id=4, name="Weak")
    assert json.loads((target / "boxesTr" / f"{decomposed}.json").read_text()) == [{"label": 1, "box": [5, 20, 11, 29]}]


def test_folder_refuses_names_that_differ_only_in_unicode_normalisation(busi_like: Path, roots: dict[str, Path]):
    decomposed, composed = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    shutil.copy(busi_like / "masks" / "case one.png", busi_like / "masks" / f"{composed}.png")
    shutil.copy(busi_like / "masks" / "case one.png", busi_like / "masks" / f"{decomposed}.png")
    shutil.copy(busi_like / "images" / "case one.png", busi_like / "images" / f"{composed}.png")
    with pytest.raises(AutomedsamError, match=r"masks holds names that differ only in how their accented letters "
                                              r"are encoded .*'cafe\\u0301' / 'caf\\xe9'"):
        convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions")
    shutil.copy(busi_like / "images" / "case one.png", busi_like / "images" / f"{decomposed}.png")
    with pytest.raises(AutomedsamError, match=r"images holds names that differ only in how their accented letters"):
        convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions")
    assert _leftovers(roots["raw"]) == []


def test_an_accented_dataset_name_is_refused_as_not_ascii(busi_like: Path, roots: dict[str, Path]):
    """-n Études was refused with "use letters, digits, ...": it is made of letters."""
    with pytest.raises(AutomedsamError, match=r"Dataset name 'Études' is invalid: use ASCII letters \(no accents\)"):
        convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Études")
    assert _leftovers(roots["raw"]) == []


def test_folder_names_what_it_left_out(busi_like: Path, roots: dict[str, Path]):
    (busi_like / "images" / "scan.webp").write_bytes(b"RIFF")
    (busi_like / "images" / "more").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(busi_like / "images" / "more" / "inner.png")
    said: list[str] = []
    convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions", report=said.append)
    assert len(said) == 1 and "Left out 2 entries" in said[0] and "more/, scan.webp" in said[0]
    result = CliRunner().invoke(convert_cli.app, ["folder", "--images", str(busi_like / "images"), "--masks",
                                                  str(busi_like / "masks"), "-d", "4", "-n", "Again"])
    assert result.exit_code == 0, result.output
    assert "Warning: Left out 2 entries" in result.output and "Wrote 3 training cases" in result.output


def test_a_warning_names_files_whose_names_read_as_markup(busi_like: Path, roots: dict[str, Path]):
    """Printed as rich markup, `scan [left].gif` was named `scan .gif`."""
    (busi_like / "images" / "scan [left].gif").write_bytes(b"GIF89a")
    result = CliRunner().invoke(convert_cli.app, ["folder", "--images", str(busi_like / "images"), "--masks",
                                                  str(busi_like / "masks"), "-d", "4", "-n", "Again"])
    assert result.exit_code == 0, result.output
    assert "Left out 1 entry" in result.output and "scan [left].gif." in result.output, result.output


def test_folder_refuses_2d_images_mixed_with_3d_volumes(busi_like: Path, roots: dict[str, Path]):
    """A volume among png images was imported; automedsam_plan_and_preprocess then refused the dataset."""
    geometry = Geometry(spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()),
                        kind="sitk")
    write_image(busi_like / "images" / "volume.nii.gz", np.zeros((5, 40, 50), np.int16), geometry)
    write_segmentation(busi_like / "masks" / "volume.nii.gz", np.zeros((5, 40, 50), np.uint8), geometry)
    expected = r"mixes 2D images \(benign \(3\)\.png, benign \(4\)\.png, case one\.png\) and 3D volumes " \
               r"\(volume\.nii\.gz\)"
    with pytest.raises(AutomedsamError, match=expected):
        convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions")
    with pytest.raises(AutomedsamError, match=expected):
        convert_folder(busi_like / "images", dataset_id=3, name="Lesions")
    assert _leftovers(roots["raw"]) == []

def test_folder_refuses_two_masks_of_one_name_for_one_image(busi_like: Path, roots: dict[str, Path]):
    """benign (3)_mask.png and benign (3)_mask.bmp: one of them was used, the other ignored without a word."""
    other = np.zeros((40, 50), np.uint8)
    other[0:10, 0:10] = 255
    Image.fromarray(other).save(busi_like / "masks" / "benign (3)_mask.bmp")
    with pytest.raises(AutomedsamError, match=r"two masks .*benign \(3\)_mask\.bmp / benign \(3\)_mask\.png"):
        convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions")
    assert _leftovers(roots["raw"]) == []

def test_folder_with_wrong_mask_size_leaves_no_partial_dataset(busi_like: Path, roots: dict[str, Path]):
    _save_png(busi_like / "masks" / "case one.png", np.zeros((10, 10), np.uint8))
    expected = (r"case one\.png: mask shape \(10, 10\) differs from its image's \(40, 50\)\. "
                r"Masks must have their image's size")
    with pytest.raises(AutomedsamError, match=expected):
        convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions")
    assert _leftovers(roots["raw"]) == []


def test_folder_with_boxes_writes_box_files(busi_like: Path, tmp_path: Path, roots: dict[str, Path]):
    boxes = {"benign (3)": [{"label": 1, "box": [10, 5, 29, 14]}], "benign (4).png": [{"box": [2, 2, 5, 5]}],
             "case one": []}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    target = convert_folder(busi_like / "images", boxes=tmp_path / "boxes.json", dataset_id=4, name="Weak")
    dataset = load_raw_dataset(4)
    assert all(case.label is None for case in dataset.cases) and not (target / "labelsTr").exists()
    written = json.loads((target / "boxesTr" / "benign (4).json").read_text())
    assert written == [{"label": 1, "box": [2, 2, 5, 5]}]



def test_folder_refuses_two_keys_for_the_boxes_of_one_image(busi_like: Path, tmp_path: Path, roots: dict[str, Path]):
    """Keys "benign (3)" and "benign (3).png" name one case: only the last list was kept, without a word."""
    boxes = {"benign (3)": [{"box": [10, 5, 29, 14]}], "benign (4)": [], "case one": [],
             "benign (3).png": [{"box": [1, 1, 4, 4]}]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    with pytest.raises(AutomedsamError, match=r"under two keys: 'benign \(3\)' and 'benign \(3\)\.png'"):
        convert_folder(busi_like / "images", boxes=tmp_path / "boxes.json", dataset_id=4, name="Weak")
    assert _leftovers(roots["raw"]) == []

def test_folder_rejects_a_box_outside_its_image(busi_like: Path, tmp_path: Path, roots: dict[str, Path]):
    boxes = {"benign (3)": [{"label": 1, "box": [10, 5, 60, 14]}], "benign (4)": [], "case one": []}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    expected = (r"boxes\.json, case 'benign \(3\)', entry 0: box \[10, 5, 60, 14\] lies \(partly\) outside the "
                r"image of 50 columns x 40 rows \(valid x 0\.\.49, y 0\.\.39\)\. Fix or clip the box")
    with pytest.raises(AutomedsamError, match=expected):
        convert_folder(busi_like / "images", boxes=tmp_path / "boxes.json", dataset_id=4, name="Weak")
    assert _leftovers(roots["raw"]) == []


def test_folder_imports_volumes_with_boxes_on_slices(tmp_path: Path, roots: dict[str, Path]):
    volume = np.random.default_rng(1).normal(size=(5, 20, 30)).astype(np.float32)
    geometry = Geometry(spacing=(0.5, 0.5, 2.0), origin=(1.0, 2.0, 3.0), direction=tuple(np.eye(3).ravel()),
                        kind="sitk")
    write_image(tmp_path / "scans" / "scan 1.nii.gz", volume, geometry)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"scan 1": [{"label": 1, "box": [3, 4, 10, 12]}]}))
    with pytest.raises(AutomedsamError, match="slice"):
        convert_folder(tmp_path / "scans", boxes=boxes, dataset_id=6, name="Scans")
    boxes.write_text(json.dumps({"scan 1": [{"label": 1, "box": [3, 4, 10, 12], "slice": 2}]}))
    target = convert_folder(tmp_path / "scans", boxes=boxes, dataset_id=6, name="Scans")
    assert load_raw_dataset(6).cases[0].boxes == target / "boxesTr" / "scan 1.json"
    assert read_image(target / "imagesTr" / "scan 1_0000.nii.gz")[1] == geometry


@pytest.fixture
def label_map_volumes(tmp_path: Path) -> Path:
    """Two volumes with label maps 0..3 (RV, MYO, LV) beside them, named with _gt as the ACDC release does."""
    geometry = Geometry(spacing=(1.5, 1.5, 10.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()),
                        kind="sitk")
    folder = tmp_path / "heart"
    for index in range(2):
        write_image(folder / f"patient{index}.nii.gz", np.random.default_rng(index).normal(size=(3, 20, 24)).astype(
            np.float32), geometry)
        label_map = np.zeros((3, 20, 24), np.uint8)
        label_map[1, 2:8, 2:8], label_map[1, 10:18, 10:18], label_map[1, 12:16, 12:16] = 1, 2, 3
        write_segmentation(folder / f"patient{index}_gt.nii.gz", label_map, geometry)
    return folder


def test_folder_imports_label_maps_of_several_structures_with_their_values(label_map_volumes: Path,
                                                                         roots: dict[str, Path]):
    convert_folder(label_map_volumes, masks=label_map_volumes, dataset_id=7, name="Heart",
                   label_names=["RV", "MYO", "LV"], rings={"MYO": ["LV"]})
    dataset = load_raw_dataset(7)
    assert dataset.labels == {"background": 0, "RV": 1, "MYO": 2, "LV": 3} and dataset.rings == {2: [3]}
    for case in dataset.cases:
        expected = read_segmentation(label_map_volumes / f"{case.case_id}_gt.nii.gz")[0]
        assert np.array_equal(read_segmentation(case.label)[0], expected)



def test_folder_refuses_a_mask_slice_holding_the_lv_without_its_declared_ring(label_map_volumes: Path,
                                                                            roots: dict[str, Path]):
    """Loading refuses such a mask (the ring's filled region would be trained absent around its cavity), as the import
    of box files refuses the same slip: the import of masks wrote it without a word."""
    mask = label_map_volumes / "patient1_gt.nii.gz"
    label_map, geometry = read_segmentation(mask)
    label_map[2, 12:16, 12:16] = 3
    write_segmentation(mask, label_map, geometry)
    with pytest.raises(AutomedsamError, match=r"Case 'patient1' \(.*patient1_gt\.nii\.gz\): LV is labelled on "
                                              r"slice 2 but MYO is not; dataset\.json declares MYO a ring around LV"):
        convert_folder(label_map_volumes, masks=label_map_volumes, dataset_id=7, name="Heart",
                       label_names=["RV", "MYO", "LV"], rings={"MYO": ["LV"]})
    assert _leftovers(roots["raw"]) == []
    convert_folder(label_map_volumes, masks=label_map_volumes, dataset_id=7, name="Heart",
                   label_names=["RV", "MYO", "LV"])
    assert len(load_raw_dataset(7).cases) == 2, "without a declared ring, LV alone is a plain label"


def test_folder_refuses_a_2d_mask_holding_the_core_without_its_declared_ring(tmp_path: Path, roots: dict[str, Path]):
    folder = tmp_path / "rings"
    for index, with_ring in enumerate((True, False)):
        label_map = np.zeros((30, 40), np.uint8)
        label_map[5:25, 5:35] = 1 if with_ring else 0
        label_map[10:20, 12:28] = 2
        _save_png(folder / f"img{index}.png", (60 * label_map + 20).astype(np.uint8))
        _save_png(folder / f"img{index}_mask.png", label_map)
    with pytest.raises(AutomedsamError, match=r"Case 'img1' \(.*img1_mask\.png\): core is labelled but ring is "
                                              r"not") as refused:
        convert_folder(folder, masks=folder, dataset_id=8, name="Rings", label_names=["ring", "core"],
                       rings={"ring": ["core"]})
    assert "img0" not in str(refused.value) and _leftovers(roots["raw"]) == []


def test_folder_refuses_masks_placed_elsewhere_than_their_image(label_map_volumes: Path, roots: dict[str, Path]):
    """A mask of other spacing and origin was written with its image's geometry, as if it were drawn on it."""
    moved = Geometry(spacing=(0.3, 0.3, 5.0), origin=(100.0, 50.0, 0.0), direction=tuple(np.eye(3).ravel()),
                     kind="sitk")
    mask = label_map_volumes / "patient1_gt.nii.gz"
    write_segmentation(mask, read_segmentation(mask)[0], moved)
    with pytest.raises(AutomedsamError, match=r"Case 'patient1': the mask .*patient1_gt\.nii\.gz lies elsewhere "
                                              r"than its image \(spacing .*image: spacing \(1\.5, 1\.5, 10\); origin "
                                              r"\(0, 0, 0\).*mask: spacing \(0\.3, 0\.3, 5\); origin \(100, 50, 0\)"):
        convert_folder(label_map_volumes, masks=label_map_volumes, dataset_id=7, name="Heart",
                       label_names=["RV", "MYO", "LV"])
    assert _leftovers(roots["raw"]) == []
    within = Geometry(spacing=(1.5, 1.5, 10.001), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()),
                      kind="sitk")
    write_segmentation(mask, read_segmentation(mask)[0], within)
    convert_folder(label_map_volumes, masks=label_map_volumes, dataset_id=7, name="Heart",
                   label_names=["RV", "MYO", "LV"])
    assert len(load_raw_dataset(7).cases) == 2

def test_folder_refuses_to_merge_a_label_map_under_one_label(label_map_volumes: Path, roots: dict[str, Path]):
    """Binarising 0..3 at half its maximum kept MYO and LV as one structure and dropped RV without a word."""
    with pytest.raises(AutomedsamError, match=r"values 1, 2, 3: a label map of 3 structures"):
        convert_folder(label_map_volumes, masks=label_map_volumes, dataset_id=7, name="Heart", label_names=["heart"])
    assert _leftovers(roots["raw"]) == []


def two_regions(first: int, second: int, dtype=np.uint8) -> np.ndarray:
    mask = np.zeros((40, 40), dtype)
    mask[5:15, 5:15], mask[20:30, 20:30] = first, second
    return mask


def red_and_white() -> np.ndarray:
    mask = np.zeros((40, 40, 3), np.uint8)
    mask[5:15, 5:15] = (120, 0, 0)
    mask[20:30, 20:30] = 255
    return mask


@pytest.mark.parametrize("mask", [two_regions(127, 255), two_regions(1, 255), two_regions(1000, 2000, np.uint16),
                                  red_and_white()], ids=["0-127-255", "0-1-255", "16-bit", "colour"])
def test_one_label_refuses_a_mask_of_two_regions_of_different_values(mask: np.ndarray, tmp_path: Path,
                                                                     roots: dict[str, Path]):
    """Read as one structure, pixels brighter than half the maximum kept the bright region and dropped the other."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for case in ("a", "b"):
        Image.fromarray(np.full((40, 40), 90, np.uint8)).save(tmp_path / "images" / f"{case}.png")
    Image.fromarray(two_regions(255, 255)).save(tmp_path / "masks" / "a.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "b.png")
    with pytest.raises(AutomedsamError, match=r"b.png holds regions of different values"):
        convert_folder(tmp_path / "images", masks=tmp_path / "masks", dataset_id=8, name="Two", label_names=["x"])
    assert _leftovers(roots["raw"]) == []


def test_one_label_keeps_an_anti_aliased_mask_whole(tmp_path: Path, roots: dict[str, Path]):
    """A resized 0/255 mask holds every value on its edge, a few pixels each: one structure, as before."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.full((80, 80), 90, np.uint8)).save(tmp_path / "images" / "a.png")
    rows, cols = np.mgrid[:80, :80]
    smooth = np.clip((30 - np.hypot(rows - 40, cols - 40)) * 40 + 128, 0, 255).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "masks" / "a.png")
    target = convert_folder(tmp_path / "images", masks=tmp_path / "masks", dataset_id=9, name="Smooth",
                            label_names=["x"])
    label_map = read_segmentation(target / "labelsTr" / "a.png")[0]
    np.testing.assert_array_equal(label_map, (smooth > 127).astype(np.uint8))


def stray_bright_pixels() -> np.ndarray:
    mask = two_regions(1, 0)
    mask[30, 30:35] = 255
    return mask


def ignore_border() -> np.ndarray:
    mask = np.zeros((40, 40), np.uint8)
    mask[5:35, 5:35] = 1
    mask[4, 4:36], mask[35, 4:36] = 255, 255
    return mask


@pytest.mark.parametrize("mask", [stray_bright_pixels(), ignore_border()], ids=["stray-255", "ignore-border"])
def test_one_label_refuses_pixels_brighter_than_the_object(mask: np.ndarray, tmp_path: Path, roots: dict[str, Path]):
    """Thresholded at half the maximum, a few 255 pixels beside a 0/1 object were written as the whole object."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    with pytest.raises(AutomedsamError, match=r"a.png holds \d+ pixel\(s\) of value\(s\) 255 beside the object's 1: "
                                              r"an ignore or border value\?"):
        convert_folder(tmp_path / "images", masks=tmp_path / "masks", dataset_id=8, name="Stray", label_names=["x"])
    assert _leftovers(roots["raw"]) == []


def palette_of_two_colours() -> Image.Image:
    mask = Image.fromarray(two_regions(1, 2), mode="P")
    mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3))
    return mask


def red_and_green() -> Image.Image:
    mask = np.zeros((40, 40, 3), np.uint8)
    mask[5:15, 5:15], mask[20:30, 20:30] = (255, 0, 0), (0, 255, 0)
    return Image.fromarray(mask)


@pytest.mark.parametrize("mask", [palette_of_two_colours(), red_and_green()], ids=["palette", "rgb"])
def test_one_label_refuses_structures_of_different_colours(mask: Image.Image, tmp_path: Path,
                                                           roots: dict[str, Path]):
    """Colours of one brightness were one value to the check, and two structures were merged into label 1."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(tmp_path / "images" / "a.png")
    mask.save(tmp_path / "masks" / "a.png")
    with pytest.raises(AutomedsamError, match=r"a.png holds regions of different values \(\(0, \d+, 0\), "
                                              r"\(\d+, 0, 0\)\)"):
        convert_folder(tmp_path / "images", masks=tmp_path / "masks", dataset_id=8, name="Two", label_names=["x"])
    assert _leftovers(roots["raw"]) == []


def test_one_label_keeps_an_anti_aliased_colour_mask_whole(tmp_path: Path, roots: dict[str, Path]):
    """A resized red mask holds many shades of red on its edge: one structure, not several colours."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.full((80, 80), 90, np.uint8)).save(tmp_path / "images" / "a.png")
    rows, cols = np.mgrid[:80, :80]
    smooth = np.clip((30 - np.hypot(rows - 40, cols - 40)) * 40 + 128, 0, 255).astype(np.uint8)
    red = np.stack([smooth, np.zeros_like(smooth), np.zeros_like(smooth)], axis=-1)
    Image.fromarray(red).save(tmp_path / "masks" / "a.png")
    target = convert_folder(tmp_path / "images", masks=tmp_path / "masks", dataset_id=9, name="Smooth",
                            label_names=["x"])
    np.testing.assert_array_equal(read_segmentation(target / "labelsTr" / "a.png")[0], (smooth > 127).astype(np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_label_keeps_a_mask_resampled_as_floats(dtype: type, tmp_path: Path, roots: dict[str, Path]):
    """scipy's zoom rings at countless tiny and negative values around the object: the most common one (1.4e-45)
    was taken as the object's value, and every object voxel was refused as brighter than it."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    z, y, x = np.mgrid[:20, :64, :64]
    ellipsoid = ((z - 10) / 6) ** 2 + ((y - 32) / 15) ** 2 + ((x - 32) / 12) ** 2 <= 1
    resampled = ndimage.zoom(ellipsoid.astype(dtype), (1.7, 1.3, 1.3))
    image = sitk.GetImageFromArray(np.full(resampled.shape, 90, np.int16))
    sitk.WriteImage(image, str(tmp_path / "images" / "a.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(resampled), str(tmp_path / "masks" / "a.nii.gz"))
    target = convert_folder(tmp_path / "images", masks=tmp_path / "masks", dataset_id=9, name="Zoomed",
                            label_names=["x"])
    label_map = read_segmentation(target / "labelsTr" / "a.nii.gz")[0]
    np.testing.assert_array_equal(label_map, (resampled > resampled.max() / 2).astype(np.uint8))


def small_anti_aliased_disc(radius: float, resample: Image.Resampling) -> np.ndarray:
    """A disc drawn at 4x and downscaled, as drawing tools anti-alias: a faint halo around a 255 core of few pixels."""
    drawn = Image.new("L", (256, 256), 0)
    ImageDraw.Draw(drawn).ellipse([128 - 4 * radius, 128 - 4 * radius, 128 + 4 * radius, 128 + 4 * radius], fill=255)
    return np.asarray(drawn.resize((64, 64), resample))


@pytest.mark.parametrize(("radius", "resample"), [(2, Image.Resampling.LANCZOS), (3, Image.Resampling.LANCZOS),
                                                  (1.5, Image.Resampling.BILINEAR)],
                         ids=["r2-lanczos", "r3-lanczos", "r1.5-bilinear"])
def test_one_label_keeps_a_small_anti_aliased_object(radius: float, resample: Image.Resampling, tmp_path: Path,
                                                     roots: dict[str, Path]):
    """The halo's faint values outnumber the core: value 1 was taken as the object's, and the core refused as
    brighter than it."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(tmp_path / "images" / "a.png")
    disc = small_anti_aliased_disc(radius, resample)
    Image.fromarray(disc).save(tmp_path / "masks" / "a.png")
    target = convert_folder(tmp_path / "images", masks=tmp_path / "masks", dataset_id=9, name="Small",
                            label_names=["x"])
    np.testing.assert_array_equal(read_segmentation(target / "labelsTr" / "a.png")[0], (disc > 127).astype(np.uint8))


@pytest.mark.parametrize(("colour", "quality"), [((0, 255, 0), 75), ((0, 255, 0), 90), ((0, 255, 0), 95),
                                                 ((0, 128, 255), 75)])
def test_one_label_keeps_a_colour_mask_once_saved_as_jpeg(colour: tuple[int, int, int], quality: int, tmp_path: Path,
                                                          roots: dict[str, Path]):
    """Saved as JPEG, then as PNG, a green disc holds (0, 255, 1) beside (0, 255, 0): each filled a region, and the
    one structure was refused as two."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.full((256, 256), 90, np.uint8)).save(tmp_path / "images" / "a.png")
    drawn = Image.new("RGB", (256, 256), (0, 0, 0))
    ImageDraw.Draw(drawn).ellipse([98, 98, 158, 158], fill=colour)
    drawn.save(tmp_path / "a.jpg", quality=quality)
    Image.open(tmp_path / "a.jpg").save(tmp_path / "masks" / "a.png")
    target = convert_folder(tmp_path / "images", masks=tmp_path / "masks", dataset_id=9, name="Green",
                            label_names=["x"])
    label_map = read_segmentation(target / "labelsTr" / "a.png")[0]
    assert _dice(label_map > 0, np.asarray(drawn).any(axis=-1)) > 0.98


def jpeg_disc_masks(folder: Path, values: dict[str, int], quality: int) -> np.ndarray:
    """Images and JPEG masks of one disc (radius 21, 1369 pixels) under `folder`, the disc saved as value
    `values[case]` (1: a 0/1 mask, 255: a 0/255 one); returns the disc."""
    rows, cols = np.mgrid[:128, :128]
    disc = (rows - 60) ** 2 + (cols - 64) ** 2 < 21 ** 2
    for case, value in values.items():
        _save_png(folder / "images" / f"{case}.png", np.full((128, 128), 90, np.uint8))
        (folder / "masks").mkdir(exist_ok=True)
        Image.fromarray(disc.astype(np.uint8) * value).save(folder / "masks" / f"{case}.jpg", quality=quality)
    return disc


def test_one_label_refuses_a_0_1_mask_saved_as_jpeg_and_reads_a_0_255_one(tmp_path: Path, roots: dict[str, Path]):
    """At quality 75 the 0/1 disc came back as values 0, 1 and 2, and only the 24 pixels of value 2 were kept."""
    disc = jpeg_disc_masks(tmp_path / "a", {"c0": 1}, quality=75)
    with pytest.raises(AutomedsamError, match=r"c0\.jpg is a JPEG mask whose brightest value is 2: a mask saved as "
                                              r"0/1 .* Save the mask losslessly, as PNG"):
        convert_folder(tmp_path / "a" / "images", masks=tmp_path / "a" / "masks", dataset_id=9, name="J",
                       label_names=["x"])
    assert _leftovers(roots["raw"]) == []
    jpeg_disc_masks(tmp_path / "b", {"c0": 255}, quality=75)
    target = convert_folder(tmp_path / "b" / "images", masks=tmp_path / "b" / "masks", dataset_id=9, name="J",
                            label_names=["x"])
    assert _dice(read_segmentation(target / "labelsTr" / "c0.png")[0] > 0, disc) > 0.95


def test_jpeg_masks_that_came_back_all_0_are_warned_of_with_their_cause(tmp_path: Path, roots: dict[str, Path]):
    """At quality 50 the 0/1 disc is gone: the file is byte for byte a blank JPEG, so only the warning can tell."""
    jpeg_disc_masks(tmp_path, {"c0": 1, "c1": 1}, quality=50)
    said: list[str] = []
    convert_folder(tmp_path / "images", masks=tmp_path / "masks", dataset_id=9, name="J", label_names=["x"],
                   report=said.append)
    assert len(said) == 1 and "No mask in" in said[0] and "a 0/1 mask saved as JPEG can come back all 0" in said[0]


@pytest.mark.parametrize("other", [(255, 255, 255), (255, 0, 0)])
def test_one_label_refuses_a_dark_object_beside_a_bright_one(other: tuple[int, int, int], tmp_path: Path,
                                                             roots: dict[str, Path]):
    """A dark object ((0, 0, 25): under an eighth of the peak) counted as background beside a bright mark or
    structure, which alone became the mask, without a word."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.full((128, 128), 90, np.uint8)).save(tmp_path / "images" / "a.png")
    mask = np.zeros((128, 128, 3), np.uint8)
    mask[20:80, 20:80] = (0, 0, 25)
    mask[100:110, 100:120] = other
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    with pytest.raises(AutomedsamError, match="a.png holds"):
        convert_folder(tmp_path / "images", masks=tmp_path / "masks", dataset_id=9, name="Dark", label_names=["x"])
    assert _leftovers(roots["raw"]) == []


def test_importing_more_images_keeps_the_boxes_drawn_on_the_page(tmp_path: Path, roots: dict[str, Path]):
    scans = tmp_path / "scans"
    scans.mkdir()
    for case in ("a", "b", "c"):
        Image.fromarray(np.full((40, 50), 90, np.uint8)).save(scans / f"{case}.png")
    target = convert_folder(scans, dataset_id=12, name="Loop", label_names=["lesion"])
    (target / "boxesTr").mkdir()  # what the annotation page saves
    (target / "boxesTr" / "a.json").write_text(json.dumps([{"label": 1, "box": [3, 4, 20, 30]}]))
    (target / "boxesTr" / "b.json").write_text("[]")  # marked as not showing the structure
    (target / "boxesTr" / "c.json").write_text(json.dumps([{"label": 1, "box": [1, 1, 5, 5]}]))
    (scans / "c.png").unlink()
    Image.fromarray(np.full((40, 50), 70, np.uint8)).save(scans / "d.png")
    target = convert_folder(scans, dataset_id=12, name="Loop", label_names=["lesion"], overwrite=True)
    assert sorted(path.name for path in (target / "imagesTr").iterdir()) == ["a_0000.png", "b_0000.png", "d_0000.png"]
    assert sorted(path.name for path in (target / "boxesTr").iterdir()) == ["a.json", "b.json"]
    assert json.loads((target / "boxesTr" / "a.json").read_text()) == [{"label": 1, "box": [3, 4, 20, 30]}]
    assert json.loads((target / "boxesTr" / "b.json").read_text()) == []
    Image.fromarray(np.full((20, 20), 90, np.uint8)).save(scans / "a.png")  # the box no longer fits
    with pytest.raises(AutomedsamError, match=r"a.json \(drawn before this import"):
        convert_folder(scans, dataset_id=12, name="Loop", label_names=["lesion"], overwrite=True)
    assert json.loads((target / "boxesTr" / "a.json").read_text()) == [{"label": 1, "box": [3, 4, 20, 30]}]


def test_folder_with_several_labels_refuses_masks_that_are_not_their_label_maps(busi_like: Path,
                                                                               roots: dict[str, Path]):
    with pytest.raises(AutomedsamError, match=r"value\(s\) 255, but the --label names declare 0 = background, "
                                              r"1 = benign, 2 = malignant"):
        convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions",
                       label_names=["benign", "malignant"])
    assert _leftovers(roots["raw"]) == []


def test_folder_with_several_labels_reads_a_palette_label_map_by_its_indices(tmp_path: Path, roots: dict[str, Path]):
    """A label map saved with a colour table (index 1 drawn red, 2 green) was refused as a colour image."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24), dtype=np.uint8)).save(
        tmp_path / "images" / "scan.png")
    label_map = np.zeros((20, 24), np.uint8)
    label_map[2:8, 3:9], label_map[10:16, 12:20] = 1, 2
    palette_mask = Image.fromarray(label_map, mode="P")
    palette_mask.putpalette([0, 0, 0, 200, 0, 0, 0, 180, 0] + [0] * (253 * 3))
    palette_mask.save(tmp_path / "masks" / "scan.png")
    target = convert_folder(tmp_path / "images", masks=tmp_path / "masks", dataset_id=6, name="Palette",
                            label_names=["benign", "malignant"])
    assert np.array_equal(read_segmentation(target / "labelsTr" / "scan.png")[0], label_map)


def test_folder_warns_of_a_label_that_no_mask_holds(busi_like: Path, roots: dict[str, Path]):
    """Masks of one structure each, saved 0/1, all read as label 1: label 2 was declared and never occurred."""
    for path in (busi_like / "masks").iterdir():
        pixels = read_image(path)[0]
        Image.fromarray((pixels.max(axis=-1) if pixels.ndim == 3 else pixels) // 255).save(path)
    said: list[str] = []
    convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions",
                   label_names=["benign", "malignant"], report=said.append)
    assert said == [said[0]] and said[0].startswith("No mask holds --label malignant (value 2), so")
    said.clear()
    convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions",
                   label_names=["benign"], report=said.append, overwrite=True)
    assert said == []


def test_folder_with_one_label_warns_that_no_mask_holds_an_object(busi_like: Path, roots: dict[str, Path]):
    """With one --label and empty masks the warning told to save label maps or leave out the only --label."""
    for path in (busi_like / "masks").iterdir():
        Image.fromarray(np.zeros(read_image(path)[0].shape[:2], np.uint8)).save(path)
    said: list[str] = []
    convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions",
                   label_names=["lesion"], report=said.append)
    assert said == [f"No mask in {busi_like / 'masks'} holds an object: every mask is all background, so the dataset "
                    "has nothing to learn from. Check that --masks names the folder of the masks and that they mark "
                    "the structure with values other than 0."]


def test_folder_refuses_the_nnunet_ignore_label_as_a_structure(busi_like: Path, roots: dict[str, Path]):
    with pytest.raises(AutomedsamError, match=r"--label 'ignore' cannot name a structure"):
        convert_folder(busi_like / "images", masks=busi_like / "masks", dataset_id=3, name="Lesions",
                       label_names=["lesion", "ignore"])


def test_folder_keeps_the_pixel_spacing_of_dicom_images_written_as_png(tmp_path: Path, roots: dict[str, Path]):
    """A colour image beside them made the dataset .png, and the DICOMs' 0.3 mm pixels became 1 without a word."""
    (tmp_path / "images").mkdir()
    for index in range(2):
        still = sitk.GetImageFromArray(np.random.default_rng(index).integers(0, 200, (32, 40), dtype=np.uint8))
        still.SetSpacing((0.3, 0.4))
        sitk.WriteImage(still, str(tmp_path / "images" / f"us{index}.dcm"))
    doppler = np.zeros((32, 40, 3), np.uint8)
    doppler[..., 0], doppler[5:10, 5:10] = 50, (200, 30, 30)
    Image.fromarray(doppler).save(tmp_path / "images" / "doppler.png")
    target = convert_folder(tmp_path / "images", dataset_id=14, name="Mixed", label_names=["x"])
    meta = json.loads((target / "dataset.json").read_text())
    assert meta["file_ending"] == ".png"
    assert meta["spacing"] == {"us0": pytest.approx([0.3, 0.4]), "us1": pytest.approx([0.3, 0.4])}
    assert load_raw_dataset(14).file_ending == ".png"


def test_folder_refuses_image_names_holding_the_sample_separator(tmp_path: Path, roots: dict[str, Path]):
    """sub01__ses1.png was imported, and every later stage read it as slice or view 'ses1' of a case 'sub01'."""
    _save_png(tmp_path / "images" / "sub01__ses1.png", np.full((10, 10), 50, np.uint8))
    _save_png(tmp_path / "images" / "sub02.png", np.full((10, 10), 50, np.uint8))
    with pytest.raises(AutomedsamError, match=r"contains '__': sub01__ses1\.png.*Rename them"):
        convert_folder(tmp_path / "images", dataset_id=6, name="Sessions", label_names=["lesion"])
    assert _leftovers(roots["raw"]) == []


def test_folder_imports_nnunet_images_and_labels_as_nnunet_names_them(tmp_path: Path, roots: dict[str, Path]):
    """imagesTr/CASE_0000 against labelsTr/CASE: every file was listed as unpaired. An image CASE_0000 without a
    mask of its own name takes CASE's, and is case CASE, unless CASE is an image too."""
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder).mkdir()
    for case in ("a", "b"):
        _save_png(tmp_path / "imagesTr" / f"{case}_0000.png", np.full((10, 10), 50, np.uint8))
        _save_png(tmp_path / "labelsTr" / f"{case}.png", np.eye(10, dtype=np.uint8))
    target = convert_folder(tmp_path / "imagesTr", masks=tmp_path / "labelsTr", dataset_id=6, name="Nn")
    assert sorted(path.name for path in (target / "imagesTr").iterdir()) == ["a_0000.png", "b_0000.png"]
    assert sorted(path.name for path in (target / "labelsTr").iterdir()) == ["a.png", "b.png"]
    _save_png(tmp_path / "imagesTr" / "b.png", np.full((10, 10), 50, np.uint8))  # b's mask is b.png's, not b_0000's
    with pytest.raises(AutomedsamError, match=r"do not pair up.*CASE for an image CASE_0000.*\n  image without a "
                                              r"mask: b_0000\.png$") as error:
        convert_folder(tmp_path / "imagesTr", masks=tmp_path / "labelsTr", dataset_id=7, name="Nn")
    assert "nnU-Net" not in str(error.value)


def test_other_channels_of_a_paired_case_are_named_as_such_not_as_images_without_a_mask(tmp_path: Path,
                                                                                        roots: dict[str, Path]):
    """a_0001.png beside a_0000.png (mask a.png) was "an image without a mask", inviting a mask a_0001.png that
    would import a's second channel as an unrelated case."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for channel in ("0000", "0001"):
        _save_png(tmp_path / "images" / f"a_{channel}.png", np.full((10, 10), 50, np.uint8))
    _save_png(tmp_path / "images" / "c_0001.png", np.full((10, 10), 50, np.uint8))  # no paired c_0000
    _save_png(tmp_path / "masks" / "a.png", np.eye(10, dtype=np.uint8))
    with pytest.raises(AutomedsamError, match=r"do not pair up.*\n  another channel of a_0000\.png: a_0001\.png "
                                              r"\(automedsam reads a case's first channel only; take the other "
                                              r"channels out of the images folder\)\n  image without a mask: "
                                              r"c_0001\.png$"):
        convert_folder(tmp_path / "images", masks=tmp_path / "masks", dataset_id=6, name="Channels")



def test_cases_numbered_like_channels_are_images_without_a_mask_not_other_channels(tmp_path: Path,
                                                                                    roots: dict[str, Path]):
    """patient_0000 paired under its own name: patient_0001 is another case whose mask is missing, not a channel."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for number in ("0000", "0001", "0002"):
        _save_png(tmp_path / "images" / f"patient_{number}.png", np.full((10, 10), 50, np.uint8))
    for number in ("0000", "0002"):
        _save_png(tmp_path / "masks" / f"patient_{number}.png", np.eye(10, dtype=np.uint8))
    with pytest.raises(AutomedsamError, match=r"do not pair up.*\n  image without a mask: patient_0001\.png$"):
        convert_folder(tmp_path / "images", masks=tmp_path / "masks", dataset_id=7, name="Numbered")


def test_folder_refuses_other_channels_whatever_the_annotation(tmp_path: Path, roots: dict[str, Path]):
    """Without masks (automedsam_annotate --images too) or with boxes, a_0001 beside a_0000 in cases laid out alike
    was imported as a case of its own, to annotate and to put in another fold than a_0000; only a mask named after
    the case (a.png) had them refused."""
    for case in ("a", "b"):
        for channel in ("0000", "0001"):
            _save_png(tmp_path / "images" / f"{case}_{channel}.png", np.full((10, 10), 50, np.uint8))
            _save_png(tmp_path / "masks" / f"{case}_{channel}.png", np.eye(10, dtype=np.uint8))
    (tmp_path / "boxes.json").write_text(json.dumps({f"{case}_{channel}": [] for case in ("a", "b")
                                                     for channel in ("0000", "0001")}))
    for annotation in ({}, {"boxes": tmp_path / "boxes.json"}, {"masks": tmp_path / "masks"}):
        with pytest.raises(AutomedsamError, match=r"holds the other channels of its cases.*\n  another channel of "
                                                  r"a_0000\.png: a_0001\.png \(automedsam reads a case's first "
                                                  r"channel only.*\n  another channel of b_0000\.png: b_0001\.png"):
            convert_folder(tmp_path / "images", dataset_id=6, name="Channels", **annotation)
        assert _leftovers(roots["raw"]) == []


def test_folder_imports_numbered_frames_without_masks(tmp_path: Path, roots: dict[str, Path]):
    """Numbered frames are no channels: one clip's frames, or clips of different lengths, stay images."""
    for name in ("clip_0000", "clip_0001", "clip_0002", "still"):
        _save_png(tmp_path / "one" / f"{name}.png", np.full((10, 10), 50, np.uint8))
    for name in ("a_0000", "a_0001", "b_0000", "b_0001", "b_0002"):
        _save_png(tmp_path / "two" / f"{name}.png", np.full((10, 10), 50, np.uint8))
    target = convert_folder(tmp_path / "one", dataset_id=6, name="Clip")
    assert sorted(path.name for path in (target / "imagesTr").iterdir()) == [
        "clip_0000_0000.png", "clip_0001_0000.png", "clip_0002_0000.png", "still_0000.png"]
    target = convert_folder(tmp_path / "two", dataset_id=7, name="Clips")
    assert len(list((target / "imagesTr").iterdir())) == 5


def test_folder_boxes_carry_the_declared_labels(busi_like: Path, tmp_path: Path, roots: dict[str, Path]):
    boxes = {"benign (3)": [{"label": 2, "box": [10, 5, 29, 14]}, {"label": 1, "box": [1, 1, 4, 4]}],
             "benign (4)": [], "case one": []}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    target = convert_folder(busi_like / "images", boxes=tmp_path / "boxes.json", dataset_id=4, name="Weak",
                            label_names=["lesion", "nipple"])
    assert json.loads((target / "boxesTr" / "benign (3).json").read_text()) == boxes["benign (3)"]
    boxes["benign (4)"] = [{"label": 3, "box": [2, 2, 5, 5]}]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    with pytest.raises(AutomedsamError, match=r"label 3; this import declares labels 1 to 2"):
        convert_folder(busi_like / "images", boxes=tmp_path / "boxes.json", dataset_id=5, name="Weak",
                       label_names=["lesion", "nipple"])


def test_folder_boxes_refuse_a_core_boxed_without_its_declared_ring(busi_like: Path, tmp_path: Path,
                                                                    roots: dict[str, Path]):
    """Planning refuses such a box file (the ring would be trained absent around its cavity): the import that wrote
    it said nothing, and the user learnt of it only after converting."""
    boxes = {"benign (3)": [{"label": 2, "box": [10, 5, 29, 14]}], "benign (4)": [], "case one": []}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    with pytest.raises(AutomedsamError, match=r"case 'benign \(3\)': LV is boxed but MYO is not; dataset\.json "
                                              r"declares MYO a ring around LV"):
        convert_folder(busi_like / "images", boxes=tmp_path / "boxes.json", dataset_id=4, name="Weak",
                       label_names=["MYO", "LV"], rings={"MYO": ["LV"]})
    assert _leftovers(roots["raw"]) == []
    boxes["benign (3)"].append({"label": 1, "box": [8, 3, 31, 16]})
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    target = convert_folder(busi_like / "images", boxes=tmp_path / "boxes.json", dataset_id=4, name="Weak",
                            label_names=["MYO", "LV"], rings={"MYO": ["LV"]})
    assert json.loads((target / "boxesTr" / "benign (3).json").read_text()) == boxes["benign (3)"]


def test_folder_stores_jpeg_images_losslessly_as_png(tmp_path: Path, roots: dict[str, Path]):
    image = np.random.default_rng(0).integers(0, 255, (30, 30, 3), dtype=np.uint8)
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "photo.jpg", quality=90)
    _save_png(tmp_path / "masks" / "photo_seg.png", np.eye(30, dtype=np.uint8))
    target = convert_folder(tmp_path / "images", masks=tmp_path / "masks", dataset_id=5, name="Photos")
    assert json.loads((target / "dataset.json").read_text())["file_ending"] == ".png"
    decoded = np.asarray(Image.open(tmp_path / "images" / "photo.jpg"))
    assert np.array_equal(read_image(target / "imagesTr" / "photo_0000.png")[0], decoded)


# ---------------------------------------------------------------- synthetic demo data and the CLI


def test_synthetic_dataset_is_deterministic_and_loads(roots: dict[str, Path]):
    first = make_synthetic_dataset(900, n_train=3, n_test=2, seed=7)
    images = {p.name: read_image(p)[0] for p in sorted((first / "imagesTr").iterdir())}
    again = make_synthetic_dataset(900, n_train=4, n_test=2, seed=7, overwrite=True)
    assert all(np.array_equal(read_image(again / "imagesTr" / name)[0], pixels) for name, pixels in images.items())
    other = make_synthetic_dataset(901, n_train=3, n_test=2, seed=8)
    assert not np.array_equal(read_image(other / "imagesTr" / "us_000_0000.png")[0], images["us_000_0000.png"])
    dataset = load_raw_dataset(900)
    assert len(dataset.cases) == 4 and all(case.label is not None for case in dataset.cases)
    assert len(list((again / "imagesTs").iterdir())) == len(list((again / "labelsTs").iterdir())) == 2


def test_synthetic_structure_is_a_filled_ellipse_with_a_bright_rim(roots: dict[str, Path]):
    target = make_synthetic_dataset(900, n_train=4, n_test=1, seed=0)
    for case in load_raw_dataset(900).cases:
        image = read_image(case.image)[0].astype(float)
        mask = read_segmentation(case.label)[0].astype(bool)
        assert image.shape == mask.shape == (192, 256)
        assert 0.03 < mask.mean() < 0.5 and np.array_equal(ndimage.binary_fill_holes(mask), mask)
        assert ndimage.label(mask)[1] == 1
        rim = mask & ~ndimage.binary_erosion(mask, iterations=5)
        interior = ndimage.binary_erosion(mask, iterations=10)
        assert image[rim].mean() > image[interior].mean() + 30, case.case_id
    assert (target / "labelsTs" / "us_test_000.png").is_file()


def test_cli_converts_and_reports_errors_without_traceback(roots: dict[str, Path], monkeypatch, capsys):
    result = CliRunner().invoke(convert_cli.app, ["synthetic", "-d", "900", "--n-train", "2", "--n-test", "1"])
    assert result.exit_code == 0, result.output
    assert "Wrote 2 training cases" in result.output and "Dataset900_SyntheticUS" in result.output
    monkeypatch.setattr(sys, "argv", ["automedsam_convert", "synthetic", "-d", "900"])
    with pytest.raises(SystemExit) as exit_info:
        convert_cli.main()
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "--overwrite" in captured.err and "Traceback" not in captured.err


def test_cli_refuses_a_name_making_a_folder_name_longer_than_100_characters(roots: dict[str, Path], monkeypatch,
                                                                            capsys):
    """A dataset of a 101-character folder name was converted, planned and trained: only its export failed."""
    monkeypatch.setattr(sys, "argv", ["automedsam_convert", "synthetic", "-d", "900", "-n", "A" * 90])
    with pytest.raises(SystemExit) as exit_info:
        convert_cli.main()
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert "101 characters long, more than the 100" in err and "Give a shorter name" in err, err
    assert list(roots["raw"].iterdir()) == []
    result = CliRunner().invoke(convert_cli.app, ["synthetic", "-d", "900", "-n", "A" * 89, "--n-train", "2",
                                                  "--n-test", "1"])
    assert result.exit_code == 0, result.output
    assert [path.name for path in roots["raw"].iterdir()] == ["Dataset900_" + "A" * 89]


def _convert_args(converter: str, request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """automedsam_convert's arguments importing a few cases with `converter`."""
    if converter == "folder":
        busi = request.getfixturevalue("busi_like")
        return ["folder", "--images", str(busi / "images"), "--masks", str(busi / "masks"), "-d", "4", "-n", "Full"]
    if converter == "hc18":
        return ["hc18", str(request.getfixturevalue("hc18_release")), "-d", "1"]
    release = tmp_path / "ACDC"
    shutil.copytree(request.getfixturevalue("shared_data") / "ACDC" / "training" / "patient001",
                    release / "training" / "patient001")
    return ["acdc", str(release), "-d", "2"]


@pytest.mark.parametrize("converter", ["folder", "hc18", "acdc"])
def test_a_disk_that_fills_up_while_an_image_is_copied_is_reported_and_nothing_is_left(converter, request, tmp_path,
                                                                                        roots, monkeypatch, capsys):
    """The converters copied the images they keep as they are with shutil.copyfile, outside the writers that report
    a full disk: the command ended with a traceback."""
    args = _convert_args(converter, request, tmp_path)

    def disk_full(source, target, *more, **options):
        Path(target).write_bytes(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    monkeypatch.setattr(sys, "argv", ["automedsam_convert", *args])
    with pytest.raises(SystemExit) as exit_info:
        convert_cli.main()
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "the file could not be written completely" in err and "_0000." in err
    assert _leftovers(roots["raw"]) == []


@pytest.mark.parametrize("error_number", [errno.ENOSPC, errno.EDQUOT, errno.EROFS], ids=["full", "quota", "read-only"])
@pytest.mark.parametrize("converter", ["hc18", "acdc"])
def test_a_disk_that_refuses_every_write_stops_the_conversion_at_the_first_case(converter, error_number, request,
                                                                                tmp_path, roots, monkeypatch, capsys):
    """hc18 and acdc collect each case's error to report them together: a full, over-quota or read-only disk was
    reported once per case (some 800 lines for HC18), as if every case were bad."""
    args = _convert_args(converter, request, tmp_path)
    written: list[Path] = []

    def refused(source, target, *more, **options):
        written.append(Path(target))
        raise OSError(error_number, os.strerror(error_number))

    monkeypatch.setattr(shutil, "copyfile", refused)
    monkeypatch.setattr(sys, "argv", ["automedsam_convert", *args])
    with pytest.raises(SystemExit) as exit_info:
        convert_cli.main()
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert len(written) == 1, "the conversion went on after the disk refused a write"
    assert err.count("Cannot write") == 1 and "conversion failed" not in err, err
    assert _leftovers(roots["raw"]) == []


def test_hc18_still_lists_every_bad_case_together(hc18_release: Path, roots: dict[str, Path]):
    """The boundary of the rule above: a case's own error does not stop the conversion."""
    bad = ("000_HC", "787_HC")
    outline, _ = _ellipse_outline((60, 80), (30, 40), (20, 12), 0.0)
    for case in bad:
        _save_png(hc18_release / "training_set" / f"{case}_Annotation.png", outline.astype(np.uint8) * 255)
    with pytest.raises(AutomedsamError, match="HC18 conversion failed") as failed:
        convert_hc18(hc18_release, 1)
    assert all(f"{case}: image" in str(failed.value) for case in bad), str(failed.value)
    assert str(failed.value).count("differ in size") == len(bad), str(failed.value)
    assert _leftovers(roots["raw"]) == []


@pytest.mark.parametrize("entry, refused", [({"Label": 2, "box": [0, 0, 5, 5]}, "unknown keys \\['Label'\\]"),
                                            ({"label": 1, "box": [0, 0, 5, 5], "slice": 0}, "image is 2D")])
def test_folder_refuses_box_entries_it_would_have_read_otherwise(entry, refused, busi_like: Path, tmp_path: Path,
                                                                 roots: dict[str, Path]):
    """A misspelt "Label" became label 1 (RV for LV) and a 2D image's "slice" was dropped, without a word."""
    boxes = {"benign (3)": [entry], "benign (4)": [], "case one": []}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    with pytest.raises(AutomedsamError, match=refused):
        convert_folder(busi_like / "images", boxes=tmp_path / "boxes.json", dataset_id=4, name="Weak",
                       label_names=["RV", "LV"])
    assert _leftovers(roots["raw"]) == []


def test_folder_refuses_names_no_command_could_read_back_before_writing(tmp_path: Path, roots: dict[str, Path]):
    folder = tmp_path / "unzipped"
    for name in ("train\\case1.png", "B:2.png", "fine.png"):
        _save_png(folder / name, np.full((20, 20), 7, np.uint8))
    with pytest.raises(AutomedsamError, match=r"B:2\.png \(is an absolute path\).*train\\case1\.png \(would point"):
        convert_folder(folder, dataset_id=4, name="Unzipped")
    assert not roots["raw"].exists() or _leftovers(roots["raw"]) == []


def test_a_converted_dataset_is_as_readable_as_a_folder_made_by_mkdir(busi_like: Path, roots: dict[str, Path]):
    previous = os.umask(0o022)
    try:
        target = convert_folder(busi_like / "images", dataset_id=4, name="Shared")
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == 0o755, "others on a shared raw root could not read a 0700 folder"


def test_an_id_taken_in_the_preprocessed_root_is_refused_before_it_makes_every_d_ambiguous(busi_like: Path,
                                                                                           roots: dict[str, Path]):
    (roots["preprocessed"] / "Dataset004_Old").mkdir(parents=True)
    with pytest.raises(AutomedsamError, match="already used by Dataset004_Old in"):
        convert_folder(busi_like / "images", dataset_id=4, name="New")
    convert_folder(busi_like / "images", dataset_id=4, name="Old")  # the same dataset converted again is fine


def test_hc18_leaves_out_the_hidden_files_macos_writes_beside_each_image(hc18_release: Path, roots: dict[str, Path]):
    for case in HC18_CASES[:1]:
        for suffix in ("", "_Annotation"):
            (hc18_release / "training_set" / f"._{case}{suffix}.png").write_bytes(os.urandom(4096))
    target = convert_hc18(hc18_release, dataset_id=5)
    assert len(load_raw_dataset(target, check_images=False).cases) == len(HC18_CASES)


def test_a_kill_stops_a_command_as_ctrl_c_does_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with stopped_like_ctrl_c():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_killed_conversion_leaves_no_hidden_half_dataset(shared_data: Path, tmp_path: Path):
    """A kill (a scheduler's time limit, docker stop) left a .DatasetXXX.partial copy of the release per try."""
    raw = tmp_path / "raw"
    environment = {**os.environ, "AUTOMEDSAM_RAW": str(raw), "AUTOMEDSAM_PREPROCESSED": str(tmp_path / "pre"),
                   "AUTOMEDSAM_RESULTS": str(tmp_path / "results")}
    command = [str(Path(sys.executable).parent / "automedsam_convert"), "hc18", str(shared_data / "HC18"), "-d", "5"]
    child = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not any(raw.glob(".*.partial/imagesTr/*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) != 0
    assert not raw.exists() or _leftovers(raw) == [], child.stderr.read().decode()[-500:]


def test_an_interrupted_conversion_says_that_nothing_was_kept(roots, monkeypatch, capsys):
    """The note after Ctrl-C or a kill fits the command: a conversion keeps no part of the dataset, and --c is
    training's."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_cli, "make_synthetic_dataset", interrupted)
    monkeypatch.setattr(sys, "argv", ["automedsam_convert", "synthetic", "-d", "9"])
    with pytest.raises(SystemExit) as stopped:
        convert_cli.main()
    note = " ".join(capsys.readouterr().err.split())
    assert stopped.value.code == INTERRUPTED
    assert "Interrupted. Nothing was written" in note and "--c" not in note and "kept" not in note, note


def test_a_folder_that_is_no_ddti_release_is_refused_in_the_benchmarks_words(tmp_path, roots):
    release = tmp_path / "release"
    for made, missing in ((None, "no images/ and no masks/"), ("images", "no masks/"), ("masks", "no images in")):
        if made:
            (release / made).mkdir(parents=True)
        with pytest.raises(AutomedsamError) as error:
            convert_ddti(release, 503, name="THYROID")
        message = str(error.value)
        assert missing in message and "Point SRC at the folder holding images/ and masks/" in message, message
        assert "--images" not in message and "--masks" not in message


@pytest.mark.parametrize("change, expected", [({"seeds": [2**32]}, "--seeds must be distinct whole numbers from 0"),
                                              ({"device": "cuda:3"}, "CUDA is not available")])
def test_the_benchmark_checks_its_options_before_converting_the_release(tmp_path, monkeypatch, change, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings = BenchmarkSettings("thyroid", tmp_path / "no_release", tmp_path / "work", **change)
    with pytest.raises(AutomedsamError, match=expected):
        run_benchmark(settings)
    assert not (tmp_path / "work").exists()
