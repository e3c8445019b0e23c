"""Bad raw datasets and planning options for `automedsam_plan_and_preprocess` (registered on import).

`expect` lists fragments the message must hold: the file, case or option at fault, and the fix.
"""
from __future__ import annotations

import gzip
import json
import os

import numpy as np
import SimpleITK as sitk

from automedsam.io import write_image
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from bad_input_world import (PLAN, bad, boxes_dataset, discs, edit_dataset_json, label_png, png_dataset,
                             replace_image, replace_label, sitk_geometry, write_malicious_checkpoint)


# ------------------------------------------------------------------------------- automedsam_plan_and_preprocess


@bad("plan", "dataset.json", "Create one")
def dataset_json_missing(w):
    (discs(w) / "dataset.json").unlink()
    return PLAN


@bad("plan", "dataset.json", "is empty", "Write the dataset description")
def dataset_json_empty(w):
    (discs(w) / "dataset.json").write_text("")
    return PLAN


@bad("plan", "dataset.json", "not valid JSON", "Fix or regenerate")
def dataset_json_invalid(w):
    (discs(w) / "dataset.json").write_text('{"labels": {"background": 0,')
    return PLAN


@bad("plan", "dataset.json", "labels", "Add them")
def dataset_json_without_labels(w):
    root = discs(w)
    meta = json.loads((root / "dataset.json").read_text())
    del meta["labels"]
    (root / "dataset.json").write_text(json.dumps(meta))
    return PLAN


@bad("plan", "dataset.json", "background as 0")
def dataset_json_without_background(w):
    edit_dataset_json(discs(w), labels={"disc": 1})
    return PLAN


@bad("plan", "file_ending is '.png'", "Set file_ending to the images' extension")
def wrong_file_ending(w):
    edit_dataset_json(discs(w), file_ending=".png")
    return PLAN


@bad("plan", "file_ending '.dcm' is not supported", "import DICOM files or series folders with automedsam_convert")
def unsupported_file_ending(w):
    edit_dataset_json(discs(w), file_ending=".dcm")
    return PLAN


@bad("plan", "case01", "has no label", "add one of them")
def image_without_label(w):
    (discs(w) / "labelsTr" / "case01.nii.gz").unlink()
    return PLAN


@bad("plan", "case01", "has no image", "add the image or remove it")
def label_without_image(w):
    (discs(w) / "imagesTr" / "case01_0000.nii.gz").unlink()
    return PLAN


@bad("plan", "case01_0000.nii.gz", "could not be read", "Export or copy it again")
def unreadable_image(w):
    (discs(w) / "imagesTr" / "case01_0000.nii.gz").write_bytes(os.urandom(3000))
    return PLAN


@bad("plan", "case01_0000.nii.gz", "could not be read", "Export or copy it again")
def truncated_image(w):
    path = discs(w) / "imagesTr" / "case01_0000.nii.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: len(data) // 2]))
    return PLAN


@bad("plan", "case02.nii.gz", "could not be read", "Export or copy it again")
def truncated_gzip_label(w):
    path = discs(w) / "labelsTr" / "case02.nii.gz"
    path.write_bytes(path.read_bytes()[:-30])
    return PLAN


@bad("plan", "case01_0000.nii.gz", "0 bytes", "Copy or export it again")
def zero_byte_image(w):
    (discs(w) / "imagesTr" / "case01_0000.nii.gz").write_bytes(b"")
    return PLAN


@bad("plan", "case01", "differs from label shape", "same pixel grid")
def shape_mismatch(w):
    replace_label(discs(w), "case01", np.zeros((40, 40), np.uint8))
    return PLAN


@bad("plan", "case01", "spacing", "save the label with the image's spacing")
def spacing_mismatch(w):
    root = discs(w)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / "case01.nii.gz")))
    replace_label(root, "case01", label, sitk_geometry(spacing=(0.7, 0.7)))
    return PLAN


@bad("plan", "case01", "direction", "save the label with the image's spacing, origin and direction")
def orientation_mismatch(w):
    root = discs(w)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / "case01.nii.gz")))
    replace_label(root, "case01", label, sitk_geometry(direction=(-1.0, 0.0, 0.0, 1.0)))
    return PLAN


