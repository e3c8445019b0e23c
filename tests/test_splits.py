"""Few-shot splits: exactly N labelled samples holding foreground, spread over groups, grouped folds, reproducible."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from automedsam.errors import AutomedsamError
from automedsam.folds import check_fold_members, check_splits
from automedsam.planning.splits import make_splits, parse_shots


def volume_case(case: str, group: str, depth: int = 8, foreground: tuple[int, ...] = (2, 3, 4, 5)) -> dict:
    return {"case": case, "group": group, "shape": [depth, 32, 32], "spacing": [1.0, 1.0, 5.0], "annotation": "masks",
            "has_foreground": bool(foreground), "foreground_slices": {"0": list(foreground), "1": [], "2": []}}


def image_case(case: str, group: str, foreground: bool = True, annotation: str = "masks") -> dict:
    return {"case": case, "group": group, "shape": [32, 32], "annotation": annotation, "has_foreground": foreground,
            "foreground_slices": None}


def fingerprint(cases: list[dict]) -> dict:
    kinds = Counter(case["annotation"] for case in cases)
    return {"dataset_name": "Dataset009_Test", "cases": cases,
            "annotation": {kind: kinds.get(kind, 0) for kind in ("masks", "boxes", "none")}}


def patients(count: int, frames: int = 2) -> dict:
    """`count` patients with `frames` volumes each; slices 2-5 of 8 hold foreground."""
    return fingerprint([volume_case(f"p{p:02d}_f{f}", f"p{p:02d}") for p in range(count) for f in range(frames)])


def check_invariants(splits: dict, fp: dict, shots: int) -> None:
    group_of = {}
    for case in fp["cases"]:
        group_of[case["case"]] = case["group"]
    labelled = splits["labelled"]
    assert len(labelled) == len(set(labelled)) == shots
    groups_per_fold = []
    for fold in splits["folds"]:
        assert fold["val"], "every fold validates on something"
        assert not set(fold["train"]) & set(fold["val"])
        assert sorted(fold["train"] + fold["val"]) == sorted(labelled)
        groups_per_fold.append({group_of[sid.split("__z")[0]] for sid in fold["val"]})
    assert sorted(sid for fold in splits["folds"] for sid in fold["val"]) == sorted(labelled)
    for index, groups in enumerate(groups_per_fold):
        for other in groups_per_fold[index + 1:]:
            assert not groups & other, "a group appears in two folds"


def test_draws_exactly_n_foreground_samples_from_distinct_groups():
    fp = patients(12)
    splits = make_splits(fp, axis=0, shots=10, folds=5, seed=0)
    check_invariants(splits, fp, 10)
    assert len(splits["folds"]) == 5
    assert all(int(sid.split("__z")[1]) in (2, 3, 4, 5) for sid in splits["labelled"])
    groups = [sid.split("_f")[0] for sid in splits["labelled"]]
    assert len(set(groups)) == 10, "one sample per group while groups remain"
    assert splits["seed"] == 0 and splits["shots"] == 10 and splits["slicing_axis"] == 0


def test_round_robin_over_groups_and_cases_when_fewer_groups_than_shots():
    fp = patients(3)
    splits = make_splits(fp, axis=0, shots=10, folds=3, seed=4)
    check_invariants(splits, fp, 10)
    per_group = Counter(sid.split("_f")[0] for sid in splits["labelled"])
    assert max(per_group.values()) - min(per_group.values()) <= 1
    per_case = Counter(sid.split("__z")[0] for sid in splits["labelled"])
    assert len(per_case) == 6, "both frames of every patient contribute before one gives a third slice"


def test_same_seed_same_draw_other_seed_other_draw():
    fp = patients(20)
    first = make_splits(fp, axis=0, shots=10, seed=7)
    assert make_splits(fp, axis=0, shots=10, seed=7) == first
    other = make_splits(fp, axis=0, shots=10, seed=8)
    assert other["labelled"] != first["labelled"]


def test_the_largest_group_goes_first_so_the_folds_balance():
    """Groups of 3, 1, 1 and 1 samples in 2 folds are 3 | 1 + 1 + 1; smallest first gave 1 + 1 | 1 + 3."""
    fp = fingerprint([image_case(f"a{i}", "A") for i in range(3)] + [image_case(g, g) for g in ("B", "C", "D")])
    for seed in range(5):
        splits = make_splits(fp, axis=None, shots="all", folds=2, seed=seed)
        assert sorted(len(fold["val"]) for fold in splits["folds"]) == [3, 3]


def test_the_groups_drawn_vary_with_the_seed():
    """With fewer shots than groups, which patients are drawn must depend on the seed, not on their names."""
    fp = fingerprint([image_case(f"p{p:02d}", f"p{p:02d}") for p in range(12)])
    drawn = {tuple(make_splits(fp, axis=None, shots=4, folds=2, seed=seed)["labelled"]) for seed in range(10)}
    assert len(drawn) > 1


def test_shots_all_labels_every_slice_including_empty_ones():
    fp = patients(5)
    splits = make_splits(fp, axis=0, shots="all", folds=5, seed=0)
    check_invariants(splits, fp, 5 * 2 * 8)
    assert "p00_f0__z000" in splits["labelled"]


def test_fewer_groups_than_folds_reduces_folds_with_a_reason():
    fp = patients(3)
    splits = make_splits(fp, axis=0, shots=4, folds=5, seed=0)
    assert len(splits["folds"]) == 3 and "reduced from 5 to 3" in splits["reason"]
    check_invariants(splits, fp, 4)


def test_one_group_is_an_error_naming_the_groups_map():
    fp = fingerprint([image_case(f"c{i}", "same") for i in range(6)])
    with pytest.raises(AutomedsamError, match="one group"):
        make_splits(fp, axis=None, shots=3)


def test_too_few_foreground_samples_with_masks_is_an_error():
    fp = fingerprint([image_case(f"c{i}", f"g{i}", foreground=i < 3) for i in range(8)])
    with pytest.raises(AutomedsamError, match="--shots 3"):
        make_splits(fp, axis=None, shots=5)


def test_empty_images_are_never_drawn_but_labelled_with_all():
    fp = fingerprint([image_case(f"c{i}", f"g{i}", foreground=i % 2 == 0) for i in range(12)])
    drawn = make_splits(fp, axis=None, shots=6, seed=1)["labelled"]
    assert sorted(drawn) == sorted(f"c{i}" for i in range(0, 12, 2))
    assert len(make_splits(fp, axis=None, shots="all")["labelled"]) == 12


def test_boxes_only_dataset_caps_shots_at_its_boxed_samples():
    cases = [image_case(f"b{i}", f"b{i}", foreground=i < 4, annotation="boxes") for i in range(6)]
    cases.append(image_case("unlabelled", "u", annotation="none"))
    splits = make_splits(fingerprint(cases), axis=None, shots=10, folds=2, seed=0)
    assert splits["labelled"] == ["b0", "b1", "b2", "b3"]
    assert "boxes only" in splits["reason"]


def test_boxes_only_volume_cannot_be_sliced_along_another_axis():
    case = volume_case("v0", "v0", foreground=(1, 2))
    case.update(annotation="boxes", foreground_slices={"0": [1, 2]})
    fp = fingerprint([case, {**case, "case": "v1", "group": "v1"}])
    assert make_splits(fp, axis=0, shots="all", folds=2)["labelled"] == ["v0__z001", "v0__z002", "v1__z001",
                                                                          "v1__z002"]
    with pytest.raises(AutomedsamError, match="slicing.axis"):
        make_splits(fp, axis=2, shots=2, folds=2)


def test_the_draw_of_a_dataset_without_a_volume_in_another_axis_order_is_the_one_drawn_before():
    """Leaving such volumes out of every draw must not move the draws of datasets that have none."""
    splits = make_splits(patients(6), axis=0, shots=4, folds=2, seed=3)
    assert splits["labelled"] == ["p00_f1__z005", "p02_f1__z004", "p03_f1__z002", "p04_f0__z003"]
    assert splits["folds"][0] == {"train": ["p03_f1__z002", "p04_f0__z003"], "val": ["p00_f1__z005", "p02_f1__z004"]}


def test_shots_all_leaves_out_a_volume_stored_in_another_axis_order():
    """--shots all labelled every slice of a permuted volume, strips across its own slices, and trained on them."""
    permuted = {**volume_case("permuted", "permuted", depth=32, foreground=(3, 4)), "shape": [32, 32, 8],
                "spacing": [5.0, 1.0, 1.0]}  # ITK (x, y, z): its own slices run along array axis 2
    fp = fingerprint(patients(3)["cases"] + [permuted])
    labelled = make_splits(fp, axis=0, shots="all", folds=3, seed=0)["labelled"]
    assert len(labelled) == 3 * 2 * 8 and not [sid for sid in labelled if sid.startswith("permuted")]
    assert make_splits(patients(3), axis=0, shots="all", folds=3, seed=0)["labelled"] == labelled


@pytest.mark.parametrize("value, expected", [("10", 10), (3, 3), ("all", "all"), (" ALL ", "all")])
def test_parse_shots(value, expected):
    assert parse_shots(value) == expected


@pytest.mark.parametrize("value", ["0", "1", "-1", "ten", "2.5"])
def test_parse_shots_rejects_bad_values(value):
    with pytest.raises(AutomedsamError, match="--shots"):
        parse_shots(value)


def test_one_labelled_sample_is_refused_for_want_of_a_second_not_of_other_groups():
    """--shots 1 was refused as 'All 1 labelled samples belong to one group ... Add cases from other groups', on a
    dataset of many groups: one sample cannot be cut into folds at all."""
    with pytest.raises(AutomedsamError, match="at least 2 labelled samples from 2 groups") as refused:
        make_splits(patients(6), axis=0, shots=1, folds=5)
    assert "belong to one group" not in str(refused.value)
    with pytest.raises(AutomedsamError, match="at least 2"):
        parse_shots("1")


def test_folds_must_be_at_least_two():
    with pytest.raises(AutomedsamError, match="--folds"):
        make_splits(patients(4), axis=0, shots=4, folds=1)


def test_no_foreground_at_all_is_an_error():
    fp = fingerprint([image_case(f"c{i}", f"g{i}", foreground=False) for i in range(4)])
    with pytest.raises(AutomedsamError, match="No 2D sample"):
        make_splits(fp, axis=None, shots=2)


SPLITS_PATH = Path("/data/preprocessed/Dataset009_Test/splits.json")


def drawn_splits(**changes) -> dict:
    """A splits.json as planning writes it (JSON round trip), with `changes` applied: None removes a key."""
    splits = json.loads(json.dumps(make_splits(patients(4), axis=0, shots=4, folds=2)))
    splits.update(changes)
    return {key: value for key, value in splits.items() if value is not None}


def splits_error(splits) -> str:
    with pytest.raises(AutomedsamError) as error:
        check_splits(splits, SPLITS_PATH)
    return str(error.value)


def test_drawn_splits_pass_the_check_unchanged():
    splits = drawn_splits()
    assert check_splits(splits, SPLITS_PATH) is splits
    check_fold_members(splits, SPLITS_PATH)


@pytest.mark.parametrize("changes, fragment", [
    ({"folds": None}, "lacks the key(s) folds"),
    ({"labelled": None}, "lacks the key(s) labelled"),
    ({"folds": [["a"], ["b"]]}, "folds[0] must be an object {\"train\": [sample ids], \"val\": [sample ids]}"),
    ({"folds": []}, "folds must be a non-empty list"),
    ({"folds": [{"train": ["a"]}]}, "folds[0] must be an object"),
    ({"labelled": "p00_f0__z002"}, "labelled must be a list of sample ids"),
    ({"labelled": [1, 2]}, "labelled must be a list of sample ids"),
    ({"seed": -1}, "seed must be a whole number >= 0"),
    ({"shots": 0}, 'shots must be a whole number >= 1 or "all"'),
    ({"selection": "random"}, "selection must be an object"),
])
def test_a_hand_edited_splits_file_names_the_file_the_key_and_the_redraw(changes, fragment):
    """Training and --preprocess-only indexed an edited splits.json unchecked: KeyError or TypeError tracebacks."""
    message = splits_error(drawn_splits(**changes))
    assert message.startswith(f"{SPLITS_PATH}: ") and fragment in message, message
    assert "automedsam_plan_and_preprocess -d Dataset009_Test without --preprocess-only to draw it again" in message


def test_a_splits_file_that_is_not_an_object_is_refused():
    assert "must hold a JSON object with seed, shots, labelled, folds, got [1, 2]" in splits_error([1, 2])


def test_a_broken_annotation_record_is_refused_and_the_fix_keeps_the_pages_work_in_mind():
    """Planning again reads an annotation record, so only deleting the file draws anew: the fix says what is lost."""
    splits = drawn_splits(interactive={"order": [], "rejected": "all", "added": [], "to_annotate": []})
    message = splits_error(splits)
    assert "interactive.rejected must be a list of sample ids" in message
    assert "delete it and run automedsam_plan_and_preprocess -d Dataset009_Test" in message
    assert "forgetting the samples rejected and added on the annotation page" in message
    assert "must be an object of the lists" in splits_error(drawn_splits(interactive=[]))


@pytest.mark.parametrize("part", ["train", "val"])
def test_a_fold_sample_outside_the_labelled_ones_is_refused(part):
    splits = drawn_splits()
    splits["folds"][1][part].append("p03_f1__z007")
    with pytest.raises(AutomedsamError, match=rf"folds\[1\]\.{part} holds p03_f1__z007, which labelled lacks"):
        check_fold_members(splits, SPLITS_PATH)
