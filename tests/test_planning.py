"""Planner rules on hand-made fingerprints and label statistics: each choice follows its rule and explains itself."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import SimpleITK as sitk
from synthetic_raw import make_3d_ring

from automedsam.errors import AutomedsamError
from automedsam.planning.planner import (DEFAULT_PRECISION, DEFAULT_VIEWS, MARGIN_BOUNDS, MARGIN_MIN_WIDTH,
                                         MARGIN_SLACK, MAX_AUGMENTED_LABELLED, PAPER_MARGINS, PLAN_SECTIONS, PLANS_NAME,
                                         check_plans, plan_augmentation, undeclared_ring_notes)
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.planning.splits import cases_cut_across
from automedsam.planning.planner import plan as plan_from
from automedsam.plans import ALL_LABELS, FEW_SHOT
from automedsam.samples import case_of, slicing_axis

CONTRACT_KEYS = {
    "foundation_model": {"name", "checkpoint", "input_size", "precision"},
    "slicing": {"is_3d", "axis"},
    "normalization": {"scheme", "lower", "upper"},
    "prompt_module": {"center_channels", "num_points"},
    "losses": {"empty_bce", "tightness", "box_size", "log_barrier_t"},
    "training": {"optimizer", "lr", "weight_decay", "epochs", "batch_size", "lr_step_epoch", "lr_gamma", "val_every",
                 "seed"},
    "postprocessing": {"largest_component"},
}


def spread(p5: float, median: float, p95: float) -> dict:
    return {"p5": p5, "median": median, "p95": p95, "min": p5, "max": p95, "count": 10}


def label_stats(name: str, label: int, objects_p95: float | None = 1, fill: tuple = (0.7, 0.78, 0.8),
                component_fill: tuple | None = None, filled: tuple | None = None, enclosed: tuple[int, ...] = (),
                masks: bool = True, ellipse: float = 0.85, shape: str | None = None) -> dict:
    """One label's statistics; `enclosed` and `shape` are what dataset.json declares for it."""
    measured = masks and objects_p95 is not None
    return {
        "name": name, "label": label, "samples_present": 10 if objects_p95 is not None else 0, "presence": 1.0,
        "objects_per_image": None if objects_p95 is None else {"median": 1, "p95": objects_p95, "min": 1,
                                                                "max": objects_p95, "count": 10},
        "relative_size": None if objects_p95 is None else spread(0.01, 0.02, 0.05),
        "fill_ratio": spread(*fill) if measured else None,
        "fill_ratio_per_component": spread(*(component_fill or fill)) if measured else None,
        "filled_fill_ratio": spread(*(filled or fill)) if measured else None,
        "filled_ellipse_dice": spread(ellipse - 0.02, ellipse, ellipse + 0.01) if measured else None,
        "declared": {"enclosed": list(enclosed), "shape": shape},
    }


def volume_cases(count: int, shape: tuple[int, int, int] = (8, 32, 32)) -> list[dict]:
    return [{"case": f"c{i}", "group": f"g{i}", "shape": list(shape), "spacing": [1.0, 1.0, 5.0],
             "annotation": "masks", "has_foreground": True,
             "foreground_slices": {"0": [1, 2, 3, 4], "1": list(range(8, 20)), "2": list(range(8, 20))}}
            for i in range(count)]


def make_fingerprint(channel: str = "MRI", is_3d: bool = True, labels: list[dict] | None = None,
                     cases: list[dict] | None = None, foreground: bool = True, boxes: bool = False,
                     source: str = "box_prompts") -> dict:
    """A fingerprint, with what the test's label statistics need under "test_statistics" (see `plan`)."""
    labels = labels or [label_stats("organ", 1)]
    cases = cases if cases is not None else volume_cases(12)
    return {
        "dataset_name": "Dataset007_Test", "channel_names": {"0": channel},
        "labels": {str(s["label"]): s["name"] for s in labels}, "is_3d": is_3d,
        "median_spacing": [1.0, 1.0, 5.0], "coarsest_axis": 0 if is_3d else None,
        "box_slice_axis": 0 if boxes and is_3d else None,
        "annotation": {"masks": 0 if boxes else len(cases), "boxes": len(cases) if boxes else 0, "none": 0},
        "intensity": {"all": {"p0_5": -1000.0, "p99_5": 1500.0, "mean": 0.0, "std": 1.0, "min": -1024, "max": 3000}},
        "cases": cases,
        "test_statistics": {"labels": labels, "foreground": foreground, "source": "boxes" if boxes else source},
    }


