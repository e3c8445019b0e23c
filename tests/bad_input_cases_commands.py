"""Bad input for train, predict, evaluate, plot_overlays, convert, export_model and install_model (registered on
import).

`expect` lists fragments the message must hold: the file, case or option at fault, and the fix.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from bad_input_world import (bad, box_prompt_args, discs, exportable_toy_model, fake_preprocessed, model_archive,
                             predict_args, root_dir, segmentation_folders, toy_model, write_malicious_checkpoint)
from toy_model import toy_plans


# ------------------------------------------------------------------------------------------------ automedsam_train


@bad("train", "No dataset '7'", "Convert or copy the dataset")
def train_unknown_dataset(w):
    return ["7", "0"]


@bad("train", "Dataset001_Discs is not preprocessed", "automedsam_plan_and_preprocess -d Dataset001_Discs")
def train_before_preprocessing(w):
    discs(w)
    return ["1", "0"]


@bad("train", "Fold 9 does not exist", "splits.json has 5 folds (0..4)", "or all")
def train_unknown_fold(w):
    fake_preprocessed(w)
    return ["1", "fold9"]


def edited_splits(w, **changes) -> list[str]:
    """Dataset001_Toy preprocessed, its splits.json edited by hand (None removes a key), trained as fold 0."""
    fake_preprocessed(w)
    path = w.preprocessed / "Dataset001_Toy" / "splits.json"
    splits = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps({key: value for key, value in splits.items() if value is not None}))
    return ["1", "0", "--device", "cpu"]


SPLITS_FIX = "or run automedsam_plan_and_preprocess -d Dataset001_Toy without --preprocess-only to draw it again"


@bad("train", "Dataset001_Toy/splits.json: it lacks the key(s) folds", SPLITS_FIX)
def train_splits_without_folds(w):
    return edited_splits(w, folds=None)


@bad("train", "splits.json: folds[0] must be an object", SPLITS_FIX)
def train_splits_folds_not_objects(w):
    return edited_splits(w, folds=[["a"], ["b"]])


@bad("train", "splits.json: it lacks the key(s) labelled", SPLITS_FIX)
def train_splits_without_labelled(w):
    return edited_splits(w, labelled=None)


@bad("train", "Nothing to resume", "without --c")
def train_resume_without_state(w):
    fake_preprocessed(w)
    return ["1", "0", "--c", "--device", "cpu"]


@bad("train", "evil.pt", "Python objects or code", "state_dict() alone")
def train_foundation_checkpoint_with_code(w):
    fake_preprocessed(w)
    evil = write_malicious_checkpoint(w.inbox / "evil.pt", w.marker)
    return ["1", "0", "--device", "cpu", "--foundation-checkpoint", str(evil)]


@bad("train", "cuda:99", "--device cpu")
def train_unusable_device(w):
    fake_preprocessed(w)
    return ["1", "0", "--device", "cuda:99"]


# ---------------------------------------------------------------------------------------------- automedsam_predict


@bad("predict", "No images found in", "Supported formats", subprocess=True)
def predict_input_without_images(w):
    model = toy_model(w)
    empty = root_dir(w.inbox / "empty")
    (empty / "notes.txt").write_text("not an image")
    return ["-i", str(empty), "-o", str(w.results.parent / "out"), "-m", str(model)]


@bad("predict", "scans[/2024]", "No images found in", "Supported formats")
def predict_input_path_that_looks_like_markup(w):
    model = toy_model(w)
    folder = root_dir(w.inbox / "scans[" / "2024]")
    return ["-i", str(folder), "-o", str(w.results.parent / "out"), "-m", str(model)]


@bad("predict", "inside the input folder", "Choose an output folder outside")
def predict_output_inside_input(w):
    model = toy_model(w)
    return ["-i", str(w.inbox / "images"), "-o", str(w.inbox / "images" / "predictions"), "-m", str(model)]


@bad("predict", "has no fold with checkpoint_final.pt", "automedsam_train 001 fold0")
def predict_results_without_checkpoints(w):
    return predict_args(w, toy_model(w, folds=()))


@bad("predict", "not a trained model folder", "Point -m at a folder")
def predict_model_folder_without_plans(w):
    toy_model(w)
    return predict_args(w, w.inbox)


@bad("predict", "Fold 3", "checkpoint_final.pt", "automedsam_train 001 fold3")
def predict_fold_not_trained(w):
    return predict_args(w, toy_model(w), "-f", "3")


@bad("predict", "checkpoint_final.pt", "cannot be read", "retrain")
def predict_checkpoint_truncated(w):
    model = toy_model(w)
    path = model / "fold_0" / "checkpoint_final.pt"
    path.write_bytes(path.read_bytes()[:1000])
    return predict_args(w, model)


@bad("predict", "checkpoint_final.pt", "does not match plans.json", "retrain with the current plans")
def predict_checkpoint_of_other_architecture(w):
    return predict_args(w, toy_model(w, center_channels=32))


@bad("predict", "checkpoint_final.pt", "Python objects or code", "retrain")
def predict_checkpoint_with_code(w):
    model = toy_model(w)
    write_malicious_checkpoint(model / "fold_0" / "checkpoint_final.pt", w.marker)
    return predict_args(w, model)


@bad("predict", "Cannot write", "notes.txt is a file, not a folder", "Choose a location you can write to")
def predict_output_below_a_file(w):
    (w.inbox / "notes.txt").write_text("not a folder")
    return ["-i", str(w.inbox / "images"), "-o", str(w.inbox / "notes.txt" / "predictions"), "-m", str(toy_model(w)),
            "--device", "cpu"]


@bad("predict", "Unknown fold 'first'", "Use a fold number", "or all")
def predict_bad_fold_argument(w):
    return predict_args(w, toy_model(w), "-f", "first")


@bad("predict", "--checkpoint must be one of", "best, final")
def predict_unknown_checkpoint_kind(w):
    return predict_args(w, toy_model(w), "--checkpoint", "latest")


@bad("predict", "'tpu'", "Use 'auto', 'cpu'")
def predict_unsupported_device(w):
    return predict_args(w, toy_model(w), device="tpu")


@bad("predict", "Unknown foundation model 'sam3'", "Choose one of")
def predict_boxes_unknown_model_name(w):
    return [*box_prompt_args(w, {"img0": [{"label": 1, "box": [1, 1, 5, 5]}]}), "--foundation", "sam3"]


@bad("predict", "evil.pt", "Python objects or code", "state_dict() alone")
def predict_foundation_checkpoint_with_code(w):
    args = box_prompt_args(w, {"img0": [{"label": 1, "box": [1, 1, 5, 5]}]})
    evil = write_malicious_checkpoint(w.inbox / "evil.pt", w.marker)
    return [*args, "--foundation-checkpoint", str(evil)]


@bad("predict", "prompt.pt", "does not fit foundation model 'litemedsam'", "Pick the foundation model that matches")
def predict_foundation_checkpoint_of_other_architecture(w):
    args = box_prompt_args(w, {"img0": [{"label": 1, "box": [1, 1, 5, 5]}]})
    model = w.results / "Dataset001_Toy" / "default__toyPlans" / "fold_0" / "checkpoint_final.pt"
    prompt_module_weights = w.inbox / "prompt.pt"
    prompt_module_weights.write_bytes(model.read_bytes())
    return [*args, "--foundation-checkpoint", str(prompt_module_weights)]


@bad("predict", "../img0", "not among the input images", "Fix the case ids")
def predict_box_case_id_with_dot_dot(w):
    return box_prompt_args(w, {"../img0": [{"label": 1, "box": [1, 1, 5, 5]}]})


@bad("predict", "/etc/img0", "not among the input images", "Fix the case ids")
def predict_box_case_id_absolute(w):
    return box_prompt_args(w, {"/etc/img0": [{"label": 1, "box": [1, 1, 5, 5]}]})


@bad("predict", "case 'img1'", "outside the image", "Fix or clip the box")
def predict_box_outside_image(w):
    return box_prompt_args(w, {"img1": [{"label": 1, "box": [10, 10, 80, 20]}]})


@bad("predict", "case 'img0'", "label must be", "from 1 to 65535", "got 70000")
def predict_box_label_beyond_a_label_map(w):
    return box_prompt_args(w, {"img0": [{"label": 70000, "box": [1, 1, 5, 5]}]})


RAW_DATA = "is in the raw data (AUTOMEDSAM_RAW="


def discs_box_args(w, output) -> list[str]:
    """The reviewer's command: box-prompted predictions of Dataset001_Discs' images written to `output`."""
    root = discs(w)
    box_file = w.inbox / "boxes.json"
    box_file.write_text(json.dumps({"case00": [{"label": 1, "box": [10, 10, 30, 30]}]}))
    return ["-i", str(root / "imagesTr"), "-o", str(output), "--boxes", str(box_file), "--overwrite", "--device",
            "cpu"]


@bad("predict", "labelsTr", RAW_DATA, "Choose a folder outside")
def predict_over_a_raw_datasets_labels(w):
    return discs_box_args(w, w.raw / "Dataset001_Discs" / "labelsTr")


@bad("predict", "labelsTr", RAW_DATA, "Choose a folder outside")
def predict_through_a_link_into_a_raw_dataset(w):
    link = w.results.parent / "shortcut"
    link.symlink_to(w.raw / "Dataset001_Discs" / "labelsTr")
    return discs_box_args(w, link)


def with_outputs_present(args: list[str]) -> list[str]:
    """`args` of a prediction of inbox/images whose every output (img0.png, img1.png) is already there: nothing is
    left to predict, so no model is built."""
    output = root_dir(Path(args[args.index("-o") + 1]))
    for case in ("img0", "img1"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(output / f"{case}.png")
    return args


@bad("predict", "Unknown foundation model 'bogus'", "Choose one of")
def predict_boxes_unknown_model_name_with_outputs_present(w):
    args = box_prompt_args(w, {"img0": [{"label": 1, "box": [1, 1, 5, 5]}]})
    return [*with_outputs_present(args), "--foundation", "bogus"]


@bad("predict", "empty.pth", "empty (0 bytes)", "Download them again")
def predict_boxes_empty_weights_with_outputs_present(w):
    args = box_prompt_args(w, {"img0": [{"label": 1, "box": [1, 1, 5, 5]}]})
    (w.inbox / "empty.pth").write_bytes(b"")
    return [*with_outputs_present(args), "--foundation", "sam_vit_h", "--foundation-checkpoint",
            str(w.inbox / "empty.pth")]


@bad("predict", "missing.pth", "do not exist", "--foundation-checkpoint")
def predict_trained_missing_weights_with_outputs_present(w):
    args = predict_args(w, toy_model(w))
    return [*with_outputs_present(args), "--foundation-checkpoint", str(w.inbox / "missing.pth")]


# --------------------------------------------------------------------------- automedsam_evaluate / plot_overlays


@bad("evaluate", "reference folder", "missing_refs", "Check", subprocess=True)
def evaluate_reference_folder_missing(w):
    _, preds = segmentation_folders(w)
    return ["-r", str(w.inbox / "missing_refs"), "-s", str(preds), "-o", str(w.results / "summary.json")]


@bad("evaluate", "a.png is a file, not a folder", "Give the folder that holds the references")
def evaluate_one_reference_file(w):
    refs, preds = segmentation_folders(w)
    return ["-r", str(refs / "a.png"), "-s", str(preds), "-o", str(w.results / "summary.json")]


@bad("plot_overlays", "a.png is a file, not a folder", "Give the folder that holds the images")
def overlay_of_one_image_file(w):
    refs, preds = segmentation_folders(w)
    return ["-i", str(refs / "a.png"), "-s", str(preds), "-o", str(w.results / "overlays")]


@bad("evaluate", "have no prediction", "b", "Predict these cases")
def evaluate_prediction_missing(w):
    refs, preds = segmentation_folders(w)
    (preds / "b.png").unlink()
    return ["-r", str(refs), "-s", str(preds), "-o", str(w.results / "summary.json")]


@bad("evaluate", "Case 'a'", "(20, 30)", "input's geometry")
def evaluate_shape_mismatch(w):
    refs, preds = segmentation_folders(w, pred_shape=(20, 31))
    return ["-r", str(refs), "-s", str(preds), "-o", str(w.results / "summary.json")]


@bad("evaluate", "a.png", "does not end in .json", "would replace that file", "e.g. summary.json")
def evaluate_summary_onto_a_reference(w):
    refs, preds = segmentation_folders(w)
    return ["-r", str(refs), "-s", str(preds), "-o", str(refs / "a.png")]


@bad("evaluate", "is a folder", "summary.json")
def evaluate_summary_path_is_a_folder(w):
    refs, preds = segmentation_folders(w)
    return ["-r", str(refs), "-s", str(preds), "-o", str(refs)]


@bad("evaluate", "Cannot write", "a.png is a file, not a folder", "Choose a location you can write to")
def evaluate_summary_below_a_file(w):
    refs, preds = segmentation_folders(w)
    return ["-r", str(refs), "-s", str(preds), "-o", str(refs / "a.png" / "summary.json")]


@bad("plot_overlays", "a.png", "0 bytes", "Copy or export it again")
def overlay_of_empty_file(w):
    refs, preds = segmentation_folders(w)
    (preds / "a.png").write_bytes(b"")
    return ["-i", str(refs), "-s", str(preds), "-o", str(w.results / "overlays")]


@bad("plot_overlays", "have no image of the same case id", "Point -i", subprocess=True)
def overlay_without_images(w):
    refs, preds = segmentation_folders(w)
    (refs / "b.png").unlink()
    return ["-i", str(refs), "-s", str(preds), "-o", str(w.results / "overlays")]


@bad("plot_overlays", "(a)", "(20, 31)", "(20, 30)", "must cover the same pixels")
def overlay_shape_mismatch(w):
    refs, preds = segmentation_folders(w, pred_shape=(20, 31))
    return ["-i", str(refs), "-s", str(preds), "-o", str(w.results / "overlays")]


@bad("plot_overlays", "is the segmentation folder", "replace those saved as PNG", "Choose another -o")
def overlay_into_segmentation_folder(w):
    refs, preds = segmentation_folders(w)
    return ["-i", str(refs), "-s", str(preds), "-o", str(preds)]


@bad("plot_overlays", "is the reference folder", "Choose another -o")
def overlay_into_reference_folder(w):
    refs, preds = segmentation_folders(w)
    return ["-i", str(preds), "-s", str(preds), "-r", str(refs), "-o", str(refs) + "/"]


@bad("evaluate", "labelsTr", RAW_DATA, "set with -o")
def evaluate_summary_into_a_raw_dataset(w):
    labels = discs(w) / "labelsTr"
    return ["-r", str(labels), "-s", str(labels)]


@bad("plot_overlays", "overlays", RAW_DATA, "Choose a folder outside")
def overlay_into_a_raw_dataset(w):
    root = discs(w)
    return ["-i", str(root / "imagesTr"), "-s", str(root / "labelsTr"), "-o", str(root / "overlays")]


# ---------------------------------------------------------------------------------------------- automedsam_convert


@bad("convert", "images folder", "Check --images")
def convert_images_folder_missing(w):
    return ["folder", "--images", str(w.inbox / "nothing"), "--masks", str(w.inbox), "-d", "9", "-n", "X"]


@bad("convert", "Cannot write", "raw.txt is a file, not a folder", "Choose a location you can write to")
def convert_into_a_raw_root_below_a_file(w):
    (w.inbox / "raw.txt").write_text("not a folder")
    w.monkeypatch.setenv("AUTOMEDSAM_RAW", str(w.inbox / "raw.txt" / "datasets"))
    return ["synthetic", "-d", "9", "--n-train", "2", "--n-test", "0"]


@bad("convert", "image without a mask: b.png", "A mask must have its image's name", subprocess=True)
def convert_image_without_mask(w):
    images, masks = root_dir(w.inbox / "imgs"), root_dir(w.inbox / "masks")
    for case in ("a", "b"):
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(images / f"{case}.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "a_mask.png")
    return ["folder", "--images", str(images), "--masks", str(masks), "-d", "9", "-n", "X"]


@bad("convert", "boxes for ../a", "not an image in")
def convert_boxes_with_dot_dot_case(w):
    images = root_dir(w.inbox / "imgs")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(images / "a.png")
    box_file = w.inbox / "boxes.json"
    box_file.write_text(json.dumps({"a": [{"box": [1, 1, 3, 3]}], "../a": [{"box": [1, 1, 3, 3]}]}))
    return ["folder", "--images", str(images), "--boxes", str(box_file), "-d", "9", "-n", "X"]


@bad("convert", "images folder", "is a file, not a folder", "Check --images")
def convert_images_given_as_a_file(w):
    (w.inbox / "scan.png").write_bytes(b"not a folder")
    return ["folder", "--images", str(w.inbox / "scan.png"), "-d", "9", "-n", "X"]


@bad("convert", "masks folder", "is a file, not a folder", "Check --masks")
def convert_masks_given_as_a_file(w):
    images = root_dir(w.inbox / "imgs")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(images / "a.png")
    return ["folder", "--images", str(images), "--masks", str(images / "a.png"), "-d", "9", "-n", "X"]


@bad("convert", "boxes file", "is a folder, not a file", "Check --boxes")
def convert_boxes_given_as_a_folder(w):
    images = root_dir(w.inbox / "imgs")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(images / "a.png")
    return ["folder", "--images", str(images), "--boxes", str(images), "-d", "9", "-n", "X"]


@bad("convert", "Dataset name 'my data'", "no spaces")
def convert_invalid_dataset_name(w):
    return ["synthetic", "-d", "9", "-n", "my data", "--n-train", "1", "--n-test", "0"]


# ------------------------------------------------------------------------------- automedsam_export_model / install


def export_args(w, *extra):
    return ["-d", "1", "-o", str(w.results.parent / "model.zip"), *extra]


@bad("export", "No dataset '7'", "Convert or copy the dataset")
def export_unknown_dataset(w):
    return ["-d", "7", "-o", str(w.results.parent / "model.zip")]


@bad("export", "Fold 3", "checkpoint_final.pt", "automedsam_train 001 fold3")
def export_fold_not_trained(w):
    toy_model(w)
    return export_args(w, "-f", "3")


@bad("export", "lacks fold_0/log.json", "Finish training")
def export_unfinished_fold(w):
    toy_model(w)
    return export_args(w)


@bad("export", "model.zip already exists", "--overwrite")
def export_over_an_existing_file(w):
    exportable_toy_model(w)
    (w.results.parent / "model.zip").write_bytes(b"someone else's file")
    return export_args(w)


@bad("export", "medsam_vit_b.pth (named in plans.json) do not exist", "--foundation-checkpoint PATH")
def export_foundation_weights_moved(w):
    exportable_toy_model(w, foundation_model={**toy_plans()["foundation_model"], "name": "medsam_vit_b",
                                              "checkpoint": str(w.inbox / "gone" / "medsam_vit_b.pth")})
    return export_args(w)


@bad("export", "checkpoint_final.pt", "Python objects or code")
def export_checkpoint_with_code(w):
    model = exportable_toy_model(w)
    write_malicious_checkpoint(model / "fold_0" / "checkpoint_final.pt", w.marker)
    return export_args(w)


@bad("install", "model archive", "does not exist", "automedsam_export_model")
def install_missing_archive(w):
    return [str(w.inbox / "missing.zip")]


@bad("install", "model archive", "is a folder, not a file", "automedsam_export_model")
def install_a_folder(w):
    return [str(root_dir(w.inbox / "model"))]


@bad("install", "is not a zip archive", "copy it again")
def install_not_a_zip(w):
    (w.inbox / "model.zip").write_text("not a zip")
    return [str(w.inbox / "model.zip")]


@bad("install", "has no model_card.json", "not a model written by automedsam_export_model", "Nothing was written")
def install_archive_without_model_card(w):
    return [str(model_archive(w, drop=("model_card.json",))), "-d", "42"]


@bad("install", "has no model_card.json", "Nothing was written")
def install_empty_zip(w):
    zipfile.ZipFile(w.inbox / "model.zip", "w").close()
    return [str(w.inbox / "model.zip")]


@bad("install", "member 'fold_0/../../../raw/evil.json' has a '..' component", "Nothing was written")
def install_member_with_dot_dot(w):
    return [str(model_archive(w, add=(("fold_0/../../../raw/evil.json", b"{}"),))), "-d", "42"]


@bad("install", "member 'plans.json' is a symbolic link", "from a source you trust")
def install_member_that_is_a_link(w):
    link = zipfile.ZipInfo("plans.json")
    link.external_attr = 0o120777 << 16
    return [str(model_archive(w, drop=("plans.json",), add=((link, b"/etc/passwd"),))), "-d", "42"]


@bad("install", "fold_0/checkpoint_final.pt holds Python objects or code", "Nothing was written")
def install_checkpoint_with_code(w):
    evil = write_malicious_checkpoint(w.inbox / "evil.pt", w.marker).read_bytes()
    archive = model_archive(w, drop=("fold_0/checkpoint_final.pt",), add=(("fold_0/checkpoint_final.pt", evil),))
    return [str(archive), "-d", "42"]


@bad("install", "-d 'first' is not a dataset id", "Dataset042_Toy")
def install_under_a_bad_id(w):
    return [str(model_archive(w)), "-d", "first"]


@bad("install", "Cannot write", "results.txt is a file, not a folder", "Choose a location you can write to")
def install_into_a_results_root_below_a_file(w):
    archive = model_archive(w)
    (w.raw.parent / "results.txt").write_text("not a folder")  # beside the roots: one inside raw/ is refused
    w.monkeypatch.setenv("AUTOMEDSAM_RESULTS", str(w.raw.parent / "results.txt" / "models"))
    return [str(archive), "-d", "42"]
