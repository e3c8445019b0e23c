"""Raw dataset loading: a valid dataset loads; each kind of bad input gives one error naming the case and the fix."""
from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from automedsam.boxes import write_box_file
from automedsam.dataset import (MAX_CASE_ID_BYTES, check_dataset_folder, load_raw_dataset, max_case_id_bytes,
                                printable_name, refuse_normalisation_twins, spelled_as, too_long_case_id,
                                unsafe_case_id)
from automedsam.errors import AutomedsamError
from automedsam.io import Geometry, write_image, write_segmentation
from automedsam.files import NAME_MAX_BYTES
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.planning.planner import DEFAULT_VIEWS
from automedsam.samples import IMAGE_STAMP_SUFFIX, longest_sample_file_name, sample_id, view_sample_id

VOLUME = Geometry(spacing=(1.5, 1.5, 5.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), kind="sitk")
LABELS = {"background": 0, "head": 1}


def make_dataset(root: Path, cases=("case_a", "case_b"), ndim=2, labels=True, boxes=False, meta=None) -> Path:
    """A small valid dataset: 2D png or 3D nii.gz images with a rectangle label (or a box file)."""
    ending = ".png" if ndim == 2 else ".nii.gz"
    geometry = Geometry.natural() if ndim == 2 else VOLUME
    shape = (16, 20) if ndim == 2 else (3, 16, 20)
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for case_id in cases:
        write_image(root / "imagesTr" / f"{case_id}_0000{ending}", rng.integers(0, 200, shape).astype(np.uint8),
                    geometry)
        mask = np.zeros(shape, np.uint8)
        mask[..., 4:9, 5:12] = 1
        if labels:
            write_segmentation(root / "labelsTr" / f"{case_id}{ending}", mask, geometry)
        if boxes:
            entry = {"label": 1, "box": [5, 4, 11, 8]} | ({"slice": 1} if ndim == 3 else {})
            write_box_file(root / "boxesTr" / f"{case_id}.json", [entry])
    description = {"channel_names": {"0": "US"}, "labels": LABELS, "numTraining": len(cases), "file_ending": ending}
    (root / "dataset.json").write_text(json.dumps(description | (meta or {})))
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))}


def load_error(root: Path, **kwargs) -> str:
    before = snapshot(root)
    with pytest.raises(AutomedsamError) as error:
        load_raw_dataset(root, **kwargs)
    assert snapshot(root) == before, "loading a dataset must never write inside it"
    return str(error.value)


def edit_meta(root: Path, **changes) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps(meta | changes))


def test_valid_2d_dataset_loads_without_writing(tmp_path):
    root = make_dataset(tmp_path / "Dataset001_Toy", cases=("b", "a", "benign (3)"))
    before = snapshot(root)
    dataset = load_raw_dataset(root)
    assert snapshot(root) == before
    assert dataset.name == "Dataset001_Toy" and dataset.root == root and dataset.file_ending == ".png"
    assert [case.case_id for case in dataset.cases] == ["a", "b", "benign (3)"]
    assert dataset.cases[2].image == root / "imagesTr" / "benign (3)_0000.png"
    assert dataset.cases[2].label == root / "labelsTr" / "benign (3).png" and dataset.cases[2].boxes is None
    assert dataset.cases[0].group == "a"
    assert dataset.label_ids == [1] and all(case.label is not None for case in dataset.cases)
    assert dataset.warnings == []


def test_valid_3d_dataset_with_groups(tmp_path):
    root = make_dataset(tmp_path / "ds", cases=("p1_f1", "p1_f2", "p2_f1"), ndim=3,
                        meta={"groups": {"p1_f1": "p1", "p1_f2": "p1", "p2_f1": "p2"}})
    dataset = load_raw_dataset(root)
    assert [case.group for case in dataset.cases] == ["p1", "p1", "p2"]


def test_boxes_only_dataset_has_no_masks(tmp_path):
    root = make_dataset(tmp_path / "ds", labels=False, boxes=True)
    dataset = load_raw_dataset(root)
    assert all(case.boxes is not None and case.label is None for case in dataset.cases)


def test_resolves_dataset_id_in_raw_root(roots):
    make_dataset(roots["raw"] / "Dataset004_Toy")
    assert load_raw_dataset(4).name == "Dataset004_Toy"
    assert load_raw_dataset("Dataset004_Toy").root == roots["raw"] / "Dataset004_Toy"


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(AutomedsamError, match=r"nowhere does not exist.*dataset id"):
        load_raw_dataset(tmp_path / "nowhere")


def test_missing_dataset_json(tmp_path):
    root = make_dataset(tmp_path / "ds")
    (root / "dataset.json").unlink()
    assert "has no dataset.json" in load_error(root)


def test_empty_dataset_json(tmp_path):
    root = make_dataset(tmp_path / "ds")
    (root / "dataset.json").write_text("")
    assert "dataset.json is empty" in load_error(root)


