"""Install a model archive into the results root, so that automedsam_predict -d ID uses it like a model trained here.

The archive is untrusted: its members are checked against archive_rules and its card, plans and dataset description
are read and checked in memory before anything is written. The model is then built in a hidden staging folder inside
the results root, its checkpoints loaded as plain weights and matched to the plans, and only a complete model is
renamed into place; whatever fails, the staging folder is removed, so a failed install leaves nothing behind.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from automedsam import __version__, paths
from automedsam.checkpoint import load_checkpoint
from automedsam.dataset import checked_labels
from automedsam.errors import AutomedsamError
from automedsam.files import load_json, reporting_unwritable, save_json
from automedsam.folds import fold_dir_name
from automedsam.foundation.frame import RESIZES
from automedsam.foundation.weights_file import check_weights, is_packaged
from automedsam.model_sharing.archive_rules import (DATASET, MODEL_CARD, PLANS, check_checkpoint_records,
                                                    check_planned_sizes, checked_members, extract_member, fold_members,
                                                    open_archive, planned_checkpoint_bytes, read_member,
                                                    validation_member)
from automedsam.model_sharing.export import shared_description
from automedsam.model_sharing.model_card import ModelCard, shown
from automedsam.plans import FOUNDATION_PRECISIONS, INTENSITY_WINDOW_SCHEMES, Plans
from automedsam.prompt_module import load_modules
from automedsam.trained_models import kept_while_replaced

MAX_CENTER_CHANNELS, MAX_POINTS = 4096, 64  # far above any plan; a larger module would only exhaust memory
MAX_TARGETS = 1000  # far above any plan (label maps hold at most 255 labels); checked before any per-target work
# Every top-level section that planning.planner.plan writes (plans of earlier versions hold some of them): a section
# this version does not know was written by a newer automedsam, and prediction here would ignore it. The planner has
# no constant of them; test_model_sharing checks that the plans it writes install.
PLANS_SECTIONS = frozenset({"plans_name", "dataset_name", "protocol", "selection", "foundation_model", "slicing",
                            "normalization", "prompt_module", "targets", "losses", "training", "augmentation",
                            "postprocessing", "second_look"})


@dataclass(frozen=True)
class InstallSummary:
    model_dir: Path
    card: ModelCard
    needs_weights: bool
    previous: Path | None = None  # where the model it replaced went

    def line(self) -> str:
        dataset_id = paths.DATASET_FOLDER.match(self.model_dir.parent.name).group(1)
        trainer = "" if self.card.trainer == "default" else f" --trainer {self.card.trainer}"
        text = (f"Installed {self.card.dataset}/{self.card.trainer}__{self.card.plans_name} (folds "
                f"{', '.join(map(str, self.card.folds))}) as {self.model_dir}. Predict with: automedsam_predict -i "
                f"IMAGES -o OUTPUT -d {dataset_id}{trainer}")
        if self.needs_weights:
            weights = self.card.foundation
            text += (f" --foundation-checkpoint PATH/{weights['weights_file'] or weights['name']} (the "
                     f"'{weights['name']}' weights with sha256 {weights['sha256']})")
        if self.previous is not None:
            text += (f". The model it replaced was moved whole to {self.previous}; predict with it: automedsam_predict "
                     f"-i IMAGES -o OUTPUT -m {self.previous}")
        return text


def install_model(archive_path: str | Path, *, dataset: str | int | None = None, overwrite: bool = False,
                  foundation_checkpoint: str | Path | None = None) -> InstallSummary:
    """Install the archive under `dataset` (an id, keeping the archive's dataset name, or a full `DatasetXXX_Name`;
    default the archive's own). `foundation_checkpoint`, checked against the card's sha256, is stored in the installed
    plans so prediction finds the weights without being told."""
    archive_path = Path(archive_path).expanduser()
    with open_archive(archive_path) as archive:
        contents = _read_contents(archive, archive_path)
        card = contents.card
        name = target_dataset_name(dataset, card.dataset)
        _check_local_labels(name, contents.description["labels"])
        model_dir = paths.results_root() / name / f"{card.trainer}__{card.plans_name}"
        if model_dir.exists() and not overwrite:
            raise AutomedsamError(f"{model_dir} already exists. Pass --overwrite to replace it (it is first moved "
                                  f"whole to {model_dir.parent / 'previous'}/), or install under another id with -d "
                                  "NEW_ID.")
        weights = (check_weights(foundation_checkpoint, model_name=card.foundation["name"],
                                 sha256=card.foundation["sha256"], weights_file=card.foundation["weights_file"])
                   if foundation_checkpoint is not None else None)
        plans = {**contents.plans, "dataset_name": name,
                 "foundation_model": {**contents.plans["foundation_model"],
                                      "checkpoint": None if weights is None else str(weights.resolve())}}
        with reporting_unwritable(model_dir):
            paths.results_root().mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".install-", dir=paths.results_root()))
        try:
            staged = staging / name / model_dir.name
            _stage_folds(archive, contents, staged)
            save_json(staged / PLANS, plans)
            save_json(staged / DATASET, contents.description)
            save_json(staged / MODEL_CARD, replace(card, dataset=name).to_json())  # as the plans
            previous = _publish(staged, model_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    needs_weights = weights is None and not is_packaged(card.foundation["name"], card.foundation["sha256"])
    return InstallSummary(model_dir, card, needs_weights, previous)


def target_dataset_name(requested: str | int | None, archived: str) -> str:
    """The dataset folder to install into, refusing an id that another dataset in the roots already uses (then `-d ID`
    would be ambiguous)."""
    archived_match = paths.DATASET_FOLDER.fullmatch(archived)
    text = archived if requested is None else str(requested).strip()
    if text.isdigit():
        name = paths.dataset_folder_name(int(text), archived_match.group(2))
    elif paths.DATASET_FOLDER.fullmatch(text):
        name = text
    else:
        raise AutomedsamError(f"-d {requested!r} is not a dataset id. Give a number (42 installs as "
                              f"Dataset042_{archived_match.group(2)}) or a full name like Dataset042_Name.")
    if len(name) > paths.MAX_DATASET_FOLDER_CHARS:
        raise AutomedsamError(f"-d {shown(requested)} is {len(name)} characters long, more than the "
                              f"{paths.MAX_DATASET_FOLDER_CHARS} a dataset folder name may have. Give a shorter "
                              "name.")
    dataset_id = paths.DATASET_FOLDER.fullmatch(name).group(1)
    for root in (paths.raw_root(), paths.preprocessed_root(), paths.results_root()):
        others = sorted(entry.name for entry in root.glob(f"Dataset{dataset_id}_*")
                        if entry.is_dir() and entry.name != name)
        if others:
            raise AutomedsamError(f"Dataset id {dataset_id} is already used by {others[0]} in {root}, so `-d "
                                  f"{dataset_id}` would be ambiguous. Install under a free id with -d NEW_ID.")
    return name


def _check_local_labels(name: str, labels: dict[str, Any]) -> None:
    """A dataset of that name on this machine must mean by each label value what the model means: predict and the
    annotation page would take the model for that dataset's."""
    for root in (paths.raw_root(), paths.preprocessed_root()):
        local = root / name / DATASET
        if local.is_file():
            description = load_json(local, "dataset description")
            found = description.get("labels") if isinstance(description, dict) else None
            if {str(key): value for key, value in (found or {}).items()} != labels:
                raise AutomedsamError(f"{local} has the labels {found}, the model {labels}: its label maps would mean "
                                      "something else there. Install under a free id with -d NEW_ID.")


@dataclass(frozen=True)
class _Contents:
    """What an archive holds, checked: its members by name, card, plans (as exported) and dataset description."""

    where: Path
    members: dict[str, zipfile.ZipInfo]
    card: ModelCard
    plans: dict[str, Any]
    description: dict[str, Any]


def _read_contents(archive: zipfile.ZipFile, where: Path) -> _Contents:
    """Check the members and read the JSON files, in memory: nothing is written before this has passed."""
    members = checked_members(archive, where)
    card = ModelCard.from_json(_read_json(archive, members, MODEL_CARD, where), f"{where}:{MODEL_CARD}")
    unexpected = sorted(set(members) - card.member_names - card.optional_member_names)
    missing = sorted(card.member_names - set(members))
    if unexpected or missing:
        raise AutomedsamError(f"Refusing to install {where}: its members do not match its model card (missing: "
                              f"{', '.join(missing) or 'none'}; not in the card: {', '.join(unexpected) or 'none'}). "
                              "Export the model again.")
    plans = _checked_plans(_read_json(archive, members, PLANS, where), card, where)
    check_planned_sizes(members, plans, where)
    description = _checked_description(_read_json(archive, members, DATASET, where), where)
    return _Contents(where, members, card, plans, description)


def _checked_description(description: Any, where: Path) -> dict[str, Any]:
    """The archive's dataset description as export shares it (SHARED_DATASET_KEYS only: anything else an archive
    adds is not installed), if its labels (the rule of every dataset.json: distinct ids, background 0) and channel
    names are what prediction and the annotation page read."""
    def fail(problem: str) -> AutomedsamError:
        return AutomedsamError(f"Refusing to install {where}: {DATASET} {problem}. Export the model again.")

    if not isinstance(description, dict) or "labels" not in description:
        raise fail("has no labels")
    try:
        checked_labels(description["labels"], Path(DATASET))
    except AutomedsamError as exc:
        raise fail(f"has unusable labels ({str(exc)[:300]})") from None
    channels = description.get("channel_names")
    if not isinstance(channels, dict) or "0" not in channels \
            or not all(isinstance(value, str) for value in channels.values()):
        raise fail(f"channel_names {shown(channels)} is not a map of channel numbers (from \"0\") to names")
    return shared_description(description)


def _stage_folds(archive: zipfile.ZipFile, contents: _Contents, staged: Path) -> None:
    """Write every fold's files into the staging folder and check its checkpoints there."""
    for fold in contents.card.folds:
        for member in [*fold_members(fold, contents.card.checkpoints), validation_member(fold)]:
            if member not in contents.members:
                continue  # a fold without validation record
            if member.endswith(".json"):
                value = _read_json(archive, contents.members, member, contents.where)
                if member == validation_member(fold):
                    _check_validation_record(value, f"{contents.where}:{member}",
                                             labels={str(target["label"]) for target in contents.plans["targets"]})
                save_json(staged / member, value)
            else:
                extract_member(archive, contents.members[member], contents.where, staged / member)
    _check_checkpoints(staged, contents.card, contents.plans, contents.where)


def _check_validation_record(record: Any, where: str, *, labels: set[str]) -> None:
    """A fold's validation record as prediction reads it: {"box_refinement": {label: {"per_sample": [...]}}} and,
    from models exported since the second look, the same shape under "second_look"; `labels`: the plans' targets,
    the only keys a check has, each sample's figures numbers or null."""
    checks = [record.get(key, {} if key == "second_look" else None) if isinstance(record, dict) else None
              for key in ("box_refinement", "second_look")]
    if not all(isinstance(check, dict) and set(check) <= labels
               and all(isinstance(entry, dict) and isinstance(entry.get("per_sample"), list)
                       and all(isinstance(sample, dict) and all(_figure(value) for value in sample.values())
                               for sample in entry["per_sample"])
                       for entry in check.values()) for check in checks):
        raise AutomedsamError(f"Refusing to install {where}: it is not a validation record of box refinement and "
                              "second look checks. Export the model again.")


def _figure(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _read_json(archive: zipfile.ZipFile, members: Mapping[str, zipfile.ZipInfo], member: str, where: Path) -> Any:
    if member not in members:
        raise AutomedsamError(f"Refusing to install {where}: it has no {member}, so it is not a model written by "
                              "automedsam_export_model (or its copy is incomplete). Nothing was written. Export the "
                              "model again.")
    content = read_member(archive, members[member], where)
    try:
        return json.loads(content)
    except RecursionError:  # "[[[[..." nested deeper than the parser's stack
        problem = "it nests lists or objects too deeply to read"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problem = f"it is not valid JSON ({exc})"
    except ValueError:  # an integer of more digits than Python converts (sys.int_info.default_max_str_digits)
        problem = "it holds a number of thousands of digits, which no model file has"
    raise AutomedsamError(f"Refusing to install {where}: {member} cannot be read: {problem}. Nothing was written. "
                          "Export the model again.")


def _checked_plans(plans: Any, card: ModelCard, where: Path) -> dict[str, Any]:
    """The archive's plans, if they are the exported plans of the model the card describes."""
    def fail(problem: str) -> AutomedsamError:
        return AutomedsamError(f"Refusing to install {where}: {PLANS} {problem}. Export the model again.")

    if not isinstance(plans, dict) or not isinstance(plans.get("foundation_model"), dict):
        raise fail("is not a plans object with a foundation_model section")
    unknown = _unknown_to_this_version(plans)
    if unknown:
        made_by = (f"; its card says automedsam {shown(card.automedsam_version)}, this is {__version__}"
                   if card.automedsam_version != __version__ else "")
        raise AutomedsamError(f"Refusing to install {where}: made by a newer or different automedsam (unknown "
                              f"{unknown}{made_by}); update automedsam and install again. Nothing was written.")
    section = plans["foundation_model"]
    if plans.get("plans_name") != card.plans_name:
        raise fail(f"is named {plans.get('plans_name')!r}, the card says {card.plans_name!r}")
    if section.get("name") != card.foundation["name"] or section.get("sha256") != card.foundation["sha256"]:
        raise fail("names other foundation weights than the model card")
    if section.get("checkpoint") is not None:
        raise fail(f"holds a weights path ({section['checkpoint']!r}); an exported model names its weights by sha256")
    module = plans.get("prompt_module")
    if not isinstance(module, dict) or not all(type(module.get(key)) is int and 0 < module[key] <= limit for key, limit
                                               in (("center_channels", MAX_CENTER_CHANNELS),
                                                   ("num_points", MAX_POINTS))):
        raise fail("has no usable prompt_module section")
    targets = plans.get("targets")
    if not isinstance(targets, list) or not targets:
        raise fail("has no targets with integer labels")
    if len(targets) > MAX_TARGETS:
        raise fail(f"has {len(targets)} targets, more than a model has ({MAX_TARGETS} at most)")
    if not all(isinstance(target, dict) and type(target.get("label")) is int for target in targets):
        raise fail("has no targets with integer labels")
    problem = _prediction_sections_problem(plans)
    if problem:
        raise fail(problem)
    return plans


def _unknown_to_this_version(plans: Mapping[str, Any]) -> str | None:
    """What in the plans only a newer (or another) automedsam writes: a section, or a foundation_model resize or
    precision, that this version would ignore or fail on in automedsam_predict; None if it knows everything there."""
    sections = sorted(set(plans) - PLANS_SECTIONS)
    if sections:
        more = f" and {len(sections) - 3} more" if len(sections) > 3 else ""
        return f"plans section {', '.join(map(shown, sections[:3]))}{more}"
    section = plans["foundation_model"]
    for key, known in (("resize", RESIZES), ("precision", FOUNDATION_PRECISIONS)):
        if key in section and section[key] not in known:
            return f"foundation_model.{key} {shown(section[key])}, this version knows {', '.join(known)}"
    return None


def _prediction_sections_problem(plans: Mapping[str, Any]) -> str | None:
    """What is wrong with the sections prediction reads besides those checked above, so that a broken archive is
    refused here instead of failing later in automedsam_predict; None if all are usable."""
    for check in (_normalization_problem, _slicing_problem, _target_details_problem, _optional_sections_problem):
        problem = check(plans)
        if problem:
            return problem
    return None


def _normalization_problem(plans: Mapping[str, Any]) -> str | None:
    """`Plans.normalise`: the intensity window every image is scaled with."""
    window = plans.get("normalization")
    if isinstance(window, dict) and window.get("scheme") in INTENSITY_WINDOW_SCHEMES \
            and all(_is_number(window.get(key)) for key in ("lower", "upper")) and window["upper"] > window["lower"]:
        return None
    return f"has no usable normalization section (scheme one of {', '.join(INTENSITY_WINDOW_SCHEMES)}, lower < upper)"


def _slicing_problem(plans: Mapping[str, Any]) -> str | None:
    """`Plans.is_3d` and `Plans.slicing_axis`: how a volume is cut into the 2D samples the model segments."""
    slicing = plans.get("slicing")
    if isinstance(slicing, dict) and type(slicing.get("is_3d")) is bool and "axis" in slicing \
            and (slicing["axis"] is None or type(slicing["axis"]) is int and 0 <= slicing["axis"] <= 2):
        return None
    return "has no usable slicing section (is_3d true or false, axis 0, 1, 2 or null)"


def _target_details_problem(plans: Mapping[str, Any]) -> str | None:
    """A ring target's `subtract` (combined into the ring's probability) and `per_component` (review's boxes)."""
    labels = {target["label"] for target in plans["targets"]}  # once: plans may hold up to MAX_TARGETS targets
    for target in plans["targets"]:
        subtract = target.get("subtract", [])
        subtracts_targets = isinstance(subtract, list) and all(type(label) is int for label in subtract) \
            and set(subtract) <= labels and target["label"] not in subtract
        if not subtracts_targets or type(target.get("per_component", False)) is not bool:
            return (f"target {target['label']} is unusable in its targets section (subtract must list other targets' "
                    "labels, per_component be true or false)")
    return None


def _optional_sections_problem(plans: Mapping[str, Any]) -> str | None:
    """`postprocessing` and `second_look`, optional (older plans lack them), each a map of labels when present."""
    for section, key, usable in (("postprocessing", "largest_component", lambda item: type(item) is bool),
                                 ("second_look", "object_size", _is_number)):
        value = plans.get(section, {})
        entries = value.get(key, {}) if isinstance(value, dict) else None
        if not isinstance(entries, dict) or not all(str(label).isdigit() and usable(item)
                                                    for label, item in entries.items()):
            return f"has an unusable {section} section ({key} must map labels to {section} settings)"
    return None


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _check_checkpoints(staged: Path, card: ModelCard, plans: Mapping[str, Any], where: Path) -> None:
    """Every checkpoint loads as plain tensors (weights_only) and holds one prompt module per planned target."""
    labels = sorted(Plans(plans).labels)
    planned = planned_checkpoint_bytes(plans)
    for fold in card.folds:
        for which in card.checkpoints:
            member = f"{fold_dir_name(fold)}/checkpoint_{which}.pt"
            check_checkpoint_records(staged / member, member=member, planned=planned, where=where)
            try:
                state = load_checkpoint(staged / fold_dir_name(fold), which)
            except AutomedsamError as exc:
                problem = ("holds Python objects or code besides tensors, and automedsam never runs code from a file"
                           if "Python objects" in str(exc) else "cannot be read as plain weights")
                raise AutomedsamError(f"Refusing to install {where}: {member} {problem}. Nothing was written.") \
                    from None
            modules = load_modules(state, plans, where=f"Refusing to install {where}: {member}",
                                   mismatch_advice="Export the model again. Nothing was written.")
            if sorted(modules) != labels:
                raise AutomedsamError(f"Refusing to install {where}: {member} holds prompt modules for labels "
                                      f"{sorted(modules)}, its plans have targets {labels}. Export the model again.")


def _publish(staged: Path, model_dir: Path) -> Path | None:
    """Rename the complete model into place: the whole dataset folder when it is new, else the model folder, after
    moving a model it replaces whole to previous/ (nothing trained is lost; refused while one of its folds trains),
    moved back if the new one cannot take its place. Returns where the replaced model went."""
    try:
        if not model_dir.parent.exists():
            os.rename(staged.parent, model_dir.parent)
            return None
        with kept_while_replaced(model_dir) as previous:
            os.rename(staged, model_dir)
        return previous
    except OSError as exc:
        raise AutomedsamError(f"Could not move the installed model into {model_dir} ({exc}); nothing was changed "
                              "there. Check the permissions of the results root and install again.") from None
