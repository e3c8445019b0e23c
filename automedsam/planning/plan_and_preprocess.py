"""One call from a raw dataset to everything training needs: fingerprint, plans, splits, samples, embeddings.

The fingerprint is reused while the raw files are unchanged, plans and splits are cheap pure functions, and
preprocessing skips finished samples and embeddings, so a rerun finishes in seconds. `preprocess_only` keeps a
hand-edited plans.json (and splits.json) as they are: that is how a plan is overridden.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from automedsam import distributed
from automedsam.dataset import RawDataset, check_dataset_folder, load_raw_dataset
from automedsam.errors import AutomedsamError
from automedsam.files import atomic_path, holding_lock, load_json, save_json
from automedsam.folds import ANNOTATION_RECORD, SPLITS_FILE, SPLITS_LOCK_FILE, check_fold_members, check_splits
from automedsam.foundation.base import FoundationModel
from automedsam.foundation.cache import PREPROCESSING_STATE_FILE, recorded_embeddings_key
from automedsam.foundation.registry import FOUNDATION_MODELS
from automedsam.foundation.weights_file import refuse_folder
from automedsam.parallel import check_workers, default_workers
from automedsam.paths import preprocessed_dataset_dir
from automedsam.planning.fingerprint import run_fingerprint, source_key
from automedsam.planning.label_statistics import (STATISTICS_FILE, measure_box_prompts,
                                                  read_labelled_samples, regime_of, statistics_key, summarise,
                                                  target_regions)
from automedsam.planning.planner import (DEFAULT_SELECTION, check_plans, check_ring_directions, plan,
                                         plan_foundation_model, plan_normalization, plan_selection, plan_slicing,
                                         undeclared_ring_notes)
from automedsam.planning.preprocessing import clear_stale_embeddings, preprocess, sample_catalogue
from automedsam.planning.precision import (HAND_PRECISIONS, check_precision_option, chosen_by_check,
                                          precision_by_hand)
from automedsam.planning.selection import coverage_selection
from automedsam.planning.splits import RANDOM, Shots, cases_cut_across, check_folds, make_splits, parse_shots
from automedsam.plans import DEFAULT_PRECISION, FEW_SHOT, Plans, weights_identity, without_reasons
from automedsam.samples import case_of, slice_of, swapping_order

DEFAULTS = {"foundation_name": "litemedsam", "shots": 10, "folds": 5, "seed": 0}
MAX_SEED = 2**32 - 1


@dataclass
class PreprocessSummary:
    """What a run did, for the one-line report at the end of the command."""

    dataset: str
    out_dir: Path
    fingerprint_reused: bool
    labelled: int
    folds: int
    preprocessing: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    to_annotate: int = 0  # drawn samples still without boxes (interactive datasets): nothing is preprocessed yet

    def line(self) -> str:
        fingerprint = "reused" if self.fingerprint_reused else "measured"
        text = (f"{self.dataset}: fingerprint {fingerprint}, {self.labelled} labelled samples in {self.folds} folds")
        if self.to_annotate:
            return (f"{text}; {self.to_annotate} of the {self.labelled} still to annotate: run automedsam_annotate "
                    f"-d {self.dataset}, then this command again to preprocess ({self.seconds:.1f} s) -> "
                    f"{self.out_dir}")
        if self.preprocessing is not None:
            done = self.preprocessing
            text += (f", {done['samples_written']}/{done['samples']} samples written, "
                     f"{done['embeddings_computed']}/{done['embeddings']} embeddings computed")
        return f"{text} ({self.seconds:.1f} s) -> {self.out_dir}"


def plan_and_preprocess(dataset: RawDataset | str | int, *, foundation_name: str | None = None,
                        foundation_checkpoint: str | os.PathLike | None = None, shots: Shots | None = None,
                        folds: int | None = None, seed: int | None = None, num_workers: int | None = None,
                        device: str | None = None, plan_only: bool = False, preprocess_only: bool = False,
                        embed_all: bool = False, precision: str | None = None, select: str | None = None,
                        progress: bool = True) -> PreprocessSummary:
    """Fingerprint, plan, split and preprocess a raw dataset (id, folder name, path or loaded RawDataset).

    Planning options (foundation_name, foundation_checkpoint, shots, folds, seed, precision, select) default to
    litemedsam, none, 10, 5, 0, "auto" (bf16 where the device has it and the precision check passes, see
    planning.precision), the planner's selection (planner.plan_selection), except for an interactive dataset
    already planned, whose unnamed options keep the draw being annotated; with `preprocess_only` they must stay
    unset, since the stored plans.json and splits.json are used as they are, except `precision`, which
    preprocessing applies (unset, the stored plans keep theirs, checked where none was chosen yet).
    Under torchrun, rank 0 alone fingerprints, plans and writes the shared files; then every process writes and
    embeds its share of the samples, and the summary's counts are summed over processes.
    """
    with distributed.joined(device) as (context, torch_device):  # planning builds the frozen model too
        return _plan_and_preprocess(dataset, foundation_name=foundation_name,
                                    foundation_checkpoint=foundation_checkpoint, shots=shots, folds=folds, seed=seed,
                                    num_workers=num_workers, device=torch_device, plan_only=plan_only,
                                    preprocess_only=preprocess_only, embed_all=embed_all, precision=precision,
                                    select=select, progress=progress, context=context)


def _plan_and_preprocess(dataset: RawDataset | str | int, *, foundation_name: str | None,
                         foundation_checkpoint: str | os.PathLike | None, shots: Shots | None, folds: int | None,
                         seed: int | None, num_workers: int | None, device: torch.device, plan_only: bool,
                         preprocess_only: bool, embed_all: bool, precision: str | None, select: str | None,
                         progress: bool, context: distributed.DistributedContext) -> PreprocessSummary:
    start = time.perf_counter()
    if plan_only and preprocess_only:
        raise AutomedsamError("--plan-only and --preprocess-only exclude each other; give at most one.")
    if plan_only and embed_all:
        raise AutomedsamError("--embed-all embeds during preprocessing, which --plan-only leaves out; give one.")
    given = {"--foundation": foundation_name, "--foundation-checkpoint": foundation_checkpoint, "--shots": shots,
             "--folds": folds, "--seed": seed, "--select": select}
    if preprocess_only and any(value is not None for value in given.values()):
        named = ", ".join(name for name, value in given.items() if value is not None)
        raise AutomedsamError(f"{named} belong to planning, but --preprocess-only keeps plans.json and splits.json as "
                              "they are. Edit those files, or drop --preprocess-only to plan again.")
    _check_given_options(shots=shots, folds=folds, seed=seed, select=select, foundation_name=foundation_name,
                         foundation_checkpoint=foundation_checkpoint)
    workers = check_workers(num_workers) if num_workers is not None else default_workers()
    if precision is not None:
        check_precision_option(precision, device)
    raw = dataset if isinstance(dataset, RawDataset) else load_raw_dataset(dataset, check_images=False)
    if not isinstance(dataset, RawDataset):
        check_dataset_folder(raw.root)
    out_dir = preprocessed_dataset_dir(raw.name)
    if not context.is_main:
        return _follow_main(raw, out_dir, workers=workers, device=device, plan_only=plan_only, embed_all=embed_all,
                            precision=precision, preprocess_only=preprocess_only, context=context, start=start)
    fingerprint, reused, notes = _fingerprint(raw, out_dir, workers, progress,
                                              checked=isinstance(dataset, RawDataset), must_exist=preprocess_only)
    model = None  # the frozen model, once built for the label statistics, serves preprocessing too
    if preprocess_only:
        plans, splits = _stored_plans(out_dir, fingerprint, notes)
    else:
        if raw.interactive:
            options = {"--foundation": foundation_name, "--foundation-checkpoint": foundation_checkpoint,
                       "--shots": shots, "--folds": folds, "--seed": seed, "--select": select}
            kept = {name: value for name, value in _recorded_draw(out_dir, foundation_name).items()
                    if options[name] is None and value is not None}
            options.update(kept)
            foundation_name, foundation_checkpoint = options["--foundation"], options["--foundation-checkpoint"]
            shots, folds, seed, select = options["--shots"], options["--folds"], options["--seed"], options["--select"]
            if kept:
                notes.append("kept the draw being annotated: " + " ".join(f"{n} {v}" for n, v in kept.items()))
        shots_value = parse_shots(shots if shots is not None else DEFAULTS["shots"])
        folds_value = folds if folds is not None else DEFAULTS["folds"]
        seed_value = _checked_seed(seed if seed is not None else DEFAULTS["seed"])
        weights = Path(foundation_checkpoint).expanduser().resolve() if foundation_checkpoint is not None else None
        if weights is not None and not weights.is_file():
            raise AutomedsamError(f"--foundation-checkpoint {foundation_checkpoint} does not exist. Give the path of "
                                  "the foundation model's weights file.")
        foundation = plan_foundation_model(foundation_name or DEFAULTS["foundation_name"],
                                           None if weights is None else str(weights))
        axis = plan_slicing(fingerprint)["axis"]
        selection_plan = plan_selection(select)
        if select is not None and selection_plan["criterion"] and shots_value == "all":
            raise AutomedsamError(f"--select {select} chooses which --shots N samples to label, but --shots all "
                                  "labels every sample. Give a number to --shots, or drop --select.")
        selection = RANDOM
        if selection_plan["criterion"] and shots_value != "all":  # --shots all labels every sample
            selection, model = coverage_selection(raw, fingerprint, selection_plan, foundation=foundation,
                                                 seed=seed_value, out_dir=out_dir, device=device, progress=progress)
        previous = _previous_draw(out_dir, interactive=raw.interactive)
        splits = make_splits(fingerprint, axis, shots=shots_value, folds=folds_value, seed=seed_value,
                             previous=previous, selection=selection)
        if len(splits["folds"]) < folds_value:
            notes.append(f"{len(splits['folds'])} folds instead of {folds_value}: the labelled samples come from "
                         f"{len(splits['folds'])} groups (patients, examinations), and a fold validates on groups "
                         "it did not train on")
        statistics, built = _label_statistics(raw, fingerprint, splits, out_dir, axis=axis, foundation=foundation,
                                              device=device, workers=workers, progress=progress, model=model)
        model = built or model
        notes += (_labels_without_samples(statistics, splits) + undeclared_ring_notes(statistics)
                  + _cut_across_notes(fingerprint, axis=axis))
        plans = plan(fingerprint, statistics, foundation_name=foundation["name"],
                     foundation_checkpoint=foundation["checkpoint"], folds=splits["folds"], seed=seed_value,
                     selection=selection_plan)
        if precision in HAND_PRECISIONS:  # recorded now, so a later run that preprocesses keeps it
            plans = {**plans, "foundation_model": precision_by_hand(plans["foundation_model"], mode=precision,
                                                                    device=device)}
        elif plan_only:
            plans = _with_stored_precision(plans, out_dir, keep_by_hand=precision is None)
        save_json(out_dir / "plans.json", plans)
        notes += _save_splits(out_dir, splits, previous=previous, boxes_dir=raw.root / "boxesTr")
        if raw.interactive and not _preprocess_now(plan_only, splits):
            notes += _cache_for_annotation(out_dir, plans)
    _copy_dataset_json(raw, out_dir)
    distributed.barrier(context)  # the other processes now read the shared files written above
    done = None
    to_annotate = splits.get("interactive", {}).get("to_annotate", [])
    if _preprocess_now(plan_only, splits):
        done = preprocess(raw, plans, splits=splits, fingerprint=fingerprint, out_dir=out_dir, embed_all=embed_all,
                          num_workers=workers, device=device, progress=progress, context=context, foundation=model,
                          precision=_precision_mode(plans, out_dir, precision=precision,
                                                   preprocess_only=preprocess_only, context=context))
        notes.extend(done["notes"])
    return PreprocessSummary(raw.name, out_dir, reused, len(splits["labelled"]), len(splits["folds"]), done, notes,
                             time.perf_counter() - start, to_annotate=len(to_annotate))


def _labels_without_samples(statistics: Mapping[str, Any], splits: Mapping[str, Any]) -> list[str]:
    """A note naming the labels no labelled sample holds (a rare class the few-shot draw missed, or one declared but
    in no case): planned all the same, with only a word in plans.json's reasons, they are trained on nothing and
    never predicted. Not while drawn samples still await their boxes, whose labels are not known yet."""
    if splits.get("interactive", {}).get("to_annotate"):
        return []
    missing = [f"{stats['name']} ({label})" for label, stats in statistics["label_statistics"].items()
               if stats["objects_per_image"] is None]
    if not missing:
        return []
    count = len(statistics["labelled_samples"])
    remedy = ("draw samples that hold them (a larger --shots, or another --seed), or give boxes of them in boxesTr/"
              if statistics["regime"] == FEW_SHOT else
              "annotate them (labelsTr/ masks or boxesTr/ boxes), or remove them from dataset.json's labels")
    return [f"label(s) {', '.join(missing)} in none of the {count} labelled samples: trained on nothing, they will "
            f"not be predicted. To learn them, {remedy}, then run this command again."]


def _cut_across_notes(fingerprint: Mapping[str, Any], *, axis: int | None) -> list[str]:
    """A note naming the volumes stored in another axis order than the others (splits.cases_cut_across), with the
    sitk.PermuteAxes order that fixes each: cut along the planned axis, their samples are strips across their own
    slices, as prediction warns of such a volume, so no draw takes them (--shots all and an interactive draw, whose
    annotator would be asked to box a strip, included), and without a word here they were silently left out."""
    across = cases_cut_across(fingerprint, axis)
    if not across:
        return []
    named = "; ".join(f"{case} (slices along array axis {own}: sitk.PermuteAxes order {swapping_order(own, axis)})"
                      for case, own in sorted(across.items()))
    return [f"volume(s) stored in another axis order than the others: {named}. Cut along array axis {axis}, the "
            f"planned slicing axis, their samples are strips across their own slices, unlike the other images, so "
            "none of their samples is labelled, with --shots all too, nor drawn to annotate. Store each image (and "
            f"label) with its slices along array axis {axis}: "
            "sitk.WriteImage(sitk.PermuteAxes(sitk.ReadImage(path), order), path) with the order named, then run "
            "this command again."]


def _cache_for_annotation(out_dir: Path, plans: Mapping[str, Any]) -> list[str]:
    """Record these plans as the embedding cache's where none are recorded yet, as preprocessing does when it runs:
    until then the box preview of an interactive dataset stores nothing it encodes. A recorded key is left to
    preprocessing, whose plans may differ from these (the precision it measured), so its embeddings are kept."""
    plans = Plans(plans, str(out_dir / "plans.json"))
    if recorded_embeddings_key(out_dir, plans.foundation_name) is not None:
        return []
    return clear_stale_embeddings(out_dir, plans)


def _follow_main(raw: RawDataset, out_dir: Path, *, workers: int, device: torch.device, plan_only: bool,
                 embed_all: bool, precision: str | None, preprocess_only: bool,
                 context: distributed.DistributedContext, start: float) -> PreprocessSummary:
    """A process other than rank 0: wait for the shared files, then preprocess this process's share."""
    distributed.barrier(context)
    fingerprint = load_json(out_dir / "fingerprint.json", "fingerprint")
    plans = load_json(out_dir / "plans.json", "plans file")
    splits = load_json(out_dir / SPLITS_FILE, "splits file")
    done = None
    if _preprocess_now(plan_only, splits):
        done = preprocess(raw, plans, splits=splits, fingerprint=fingerprint, out_dir=out_dir, embed_all=embed_all,
                          num_workers=workers, device=device, progress=False, context=context,
                          precision=_precision_mode(plans, out_dir, precision=precision,
                                                   preprocess_only=preprocess_only, context=context))
    return PreprocessSummary(raw.name, out_dir, True, len(splits["labelled"]), len(splits["folds"]), done,
                             [] if done is None else done["notes"], time.perf_counter() - start)