@bad("plan", "case01.nii.gz", "value(s) [5]", "add the values to dataset.json")
def label_value_not_in_dataset_json(w):
    label = np.zeros((40, 48), np.uint8)
    label[5:10, 5:10] = 5
    replace_label(discs(w), "case01", label)
    return PLAN


@bad("plan", "case01.nii.gz", "[255]", "save it as 0/1")
def label_saved_as_0_255(w):
    label = np.zeros((40, 48), np.uint8)
    label[5:10, 5:10] = 255
    replace_label(discs(w), "case01", label)
    return PLAN


@bad("plan", "case01.nii.gz", "whole numbers", "integer labels")
def fractional_label(w):
    label = np.zeros((40, 48), np.float32)
    label[5:10, 5:10] = 0.5
    write_image(discs(w) / "labelsTr" / "case01.nii.gz", label, sitk_geometry())
    return PLAN


@bad("plan", "case01_0000.nii.gz", "NaN or infinite", "Replace them")
def nan_intensities(w):
    image = np.full((40, 48), 50, np.float32)
    image[3, 4] = np.nan
    replace_image(discs(w), "case01", image)
    return PLAN


@bad("plan", "case02_0000.nii.gz", "NaN or infinite", "Replace them")
def infinite_intensities(w):
    image = np.full((40, 48), 50, np.float32)
    image[0, :5] = np.inf
    replace_image(discs(w), "case02", image)
    return PLAN


@bad("plan", "Every pixel of every image of Dataset001_Discs has the intensity 7", "Check the images")
def every_image_constant(w):
    root = discs(w)
    for case in range(4):
        replace_image(root, f"case{case:02d}", np.full((40, 48), 7, np.float32))
    return PLAN


@bad("plan", "case01_0000.nii.gz", "4D", "one 3D file per frame")
def four_d_image(w):
    root = discs(w)
    frames = [sitk.GetImageFromArray(np.zeros((3, 40, 48), np.float32)) for _ in range(2)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(root / "imagesTr" / "case01_0000.nii.gz"))
    return PLAN


@bad("plan", "case00_0000.nii.gz", "more than the limit of 1000", "export AUTOMEDSAM_MAX_PIXELS=1920")
def image_over_pixel_limit(w):
    discs(w)
    w.monkeypatch.setenv("AUTOMEDSAM_MAX_PIXELS", "1000")
    return PLAN


@bad("plan", "AUTOMEDSAM_MAX_PIXELS='lots' is not a positive whole number", "unset it")
def pixel_limit_not_a_number(w):
    discs(w)
    w.monkeypatch.setenv("AUTOMEDSAM_MAX_PIXELS", "lots")
    return PLAN


@bad("plan", "case02", "2D while other cases are 3D", "one kind")
def mixed_2d_and_3d(w):
    root = discs(w)
    volume = sitk_geometry((0.5, 0.5, 1.0), tuple(np.eye(3).ravel()))
    for case in ("case00", "case01", "case03"):
        replace_image(root, case, np.zeros((3, 40, 48), np.float32), volume)
        replace_label(root, case, np.zeros((3, 40, 48), np.uint8), volume)
    return PLAN


@bad("plan", "img00.json", "outside the image", "Fix or clip the box")
def box_outside_image(w):
    return boxes_dataset(w, [30, 10, 60, 20])


@bad("plan", "img00.json", "inverted", "write it as [x0, y0, x1, y1] with x0 <= x1")
def inverted_box(w):
    return boxes_dataset(w, [30, 10, 20, 20])


@bad("plan", "img00.json", "zero area", "widen the box")
def zero_area_box(w):
    return boxes_dataset(w, [30, 10, 29, 20])


@bad("plan", "'..'", "rename the files to a plain case id")
def case_id_dot_dot(w):
    root = discs(w)
    (root / "imagesTr" / "case01_0000.nii.gz").rename(root / "imagesTr" / ".._0000.nii.gz")
    (root / "labelsTr" / "case01.nii.gz").rename(root / "labelsTr" / "...nii.gz")
    return PLAN


@bad("plan", "a\\..\\..\\evil", "path separator", "rename the files to a plain case id")
def case_id_with_backslash_path(w):
    root = discs(w)
    (root / "imagesTr" / "case01_0000.nii.gz").rename(root / "imagesTr" / "a\\..\\..\\evil_0000.nii.gz")
    (root / "labelsTr" / "case01.nii.gz").rename(root / "labelsTr" / "a\\..\\..\\evil.nii.gz")
    return PLAN