def statistics_of(fingerprint: dict, shots: int | str) -> dict:
    """label_statistics.json as label_statistics.py writes it, for the fingerprint's test labels and `shots`."""
    test = fingerprint["test_statistics"]
    labels = copy.deepcopy(test["labels"])
    declared = {"rings": {str(s["label"]): s["declared"]["enclosed"] for s in labels if s["declared"]["enclosed"]},
                "shapes": {str(s["label"]): s["declared"]["shape"] for s in labels if s["declared"]["shape"]}}
    for stats in labels:
        del stats["declared"]
    count = 12 * 8 if shots == "all" else int(shots)
    return {"regime": ALL_LABELS if shots == "all" else FEW_SHOT, "shots": shots,
            "labelled_samples": [f"c{i}" for i in range(count)], "shape_source": test["source"],
            "foundation_model": None, "declared": declared,
            "foreground_intensity": {"p0_5": -100.0, "p99_5": 250.0, "mean": 40.0, "std": 30.0, "min": -200,
                                     "max": 400} if test["foreground"] else None,
            "foreground_source": "boxes" if test["foreground"] else None,
            "label_statistics": {str(s["label"]): s for s in labels}, "box_nesting": {}}


def plan(fingerprint: dict, shots: int | str = 10, **options) -> dict:
    return plan_from(fingerprint, statistics_of(fingerprint, shots), **options)


def test_every_section_of_the_contract_is_present_with_a_reason():
    plans = plan(make_fingerprint())
    assert plans["plans_name"] == PLANS_NAME and plans["dataset_name"] == "Dataset007_Test"
    for section in PLAN_SECTIONS:
        entries = plans[section] if section == "targets" else [plans[section]]
        for entry in entries:
            assert isinstance(entry["reason"], str) and len(entry["reason"]) > 20, section
    for section, keys in CONTRACT_KEYS.items():
        assert keys <= set(plans[section]), section
    assert {"label", "name", "region", "subtract", "per_component"} <= set(plans["targets"][0])


def test_ct_clips_to_the_foreground_window():
    normalization = plan(make_fingerprint(channel="CT"))["normalization"]
    assert normalization["scheme"] == "ct_foreground_window"
    assert (normalization["lower"], normalization["upper"]) == (-100.0, 250.0)
    assert "labelled samples' foreground (boxes)" in normalization["reason"]


def test_ct_without_known_foreground_falls_back_to_all_pixels():
    normalization = plan(make_fingerprint(channel="ct", foreground=False))["normalization"]
    assert (normalization["lower"], normalization["upper"]) == (-1000.0, 1500.0)
    assert "no foreground" in normalization["reason"]


@pytest.mark.parametrize("channel", ["MRI", "ultrasound", "T2"])
def test_other_modalities_clip_to_dataset_percentiles(channel):
    normalization = plan(make_fingerprint(channel=channel))["normalization"]
    assert normalization["scheme"] == "percentile_window"
    assert (normalization["lower"], normalization["upper"]) == (-1000.0, 1500.0)


def test_volumes_are_sliced_along_the_coarsest_axis_and_images_not_at_all():
    fingerprint = make_fingerprint()
    fingerprint["coarsest_axis"] = 2
    slicing = plan(fingerprint)["slicing"]
    assert slicing["is_3d"] is True and slicing["axis"] == 2 and "coarsest" in slicing["reason"]
    flat = make_fingerprint(is_3d=False, cases=[{"case": f"c{i}", "group": f"g{i}", "shape": [32, 32],
                                                 "annotation": "masks", "has_foreground": True,
                                                 "foreground_slices": None} for i in range(6)])
    slicing = plan(flat)["slicing"]
    assert slicing["is_3d"] is False and slicing["axis"] is None


def test_slices_saved_as_volumes_are_sliced_along_their_one_voxel_axis():
    """(1, H, W) volumes with 1.5 mm pixels and a 1 mm slice were cut along Y into H images one row high."""
    assert slicing_axis((1.0, 1.5, 1.5), (1, 60, 80)) == 0
    assert slicing_axis((1.0, 1.5, 1.5), (40, 60, 80)) == 1  # a true volume: the coarsest axis
    assert slicing_axis((1.0, 1.0, 1.0), (5, 60, 1)) == 2