def _precision_mode(plans: Mapping[str, Any], out_dir: Path, *, precision: str | None, preprocess_only: bool,
                    context: distributed.DistributedContext) -> str | None:
    """How preprocessing sets the precision (None: keeps the plans' own): as given, by default the check ("auto").
    --preprocess-only without --precision keeps the stored plans' precision, unless none was chosen for them yet,
    which the check then chooses as a full run would.

    Every process decides alike, from the same files: rank 0 writes neither plans.json nor the state on the
    --preprocess-only path before the barrier that lets the others read, and none goes on until all have decided,
    since preprocess() writes the state (its samples_key) before its first barrier."""
    if precision is not None or not preprocess_only:
        mode = precision or "auto"
    else:
        mode = "auto" if _precision_undecided(plans, out_dir) else None
    distributed.barrier(context)
    return mode


def _precision_undecided(plans: Mapping[str, Any], out_dir: Path) -> bool:
    """Whether the plans hold no precision chosen yet: --plan-only's fp32 without a precision_check, not embedded
    by a preprocessing (one that ran records its samples_key beside the plans' embeddings key; the box preview of
    an interactive dataset and a coverage selection record the key alone). Such plans that an earlier version
    preprocessed keep their fp32: a check would write plans.json (training refuses plans its trained folds do not
    share) and might encode everything again."""
    section = plans["foundation_model"]
    if "precision_check" in section or section.get("precision", DEFAULT_PRECISION) != DEFAULT_PRECISION:
        return False
    planned = Plans(plans, str(out_dir / "plans.json"))
    embedded = recorded_embeddings_key(out_dir, planned.foundation_name) == planned.embeddings_key()
    return not (embedded and _preprocessing_ran(out_dir))


