"""An interactively annotated dataset: imported without annotation, N samples drawn among all samples, the draw kept
while boxes arrive, a rejected sample replaced by the next of the seeded order, review additions kept."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_raw import ring_volume, volume_geometry, write_dataset

from automedsam.conversion import convert_folder
from automedsam.dataset import load_raw_dataset
from automedsam.errors import AutomedsamError
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.planning.splits import make_splits
from automedsam.samples import case_of, slice_of


def image_case(case: str, *, boxes: bool | None = None) -> dict:
    """A 2D case of the fingerprint: not annotated (None), boxed (True) or shown with an empty box file (False)."""
    return {"case": case, "group": case, "shape": [32, 32], "annotation": "none" if boxes is None else "boxes",
            "has_foreground": bool(boxes), "foreground_slices": None}


def volume_case(case: str, *, depth: int = 4, mask: tuple[int, ...] | None = None) -> dict:
    """A volume of the fingerprint, slices along array axis 0: not annotated, or with a label map whose foreground
    lies on the slices `mask` names."""
    annotation = {"annotation": "none", "has_foreground": False, "foreground_slices": None}
    if mask is not None:
        annotation = {"annotation": "masks", "has_foreground": bool(mask),
                      "foreground_slices": {"0": list(mask), "1": [], "2": []}}
    return {"case": case, "group": case, "shape": [depth, 32, 32], "spacing": [1.0, 1.0, 3.0], **annotation}


def interactive(cases: list[dict], is_3d: bool = False) -> dict:
    return {"dataset_name": "Dataset009_Test", "cases": cases, "interactive": True, "is_3d": is_3d,
            "box_slice_axis": 0 if is_3d else None, "annotation": {"masks": 0, "boxes": 0, "none": len(cases)}}


def test_draws_n_among_all_samples_and_lists_them_to_annotate():
    splits = make_splits(interactive([image_case(f"c{i:02d}") for i in range(20)]), None, shots=6, folds=3, seed=0)
    assert len(splits["labelled"]) == 6
    assert sorted(splits["interactive"]["to_annotate"]) == splits["labelled"]
    assert splits["interactive"]["order"][:6] == splits["interactive"]["to_annotate"]
    assert sorted(splits["interactive"]["order"]) == [f"c{i:02d}" for i in range(20)]


def test_boxes_arriving_keep_the_draw_and_a_rejection_brings_in_the_next_sample():
    cases = [image_case(f"c{i:02d}") for i in range(20)]
    first = make_splits(interactive(cases), None, shots=6, folds=3, seed=0)
    order = first["interactive"]["order"]
    annotated = {case["case"]: case for case in cases}
    for sid in order[:5]:
        annotated[sid] = image_case(sid, boxes=True)
    annotated[order[5]] = image_case(order[5], boxes=False)  # shown: the structure is not in it
    second = make_splits(interactive(list(annotated.values())), None, shots=6, folds=3, seed=0, previous=first)
    assert second["interactive"]["order"] == order
    assert second["labelled"] == sorted(order[:5] + [order[6]])
    assert second["interactive"]["rejected"] == [order[5]]
    assert second["interactive"]["to_annotate"] == [order[6]]


def test_rejections_and_review_additions_recorded_in_splits_are_kept():
    cases = [image_case(f"c{i:02d}") for i in range(12)]
    first = make_splits(interactive(cases), None, shots=4, folds=2, seed=3)
    order = first["interactive"]["order"]
    previous = {**first, "interactive": {**first["interactive"], "rejected": [order[0]], "added": [order[-1]]}}
    again = make_splits(interactive(cases), None, shots=4, folds=2, seed=3, previous=previous)
    assert again["labelled"] == sorted(order[1:5] + [order[-1]])
    assert again["interactive"]["added"] == [order[-1]]


def test_a_rejected_sample_that_was_boxed_since_is_labelled_again():
    """Boxes drawn on a sample override an earlier rejection of it: the annotator changed their mind."""
    cases = [image_case(f"c{i:02d}") for i in range(12)]
    first = make_splits(interactive(cases), None, shots=4, folds=2, seed=3)
    order = first["interactive"]["order"]
    previous = {**first, "interactive": {**first["interactive"], "rejected": [order[0]]}}
    cases = [image_case(case["case"], boxes=True) if case["case"] == order[0] else case for case in cases]
    again = make_splits(interactive(cases), None, shots=4, folds=2, seed=3, previous=previous)
    assert order[0] in again["labelled"] and again["interactive"]["rejected"] == []


def test_images_imported_later_join_the_end_of_the_order_and_the_boxed_draw_stays():
    """Boxing the 3 drawn samples of 8 images, then importing 4 more (automedsam_convert folder --overwrite) and
    planning again redrew the whole order: other samples were labelled and the 3 boxed ones left the draw."""
    first = make_splits(interactive([image_case(f"c{i:02d}") for i in range(8)]), None, shots=3, folds=2, seed=0)
    order = first["interactive"]["order"]
    boxed = {sid: image_case(sid, boxes=True) for sid in first["labelled"]}
    more = [boxed.get(f"c{i:02d}", image_case(f"c{i:02d}")) for i in range(12)]
    again = make_splits(interactive(more), None, shots=3, folds=2, seed=0, previous=first)
    assert again["labelled"] == first["labelled"] and again["interactive"]["to_annotate"] == []
    assert again["interactive"]["order"][:8] == order
    assert sorted(again["interactive"]["order"][8:]) == ["c08", "c09", "c10", "c11"]
    assert make_splits(interactive(more), None, shots=3, folds=2, seed=0, previous=first) == again  # reproducible


def test_a_removed_image_leaves_the_order_without_reshuffling_the_others():
    cases = [image_case(f"c{i:02d}") for i in range(8)]
    first = make_splits(interactive(cases), None, shots=3, folds=2, seed=0)
    order = first["interactive"]["order"]
    gone = order[1]
    again = make_splits(interactive([case for case in cases if case["case"] != gone]), None, shots=3, folds=2,
                        seed=0, previous=first)
    assert again["interactive"]["order"] == [sid for sid in order if sid != gone]
    assert again["interactive"]["to_annotate"] == [order[0], order[2], order[3]]
    other_seed = make_splits(interactive(cases), None, shots=3, folds=2, seed=5, previous=first)
    assert other_seed["interactive"]["order"] == make_splits(interactive(cases), None, shots=3, folds=2,
                                                             seed=5)["interactive"]["order"]

def test_volumes_draw_slices_along_the_box_axis_and_boxed_slices_count_as_annotated():
    volume = {"case": "v1", "group": "v1", "shape": [6, 32, 32], "spacing": [1.0, 1.0, 3.0], "annotation": "boxes",
              "has_foreground": True, "foreground_slices": {"0": [2]}}
    other = {**volume, "case": "v2", "group": "v2", "annotation": "none", "has_foreground": False,
             "foreground_slices": None}
    splits = make_splits(interactive([volume, other], is_3d=True), 0, shots=12, folds=2, seed=0)
    assert sorted(splits["labelled"]) == sorted([f"v{v}__z{z:03d}" for v in (1, 2) for z in range(6)])
    assert "v1__z002" not in splits["interactive"]["to_annotate"] and len(splits["interactive"]["to_annotate"]) == 11


def test_the_draw_of_volumes_in_one_axis_order_is_the_one_drawn_before():
    """Leaving volumes stored in another axis order out of the order must not move the draws of datasets without."""
    splits = make_splits(interactive([volume_case(f"v{i}") for i in range(3)], is_3d=True), 0, shots=5, folds=2,
                         seed=1)
    assert splits["interactive"]["order"] == ["v2__z003", "v1__z003", "v0__z000", "v2__z000", "v1__z000", "v0__z001",
                                              "v2__z001", "v1__z002", "v0__z002", "v2__z002", "v1__z001", "v0__z003"]
    assert splits["folds"][0] == {"train": ["v1__z000", "v1__z003"], "val": ["v0__z000", "v2__z000", "v2__z003"]}


@pytest.mark.parametrize("shots", [4, "all"])
def test_a_volume_in_another_axis_order_is_not_drawn_to_box(shots):
    """Its slices along axis 0 are strips across its own slices: they were drawn for the annotator to box."""
    permuted = {**volume_case("permuted", depth=32), "shape": [32, 32, 4], "spacing": [3.0, 1.0, 1.0]}
    fp = interactive([volume_case(f"v{i}") for i in range(3)] + [permuted], is_3d=True)
    splits = make_splits(fp, 0, shots=shots, folds=2, seed=0)
    assert not [sid for sid in splits["interactive"]["order"] + splits["labelled"] if case_of(sid) == "permuted"]
    assert len(splits["interactive"]["order"]) == 12 and len(splits["labelled"]) == (12 if shots == "all" else 4)


def test_label_maps_annotate_their_samples_and_show_where_the_structure_is_not():
    """Cases with label maps in an interactive dataset: their samples were asked to be boxed (a box on them was
    never read, the label map being the case's annotation, so the draw never got done), and slices whose label
    map is empty were drawn to box."""
    plain = interactive([volume_case(f"v{i}") for i in range(4)], is_3d=True)
    order = make_splits(plain, 0, shots=6, folds=2, seed=2)["interactive"]["order"]
    masked = interactive([volume_case("v0", mask=(1, 2)), volume_case("v1", mask=()), volume_case("v2"),
                          volume_case("v3")], is_3d=True)
    splits = make_splits(masked, 0, shots=6, folds=2, seed=2)
    empty = {"v0__z000", "v0__z003"} | {f"v1__z{z:03d}" for z in range(4)}
    assert splits["interactive"]["order"] == [sid for sid in order if sid not in empty], "the others keep their order"
    assert splits["labelled"] == sorted(splits["interactive"]["order"][:6])
    assert sorted(splits["interactive"]["to_annotate"]) == [sid for sid in splits["labelled"]
                                                            if case_of(sid) in ("v2", "v3")]
    assert splits["interactive"]["rejected"] == [] and "passing over 6 whose label maps" in splits["reason"]
    assert {"v0__z001", "v0__z002"} <= set(make_splits(masked, 0, shots="all", folds=2, seed=2)["labelled"])


def test_too_many_rejections_is_an_error_naming_shots():
    cases = [image_case(f"c{i}", boxes=False) for i in range(3)] + [image_case("c3")]
    with pytest.raises(AutomedsamError, match="--shots"):
        make_splits(interactive(cases), None, shots=2, folds=2, seed=0)


@pytest.fixture
def unlabelled_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for index in range(8):
        image = rng.integers(0, 200, (24, 32), dtype=np.uint8)
        (tmp_path / "scans").mkdir(exist_ok=True)
        Image.fromarray(image).save(tmp_path / "scans" / f"scan{index}.png")
    return tmp_path / "scans"


def test_folder_without_annotation_is_an_interactive_dataset_with_its_labels(unlabelled_folder: Path, roots):
    target = convert_folder(unlabelled_folder, dataset_id=7, name="Scans", label_names=["head", "brain"])
    meta = json.loads((target / "dataset.json").read_text())
    assert meta["annotation"] == "interactive" and meta["labels"] == {"background": 0, "head": 1, "brain": 2}
    dataset = load_raw_dataset(7)
    assert dataset.interactive and len(dataset.cases) == 8
    assert all(case.boxes is None and case.label is None for case in dataset.cases)


def test_plan_and_preprocess_plans_and_waits_for_the_boxes_then_keeps_the_draw(unlabelled_folder: Path, roots):
    convert_folder(unlabelled_folder, dataset_id=7, name="Scans", label_names=["head"])
    summary = plan_and_preprocess(7, shots=4, folds=2, num_workers=1, progress=False)
    assert summary.to_annotate == 4 and summary.preprocessing is None
    assert "automedsam_annotate" in summary.line()
    out = roots["preprocessed"] / "Dataset007_Scans"
    drawn = json.loads((out / "splits.json").read_text())
    assert (out / "plans.json").is_file() and not (out / "samples").exists()
    boxes = roots["raw"] / "Dataset007_Scans" / "boxesTr"
    boxes.mkdir()
    for sid in drawn["labelled"][:3]:
        (boxes / f"{sid}.json").write_text(json.dumps([{"label": 1, "box": [2, 3, 20, 15]}]))
    again = plan_and_preprocess(7, shots=4, folds=2, num_workers=1, plan_only=True, progress=False)
    redrawn = json.loads((out / "splits.json").read_text())
    assert redrawn["labelled"] == drawn["labelled"] and again.to_annotate == 1
    assert redrawn["interactive"]["to_annotate"] == drawn["labelled"][3:]


def test_replanning_without_options_keeps_the_recorded_draw(unlabelled_folder: Path, roots):
    """The annotator boxed the samples of a --seed 3 --shots 5 --folds 3 draw: `plan_and_preprocess -d 7` (what the
    annotation guide and the page run next) keeps that draw instead of redrawing with the defaults."""
    convert_folder(unlabelled_folder, dataset_id=7, name="Scans", label_names=["head"])
    plan_and_preprocess(7, shots=5, folds=3, seed=3, num_workers=1, plan_only=True, progress=False)
    out = roots["preprocessed"] / "Dataset007_Scans"
    drawn = json.loads((out / "splits.json").read_text())
    boxes = roots["raw"] / "Dataset007_Scans" / "boxesTr"
    boxes.mkdir()
    for sid in drawn["labelled"]:
        (boxes / f"{sid}.json").write_text(json.dumps([{"label": 1, "box": [2, 3, 20, 15]}]))
    summary = plan_and_preprocess(7, num_workers=1, plan_only=True, progress=False)
    again = json.loads((out / "splits.json").read_text())
    assert summary.to_annotate == 0
    assert (again["seed"], again["shots"], len(again["folds"])) == (3, 5, 3)
    assert again["labelled"] == drawn["labelled"] and again["interactive"]["order"] == drawn["interactive"]["order"]
    asked = plan_and_preprocess(7, seed=4, num_workers=1, plan_only=True, progress=False)
    assert json.loads((out / "splits.json").read_text())["seed"] == 4 and asked.to_annotate > 0


def interactive_volumes(raw: Path, *, masked: int = 0, permuted: bool = False) -> Path:
    """Dataset002_Heart imported for the page: 4 volumes of 6 slices along array axis 0, the first `masked` with
    their label maps (slice 0 empty), and with `permuted` one more volume stored in another axis order."""
    rng = np.random.default_rng(2)
    cases = []
    for index in range(4):
        label = ring_volume(rng)
        image = (rng.normal(0.2, 0.05, label.shape) + 0.2 * label).astype(np.float32)
        cases.append({"id": f"p{index}", "image": image, "label": label if index < masked else None,
                      "geometry": volume_geometry()})
    if permuted:
        cases.append({**cases[-1], "id": "permuted", "image": np.ascontiguousarray(cases[-1]["image"].transpose()),
                      "label": None, "geometry": volume_geometry((3.0, 1.0, 1.0))})
    return write_dataset(raw, "Dataset002_Heart", cases, {"background": 0, "RV": 1, "MYO": 2, "LV": 3},
                         extra={"annotation": "interactive"})


def plan_draw(shots: int | str) -> tuple[list[str], dict]:
    summary = plan_and_preprocess(2, shots=shots, folds=2, seed=0, num_workers=1, plan_only=True, progress=False)
    return summary.notes, json.loads((summary.out_dir / "splits.json").read_text())


def test_a_volume_in_another_axis_order_is_named_and_left_out_of_the_draw_to_box(roots, tiny_foundation):
    """Its slices along the box axis are strips: they were drawn for the annotator to box, unnoted."""
    interactive_volumes(roots["raw"], permuted=True)
    notes, splits = plan_draw(30)
    named = [note for note in notes if "another axis order" in note]
    assert len(named) == 1 and "permuted (slices along array axis 2" in named[0]
    assert "none of their samples is labelled, with --shots all too, nor drawn to annotate" in named[0]
    assert len(splits["labelled"]) == 24 and not [sid for sid in splits["interactive"]["order"]
                                                  if case_of(sid) == "permuted"]


def test_boxing_the_drawn_samples_without_label_maps_completes_the_draw(roots, tiny_foundation):
    """A drawn slice of a case with a label map stayed to annotate whatever was boxed on it (the label map is the
    case's annotation), so preprocessing never started."""
    root = interactive_volumes(roots["raw"], masked=2)
    _, drawn = plan_draw(6)
    assert not [sid for sid in drawn["labelled"] if case_of(sid) in ("p0", "p1") and sid.endswith("z000")]
    to_box = drawn["interactive"]["to_annotate"]
    assert to_box and all(case_of(sid) in ("p2", "p3") for sid in to_box)
    boxes: dict[str, list] = {}
    for sid in to_box:
        boxes.setdefault(case_of(sid), []).append({"label": 3, "box": [20, 12, 36, 28], "slice": slice_of(sid)})
    (root / "boxesTr").mkdir()
    for case, entries in boxes.items():
        (root / "boxesTr" / f"{case}.json").write_text(json.dumps(entries))
    _, again = plan_draw(6)
    assert again["labelled"] == drawn["labelled"] and again["interactive"]["to_annotate"] == []


def test_every_sample_drawn_goes_on_without_the_rejected_ones_and_an_added_rejected_sample_is_not_labelled():
    """--shots all with one sample marked No structure failed with 'Only 3 samples are left ... needs more'; and a
    sample added in review, then rejected, stayed labelled."""
    cases = [image_case(f"c{i:02d}") for i in range(4)]
    first = make_splits(interactive(cases), None, shots="all", folds=2, seed=0)
    rejected = first["interactive"]["order"][0]
    again = make_splits(interactive(cases), None, shots="all", folds=2, seed=0,
                        previous={"interactive": {"rejected": [rejected], "added": []}})
    assert sorted(again["labelled"]) == sorted(set(first["labelled"]) - {rejected})
    taken_back = make_splits(interactive(cases), None, shots=2, folds=2, seed=0,
                             previous={"interactive": {"rejected": ["c03"], "added": ["c03"]}})
    assert "c03" not in taken_back["labelled"] and taken_back["interactive"]["added"] == []


def test_what_the_page_took_back_while_a_plan_ran_stays_taken_back(tmp_path: Path):
    """An added sample marked No structure while a terminal planned came back in `added` when the plan was saved."""
    from automedsam.planning.plan_and_preprocess import _save_splits

    previous = {"interactive": {"added": ["x"], "rejected": ["y"]}}
    (tmp_path / "splits.json").write_text(json.dumps({"interactive": {"added": ["z"], "rejected": ["x"]}}))
    planned = {"labelled": ["a", "x"], "interactive": {"added": ["x"], "rejected": ["y"]}}
    notes = _save_splits(tmp_path, planned, previous=previous, boxes_dir=tmp_path / "boxesTr")
    saved = json.loads((tmp_path / "splits.json").read_text())["interactive"]
    assert saved == {"added": ["z"], "rejected": ["x"]}, "x rejected and y boxed by the page meanwhile, z accepted"
    assert notes and "z" in notes[0]