def add_permuted_copy(root: Path, case: str, *, order: list[int], name: str = "permuted") -> None:
    """Case `case` written again as `name` in another axis order (sitk.PermuteAxes), its own group."""
    for folder, suffix in (("imagesTr", "_0000"), ("labelsTr", "")):
        image = sitk.ReadImage(str(root / folder / f"{case}{suffix}.nii.gz"))
        sitk.WriteImage(sitk.PermuteAxes(image, order), str(root / folder / f"{name}{suffix}.nii.gz"))
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] += 1
    meta["groups"][name] = name
    (root / "dataset.json").write_text(json.dumps(meta))


def plan_notes(dataset: str, shots: int | str) -> tuple[list[str], list[str]]:
    """The notes and the labelled samples of planning `dataset` (no preprocessing)."""
    summary = plan_and_preprocess(dataset, shots=shots, folds=2, seed=0, num_workers=1, device="cpu",
                                  plan_only=True, progress=False)
    splits = json.loads((summary.out_dir / "splits.json").read_text())
    return summary.notes, splits["labelled"]


@pytest.mark.parametrize("order", [[0, 2, 1], [2, 1, 0]])
def test_a_volume_in_another_axis_order_is_named_with_its_fix_and_left_out_of_the_draw(roots, tiny_foundation,
                                                                                       order):
    """A training volume stored permuted was cut into strips across its slices, and drawn to annotate, unnoted."""
    root = make_3d_ring(roots["raw"], n_cases=4)
    add_permuted_copy(root, "patient000_frame01", order=order)
    notes, labelled = plan_notes("2", shots=8)
    named = [note for note in notes if "another axis order" in note]
    assert len(named) == 1 and f"permuted (slices along array axis {2 - order.index(2)}" in named[0]
    assert f"sitk.PermuteAxes order {order}" in named[0] and "patient000" not in named[0]
    assert "none of their samples is labelled" in named[0]
    assert len(labelled) == 8 and not [sid for sid in labelled if case_of(sid) == "permuted"]


def test_volumes_all_stored_across_the_planned_axis_are_their_datasets_layout_not_odd_ones_out():
    """Box files fix axis 0 whatever the spacing: were every volume's slices along axis 2, leaving them all out of
    the draw would leave nothing to label."""
    sagittal = {"shape": [40, 48, 6], "spacing": [5.0, 1.0, 1.0]}  # ITK (x, y, z): 5 mm along array axis 2
    axial = {"shape": [6, 40, 48], "spacing": [1.0, 1.0, 5.0]}
    fingerprint = {"cases": [{"case": f"s{index}", **sagittal} for index in range(3)]}
    assert cases_cut_across(fingerprint, 0) == {}
    fingerprint["cases"].append({"case": "a0", **axial})
    assert cases_cut_across(fingerprint, 2) == {"a0": 0}, "one volume unlike the others is still named"


def test_volumes_in_one_axis_order_get_no_axis_order_note(roots, tiny_foundation):
    make_3d_ring(roots["raw"], n_cases=4)
    notes, _ = plan_notes("2", shots=8)
    assert not [note for note in notes if "axis order" in note]


def test_boxes_of_volumes_fix_the_slicing_axis_to_the_box_files_axis():
    fingerprint = make_fingerprint(boxes=True)
    fingerprint["coarsest_axis"] = 2
    assert plan(fingerprint)["slicing"]["axis"] == 0


def test_a_declared_ring_becomes_a_filled_region_minus_its_enclosed_label():
    labels = [label_stats("RV", 1), label_stats("MYO", 2, fill=(0.4, 0.5, 0.55), filled=(0.7, 0.78, 0.82),
                                                enclosed=(3,), ellipse=0.966),
              label_stats("LV", 3)]
    plans = plan(make_fingerprint(labels=labels))
    targets = {target["label"]: target for target in plans["targets"]}
    assert targets[2]["region"] == [2, 3] and targets[2]["subtract"] == [3]
    assert targets[1]["region"] == [1] and targets[1]["subtract"] == []
    assert targets[3]["region"] == [3] and targets[3]["subtract"] == []
    assert "declared a ring" in targets[2]["reason"]
    assert targets[2]["pseudo_label"] == "inscribed_ellipse", \
        "a ring's box prompt gives the cavity; its region is round"
    assert "cavity" in targets[2]["reason"] and "0.966" in targets[2]["reason"]
    assert targets[1]["pseudo_label"] == "box_prompt" and targets[3]["pseudo_label"] == "box_prompt"
    low, high = plans["losses"]["box_size"]["target_margins"]["2"]
    assert low == pytest.approx(0.7 - MARGIN_SLACK), "the ring's filled region, not the thin ring, sets its margins"
    assert high == pytest.approx(0.82 + MARGIN_SLACK)