def _preprocessing_ran(out_dir: Path) -> bool:
    """Whether preprocess() ran in `out_dir`: it alone records the samples' key in the state file."""
    path = out_dir / PREPROCESSING_STATE_FILE
    state = load_json(path, "preprocessing state") if path.is_file() else {}
    return isinstance(state, dict) and "samples_key" in state


def _with_stored_precision(plans: dict[str, Any], out_dir: Path, *, keep_by_hand: bool) -> dict[str, Any]:
    """The encoder precision stored in plans.json, kept when --plan-only plans the same again (reasons reworded
    aside, as by an upgrade): the planner leaves it to preprocessing, and plans differing in it alone would lock
    trained folds out of training the others. One set by hand is kept only with `keep_by_hand` (no --precision auto
    given), so that --precision auto hands the choice back to the check of the next preprocessing."""
    path = out_dir / "plans.json"
    stored = load_json(path, "plans file") if path.is_file() else None
    if stored is None or without_reasons(_without_precision(stored)) != without_reasons(_without_precision(plans)):
        return plans
    if not keep_by_hand and not chosen_by_check(stored["foundation_model"]):
        return plans
    return {**plans, "foundation_model": stored["foundation_model"]}


def _without_precision(plans: Mapping[str, Any]) -> dict[str, Any]:
    section = {key: value for key, value in plans.get("foundation_model", {}).items()
               if key not in ("precision", "precision_check")}
    return {**plans, "foundation_model": section}