def test_invalid_json(tmp_path):
    root = make_dataset(tmp_path / "ds")
    (root / "dataset.json").write_text('{"labels": {')
    assert "dataset.json is not valid JSON" in load_error(root)


def test_missing_keys(tmp_path):
    root = make_dataset(tmp_path / "ds")
    (root / "dataset.json").write_text(json.dumps({"labels": LABELS, "channel_names": {"0": "US"}}))
    assert "lacks the key(s) numTraining, file_ending" in load_error(root)


def test_labels_without_background(tmp_path):
    root = make_dataset(tmp_path / "ds")
    edit_meta(root, labels={"head": 1})
    assert "labels must include the background as 0" in load_error(root)


def test_region_based_labels(tmp_path):
    root = make_dataset(tmp_path / "ds")
    edit_meta(root, labels={"background": 0, "whole": [1, 2]})
    message = load_error(root)
    assert "label(s) whole are nnU-Net region-based labels" in message
    assert '{"background": 0, "class1": 1, "class2": 2}, without regions_class_order' in message


def test_duplicate_label_ids(tmp_path):
    root = make_dataset(tmp_path / "ds")
    edit_meta(root, labels={"background": 0, "a": 1, "b": 1})
    assert "two labels share an id" in load_error(root)


def test_a_label_id_above_what_a_uint16_mask_holds_is_refused_when_loading(tmp_path):
    """An id above 65535 loaded and was refused only by preprocessing, after the fingerprint was measured."""
    root = make_dataset(tmp_path / "ds", meta={"labels": {"background": 0, "head": 1, "vessel": 65536}})
    message = load_error(root, check_images=False)
    assert f"{root / 'dataset.json'}: label(s) vessel (65536) exceed 65535" in message
    assert "store masks as uint16" in message and "Renumber them" in message
    edit_meta(root, labels={"background": 0, "head": 1, "vessel": 65535})
    assert load_raw_dataset(root).labels["vessel"] == 65535, "the largest id a uint16 mask holds loads"


def test_unsupported_file_ending(tmp_path):
    root = make_dataset(tmp_path / "ds")
    edit_meta(root, file_ending="png")
    assert "file_ending 'png' is not supported" in load_error(root)


def test_file_ending_not_matching_the_files(tmp_path):
    root = make_dataset(tmp_path / "ds")
    edit_meta(root, file_ending=".nii.gz")
    assert "file_ending is '.nii.gz' but imagesTr/ holds .png files" in load_error(root)


def test_declared_rings_and_shapes_are_read_by_label_name(tmp_path):
    root = make_dataset(tmp_path / "Dataset001_Toy", meta={"labels": {"background": 0, "MYO": 1, "LV": 2, "RV": 3},
                                                           "rings": {"MYO": ["LV"]}, "shapes": {"LV": "ellipse"}})
    dataset = load_raw_dataset(root, check_images=False)
    assert dataset.rings == {1: [2]} and dataset.shapes == {2: "ellipse"}
    plain = load_raw_dataset(make_dataset(tmp_path / "Dataset002_Toy"), check_images=False)
    assert plain.rings == {} and plain.shapes == {}, "nothing declared, no ring"


@pytest.mark.parametrize("changes, message", [
    ({"rings": {"MYO": "LV"}}, "rings must map"),
    ({"rings": {"MYO": ["PA"]}}, "PA"),
    ({"rings": {"MYO": ["MYO"]}}, "other labels"),
    ({"rings": {"MYO": ["LV"], "LV": ["RV"]}}, "nested rings"),
    ({"shapes": {"LV": "square"}}, "shapes must map"),
    ({"shapes": {"PA": "ellipse"}}, "PA"),
])
def test_bad_declarations_name_the_key(tmp_path, changes, message):
    root = make_dataset(tmp_path / "Dataset001_Toy", meta={"labels": {"background": 0, "MYO": 1, "LV": 2, "RV": 3}})
    edit_meta(root, **changes)
    assert message in load_error(root, check_images=False)


def test_the_nnunet_ignore_label_is_refused_with_the_reason(tmp_path):
    """nnU-Net v2's "ignore" marks unannotated pixels; it was loaded as a structure to learn and predict."""
    root = make_dataset(tmp_path / "ds", meta={"labels": {"background": 0, "tumor": 1, "ignore": 2}})
    message = load_error(root, check_images=False)
    assert "the label 'ignore' (2) marks unannotated pixels in nnU-Net v2" in message
    assert "remove it from labels" in message
    assert "use automedsam_evaluate --labels 1 --ignore-label 2 instead of -d: it leaves those pixels out" in message


@pytest.mark.parametrize("spacing", [{"case_a": 0.1}, {"case_a": ["x", 1]}, {"case_a": [0.1]},
                                     {"case_a": [0.1, 0.1, 0.1]}, {"case_a": [0, 0.1]}, {"case_a": [-0.1, 0.1]},
                                     {"case_a": [True, 0.1]}, {"case_a": [float("nan"), 0.1]}],
                         ids=["number", "text", "one", "three", "zero", "negative", "bool", "nan"])