def nested(pairs: dict[tuple[int, int], tuple[int, int]]) -> dict:
    """label_statistics.json's box_nesting: (outer, inner) -> (samples holding both, inner's box inside outer's)."""
    nesting: dict = {}
    for (outer, inner), (together, inside) in pairs.items():
        nesting.setdefault(str(outer), {})[str(inner)] = {"together": together, "inside": inside}
    return nesting


CARDIAC_NESTING = nested({(2, 3): (4, 4), (3, 2): (4, 0), (1, 2): (4, 1), (2, 1): (4, 0), (1, 3): (4, 0),
                          (3, 1): (4, 0)})


def test_a_ring_declared_backwards_is_refused_naming_the_swap():
    """`{"LV": ["MYO"]}` for the myocardium around its cavity trained MYO as nearly nothing and LV as MYO's region."""
    labels = [label_stats("RV", 1), label_stats("MYO", 2), label_stats("LV", 3, enclosed=(2,))]
    fingerprint = make_fingerprint(labels=labels)
    statistics = statistics_of(fingerprint, 4) | {"box_nesting": CARDIAC_NESTING}
    with pytest.raises(AutomedsamError) as refused:
        plan_from(fingerprint, statistics)
    assert ("declares LV a ring around MYO, but on 4 of the 4 labelled samples holding both, LV's box lies inside "
            'MYO\'s' in str(refused.value)) and 'Did you mean "rings": {"MYO": ["LV"]}?' in str(refused.value)
    labels[1], labels[2] = label_stats("MYO", 2, enclosed=(3,)), label_stats("LV", 3)
    fingerprint = make_fingerprint(labels=labels)
    targets = plan_from(fingerprint, statistics_of(fingerprint, 4) | {"box_nesting": CARDIAC_NESTING})["targets"]
    assert targets[1]["region"] == [2, 3], "declared the right way round, the ring is planned"


def test_nested_labels_without_a_declared_ring_get_a_note_and_others_none():
    """nnU-Net datasets such as ACDC come without rings: MYO learnt as its own thin pixels lost most of its Dice."""
    plain = [label_stats("RV", 1), label_stats("MYO", 2), label_stats("LV", 3)]
    statistics = statistics_of(make_fingerprint(labels=plain), 4) | {"box_nesting": CARDIAC_NESTING}
    notes = undeclared_ring_notes(statistics)
    assert len(notes) == 1 and notes[0].startswith("LV's box lies inside MYO's on 4 of the 4 labelled samples "
                                                   "holding both, but dataset.json declares no ring between them")
    assert 'declare "rings": {"MYO": ["LV"]} in dataset.json' in notes[0], "RV beside MYO (nested once) is no ring"
    declared = [label_stats("RV", 1), label_stats("MYO", 2, enclosed=(3,)), label_stats("LV", 3)]
    assert undeclared_ring_notes(statistics_of(make_fingerprint(labels=declared), 4)
                                 | {"box_nesting": CARDIAC_NESTING}) == []
    half = nested({(2, 3): (4, 2), (3, 2): (4, 0)})
    assert undeclared_ring_notes(statistics | {"box_nesting": half}) == [], "more than half the samples, not half"
    three = [*plain, label_stats("edema", 4)]
    around = nested({(4, 2): (3, 3), (4, 3): (3, 3), (2, 3): (3, 3)})
    notes = undeclared_ring_notes(statistics_of(make_fingerprint(labels=three), 3) | {"box_nesting": around})
    assert 'declare "rings": {"edema": ["MYO", "LV"]}' in notes[0], "only the outermost: no nested rings suggested"


def test_nothing_declared_means_no_ring_whatever_the_shapes():
    labels = [label_stats("MYO", 2, fill=(0.4, 0.5, 0.55), filled=(0.7, 0.78, 0.82), ellipse=0.966),
              label_stats("LV", 3)]
    targets = plan(make_fingerprint(labels=labels))["targets"]
    assert [(target["region"], target["subtract"]) for target in targets] == [([2], []), ([3], [])]


def test_a_declared_ellipse_learns_from_the_inscribed_ellipse_whatever_was_measured():
    labels = [label_stats("head", 1, ellipse=0.5, shape="ellipse"), label_stats("cells", 2, objects_p95=3,
                                                                              shape="ellipse")]
    targets = plan(make_fingerprint(labels=labels))["targets"]
    assert [target["pseudo_label"] for target in targets] == ["inscribed_ellipse", "inscribed_ellipse"]
    assert "declares" in targets[0]["reason"]