def _preprocess_now(plan_only: bool, splits: Mapping[str, Any]) -> bool:
    """Every process decides alike: preprocess unless only planning, or while drawn samples still await their boxes
    (an interactive dataset's samples are written once annotated)."""
    return not plan_only and not splits.get("interactive", {}).get("to_annotate")


def _fingerprint(raw: RawDataset, out_dir: Path, workers: int, progress: bool, checked: bool,
                 must_exist: bool) -> tuple[dict[str, Any], bool, list[str]]:
    """The stored fingerprint while the raw files are unchanged; else validate every file and measure again.

    Also returns the dataset's warnings, those of the file check (all-background labels, constant images) included.
    """
    path = out_dir / "fingerprint.json"
    stored = load_json(path, "fingerprint") if path.is_file() else None
    if stored is not None and stored.get("source_key") == source_key(raw):
        return stored, True, list(raw.warnings)
    if must_exist:
        raise AutomedsamError(_no_fingerprint_message(path, out_of_date=stored is not None))
    if not checked:
        raw = load_raw_dataset(raw.root, check_images=True)
    fingerprint = run_fingerprint(raw, num_workers=workers, progress=progress)
    save_json(path, fingerprint)
    return fingerprint, False, list(raw.warnings)


def _no_fingerprint_message(path: Path, *, out_of_date: bool) -> str:
    """Why --preprocess-only cannot go on without the fingerprint its plans were made from, and what planning again
    replaces: a hand-edited plans.json or splits.json is written over without a word otherwise."""
    if not out_of_date:
        return f"{path} does not exist. Run automedsam_plan_and_preprocess without --preprocess-only first."
    return (f"{path} is out of date: the raw data changed since planning (an image, mask or box file added, removed "
            "or changed, a box redrawn on the annotation page included), and --preprocess-only works only on the "
            "data its plans were made from. Run automedsam_plan_and_preprocess without --preprocess-only, with the "
            "planning options planned with before (--shots, --seed, ...): it plans again and replaces plans.json and "
            "splits.json, so hand edits made to them are lost; make them again, then rerun with --preprocess-only.")