def test_a_spacing_that_is_no_pixel_size_is_refused_when_loading(tmp_path, spacing):
    """{"a": 0.1} failed with a TypeError in planning; zeros, negatives and wrong lengths were planned with."""
    root = make_dataset(tmp_path / "ds", meta={"spacing": {"case_b": [0.2, 0.3], **spacing}})
    message = load_error(root, check_images=False)
    assert "spacing must give each case two positive numbers [sx, sy]" in message
    assert f"case_a {spacing['case_a']!r}" in message and "case_b" not in message


def test_a_spacing_of_a_medical_format_dataset_is_ignored_as_documented(tmp_path):
    """NIfTI carries its own spacing: a [sx, sy, sz] entry there was refused at load, though documented as ignored."""
    root = make_dataset(tmp_path / "ds", ndim=3, meta={"spacing": {"case_a": [0.8, 0.8, 2.5]}})
    assert len(load_raw_dataset(root).cases) == 2


def test_a_valid_spacing_loads_and_a_spacing_that_is_no_map_is_refused(tmp_path):
    root = make_dataset(tmp_path / "ds", meta={"spacing": {"case_a": [0.2, 0.3], "case_b": [1, 1]}})
    assert len(load_raw_dataset(root).cases) == 2
    edit_meta(root, spacing=[0.2, 0.3])
    assert "spacing must map case ids to their pixel spacing [sx, sy]" in load_error(root, check_images=False)


def test_invalid_groups(tmp_path):
    root = make_dataset(tmp_path / "ds", meta={"groups": ["a"]})
    assert "groups must map case ids to group names" in load_error(root)


def test_no_images_folder(tmp_path):
    root = make_dataset(tmp_path / "ds")
    for path in (root / "imagesTr").iterdir():
        path.unlink()
    (root / "imagesTr").rmdir()
    assert "has no imagesTr/ folder" in load_error(root)


def test_empty_images_folder(tmp_path):
    root = make_dataset(tmp_path / "ds", cases=(), labels=False)
    (root / "imagesTr").mkdir()
    assert "holds no image named CASE_0000.png" in load_error(root)


def test_image_without_label(tmp_path):
    root = make_dataset(tmp_path / "ds")
    (root / "labelsTr" / "case_b.png").unlink()
    message = load_error(root)
    assert "1 case(s)" in message and "case_b: image has no label labelsTr/case_b.png and no box file" in message


def test_label_without_image(tmp_path):
    root = make_dataset(tmp_path / "ds")
    (root / "imagesTr" / "case_a_0000.png").unlink()
    assert "case_a: labelsTr/case_a.png has no image imagesTr/case_a_0000.png" in load_error(root)


def test_box_file_without_image(tmp_path):
    root = make_dataset(tmp_path / "ds")
    write_box_file(root / "boxesTr" / "ghost.json", [{"label": 1, "box": [0, 0, 1, 1]}])
    assert "ghost: boxesTr/ghost.json has no image imagesTr/ghost_0000.png" in load_error(root)


@pytest.mark.parametrize("folder, ending", [("labelsTr", ".png"), ("boxesTr", ".json")])
def test_a_label_or_box_file_named_in_another_unicode_normalisation_pairs_with_its_image(tmp_path, folder, ending):
    """imagesTr/ written on macOS (decomposed café_0000.png) beside a composed labelsTr/café.png gave two problems
    that looked identical: "café: image has no label" and "café: labelsTr/café.png has no image"."""
    decomposed, composed = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    root = make_dataset(tmp_path / "ds", cases=("case_a", decomposed), labels=folder == "labelsTr",
                        boxes=folder == "boxesTr")
    (root / folder / f"{decomposed}{ending}").rename(root / folder / f"{composed}{ending}")
    dataset = load_raw_dataset(root)
    case = next(case for case in dataset.cases if case.case_id != "case_a")
    assert case.case_id == decomposed and (case.label or case.boxes).name == f"{composed}{ending}"


def test_label_files_that_differ_only_in_unicode_normalisation_are_refused(tmp_path):
    decomposed, composed = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    root = make_dataset(tmp_path / "ds", cases=(decomposed,))
    write_segmentation(root / "labelsTr" / f"{composed}.png", np.zeros((16, 20), np.uint8), Geometry.natural())
    message = load_error(root)
    assert message.startswith(f"{root / 'labelsTr'} holds names that differ only in how their accented letters")


def test_names_that_differ_by_a_ligature_or_a_numeral_sign_are_different_cases():
    """Only the encoding of accents may be taken for the same name: "scanﬁ" and "scanfi" are different files, and
    pairing them (compatibility normalisation, NFKC) would give one case the other's label."""
    refuse_normalisation_twins(["scanﬁ", "scanfi", "caseⅡ", "caseII"], where="labelsTr")
    files = {"scanﬁ": "label of scanﬁ", "caseⅡ": "label of caseⅡ"}
    assert spelled_as(files, {"scanfi": None, "caseII": None}, folders=("labelsTr", "imagesTr")) == files