def test_the_protocol_section_records_the_regime_and_reasons_name_the_source_of_the_shapes():
    few = plan(make_fingerprint(), shots=10)
    assert few["protocol"]["regime"] == FEW_SHOT and few["protocol"]["shots"] == 10
    assert "strict few-shot" in few["protocol"]["reason"] and "10 labelled samples" in few["protocol"]["reason"]
    assert "box-prompted" in few["losses"]["reason"] and "box-prompted masks of the labelled boxes" in (
        few["targets"][0]["reason"])
    every = plan(make_fingerprint(source="masks"), shots="all")
    assert every["protocol"] == {"regime": ALL_LABELS, "shots": "all", "reason": every["protocol"]["reason"]}
    assert "all 96 annotated samples" in every["protocol"]["reason"] and "the masks'" not in every["losses"]["reason"]
    assert "fill ratio p5-p95 of the masks" in every["losses"]["reason"]


def test_a_solid_object_rounder_than_box_prompts_get_learns_from_the_inscribed_ellipse():
    labels = [label_stats("head", 1, ellipse=0.974), label_stats("ventricle", 2, ellipse=0.95),
              label_stats("cells", 3, objects_p95=3, ellipse=0.99)]
    targets = {target["name"]: target for target in plan(make_fingerprint(labels=labels, source="masks"),
                                                         shots="all")["targets"]}
    assert targets["head"]["pseudo_label"] == "inscribed_ellipse" and "0.974" in targets["head"]["reason"]
    assert "which the masks match" in targets["head"]["reason"]
    assert targets["ventricle"]["pseudo_label"] == "box_prompt" and "0.950" in targets["ventricle"]["reason"]
    assert targets["cells"]["pseudo_label"] == "box_prompt", "one ellipse per object is not what was measured"


def test_few_shot_box_prompted_masks_close_to_their_ellipse_choose_it():
    labels = [label_stats("head", 1, ellipse=0.919), label_stats("RV", 2, ellipse=0.74)]
    targets = {target["name"]: target for target in plan(make_fingerprint(labels=labels))["targets"]}
    assert targets["head"]["pseudo_label"] == "inscribed_ellipse" and "0.919" in targets["head"]["reason"]
    assert "box-prompted masks" in targets["head"]["reason"]
    assert targets["RV"]["pseudo_label"] == "box_prompt" and "0.740" in targets["RV"]["reason"]


def test_a_ring_whose_region_is_not_round_gets_no_pseudo_label():
    labels = [label_stats("wall", 2, filled=(0.6, 0.7, 0.8), enclosed=(3,), ellipse=0.85),
              label_stats("lumen", 3)]
    targets = plan(make_fingerprint(labels=labels))["targets"]
    assert targets[0]["pseudo_label"] == "none" and "0.850" in targets[0]["reason"]


def test_each_target_gets_the_margins_of_its_own_fill_ratio_and_the_union_covers_the_rest():
    labels = [label_stats("crescent", 1, fill=(0.4, 0.53, 0.73)), label_stats("disc", 2, fill=(0.7, 0.76, 0.81))]
    box_size = plan(make_fingerprint(labels=labels))["losses"]["box_size"]
    assert box_size["target_margins"]["1"] == pytest.approx([0.4 - MARGIN_SLACK, 0.73 + MARGIN_SLACK])
    assert box_size["target_margins"]["2"] == pytest.approx([0.7 - MARGIN_SLACK, 0.81 + MARGIN_SLACK])
    assert box_size["margins"] == pytest.approx([0.4 - MARGIN_SLACK, 0.81 + MARGIN_SLACK])


def test_several_objects_per_image_mean_boxes_per_component_and_no_largest_component():
    labels = [label_stats("nodule", 1, objects_p95=3, fill=(0.2, 0.3, 0.4), component_fill=(0.6, 0.7, 0.75)),
              label_stats("liver", 2)]
    plans = plan(make_fingerprint(labels=labels))
    targets = {target["label"]: target for target in plans["targets"]}
    assert targets[1]["per_component"] is True and targets[2]["per_component"] is False
    assert plans["postprocessing"]["largest_component"] == {"1": False, "2": True}
    assert plans["prompt_module"]["num_points"] == 3
    assert plans["losses"]["box_size"]["margins"][0] == pytest.approx(0.6 - MARGIN_SLACK), "per-component fill ratio"