def _label_statistics(raw: RawDataset, fingerprint: dict[str, Any], splits: dict[str, Any], out_dir: Path, *,
                      axis: int | None, foundation: dict[str, Any], device: torch.device, workers: int,
                      progress: bool, model: FoundationModel | None = None) -> tuple[dict[str, Any],
                                                                                    FoundationModel | None]:
    """label_statistics.json: what the labelled samples tell under the regime of `splits["shots"]`; the stored one
    while its inputs (the labelled samples' files, the draw, the slicing, the frozen model) are unchanged. Also
    returns the frozen model when it had to be built (`model`, already built by the selection, is used as it is).

    Few-shot: the drawn samples' boxes, then the frozen model prompted with them on the images normalised with the
    window those boxes give.
    """
    regime = regime_of(splits["shots"])
    spec = ({"name": foundation["name"], "checkpoint": foundation["checkpoint"], **weights_identity(foundation)}
            if regime == FEW_SHOT else None)
    catalogue = sample_catalogue(fingerprint, axis)
    labelled_cases = {catalogue[sid][0] for sid in splits["labelled"]}
    key = statistics_key(source_key(raw, cases=labelled_cases), splits["labelled"], axis=axis, regime=regime,
                         foundation=spec, intensity=fingerprint["intensity"] if regime == FEW_SHOT else None)
    path = out_dir / STATISTICS_FILE
    stored = load_json(path, "label statistics") if path.is_file() else None
    if stored is not None and stored.get("key") == key:
        if stored.get("shots") != splits["shots"]:  # the same labelled samples drawn under another --shots
            stored = {**stored, "shots": splits["shots"]}
            save_json(path, stored)
        return stored, None
    labelled = read_labelled_samples(raw, fingerprint, splits["labelled"], axis=axis, regime=regime,
                                     num_workers=workers, progress=progress)
    settings = {"dataset": raw, "regime": regime, "shots": splits["shots"], "key": key, "foundation": spec}
    boxed = summarise(labelled, **settings)
    check_ring_directions(boxed, dataset=raw.name)  # as plan() does, but before the frozen model is asked
    if regime == FEW_SHOT:
        window = plan_normalization(fingerprint, boxed)
        model = model or Plans({"foundation_model": foundation}).build_foundation_model(device=device)
        measure_box_prompts(labelled, model, normalise=Plans({"normalization": window}).normalise,
                            regions=target_regions(raw), progress=progress)
    statistics = summarise(labelled, **settings)
    save_json(path, statistics)
    return statistics, model