def test_a_name_of_a_lone_surrogate_from_json_is_printable():
    """JSON's \\ud800 gives a surrogate that no file name's byte gives: surrogateescape cannot show it."""
    name = json.loads('"label \\ud800"')
    assert printable_name(name) == "label \\ud800"


def test_image_without_channel_suffix(tmp_path):
    root = make_dataset(tmp_path / "ds")
    os.replace(root / "imagesTr" / "case_a_0000.png", root / "imagesTr" / "case_a.png")
    assert "image case_a.png lacks the channel suffix; rename it to case_a_0000.png" in load_error(root)


def test_unreadable_image(tmp_path):
    root = make_dataset(tmp_path / "ds")
    (root / "imagesTr" / "case_a_0000.png").write_text("this is not a png")
    message = load_error(root)
    assert "case_a:" in message and "case_a_0000.png could not be read" in message


def test_zero_byte_image(tmp_path):
    root = make_dataset(tmp_path / "ds", ndim=3)
    (root / "imagesTr" / "case_b_0000.nii.gz").write_bytes(b"")
    assert "case_b_0000.nii.gz is empty (0 bytes)" in load_error(root)


def test_truncated_label(tmp_path):
    root = make_dataset(tmp_path / "ds", ndim=3)
    path = root / "labelsTr" / "case_a.nii.gz"
    path.write_bytes(path.read_bytes()[:-20])
    assert "case_a.nii.gz could not be read" in load_error(root)


def test_check_images_false_does_not_open_files(tmp_path):
    root = make_dataset(tmp_path / "ds")
    (root / "imagesTr" / "case_a_0000.png").write_text("this is not a png")
    assert len(load_raw_dataset(root, check_images=False).cases) == 2


def test_shape_mismatch(tmp_path):
    root = make_dataset(tmp_path / "ds")
    write_segmentation(root / "labelsTr" / "case_a.png", np.zeros((16, 21), np.uint8), Geometry.natural())
    assert "case_a: image shape (16, 20) differs from label shape (16, 21)" in load_error(root)


def test_spacing_mismatch(tmp_path):
    root = make_dataset(tmp_path / "ds", ndim=3)
    other = Geometry(spacing=(1.5, 1.5, 8.0), origin=VOLUME.origin, direction=VOLUME.direction, kind="sitk")
    mask = np.zeros((3, 16, 20), np.uint8)
    write_segmentation(root / "labelsTr" / "case_a.nii.gz", mask, other)
    assert "case_a: image and label case_a.nii.gz differ in geometry (spacing" in load_error(root)


def test_orientation_mismatch(tmp_path):
    root = make_dataset(tmp_path / "ds", ndim=3)
    flipped = Geometry(spacing=VOLUME.spacing, origin=VOLUME.origin, direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1),
                       kind="sitk")
    write_segmentation(root / "labelsTr" / "case_b.nii.gz", np.zeros((3, 16, 20), np.uint8), flipped)
    assert "differ in geometry (direction" in load_error(root)


def test_label_values_not_in_dataset_json(tmp_path):
    root = make_dataset(tmp_path / "ds")
    mask = np.zeros((16, 20), np.uint8)
    mask[2:4, 2:4] = 255
    write_segmentation(root / "labelsTr" / "case_a.png", mask, Geometry.natural())
    message = load_error(root)
    assert "case_a: label case_a.png holds value(s) [255] not defined in dataset.json labels [0, 1]" in message
    assert "0/255 mask: save it as 0/1" in message


def test_case_id_escaping_its_folder(tmp_path):
    root = make_dataset(tmp_path / "ds")
    write_image(root / "imagesTr" / ".._0000.png", np.zeros((16, 20), np.uint8), Geometry.natural())
    assert "- ..: case id would point outside its folder" in load_error(root)


@pytest.mark.parametrize("case_id, reason", [
    ("..", "outside its folder"), ("a/b", "outside its folder"), ("..\\x", "outside its folder"),
    ("/etc/passwd", "outside its folder"), ("C:evil", "absolute path"), ("", "is empty"),
    ("sub01__ses1", "names a case's slices and views"),  # was read as slice/view "ses1" of case sub01
])
def test_unsafe_case_ids_are_named_with_the_reason(case_id, reason):
    assert reason in unsafe_case_id(case_id)
    assert unsafe_case_id("benign (3)") is None