@bad("plan", "C:evil", "absolute path", "rename the files to a plain case id")
def case_id_absolute(w):
    root = discs(w)
    (root / "imagesTr" / "case01_0000.nii.gz").rename(root / "imagesTr" / "C:evil_0000.nii.gz")
    (root / "labelsTr" / "case01.nii.gz").rename(root / "labelsTr" / "C:evil.nii.gz")
    return PLAN


@bad("plan", "ambiguous", "Dataset001_Discs", "Dataset001_Other", "Pass the full folder name")
def dataset_id_matches_two_folders(w):
    discs(w)
    (w.raw / "Dataset001_Other").mkdir()
    return PLAN


@bad("plan", "myds2 is not named DatasetXXX_Name", "Rename it DatasetXXX_Name")
def dataset_path_not_named_as_a_dataset(w):
    discs(w).rename(w.inbox / "myds2")
    return ["-d", str(w.inbox / "myds2"), "--shots", "2", "--folds", "2", "-np", "1"]


@bad("plan", "The dataset id 001 of", "is already used by Dataset001_Discs", "Rename the folder")
def dataset_path_with_an_id_already_used(w):
    discs(w).rename(w.inbox / "Dataset001_Foo")
    (w.raw / "Dataset001_Discs").mkdir()
    return ["-d", str(w.inbox / "Dataset001_Foo"), "--plan-only", "-np", "1"]


@bad("plan", "splits.json: it lacks the key(s) labelled", "without --preprocess-only to draw it again")
def preprocess_only_splits_without_labelled(w):
    discs(w)
    out_dir = plan_and_preprocess("1", shots="all", plan_only=True, num_workers=1, progress=False).out_dir
    splits = json.loads((out_dir / "splits.json").read_text())
    del splits["labelled"]
    (out_dir / "splits.json").write_text(json.dumps(splits))
    return ["-d", "1", "--preprocess-only", "-np", "1"]


@bad("plan", "No dataset '7'", "Convert or copy the dataset")
def dataset_id_unknown(w):
    discs(w)
    return ["-d", "7"]


@bad("plan", "Unknown foundation model 'medsam2'", "Choose one of")
def unknown_model_name(w):
    discs(w)
    return [*PLAN, "--foundation", "medsam2"]


@bad("plan", "--foundation medsam_vit_b needs its weights", "--foundation-checkpoint PATH")
def vit_model_without_checkpoint(w):
    discs(w)
    return [*PLAN, "--foundation", "medsam_vit_b"]


@bad("plan", "missing.pth does not exist", "Give the path")
def foundation_checkpoint_missing(w):
    discs(w)
    return [*PLAN, "--foundation", "medsam_vit_b", "--foundation-checkpoint", str(w.inbox / "missing.pth")]


@bad("plan", "evil.pt", "Python objects or code", "state_dict() alone")
def foundation_checkpoint_with_code(w):
    discs(w)
    evil = write_malicious_checkpoint(w.inbox / "evil.pt", w.marker)
    return ["-d", "1", "-np", "1", "--shots", "2", "--foundation-checkpoint", str(evil), "--device", "cpu"]


@bad("plan", "tpu", "Use 'auto', 'cpu', 'cuda'")
def unsupported_device(w):
    discs(w)
    return ["-d", "1", "-np", "1", "--shots", "2", "--device", "tpu"]


@bad("plan", "-np", ">= 1")
def zero_workers(w):
    discs(w)
    return ["-d", "1", "--plan-only", "-np", "0"]


@bad("plan", "--shots", "all")
def shots_not_a_number(w):
    discs(w)
    return [*PLAN, "--shots", "many"]


@bad("plan", "bad_0000.png", "transparency", "Save it without transparency")
def rgba_png_with_varying_alpha(w):
    rgba = np.zeros((40, 48, 4), np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 48, dtype=np.uint8)
    return png_dataset(w, rgba, label_png())


@bad("plan", "bad.png", "colour image, not a label map", "label ids")
def colour_label_map(w):
    colour = np.zeros((40, 48, 3), np.uint8)
    colour[5:20, 5:20] = (255, 0, 0)
    colour[25:30, 5:20] = (0, 255, 0)
    return png_dataset(w, np.zeros((40, 48), np.uint8) + 7, colour)