def test_points_are_clipped_to_one_to_four():
    many = plan(make_fingerprint(labels=[label_stats("cells", 1, objects_p95=11)]))
    assert many["prompt_module"]["num_points"] == 4
    never = plan(make_fingerprint(labels=[label_stats("absent", 1, objects_p95=None)]))
    assert never["prompt_module"]["num_points"] == 1
    assert never["postprocessing"]["largest_component"] == {"1": False}


def test_centre_channels_shrink_for_a_tiny_labelled_set():
    assert plan(make_fingerprint(), shots=10)["prompt_module"]["center_channels"] == 128
    assert plan(make_fingerprint(), shots=4)["prompt_module"]["center_channels"] == 64
    assert plan(make_fingerprint(), shots="all")["prompt_module"]["center_channels"] == 128


def test_margins_are_clipped_and_boxes_only_keep_the_papers():
    wide = plan(make_fingerprint(labels=[label_stats("x", 1, fill=(0.1, 0.5, 0.99))]))
    assert wide["losses"]["box_size"]["margins"] == list(MARGIN_BOUNDS)
    boxes = plan(make_fingerprint(labels=[label_stats("x", 1, masks=False)], boxes=True))
    assert boxes["losses"]["box_size"]["margins"] == list(PAPER_MARGINS)
    assert "target_margins" not in boxes["losses"]["box_size"]
    assert "boxes only" in boxes["losses"]["reason"]


def test_fill_ratios_beyond_the_bounds_keep_a_band_the_box_size_prior_can_hold_in():
    """Rectangles and one-pixel objects (fill ratio 1) got margins [0.95, 0.95]: a band of no width, inside which the
    prior's lower and upper log-barriers cannot both hold; objects filling under the lower bound got [0.3, 0.3]."""
    labels = [label_stats("rectangle", 1, fill=(1.0, 1.0, 1.0)), label_stats("line", 2, fill=(0.1, 0.15, 0.2))]
    losses = plan(make_fingerprint(labels=labels))["losses"]
    assert MARGIN_MIN_WIDTH > 0
    assert losses["box_size"]["target_margins"]["1"] == pytest.approx([MARGIN_BOUNDS[1] - MARGIN_MIN_WIDTH,
                                                                       MARGIN_BOUNDS[1]])
    assert losses["box_size"]["target_margins"]["2"] == pytest.approx([MARGIN_BOUNDS[0],
                                                                       MARGIN_BOUNDS[0] + MARGIN_MIN_WIDTH])
    assert losses["box_size"]["margins"] == list(MARGIN_BOUNDS)
    assert f"kept at least {MARGIN_MIN_WIDTH:g} wide" in losses["reason"]


@pytest.mark.parametrize("fills, margins", [
    ([(0.578, 0.68, 0.783)], [[0.528, 0.833]]),  # HC18 heads, box-prompted masks of 10 boxes
    ([(0.77, 0.78, 0.79)], [[0.72, 0.84]]),  # HC18 heads, all masks
    ([(0.34, 0.5, 0.73), (0.73, 0.76, 0.80), (0.70, 0.76, 0.81)], [[0.3, 0.78], [0.68, 0.85], [0.65, 0.86]]),  # ACDC
])
def test_the_benchmarks_fill_ratios_keep_their_margins(fills, margins):
    """Only a band that clipping narrowed is widened: the benchmarked datasets' plans do not move."""
    labels = [label_stats(f"t{label}", label, fill=fill) for label, fill in enumerate(fills, start=1)]
    box_size = plan(make_fingerprint(labels=labels))["losses"]["box_size"]
    assert [box_size["target_margins"][str(label)] for label in range(1, len(fills) + 1)] == margins


def test_paper_losses_and_schedule_but_a_lighter_outside_box_bce_beside_the_pseudo_labels():
    plans = plan(make_fingerprint(), seed=3)
    losses = plans["losses"]
    assert losses["empty_bce"] == {"weight": 0.1} and losses["pseudo_label"]["weight"] == 1.0
    assert "instead of 1" in losses["reason"]
    assert losses["tightness"] == {"weight": 1e-4, "band_width": 5}
    assert losses["box_size"]["weight"] == 1e-2 and losses["log_barrier_t"] == 5.0
    training = plans["training"]
    assert (training["optimizer"], training["lr"], training["weight_decay"]) == ("adam", 1e-3, 1e-4)
    assert (training["epochs"], training["batch_size"], training["lr_step_epoch"], training["lr_gamma"]) == (
        100, 4, 50, 0.1)
    assert training["val_every"] == 5 and training["seed"] == 3