def test_a_case_id_whose_derived_file_names_would_be_too_long_is_refused():
    """A 245-byte case id converted, then preprocessing failed writing CASE__v01.image (256 bytes)."""
    assert unsafe_case_id("a" * MAX_CASE_ID_BYTES) is None
    assert f"is 245 bytes; at most {MAX_CASE_ID_BYTES}" in unsafe_case_id("a" * 245)
    accented = "é" * (MAX_CASE_ID_BYTES // 2 + 1)  # counted in bytes, not characters
    assert f"is {len(accented.encode())} bytes" in unsafe_case_id(accented)


def test_a_2d_case_id_keeps_the_bytes_only_slice_names_need(tmp_path):
    """The budget of a volume's slices (237 bytes) refused 2D case ids of 238-243 bytes, which work: a 2D case's
    longest file name is its raw image's, CASE_0000.nii.gz, a byte longer than CASE__v01.image (a 244-byte id failed
    writing imagesTr/CASE_0000.nii.gz)."""
    assert MAX_CASE_ID_BYTES == NAME_MAX_BYTES - len("_0000.nii.gz") == 243
    assert unsafe_case_id("a" * 243) is None
    assert "is 244 bytes; at most 243" in unsafe_case_id("a" * 244)
    assert load_raw_dataset(make_dataset(tmp_path / "ds", cases=("a" * 243,))).cases[0].case_id == "a" * 243


@pytest.mark.parametrize("slices, most", [
    (None, 243), (1, 238), (1000, 238), (1001, 237), (10_000, 237), (10_001, 236), (100_001, 235),
])
def test_a_case_id_budget_leaves_room_for_the_digits_of_its_slice_index(slices, most):
    """z-indices are written with at least 3 digits, 5 from the 10,001st slice: a fixed z9999 budget let a 237-byte
    case id of a 10,001-slice volume name a slice's stamp with 256 bytes."""
    assert max_case_id_bytes(slices=slices) == most
    case_id = "é" * (most // 2) + "a" * (most % 2)  # bytes, not characters
    last = None if slices is None else slices - 1
    for view in DEFAULT_VIEWS:  # the longest names the builders really make
        name = view_sample_id(sample_id(case_id, last), view) + IMAGE_STAMP_SUFFIX
        assert len(name.encode()) <= NAME_MAX_BYTES
    assert len(longest_sample_file_name(case_id, slices=slices).encode()) == NAME_MAX_BYTES
    assert too_long_case_id(case_id, slices=slices) is None
    assert f"is {most + 1} bytes; at most {most}," in too_long_case_id(case_id + "a", slices=slices)


def _volume_dataset(root: Path, case_id: str, slices: int) -> Path:
    """One volume case of `slices` slices of 2 x 2 pixels: the longest axis sets its slice index's digits."""
    make_dataset(root, cases=(case_id,), ndim=3, labels=False, boxes=True)
    image = np.arange(slices * 4, dtype=np.int16).reshape(slices, 2, 2)
    write_image(root / "imagesTr" / f"{case_id}_0000.nii.gz", image, VOLUME)
    write_box_file(root / "boxesTr" / f"{case_id}.json", [{"label": 1, "box": [0, 0, 1, 1], "slice": 1}])
    return root


def test_a_volume_case_id_is_refused_for_its_slice_names_when_its_image_is_read(tmp_path):
    """Only a volume's slices need room for `__z0123`; a 10,001-slice one for `__z10000`."""
    assert load_raw_dataset(_volume_dataset(tmp_path / "short", "a" * 238, 3)).cases
    message = load_error(_volume_dataset(tmp_path / "long", "a" * 237, 10_001))
    assert ("is 237 bytes; at most 236, as the names of automedsam's files add up to 19 bytes to it "
            "(CASE__z10000__v99.image for a volume whose longest side has 10001 to 100000 voxels: it may be cut along "
            "any axis); rename the files to a shorter case id") in message
    assert load_raw_dataset(_volume_dataset(tmp_path / "fits", "a" * 236, 10_001)).cases


@pytest.mark.parametrize("check_images", [True, False])
def test_a_case_id_too_long_for_a_2d_case_is_told_the_limit_of_its_kind_at_once(tmp_path, check_images):
    """A 244-byte volume id (an uncompressed .nii holds it) was refused with a 2D case's 243 bytes, then, renamed to
    243 bytes, with a volume's 238: two rounds of renaming where one was needed. A 2D .nii keeps its 243."""
    name = "a" * (MAX_CASE_ID_BYTES + 1)
    for ndim, shape, most in ((3, (3, 2, 2), max_case_id_bytes(slices=3)), (2, (2, 2), MAX_CASE_ID_BYTES)):
        root = make_dataset(tmp_path / f"{ndim}d", cases=(), meta={"file_ending": ".nii"})
        geometry = VOLUME if ndim == 3 else Geometry(spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1, 0, 0, 1),
                                                     kind="sitk")
        write_image(root / "imagesTr" / f"{name}_0000.nii", np.zeros(shape, np.int16), geometry)
        write_segmentation(root / "labelsTr" / f"{name}.nii", np.ones(shape, np.uint8), geometry)
        message = load_error(root, check_images=check_images)
        assert f"{name}: case id is {MAX_CASE_ID_BYTES + 1} bytes; at most {most}, as" in message, message


def test_a_case_id_that_is_not_utf8_is_refused_cleanly_when_loading(tmp_path):
    """A Latin-1 name from a Windows zip (read as a lone surrogate) crashed preprocessing with a UnicodeEncodeError."""
    root = make_dataset(tmp_path / "ds")
    name = os.fsdecode(b"patient\xe9 1")
    write_image(root / "imagesTr" / f"{name}_0000.png", np.zeros((16, 20), np.uint8), Geometry.natural())
    write_segmentation(root / "labelsTr" / f"{name}.png", np.zeros((16, 20), np.uint8), Geometry.natural())
    message = load_error(root)
    assert "- patient\\xe9 1: case id is not valid UTF-8" in message
    message.encode("utf-8")  # printable: no lone surrogate left


def test_all_background_label_is_a_warning(tmp_path):
    root = make_dataset(tmp_path / "ds")
    write_segmentation(root / "labelsTr" / "case_b.png", np.zeros((16, 20), np.uint8), Geometry.natural())
    assert load_raw_dataset(root).warnings == ["case_b: the label case_b.png is all background."]


def test_constant_image_is_a_warning(tmp_path):
    root = make_dataset(tmp_path / "ds")
    write_image(root / "imagesTr" / "case_a_0000.png", np.full((16, 20), 7, np.uint8), Geometry.natural())
    assert load_raw_dataset(root).warnings == ["case_a: the image is constant (every pixel 7)."]


def test_box_outside_the_image(tmp_path):
    root = make_dataset(tmp_path / "ds", labels=False, boxes=True)
    write_box_file(root / "boxesTr" / "case_a.json", [{"label": 1, "box": [0, 0, 25, 5]}])
    assert "case_a.json, entry 0: box [0, 0, 25, 5] lies (partly) outside the image of 20 columns" in load_error(root)


def test_box_with_unknown_label(tmp_path):
    root = make_dataset(tmp_path / "ds", labels=False, boxes=True)
    write_box_file(root / "boxesTr" / "case_b.json", [{"label": 4, "box": [0, 0, 5, 5]}])
    assert "case_b.json uses label(s) [4] that dataset.json does not define" in load_error(root)


CARDIAC = {"labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3}, "rings": {"MYO": ["LV"]}}


def test_a_box_file_boxing_a_label_without_the_ring_around_it_is_refused_naming_the_slice(roots):
    """LV boxed on a slice where MYO, declared a ring around it, is not: training read MYO's filled region as absent
    where its cavity is drawn. Slices holding both, or the ring alone (its apex), are fine."""
    root = make_dataset(roots["raw"] / "Dataset030_Heart", cases=("v1", "v2", "v3"), ndim=3, labels=False,
                        boxes=True, meta=CARDIAC)
    write_box_file(root / "boxesTr" / "v1.json", [
        {"label": 2, "box": [4, 3, 13, 10], "slice": 0},
        {"label": 2, "box": [4, 3, 13, 10], "slice": 1}, {"label": 3, "box": [6, 5, 11, 8], "slice": 1},
        {"label": 3, "box": [6, 5, 11, 8], "slice": 2}, {"label": 1, "box": [14, 3, 18, 10], "slice": 2}])
    write_box_file(root / "boxesTr" / "v3.json", [{"label": 3, "box": [6, 5, 11, 8], "slice": index}
                                                  for index in (2, 0)])
    message = load_error(root)
    assert ("v1.json: LV is boxed on slice 2 but MYO is not; dataset.json declares MYO a ring around LV, so draw "
            "MYO's box around its outer edge too (or remove the LV box).") in message, "slices 0 and 1 are fine"
    assert "v3.json: LV is boxed on slices 0, 2 but MYO is not;" in message and "(or remove the LV boxes)" in message
    assert "v2" not in message, "a label no ring concerns (RV) is boxed alone"
    with pytest.raises(AutomedsamError, match="LV is boxed on slice 2 but MYO is not"):
        plan_and_preprocess(30, plan_only=True, num_workers=1, progress=False)


def test_a_2d_box_file_boxing_a_label_without_its_ring_is_refused_and_one_boxing_both_loads(tmp_path):
    root = make_dataset(tmp_path / "ds", labels=False, boxes=True, meta=CARDIAC)
    write_box_file(root / "boxesTr" / "case_a.json", [{"label": 2, "box": [4, 3, 13, 10]},
                                                      {"label": 3, "box": [6, 5, 11, 8]}])
    write_box_file(root / "boxesTr" / "case_b.json", [{"label": 3, "box": [6, 5, 11, 8]}])
    message = load_error(root)
    assert "case_b.json: LV is boxed but MYO is not;" in message and "case_a" not in message
    edit_meta(root, rings={})
    assert len(load_raw_dataset(root).cases) == 2, "without a declared ring, LV alone is a plain box"


def cardiac_masks(root: Path, ndim: int, spacing: tuple[float, float, float] = (1.5, 1.5, 5.0)) -> Path:
    """make_dataset's cases with masks of MYO (2) around LV (3) on every image or slice, RV (1) beside them."""
    make_dataset(root, cases=("v1", "v2"), ndim=ndim, meta=CARDIAC)
    geometry = Geometry.natural() if ndim == 2 else replace(VOLUME, spacing=spacing)
    ending = ".png" if ndim == 2 else ".nii.gz"
    for case_id in ("v1", "v2"):
        mask = np.zeros((16, 20) if ndim == 2 else (3, 16, 20), np.uint8)
        mask[..., 3:11, 4:14], mask[..., 5:9, 6:12], mask[..., 3:11, 15:19] = 2, 3, 1
        write_image(root / "imagesTr" / f"{case_id}_0000{ending}", (40 * mask).astype(np.uint8), geometry)
        write_segmentation(root / "labelsTr" / f"{case_id}{ending}", mask, geometry)
    return root


def test_a_mask_holding_a_label_without_the_ring_around_it_is_refused_as_a_box_file_is(tmp_path):
    """A mask with the LV drawn but not MYO, declared a ring around it, loaded while the same slip in a box file was
    refused: preprocessing then boxed the LV alone and trained MYO's filled region as absent around it."""
    root = cardiac_masks(tmp_path / "flat", ndim=2)
    assert len(load_raw_dataset(root).cases) == 2, "MYO around LV, RV beside: fine"
    mask = np.zeros((16, 20), np.uint8)
    mask[5:9, 6:12], mask[3:11, 15:19] = 3, 1
    write_segmentation(root / "labelsTr" / "v2.png", mask, Geometry.natural())
    message = load_error(root)
    assert ("- v2: LV is labelled but MYO is not; dataset.json declares MYO a ring around LV, so label MYO's pixels "
            "around it there too (or remove the LV label there;") in message and "- v1" not in message
    edit_meta(root, rings={})
    assert len(load_raw_dataset(root).cases) == 2, "without a declared ring, LV alone is a plain label"


def test_a_volume_slice_holding_a_label_without_its_ring_is_refused_naming_the_slice(tmp_path):
    root = cardiac_masks(tmp_path / "heart", ndim=3)
    volume = np.zeros((3, 16, 20), np.uint8)
    volume[0, 3:11, 4:14] = 2  # the ring alone (the apex): fine
    volume[1, 3:11, 4:14], volume[1, 5:9, 6:12] = 2, 3
    volume[2, 5:9, 6:12] = 3
    write_segmentation(root / "labelsTr" / "v1.nii.gz", volume, VOLUME)
    message = load_error(root)
    assert "- v1: LV is labelled on slice 2 but MYO is not; dataset.json declares MYO a ring around LV" in message
    assert "- v2" not in message


def test_a_volume_mask_is_checked_along_the_axis_the_dataset_is_sliced_along(tmp_path):
    """Samples are cut along the coarsest axis, where the ring must hold what it encloses; a slice across it that
    holds LV alone is never a sample."""
    lv_alone_on_a_z_slice = np.zeros((3, 16, 20), np.uint8)
    lv_alone_on_a_z_slice[1, 3:11, 4:14], lv_alone_on_a_z_slice[2, 5:9, 6:12] = 2, 3
    lv_alone_on_x_slices = np.zeros((3, 16, 20), np.uint8)
    lv_alone_on_x_slices[1, 3:11, 4:10], lv_alone_on_x_slices[1, 5:9, 10:13] = 2, 3
    for spacing, refused in (((1.5, 1.5, 5.0), "v1: LV is labelled on slice 2 but MYO is not;"),
                             ((5.0, 1.5, 1.5), "v2: LV is labelled on slices 10, 11, 12 along array axis 2 but MYO "
                                               "is not;")):
        root = cardiac_masks(tmp_path / f"sliced_{spacing[0]:g}", ndim=3, spacing=spacing)
        geometry = replace(VOLUME, spacing=spacing)
        write_segmentation(root / "labelsTr" / "v1.nii.gz", lv_alone_on_a_z_slice, geometry)
        write_segmentation(root / "labelsTr" / "v2.nii.gz", lv_alone_on_x_slices, geometry)
        message = load_error(root)
        assert f"- {refused}" in message and len(message.split("\n  - ")) == 2, "one case refused, not the other"


def test_mixed_2d_and_3d_cases(tmp_path):
    root = make_dataset(tmp_path / "ds", cases=("v1", "v2"), ndim=3)
    write_image(root / "imagesTr" / "flat_0000.nii.gz", np.zeros((16, 20), np.uint8), Geometry.natural())
    write_segmentation(root / "labelsTr" / "flat.nii.gz", np.ones((16, 20), np.uint8), Geometry.natural())
    assert "flat: the image is 2D while other cases are 3D" in load_error(root)


def test_every_offending_case_is_listed_at_once(tmp_path):
    root = make_dataset(tmp_path / "ds", cases=("a", "b", "c"))
    (root / "labelsTr" / "a.png").unlink()
    (root / "imagesTr" / "c_0000.png").write_bytes(b"")
    message = load_error(root)
    assert "problems in 2 case(s)" in message and "- a: image has no label" in message and "- c: " in message
    assert "- b:" not in message


def test_informational_warnings_and_ignored_files(tmp_path):
    root = make_dataset(tmp_path / "ds", meta={"numTraining": 5, "groups": {"zzz": "g"}})
    write_image(root / "imagesTr" / "case_a_0001.png", np.zeros((16, 20), np.uint8), Geometry.natural())
    (root / "imagesTr" / ".DS_Store").write_bytes(b"\0")
    (root / "labelsTr" / ".case_a.png.x1.partial.png").write_bytes(b"")
    warnings = load_raw_dataset(root).warnings
    assert any("numTraining=5 but imagesTr/ holds 2" in w for w in warnings)
    assert any("groups name cases that do not exist: zzz" in w for w in warnings)
    assert any("channels other than _0000" in w for w in warnings)


@pytest.mark.realdata
def test_real_acdc_volumes_load(shared_data, tmp_path):
    root = tmp_path / "Dataset002_ACDC"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for label in sorted((shared_data / "ACDC" / "training").glob("patient00*/*_gt.nii.gz"))[:4]:
        case_id = label.name[: -len("_gt.nii.gz")]
        (root / "imagesTr" / f"{case_id}_0000.nii.gz").symlink_to(label.with_name(f"{case_id}.nii.gz"))
        (root / "labelsTr" / f"{case_id}.nii.gz").symlink_to(label)
    meta = {"channel_names": {"0": "cineMRI"}, "labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3},
            "numTraining": 4, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    dataset = load_raw_dataset(root)
    assert len(dataset.cases) == 4 and dataset.label_ids == [1, 2, 3]
    assert all(case.label is not None for case in dataset.cases)


def test_a_dataset_folder_must_be_one_the_commands_can_name(roots, tmp_path):
    """Its preprocessed and results folders take its name: `myds2` or `.` could not be named by -d, and a second
    Dataset001_* made -d 1 ambiguous."""
    (roots["preprocessed"] / "Dataset001_Other").mkdir()
    for unnamed in (make_dataset(tmp_path / "myds2"), Path(".")):
        with pytest.raises(AutomedsamError, match="is not named DatasetXXX_Name"):
            check_dataset_folder(unnamed)
    elsewhere = make_dataset(tmp_path / "disk" / "Dataset001_Toy")
    with pytest.raises(AutomedsamError, match=r"id 001 of .* is already used by Dataset001_Other in .*preprocessed"):
        check_dataset_folder(elsewhere)
    (roots["raw"] / "Dataset001_Toy").symlink_to(elsewhere)  # the raw root's own dataset, linked in: found as it is
    check_dataset_folder(roots["raw"] / "Dataset001_Toy")
    check_dataset_folder(elsewhere)
    check_dataset_folder(make_dataset(tmp_path / "disk" / "Dataset002_Toy"))


def test_a_dataset_folder_elsewhere_with_the_name_of_a_raw_roots_dataset_is_refused(roots, tmp_path):
    """elsewhere/Dataset020_Thy (label cyst) replaced preprocessed/Dataset020_Thy of raw/Dataset020_Thy (label
    nodule) without a word, and the commands after it mixed the two datasets."""
    make_dataset(roots["raw"] / "Dataset020_Thy", meta={"labels": {"background": 0, "nodule": 1}})
    elsewhere = make_dataset(tmp_path / "elsewhere" / "Dataset020_Thy", meta={"labels": {"background": 0, "cyst": 1}})
    planned = roots["preprocessed"] / "Dataset020_Thy"
    planned.mkdir()
    (planned / "plans.json").write_text("{}")
    before = snapshot(roots["preprocessed"])
    with pytest.raises(AutomedsamError, match=r"Dataset020_Thy has the name of the dataset .*raw.Dataset020_Thy.*"
                                              r"Rename the folder"):
        plan_and_preprocess(str(elsewhere), plan_only=True, num_workers=1, progress=False)
    assert snapshot(roots["preprocessed"]) == before, "the raw root's dataset keeps its preprocessed folder"


def test_a_dataset_given_as_dot_inside_its_folder_takes_that_folders_name(roots, monkeypatch):
    """`-d .` inside raw/Dataset004_Here gave a dataset named '' (its preprocessed files written into the
    preprocessed root itself), then was refused as 'not named DatasetXXX_Name'."""
    folder = make_dataset(roots["raw"] / "Dataset004_Here")
    monkeypatch.chdir(folder)
    dataset = load_raw_dataset(".", check_images=False)
    assert dataset.name == "Dataset004_Here"
    check_dataset_folder(dataset.root)