def _stored_plans(out_dir: Path, fingerprint: dict[str, Any], notes: list[str]) -> tuple[dict, dict]:
    """plans.json and splits.json as stored; splits redrawn (same seed and shots) if the slicing axis was edited."""
    paths = {name: out_dir / f"{name}.json" for name in ("plans", "splits")}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise AutomedsamError(f"{', '.join(missing)} missing. Run automedsam_plan_and_preprocess without "
                              "--preprocess-only first.")
    plans = load_json(paths["plans"], "plans file")
    splits = check_splits(load_json(paths["splits"], "splits file"), paths["splits"])
    check_fold_members(splits, paths["splits"])
    check_plans(plans, fingerprint, str(paths["plans"]))
    axis = plans["slicing"]["axis"]
    if splits.get("slicing_axis", axis) != axis:
        if splits.get("selection", {}).get("method", "random") != "random":
            raise AutomedsamError(f"plans.json slicing.axis was edited to {axis}, and splits.json's samples were "
                                  "chosen from embeddings of the other slices. Rerun automedsam_plan_and_preprocess "
                                  "without --preprocess-only (with --select) to choose again.")
        splits = make_splits(fingerprint, axis, shots=parse_shots(splits["shots"]), folds=len(splits["folds"]),
                             seed=splits["seed"], previous=splits)
        save_json(paths["splits"], splits)
        notes.append(f"splits redrawn along the edited slicing axis {axis} (seed {splits['seed']}, "
                     f"shots {splits['shots']})")
    notes.extend(_learnt_from_other_samples(out_dir, plans, splits))
    return plans, splits