def test_batch_never_exceeds_a_folds_training_set():
    folds = [{"train": ["a", "b"], "val": ["c"]}, {"train": ["a", "c"], "val": ["b"]},
             {"train": ["b", "c"], "val": ["a"]}]
    assert plan(make_fingerprint(), shots=3, folds=folds)["training"]["batch_size"] == 2


def test_foundation_model_section():
    section = plan(make_fingerprint())["foundation_model"]
    assert (section["name"], section["checkpoint"], section["input_size"]) == ("litemedsam", None, 256)
    assert section["precision"] == DEFAULT_PRECISION
    medsam = plan(make_fingerprint(), foundation_name="medsam_vit_b", foundation_checkpoint="/models/medsam_vit_b.pth")
    assert medsam["foundation_model"]["input_size"] == 1024
    assert medsam["foundation_model"]["checkpoint"] == "/models/medsam_vit_b.pth"
    assert medsam["foundation_model"]["resize"] == "stretch" and "resize" not in section  # LiteMedSAM's plans as before
    sam = plan(make_fingerprint(), foundation_name="sam_vit_b", foundation_checkpoint="/models/sam_vit_b.pth")
    assert "resize" not in sam["foundation_model"]


def test_model_errors_name_the_option():
    with pytest.raises(AutomedsamError, match="--foundation"):
        plan(make_fingerprint(), foundation_name="unet")
    with pytest.raises(AutomedsamError, match="--foundation-checkpoint"):
        plan(make_fingerprint(), foundation_name="sam_vit_b")


def test_planning_is_pure():
    fingerprint = make_fingerprint()
    before = copy.deepcopy(fingerprint)
    assert plan(fingerprint) == plan(fingerprint)
    assert fingerprint == before


def test_check_plans_names_the_broken_key():
    fingerprint = make_fingerprint()
    plans = plan(fingerprint)
    check_plans(plans, fingerprint, "plans.json")
    broken = {key: value for key, value in plans.items() if key != "losses"}
    with pytest.raises(AutomedsamError, match="losses"):
        check_plans(broken, fingerprint, "plans.json")
    plans["targets"][0]["region"] = [1, 9]
    with pytest.raises(AutomedsamError, match="9"):
        check_plans(plans, fingerprint, "plans.json")
    plans = plan(fingerprint)
    plans["slicing"]["axis"] = 3
    with pytest.raises(AutomedsamError, match="slicing.axis"):
        check_plans(plans, fingerprint, "plans.json")
    plans = plan(fingerprint)
    plans["targets"][0]["pseudo_label"] = "sam_mask"
    with pytest.raises(AutomedsamError, match="pseudo_label must be one of"):
        check_plans(plans, fingerprint, "plans.json")


@pytest.mark.parametrize("edit, message", [
    (lambda plans: plans["normalization"].update(lower=None), r"normalization.lower must be a finite number.*None"),
    (lambda plans: plans["normalization"].pop("upper"), "normalization.upper must be a finite number.*missing"),
    (lambda plans: plans["normalization"].update(upper=float("inf")), "normalization.upper must be a finite number"),
    (lambda plans: plans["normalization"].update(lower="0"), "normalization.lower must be a finite number"),
    (lambda plans: plans["normalization"].update(upper=plans["normalization"]["lower"]),
     "normalization.upper .* must exceed normalization.lower"),
    (lambda plans: plans["normalization"].update(scheme="zscore"), "normalization.scheme must be one of"),
    (lambda plans: plans["targets"][0].pop("per_component"),
     r"target 1.s per_component must be true .* or false .*missing"),
    (lambda plans: plans["targets"][0].update(per_component="yes"), r"target 1.s per_component must be true"),
    (lambda plans: plans["targets"].append(copy.deepcopy(plans["targets"][0])), "targets name label 1 twice"),
    (lambda plans: plans["targets"].clear(), r"targets must be a list of objects, one per label, got \[\]"),
    (lambda plans: plans["foundation_model"].update(precision="bfloat16"),
     "foundation_model.precision must be one of fp32, bf16, got 'bfloat16'"),
    (lambda plans: plans["slicing"].update(is_3d=False), "slicing.is_3d must be true for this dataset of 3D volumes"),
    (lambda plans: plans["slicing"].update(axis=True), "slicing.axis must be 0, 1 or 2 for this 3D dataset"),
])
def test_check_plans_names_a_broken_window_or_target(edit, message):
    """These edits passed the check and stopped --preprocess-only later with a TypeError or KeyError traceback
    from a worker process (the window's float(None), a missing key), an unknown precision only when the model was
    built, or an empty target list and a sliced 2D dataset without a word."""
    fingerprint = make_fingerprint()
    plans = plan(fingerprint)
    edit(plans)
    with pytest.raises(AutomedsamError, match=f"^edited/plans.json: {message}"):
        check_plans(plans, fingerprint, "edited/plans.json")


