"""The few-shot protocol: which 2D samples get labelled, and how they are cut into cross-validation folds.

With `shots=N`, N samples holding foreground are drawn (seeded) and spread over distinct groups (patients,
examinations) before any group gives a second one; the annotation budget of the whole protocol, ensemble
included, is these N samples. They are then split into folds by group, so no patient is in two folds. With
`shots="all"` every sample of every annotated case is labelled (3D: every slice, empty ones included). A volume
stored in another axis order than the others (`cases_cut_across`) is never labelled: its samples are strips.

A dataset annotated interactively (dataset.json `"annotation": "interactive"`) has no foreground to draw from: its
samples are put in one seeded order (spread over groups the same way), and the first N that the annotator did not
reject as not showing the structure are labelled, plus those the review added. The order depends on the seed and
the images only, so the draw stays the same while boxes are added; samples without boxes yet are `to_annotate`. A
case given a label map all the same is annotated by it: its samples holding foreground count as boxed, and the others
leave the order (the label map says the structure is not there), the rest keeping their places.
Images imported or removed later leave the recorded order in place (a boxed sample stays drawn): a removed image's
samples drop out of it, and new ones join at its end in their place in the seeded order of all samples.

How the N are chosen (`Selection`): `random` draws them with the seed; `diverse` and `kmeanspp` take them in a
coverage order of the candidates' pooled embeddings (planning.coverage, computed by planning.selection), under the
same group rule and among the same candidates. splits.json `selection` records which, with what criterion and over
how many candidates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from automedsam.errors import AutomedsamError
from automedsam.planning.coverage import SAMPLED, coverage_order
from automedsam.samples import own_axis_cut_across, sample_id

Shots = int | str
MIN_LABELLED = 2  # cross-validation trains on one labelled sample and validates on another, of another group
Candidates = dict[str, dict[str, list[str]]]  # group -> case -> sample ids


@dataclass(frozen=True)
class Selection:
    """How the labelled samples are chosen: `random`, or a coverage order over the pooled `features` of the encoded
    candidates (sample id -> unit vector) by a coverage `criterion`; `record` is what splits.json keeps of it."""

    method: str = "random"
    criterion: str | None = None
    features: Mapping[str, np.ndarray] = field(default_factory=dict)
    record: Mapping[str, Any] = field(default_factory=lambda: {"method": "random"})


RANDOM = Selection()


def parse_shots(value: str | int) -> Shots:
    """`"10"` / `10` -> 10 and `"all"` -> "all"; anything else is a user error naming --shots."""
    text = str(value).strip().lower()
    if text == "all":
        return "all"
    if text.isdigit() and int(text) >= MIN_LABELLED:
        return int(text)
    raise AutomedsamError(f"--shots must be a number of labelled 2D samples, at least {MIN_LABELLED} (the folds train "
                          f"on one and validate on another), or 'all', got {value!r}.")


def candidate_samples(fingerprint: Mapping[str, Any], axis: int | None) -> dict[str, dict[str, dict[str, list[str]]]]:
    """group -> case -> {"all": annotated sample ids, "foreground": those holding foreground}, for slicing `axis`.

    Cases without masks or boxes are left out, and so are volumes cut across their slices (`cases_cut_across`).
    A 3D case with boxes only is annotated on its boxed slices.
    """
    across = cases_cut_across(fingerprint, axis)
    candidates: dict[str, dict[str, dict[str, list[str]]]] = {}
    for case in fingerprint["cases"]:
        if case["annotation"] == "none" or case["case"] in across:
            continue
        case_id = case["case"]
        if case["foreground_slices"] is None:
            annotated = [sample_id(case_id, None)]
            foreground = annotated if case["has_foreground"] else []
        else:
            slices = case["foreground_slices"].get(str(axis))
            if slices is None:
                raise AutomedsamError(f"Case {case_id} has boxes per slice along array axis "
                                      f"{', '.join(case['foreground_slices'])}, but the plans slice along axis {axis}. "
                                      "Set plans.json slicing.axis back to the box files' axis.")
            foreground = [sample_id(case_id, index) for index in slices]
            annotated = (foreground if case["annotation"] == "boxes"
                         else [sample_id(case_id, index) for index in range(case["shape"][axis])])
        candidates.setdefault(case["group"], {})[case_id] = {"all": annotated, "foreground": foreground}
    return candidates


def selection_candidates(fingerprint: Mapping[str, Any], axis: int | None) -> Candidates:
    """The samples a draw may label: those holding foreground, or every sample of an interactive dataset (nothing
    is annotated yet; the annotator skips one that does not show the structure); none of a volume cut across its
    slices (`cases_cut_across`) either way."""
    if fingerprint.get("interactive"):
        return {group: {case: entry["all"] for case, entry in cases.items()}
                for group, cases in _every_sample(fingerprint, axis).items()}
    eligible = {group: {case: entry["foreground"] for case, entry in cases.items() if entry["foreground"]}
                for group, cases in candidate_samples(fingerprint, axis).items()}
    return {group: cases for group, cases in eligible.items() if cases}


def cases_cut_across(fingerprint: Mapping[str, Any], axis: int | None) -> dict[str, int]:
    """case -> the array axis its own slices run along, for each volume that slicing `axis` cuts across its slices
    (samples.own_axis_cut_across: stored in another axis order than the others; none where every volume is). Its
    samples are strips unlike every other image, so no draw labels them nor asks for their boxes."""
    if axis is None:
        return {}
    found = {case["case"]: own_axis_cut_across(case["shape"], axis=axis, spacing_xyz=case["spacing"])
             for case in fingerprint["cases"] if len(case["shape"]) == 3}
    across = {case: own for case, own in found.items() if own is not None}
    return across if len(across) < len(found) else {}  # every volume alike (box files fix the axis): their layout


def check_folds(folds: int) -> int:
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise AutomedsamError(f"--folds must be a whole number >= 2, got {folds!r}.")
    return folds


def make_splits(fingerprint: Mapping[str, Any], axis: int | None, *, shots: Shots = 10, folds: int = 5,
                seed: int = 0, previous: Mapping[str, Any] | None = None,
                selection: Selection = RANDOM) -> dict[str, Any]:
    """splits.json: the labelled draw (seeded; chosen as `selection` says) and its folds, grouped so that no group
    is in two folds.

    For an interactive dataset, `previous` (the splits.json written before) carries the annotator's rejections
    and the review's additions over.
    """
    check_folds(folds)
    rng = np.random.default_rng(seed)
    interactive = None
    if fingerprint.get("interactive"):
        candidates = _every_sample(fingerprint, axis)
        interactive = _interactive_draw(fingerprint, candidates, axis, shots=shots, seed=seed, rng=rng,
                                        previous=previous or {}, selection=selection)
        labelled, reason = interactive.pop("labelled"), interactive.pop("reason")
    else:
        candidates = candidate_samples(fingerprint, axis)
        if shots == "all":
            labelled = [sid for cases in candidates.values() for entry in cases.values() for sid in entry["all"]]
            reason = "--shots all: every 2D sample of every annotated case is labelled"
        else:
            labelled, reason = _few_shot_draw(fingerprint, selection_candidates(fingerprint, axis), int(shots), rng,
                                              selection)
    if not labelled:
        raise AutomedsamError(f"Dataset {fingerprint['dataset_name']} has no annotated 2D sample to label. Add masks "
                              "(labelsTr/) or boxes (boxesTr/) to the training cases.")
    if len(labelled) < MIN_LABELLED:
        raise _too_few_labelled(fingerprint, labelled, shots)
    group_of = {sid: group for group, cases in candidates.items() for entry in cases.values() for sid in entry["all"]}
    groups = sorted({group_of[sid] for sid in labelled})
    if len(groups) < 2:
        raise AutomedsamError(f"All {len(labelled)} labelled samples belong to one group ('{groups[0]}'), so no fold "
                              "could validate on an unseen patient. Add cases from other groups, or fix the "
                              "'groups' map of dataset.json.")
    if len(groups) < folds:
        reason += f"; folds reduced from {folds} to {len(groups)}: only {len(groups)} groups among the labelled samples"
        folds = len(groups)
    splits = {"seed": seed, "shots": shots, "slicing_axis": axis, "labelled": sorted(labelled),
              "folds": _grouped_folds(labelled, group_of, folds, rng), "reason": reason,
              "selection": dict(RANDOM.record if shots == "all" else selection.record)}
    if interactive is not None:
        splits["interactive"] = interactive
    return splits


def _too_few_labelled(fingerprint: Mapping[str, Any], labelled: list[str], shots: Shots) -> AutomedsamError:
    """The fix is more --shots only where fewer were asked for; else the dataset has too few samples to draw."""
    if shots != "all" and int(shots) < MIN_LABELLED:
        fix = f"Use --shots {MIN_LABELLED} or more."
    elif fingerprint.get("interactive"):
        fix = ("Import more images to annotate (automedsam_convert folder --overwrite keeps the boxes drawn), or "
               "restore samples rejected on the annotation page.")
    else:
        fix = "Annotate more samples: masks (labelsTr/) or boxes (boxesTr/) on more images or slices."
    return AutomedsamError(f"Only {len(labelled)} sample of {fingerprint['dataset_name']} is labelled (--shots "
                           f"{shots}), and the folds need at least {MIN_LABELLED} labelled samples from "
                           f"{MIN_LABELLED} groups (patients, examinations): one to train on, one to validate on. "
                           f"{fix}")


def _every_sample(fingerprint: Mapping[str, Any], axis: int | None) -> dict[str, dict[str, dict[str, list[str]]]]:
    """group -> case -> {"all": every 2D sample id}, annotated or not, but none of a volume cut across its slices."""
    across = cases_cut_across(fingerprint, axis)
    candidates: dict[str, dict[str, dict[str, list[str]]]] = {}
    for case in fingerprint["cases"]:
        if case["case"] not in across:
            candidates.setdefault(case["group"], {})[case["case"]] = {"all": _case_samples(case, axis)}
    return candidates


def _case_samples(case: Mapping[str, Any], axis: int | None) -> list[str]:
    """Every 2D sample id of one fingerprinted case."""
    if len(case["shape"]) == 2:
        return [sample_id(case["case"], None)]
    return [sample_id(case["case"], index) for index in range(case["shape"][axis])]


def _boxed_samples(fingerprint: Mapping[str, Any], axis: int | None) -> tuple[set[str], set[str]]:
    """(samples with boxes, 2D samples whose box file is empty: shown to the annotator, no structure in them)."""
    boxed, empty = set(), set()
    for case in fingerprint["cases"]:
        if case["annotation"] != "boxes":
            continue
        if case["foreground_slices"] is None:
            (boxed if case["has_foreground"] else empty).add(sample_id(case["case"], None))
        else:
            boxed.update(sample_id(case["case"], index) for index in case["foreground_slices"].get(str(axis), []))
    return boxed, empty


def _masked_samples(fingerprint: Mapping[str, Any], axis: int | None) -> tuple[set[str], set[str]]:
    """(samples of cases with a label map that hold foreground: annotated already, no box to ask for; those that
    hold none: the label map says the structure is not there, so the annotator is not shown them)."""
    foreground, background = set(), set()
    for case in fingerprint["cases"]:
        if case["annotation"] != "masks":
            continue
        samples = _case_samples(case, axis)
        if case["foreground_slices"] is None:
            held = set(samples) if case["has_foreground"] else set()
        else:
            held = {sample_id(case["case"], index) for index in case["foreground_slices"][str(axis)]}
        foreground |= held
        background |= set(samples) - held
    return foreground, background


def _interactive_draw(fingerprint: Mapping[str, Any], candidates: dict[str, dict[str, dict[str, list[str]]]],
                      axis: int | None, *, shots: Shots, seed: int, rng: np.random.Generator,
                      previous: Mapping[str, Any], selection: Selection) -> dict[str, Any]:
    """The labelled samples of an interactive dataset and the state the annotation server works from."""
    every = {group: {case: entry["all"] for case, entry in cases.items()} for group, cases in candidates.items()}
    seeded = _ordered_draw(every, sum(len(ids) for cases in every.values() for ids in cases.values()), rng, selection)
    mask_foreground, mask_background = _masked_samples(fingerprint, axis)
    continued = _continued_order(seeded, previous, seed=seed, axis=axis, selection=selection)
    order = [sid for sid in continued if sid not in mask_background]
    known = set(order)
    before = previous.get("interactive", {})
    boxed, empty = _boxed_samples(fingerprint, axis)
    annotated = boxed | mask_foreground
    rejected = sorted(((set(before.get("rejected", [])) | empty) - annotated) & known)
    added = [sid for sid in before.get("added", []) if sid in known and sid not in rejected]
    wanted = len(order) if shots == "all" else int(shots)
    drawn = [sid for sid in order if sid not in rejected][:wanted]
    labelled = drawn + [sid for sid in added if sid not in drawn]
    to_annotate = [sid for sid in labelled if sid not in annotated]
    reason = (f"--shots {shots}, interactive annotation: the first {len(drawn)} samples of a {_order_name(selection)} "
              f"over all samples (one per group, {len(candidates)} groups, before any group gives a second) that the "
              f"annotator did not reject ({len(rejected)} rejected as not showing the structure)")
    if len(order) < len(continued):
        reason += f", passing over {len(continued) - len(order)} whose label maps hold no foreground"
    if added:
        reason += f", plus {len(added)} added in review"
    if (shots != "all" and len(drawn) < min(wanted, len(order))) or not drawn:  # all: every sample not rejected
        raise AutomedsamError(f"Only {len(drawn)} samples of {fingerprint['dataset_name']} are left after "
                              f"{len(rejected)} were marked as not showing the structure; --shots {shots} needs "
                              "more. Lower --shots or add images.")
    return {"labelled": labelled, "reason": reason, "order": order, "rejected": rejected, "added": added,
            "to_annotate": to_annotate}


def _continued_order(seeded: list[str], previous: Mapping[str, Any], *, seed: int, axis: int | None,
                     selection: Selection) -> list[str]:
    """The recorded order of the draw being annotated, carried over the images imported or removed since, so that
    its boxed samples stay drawn: the samples still there keep their places, new ones follow in their `seeded` order
    (the seeded order of every sample now). A draw under another seed, slicing axis or selection is `seeded` itself."""
    recorded = previous.get("interactive", {}).get("order")
    same_draw = (previous.get("seed") == seed and previous.get("slicing_axis", axis) == axis
                 and previous.get("selection", {}).get("method", "random") == selection.method)
    if recorded is None or not same_draw:
        return seeded
    present = set(seeded)
    kept = list(dict.fromkeys(sid for sid in recorded if sid in present))
    taken = set(kept)
    return kept + [sid for sid in seeded if sid not in taken]


def _few_shot_draw(fingerprint: Mapping[str, Any], eligible: Candidates, shots: int, rng: np.random.Generator,
                   selection: Selection) -> tuple[list[str], str]:
    available = sum(len(ids) for cases in eligible.values() for ids in cases.values())
    boxes_only = fingerprint["annotation"]["masks"] == 0
    if available == 0:
        raise AutomedsamError(f"No 2D sample of {fingerprint['dataset_name']} contains foreground, so there is nothing "
                              "to learn from. Check that the masks or box files hold the labels of dataset.json.")
    if available < shots and not boxes_only:
        fewer = f"Use --shots {available} or" if available >= MIN_LABELLED else "Annotate more samples, or use"
        raise AutomedsamError(f"--shots {shots} asks for more labelled samples than the {available} 2D samples of "
                              f"{fingerprint['dataset_name']} that contain foreground. {fewer} --shots all (every "
                              "sample of the annotated cases, those without foreground too).")
    drawn = _ordered_draw(eligible, min(shots, available), rng, selection)
    how = ("drawn with seed" if selection.method == "random"
           else f"taken in the {_order_name(selection)}")
    reason = (f"--shots {shots}: {len(drawn)} samples holding foreground {how}, one per group "
              f"({len(eligible)} groups) before any group gives a second")
    if available < shots:
        reason += f"; the dataset has boxes only and just {available} boxed samples, all labelled"
    return drawn, reason


def _order_name(selection: Selection) -> str:
    if selection.method == "random":
        return "seeded random order"
    drawn = "every sample" if selection.criterion in SAMPLED else "first sample"
    return f"{selection.criterion} coverage order of the frozen model's pooled embeddings ({drawn} drawn with the seed)"


def _ordered_draw(eligible: Candidates, count: int, rng: np.random.Generator, selection: Selection) -> list[str]:
    """The first `count` samples of the selection's order: the random spread draw, or the coverage order over the
    encoded candidates followed by the random spread draw of any left unencoded (beyond the planned cap)."""
    if selection.method == "random":
        return spread_draw(eligible, count, rng)
    encoded = [(group, sid) for group in sorted(eligible) for case in sorted(eligible[group])
               for sid in eligible[group][case] if sid in selection.features]
    if not encoded:
        return spread_draw(eligible, count, rng)
    features = np.stack([selection.features[sid] for _, sid in encoded])
    order = coverage_order(features, [group for group, _ in encoded], count, criterion=str(selection.criterion),
                           rng=rng)
    drawn = [encoded[index][1] for index in order]
    if len(drawn) < count:
        rest = {group: {case: [sid for sid in ids if sid not in selection.features] for case, ids in cases.items()}
                for group, cases in eligible.items()}
        rest = {group: {case: ids for case, ids in cases.items() if ids} for group, cases in rest.items()}
        drawn += spread_draw({group: cases for group, cases in rest.items() if cases}, count - len(drawn), rng)
    return drawn


def spread_draw(eligible: Candidates, count: int, rng: np.random.Generator) -> list[str]:
    """Round-robin over shuffled groups; inside a group, round-robin over its shuffled cases, random samples."""
    queues = []
    for group in sorted(eligible):
        cases = [_shuffled(eligible[group][case], rng) for case in sorted(eligible[group])]
        cases = _shuffled(cases, rng)
        queues.append([ids[i] for i in range(max(map(len, cases))) for ids in cases if i < len(ids)])
    queues = _shuffled(queues, rng)
    drawn: list[str] = []
    for round_index in range(max(map(len, queues), default=0)):
        for queue in queues:
            if round_index < len(queue) and len(drawn) < count:
                drawn.append(queue[round_index])
    return drawn


def _grouped_folds(labelled: list[str], group_of: dict[str, str], folds: int,
                   rng: np.random.Generator) -> list[dict[str, list[str]]]:
    """Largest groups first (random order among equals), each into the fold with the fewest samples so far."""
    members: dict[str, list[str]] = {}
    for sid in labelled:
        members.setdefault(group_of[sid], []).append(sid)
    order = sorted(_shuffled(sorted(members), rng), key=lambda group: -len(members[group]))
    val: list[list[str]] = [[] for _ in range(folds)]
    for group in order:
        smallest = min(range(folds), key=lambda fold: len(val[fold]))
        val[smallest].extend(members[group])
    every = set(labelled)
    return [{"train": sorted(every - set(ids)), "val": sorted(ids)} for ids in val]


def _shuffled(items: list, rng: np.random.Generator) -> list:
    return [items[i] for i in rng.permutation(len(items))]