def _learnt_from_other_samples(out_dir: Path, plans: dict[str, Any], splits: dict[str, Any]) -> list[str]:
    """A warning where the plans' label-derived choices were learnt from other labelled samples than splits.json
    gives now (samples chosen by hand, the axis edited): under --shots N they then come from images the folds do
    not label, and --preprocess-only keeps them as they are."""
    path = out_dir / STATISTICS_FILE
    if plans.get("protocol", {}).get("regime") != FEW_SHOT or not path.is_file():
        return []
    learnt_from = load_json(path, "label statistics").get("labelled_samples")
    if learnt_from is None or sorted(learnt_from) == sorted(splits["labelled"]):
        return []
    return ["plans.json's box margins, targets, postprocessing and second look were learnt from other "
            f"labelled samples ({STATISTICS_FILE}) than splits.json gives now; they are kept as they are. Edit them, "
            "or plan again without --preprocess-only (which draws again)"]


def _save_splits(out_dir: Path, splits: dict[str, Any], *, previous: Mapping[str, Any] | None,
                 boxes_dir: Path) -> list[str]:
    """Write splits.json, keeping what the annotation page recorded while this run planned (a box accepted in
    review, an image marked No structure or restored): written over, it was lost. The next plan draws with it."""
    with holding_lock(out_dir / SPLITS_LOCK_FILE):
        now = _stored_splits(out_dir) if ANNOTATION_RECORD in splits else None
        recorded = [(now or {}).get("interactive", {}), (previous or {}).get("interactive", {})]
        late = {key: [sid for sid in recorded[0].get(key, []) if sid not in recorded[1].get(key, [])]
                for key in ("added", "rejected")}
        gone = {key: {sid for sid in recorded[1].get(key, []) if sid not in recorded[0].get(key, [])}
                for key in ("added", "rejected")}  # an added sample rejected, a rejected one boxed meanwhile
        if now is not None and "interactive" in splits:
            gone["rejected"] |= _restored_meanwhile(splits, recorded, boxes_dir)
            for key in late:
                kept = [sid for sid in splits["interactive"][key] if sid not in gone[key]]
                splits["interactive"][key] = kept + [sid for sid in late[key] if sid not in kept]
        save_json(out_dir / SPLITS_FILE, splits)
    if not any(late.values()):
        return []
    return [f"the annotation page recorded {', '.join(sum(late.values(), []))} while this run planned: kept in "
            f"{SPLITS_FILE}, they count from the next automedsam_plan_and_preprocess"]