@pytest.mark.parametrize("edit, message", [
    (lambda slicing: slicing.update(axis=0), "slicing.axis must be null for this dataset of 2D images, got 0"),
    (lambda slicing: slicing.update(is_3d=True), "slicing.is_3d must be false for this dataset of 2D images"),
])
def test_check_plans_refuses_slicing_a_2d_dataset(edit, message):
    fingerprint = make_fingerprint(is_3d=False)
    plans = plan(fingerprint)
    check_plans(plans, fingerprint, "plans.json")
    edit(plans["slicing"])
    with pytest.raises(AutomedsamError, match=f"^plans.json: {message}"):
        check_plans(plans, fingerprint, "plans.json")


def test_augmentation_plans_the_symmetries_and_two_zooms_and_check_plans_names_a_broken_one():
    fingerprint = make_fingerprint()
    plans = plan(fingerprint, shots=10)
    section = plans["augmentation"]
    assert section["views"] == DEFAULT_VIEWS and len(section["views"]) == 9
    assert sorted(view["scale"] for view in section["views"]) == [0.7] + [1.0] * 7 + [1.3]
    assert "zooms by 0.7 and 1.3" in section["reason"] and "benchmarks.md" in section["reason"]
    assert "8 samples" in section["reason"] and "encoded once" in section["reason"]
    assert "augmentation" not in PLAN_SECTIONS, "plans written before views existed stay valid"
    check_plans({key: value for key, value in plans.items() if key != "augmentation"}, fingerprint, "plans.json")
    plans["augmentation"]["views"][3]["gamma"] = 0
    with pytest.raises(AutomedsamError, match=r"augmentation.views\[3\]: gamma"):
        check_plans(plans, fingerprint, "plans.json")


def test_augmentation_plans_no_views_for_a_large_labelled_set():
    section = plan_augmentation(MAX_AUGMENTED_LABELLED + 1, training_size=MAX_AUGMENTED_LABELLED)
    assert section["views"] == [] and f"more than {MAX_AUGMENTED_LABELLED}" in section["reason"]
    assert len(plan_augmentation(MAX_AUGMENTED_LABELLED, training_size=8)["views"]) == len(DEFAULT_VIEWS)


def test_a_few_bright_pixels_in_black_images_set_the_window_not_a_blank_image_error():
    """The pooled subsample of 1000 x 1000 black images with one 255 pixel each held only zeros: 'Every pixel of
    every image ... has the intensity 0'. Each image's own min and max are in the fingerprint."""
    fingerprint = make_fingerprint(channel="ultrasound")
    fingerprint["intensity"]["all"].update(p0_5=0.0, p99_5=0.0, min=0.0, max=0.0)
    for case in fingerprint["cases"]:
        case["intensity"] = {"all": {"p0_5": 0.0, "p99_5": 0.0, "min": 0.0, "max": 255.0}}
    normalization = plan(fingerprint)["normalization"]
    assert (normalization["lower"], normalization["upper"]) == (0.0, 255.0)
    for case in fingerprint["cases"]:
        case["intensity"]["all"]["max"] = 0.0
    with pytest.raises(AutomedsamError, match="has the intensity 0"):
        plan(fingerprint)


def test_ct_whose_boxed_foreground_has_one_intensity_falls_back_to_all_pixels():
    fingerprint = make_fingerprint(channel="CT")
    statistics = statistics_of(fingerprint, 10)
    statistics["foreground_intensity"] = {"p0_5": 40.0, "p99_5": 40.0, "mean": 40.0, "std": 0.0, "min": 40.0,
                                          "max": 40.0}
    normalization = plan_from(fingerprint, statistics)["normalization"]
    assert (normalization["lower"], normalization["upper"]) == (-1000.0, 1500.0)
    assert "foreground has one intensity" in normalization["reason"]