def _restored_meanwhile(splits: Mapping[str, Any], recorded: list[Mapping[str, Any]], boxes_dir: Path) -> set[str]:
    """2D samples this run took for rejected from their empty box file, whose rejection the page took back since
    (Restore deletes the file, a later save fills it): the fingerprint read the file before, the record after."""
    return {sid for sid in splits["interactive"]["rejected"]
            if not any(sid in record.get("rejected", []) for record in recorded) and slice_of(sid) is None
            and not _empty_box_file(boxes_dir / f"{case_of(sid)}.json")}


def _empty_box_file(path: Path) -> bool:
    """Whether a 2D image's box file says No structure (an empty list); an unreadable one is left as it was read."""
    try:
        return path.is_file() and load_json(path, "box file") == []
    except AutomedsamError:
        return True


def _stored_splits(out_dir: Path) -> dict[str, Any] | None:
    """The splits.json on disk, whose annotation record (rejections, review additions) a new draw keeps."""
    path = out_dir / SPLITS_FILE
    stored = load_json(path, "splits file") if path.is_file() else None
    return stored if isinstance(stored, dict) else None


def _previous_draw(out_dir: Path, *, interactive: bool) -> dict[str, Any] | None:
    """The splits.json of an earlier run of an interactive dataset, whose annotation record and options a new draw
    keeps: checked when it holds a record, since both are read. Any other dataset's is drawn again whole, unread, so
    planning again replaces one broken by an edit."""
    stored = _stored_splits(out_dir) if interactive else None
    if stored is not None and ANNOTATION_RECORD in stored:
        return check_splits(stored, out_dir / SPLITS_FILE)
    return stored


def _recorded_draw(out_dir: Path, foundation_name: str | None) -> dict[str, Any]:
    """An interactive dataset's planning options (by option name) as last planned: the draw its annotator boxes. A
    run that does not name them keeps them (the defaults would draw other samples and ask for their boxes). The
    foundation's weights file is kept only with its model."""
    splits, plans_path = _previous_draw(out_dir, interactive=True), out_dir / "plans.json"
    if splits is None or "interactive" not in splits or not plans_path.is_file():
        return {}
    stored = load_json(plans_path, "plans file")
    foundation = stored["foundation_model"]
    method = stored.get("selection", {}).get("method")
    recorded = {"--foundation": foundation["name"], "--shots": splits["shots"], "--folds": len(splits["folds"]),
                "--seed": splits["seed"], "--select": None if method in (None, DEFAULT_SELECTION) else method}
    if foundation_name in (None, foundation["name"]):
        recorded["--foundation-checkpoint"] = foundation.get("checkpoint")
    return recorded


def _check_given_options(*, shots: Shots | None, folds: int | None, seed: int | None, select: str | None,
                         foundation_name: str | None, foundation_checkpoint: str | os.PathLike | None) -> None:
    """The planning options given, each checked alone before fingerprinting, which can take minutes (an interactive
    dataset's unnamed ones come from its recorded draw, read later)."""
    if shots is not None:
        parse_shots(shots)
    if folds is not None:
        check_folds(folds)
    if seed is not None:
        _checked_seed(seed)
    if select is not None:
        plan_selection(select)
    if foundation_name is not None and foundation_name not in FOUNDATION_MODELS:
        plan_foundation_model(foundation_name, None)  # raises its error naming the models to choose from
    if foundation_checkpoint is not None:
        refuse_folder(foundation_checkpoint)


def _checked_seed(seed: int) -> int:
    """A seed every random generator of the pipeline takes (numpy's and torch's: below 2**32)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise AutomedsamError(f"--seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}.")
    return seed


def _copy_dataset_json(raw: RawDataset, out_dir: Path) -> None:
    """Keep a copy of dataset.json beside the plans (training copies it on into its results)."""
    source, target = raw.root / "dataset.json", out_dir / "dataset.json"
    if target.is_file() and target.read_bytes() == source.read_bytes():
        return
    with atomic_path(target, suffix=".json") as tmp:
        shutil.copyfile(source, tmp)
