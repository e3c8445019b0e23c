"""Pack a trained model into one zip: what prediction needs and nothing else.

The archive holds plans.json, dataset.json, each chosen fold's checkpoint(s), log.json and (where the fold has one)
the box refinement check of its validation summary, and model_card.json. No training image, embedding, case list or
sample id goes in, and no absolute path: the plans name the foundation weights by file name and sha256 instead of
the path they had on this machine.
"""
from __future__ import annotations

import json
import shlex
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from automedsam import paths
from automedsam.checkpoint import load_checkpoint, load_metadata, metadata_path
from automedsam.errors import AutomedsamError
from automedsam.files import atomic_path, load_json
from automedsam.folds import SPLITS_FILE, Fold, fold_dir_name
from automedsam.foundation.weights_file import PACKAGED_SHA256, TRAINED_WITH, refuse_folder, sha256_of
from automedsam.model_sharing.archive_rules import (DATASET, LOG, MODEL_CARD, PLANS, fold_members, size_problem,
                                                    validation_member)
from automedsam.model_sharing.model_card import SUPERVISION_CHOICES, ModelCard
from automedsam.trained_models import reinstall_remedy

# dataset.json keys a model needs on another machine, and the training data's terms of use and citation (a model of
# non-commercial data stays bound by them); every other key stays on the machine that trained it: the case list
# (groups), the import folder's path (description), any note or nnU-Net case list a user added by hand
SHARED_DATASET_KEYS = ("name", "channel_names", "labels", "numTraining", "file_ending", "annotation", "rings",
                       "shapes", "licence", "reference")
VALIDATION_PAIRS = {"box_refinement": ("learned", "refined"), "second_look": ("first", "second")}  # what prediction
# reads of each validation check
RANDOM_SELECTION = "drawn with seed, one per group before any group gives a second"  # splits.json without a reason


@dataclass(frozen=True)
class NameWording:
    """How a refused dataset name for the archive is named, and another asked for: automedsam_export_model's --name
    flag, or the name typed into the annotation page's Download model question (a field there, not a flag)."""
    given: str  # the name given, before its quoted value
    shorter: str  # how to give a shorter one
    own_name: str  # how to share under the model's own name


CLI_WORDING = NameWording(given="--name", shorter="Give a shorter one with --name NEW.",
                          own_name="Export without --name")
PAGE_WORDING = NameWording(given="the name", shorter="Give a shorter one.",
                           own_name="Download the model under the dataset's own name")


@dataclass(frozen=True)
class ExportSummary:
    output: Path
    card: ModelCard
    size_bytes: int

    def line(self) -> str:
        folds = ", ".join(map(str, self.card.folds))
        kinds = " and ".join(f"checkpoint_{which}" for which in self.card.checkpoints)
        return (f"Exported {self.card.dataset}/{self.card.trainer}__{self.card.plans_name} (folds {folds}, {kinds}; "
                f"foundation {self.card.foundation['name']}) to {self.output} ({self.size_bytes / 2**20:.1f} MB). "
                f"The archive carries the dataset name '{self.card.dataset}' (choose another with --name NEW). "
                f"Install it with: automedsam_install_model {shlex.quote(str(self.output))}")


def export_model(model_dir: str | Path, output: str | Path, *, folds: Sequence[Fold], include_best: bool = False,
                 foundation_checkpoint: str | Path | None = None, overwrite: bool = False,
                 name: str | None = None, wording: NameWording = CLI_WORDING) -> ExportSummary:
    """Write the archive of `folds` of the trained model folder `model_dir` to `output` (atomically).

    `foundation_checkpoint` is the foundation weights file when the one named in the plans has moved; its sha256 goes
    into the card and the exported plans. `name` (--name) is the dataset name the archive carries instead of the
    model's own (an imported folder's name may name a patient): a name, keeping the id, or a full DatasetXXX_Name;
    `wording` names it in its refusals as it was asked for.
    """
    model_dir, output = Path(model_dir), Path(output)
    dataset_name = shared_dataset_name(model_dir.parent.name, name, wording=wording)
    if output.is_dir():  # --overwrite replaces a file; a folder may hold anything, so it is never replaced
        raise AutomedsamError(f"{output} is a folder; -o names the zip file to write. Give a file name, e.g. -o "
                              f"{output / 'model.zip'}.")
    paths.check_outside_raw_datasets(output.parent, what="The archive's folder (set with -o)")
    if output.exists() and not overwrite:
        raise AutomedsamError(f"{output} already exists. Choose another file name or pass --overwrite to replace it.")
    if not folds:
        raise AutomedsamError(f"No fold chosen to export from {model_dir}: give fold numbers with -f or leave it out.")
    plans = load_json(model_dir / PLANS, "model plans")
    checkpoints = ("final", "best") if include_best else ("final",)
    members = {member: model_dir / member for fold in folds for member in fold_members(fold, checkpoints)}
    _check_folds(model_dir, folds, checkpoints, members)
    _check_sizes(members, plans)
    sha256, weights_file = foundation_weights(plans["foundation_model"], foundation_checkpoint,
                                              trained_with=trained_weights(model_dir, folds, checkpoints))
    card = ModelCard(dataset=dataset_name, trainer=model_dir.name.split("__", 1)[0],
                     plans_name=str(plans["plans_name"]), folds=tuple(folds), checkpoints=checkpoints,
                     foundation={"name": plans["foundation_model"]["name"], "weights_file": weights_file,
                                 "sha256": sha256},
                     few_shot=few_shot(model_dir, plans), validation=validation(model_dir, folds),
                     supervision=supervision(model_dir, folds))
    dataset = shared_description(load_json(model_dir / DATASET, "dataset description"))
    texts = {PLANS: exported_plans(plans, sha256=sha256, weights_file=weights_file), DATASET: dataset,
             **validation_records(model_dir, folds), MODEL_CARD: card.to_json()}
    if dataset_name != model_dir.parent.name:
        texts = {**texts, **renamed(texts, model_dir=model_dir, members=members, name=dataset_name, wording=wording)}
    with atomic_path(output, suffix=".zip") as temporary:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for member, source in members.items():
                if member not in texts:
                    archive.write(source, member)
            for member, value in texts.items():
                archive.writestr(member, _json(value))
    return ExportSummary(output, card, output.stat().st_size)


def shared_dataset_name(local: str, requested: str | None, *, wording: NameWording = CLI_WORDING) -> str:
    """The dataset folder name the archive carries: the model's own `local`, or `requested` (a name keeping the id,
    or a full DatasetXXX_Name); refused, in `wording`, when install could not make a folder of it."""
    match = paths.DATASET_FOLDER.fullmatch(local)
    if requested is None:
        name = local
    elif paths.DATASET_FOLDER.fullmatch(requested):
        name = requested
    elif match:
        name = paths.dataset_folder_name(int(match.group(1)), requested)
    else:
        raise AutomedsamError(f"{wording.given.capitalize()} {requested!r}: the model's folder {local} has no "
                              "dataset id to keep. Give a full name like Dataset042_Name.")
    if len(name) > paths.MAX_DATASET_FOLDER_CHARS:
        raise AutomedsamError(f"The dataset name {name[:40]}... is {len(name)} characters long, more than the "
                              f"{paths.MAX_DATASET_FOLDER_CHARS} that automedsam_install_model accepts. "
                              f"{wording.shorter}")
    return name


def renamed(texts: Mapping[str, Any], *, model_dir: Path, members: Mapping[str, Path], name: str,
            wording: NameWording = CLI_WORDING) -> dict[str, Any]:
    """The JSON members that name the dataset, naming it `name` (--name): dataset.json's name, the plans'
    dataset_name and each fold log's summary.dataset (the card is made with `name`); refused (in `wording`) if the
    model's own folder name is left in any JSON member, which would leave with the archive."""
    changed: dict[str, Any] = {DATASET: {**texts[DATASET], "name": paths.DATASET_FOLDER.fullmatch(name).group(2)},
                               PLANS: {**texts[PLANS], "dataset_name": name}}
    for member, source in members.items():
        if member.endswith(LOG):
            log = _mapping(load_json(source, "training log"), source, "")
            summary = _mapping(log.get("summary") or {}, source, "summary")
            changed[member] = {**log, "summary": {**summary, "dataset": name}}
    left = [member for member, value in {**texts, **changed}.items() if model_dir.parent.name in json.dumps(value)]
    if left:
        raise AutomedsamError(f"Cannot export under {wording.given} {name}: {', '.join(left)} still name(s) the "
                              f"dataset {model_dir.parent.name}. {wording.own_name}, or report this as a bug.")
    return changed


def foundation_weights(section: Mapping[str, Any], checkpoint: str | Path | None, *,
                       trained_with: str | None = None) -> tuple[str, str | None]:
    """(sha256, file name) of the foundation weights the model was trained with; file name None for packaged ones.

    `trained_with`: the sha256 the folds recorded (`trained_weights`), which the weights at hand must have: a file
    saved over the planned path since holds other weights. None for folds trained before it was recorded."""
    if checkpoint is not None:
        return given_weights(section, Path(checkpoint).expanduser(), trained_with=trained_with)
    path = section.get("checkpoint")
    name = section["name"]
    expected = trained_with or section.get("sha256")
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            if expected:  # the weights file moved since: the folds (or an installed model's plans) say which it was
                return expected, section.get("weights_file") or path.name
            raise AutomedsamError(f"The foundation weights {path} (named in plans.json) do not exist, and the archive "
                                  f"must record the sha256 of the '{name}' weights the model was trained with. Give "
                                  "the file with --foundation-checkpoint PATH.")
        sha256 = sha256_of(path)
        if expected not in (None, sha256):
            raise AutomedsamError(f"The foundation weights {path} have sha256 {sha256}, but the model was trained "
                                  f"with {section.get('weights_file') or 'other weights'} (sha256 {expected}): other "
                                  "weights give other segmentations. Put the weights it was trained with back at "
                                  f"{path}, or give them with --foundation-checkpoint PATH.")
        return sha256, path.name
    if section.get("sha256"):  # an installed model, exported again without its weights file at hand
        return section["sha256"], section.get("weights_file")
    if name in PACKAGED_SHA256:
        if trained_with not in (None, PACKAGED_SHA256[name]):
            raise AutomedsamError(f"The model was trained with other weights (sha256 {trained_with}) than the "
                                  f"'{name}' weights packaged with automedsam that its plans name. Give the file it "
                                  "was trained with via --foundation-checkpoint PATH.")
        return PACKAGED_SHA256[name], None
    raise AutomedsamError(f"plans.json names no weights file for foundation model '{name}'. Give the file the model "
                          "was trained with via --foundation-checkpoint PATH.")


def trained_weights(model_dir: Path, folds: Sequence[Fold], checkpoints: Sequence[str]) -> str | None:
    """The sha256 of the foundation weights the checkpoints to export were trained with, as their metadata records
    it; None where none records it (trained before it was recorded, or an installed model). Folds trained with
    different weights make no model: one of them would prompt a frozen model it never saw."""
    recorded: dict[str, list[str]] = {}
    for fold in folds:
        fold_dir = model_dir / fold_dir_name(fold)
        for which in checkpoints:
            metadata = load_metadata(fold_dir, which) if metadata_path(fold_dir, which).is_file() else {}
            sha256 = metadata.get(TRAINED_WITH) if isinstance(metadata, dict) else None
            if sha256:
                recorded.setdefault(sha256, []).append(f"fold {fold} checkpoint_{which}")
    if len(recorded) > 1:
        listing = "; ".join(f"{', '.join(where)}: sha256 {sha256}" for sha256, where in recorded.items())
        raise AutomedsamError(f"Cannot export: the folds of {model_dir} were trained with different foundation weights "
                              f"({listing}). Retrain the folds with the same weights (automedsam_train --overwrite), "
                              "or export only the folds trained with one of them with -f.")
    return next(iter(recorded), None)


def given_weights(section: Mapping[str, Any], path: Path, *, trained_with: str | None = None) -> tuple[str, str]:
    """(sha256, file name) of the weights file given with --foundation-checkpoint, refused unless it holds the weights
    the folds recorded or the plans say the model was trained with; accepted as it is only when neither tells."""
    refuse_folder(path)
    if not path.is_file():
        raise AutomedsamError(f"The foundation weights {path} (given with --foundation-checkpoint) do not exist. Give "
                              f"the '{section['name']}' weights file the model was trained with.")
    sha256 = sha256_of(path)
    expected = ((trained_with, "the weights its folds recorded", "Give the file it was trained with.")
                if trained_with else planned_weights(section))
    if expected is not None and expected[0] != sha256:
        sha256_expected, described, advice = expected
        raise AutomedsamError(f"The foundation weights {path} (given with --foundation-checkpoint) have sha256 "
                              f"{sha256}, but the model was trained with {described} (sha256 {sha256_expected}): "
                              f"other weights give other segmentations. {advice}")
    return sha256, path.name


def planned_weights(section: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(sha256, description, what to do) of the weights the plans' foundation_model section names; None when they
    cannot tell (their weights file is gone and no hash was recorded)."""
    name, path = section["name"], section.get("checkpoint")
    if section.get("sha256"):
        return (section["sha256"], section.get("weights_file") or f"the '{name}' weights",
                "Give that file with --foundation-checkpoint PATH.")
    if path is None and name in PACKAGED_SHA256:
        return (PACKAGED_SHA256[name], f"the '{name}' weights packaged with automedsam",
                "Leave --foundation-checkpoint out to export with them.")
    if path is not None and Path(path).expanduser().is_file():
        return (sha256_of(Path(path).expanduser()), f"{path} (named in plans.json)",
                "Leave --foundation-checkpoint out to export with that file, or give a copy of it.")
    return None


def shared_description(dataset: dict[str, Any]) -> dict[str, Any]:
    """The dataset.json that travels with the model: the keys prediction and install read, nothing else."""
    return {key: value for key, value in dataset.items() if key in SHARED_DATASET_KEYS}


def exported_plans(plans: Mapping[str, Any], *, sha256: str, weights_file: str | None) -> dict[str, Any]:
    """The plans without this machine's weights path: the weights are named by file name and sha256."""
    section = dict(plans["foundation_model"])
    local_path = section.get("checkpoint")
    if local_path and isinstance(section.get("reason"), str):
        section["reason"] = section["reason"].replace(str(local_path), weights_file or "")
    section.update(checkpoint=None, sha256=sha256, weights_file=weights_file)
    return {**plans, "foundation_model": section}


def few_shot(model_dir: Path, plans: Mapping[str, Any]) -> dict[str, Any] | None:
    """The annotation budget and how the samples were chosen: from the dataset's splits.json when it still holds the
    plans the model was trained with, else from the card of an installed model; None when neither is known."""
    preprocessed = paths.preprocessed_dataset_dir(model_dir.parent.name)
    if (preprocessed / SPLITS_FILE).is_file() and (preprocessed / PLANS).is_file() \
            and load_json(preprocessed / PLANS, "plans file") == plans:
        splits = _mapping(load_json(preprocessed / SPLITS_FILE, "splits file"), preprocessed / SPLITS_FILE, "")
        return {"shots": splits.get("shots"), "labelled_samples": len(splits.get("labelled", [])),
                "seed": splits.get("seed"), "selection": splits.get("reason", RANDOM_SELECTION)}
    if (model_dir / MODEL_CARD).is_file():
        return _mapping(load_json(model_dir / MODEL_CARD, "model card"), model_dir / MODEL_CARD, "").get("few_shot")
    return None


def supervision(model_dir: Path, folds: Sequence[Fold]) -> str | None:
    """What the folds were trained on ("boxes" or "masks"), as their final checkpoints' metadata records the trainer's
    configuration; an installed model has no metadata and passes on its card's. None when unknown or not one choice."""
    found = set()
    for fold in folds:
        fold_dir = model_dir / fold_dir_name(fold)
        if metadata_path(fold_dir, "final").is_file():
            config = load_metadata(fold_dir, "final").get("config")
            found.add(config.get("supervision") if isinstance(config, dict) else None)
    if not found and (model_dir / MODEL_CARD).is_file():
        found.add(_mapping(load_json(model_dir / MODEL_CARD, "model card"), model_dir / MODEL_CARD, "")
                  .get("supervision"))
    return found.pop() if len(found) == 1 and found <= set(SUPERVISION_CHOICES) else None


def validation_records(model_dir: Path, folds: Sequence[Fold]) -> dict[str, dict[str, Any]]:
    """The shared validation record of each fold that has a validation/summary.json, by archive name."""
    records = {}
    for fold in folds:
        path = model_dir / validation_member(fold)
        if path.is_file():
            summary = load_json(path, "fold validation summary")
            record = shared_validation(summary, path)
            fold_dir = path.parent.parent  # the checks hold for the checkpoints of the same epoch (model_folder)
            # an installed model has no checkpoint metadata: the epochs its own record kept are passed on
            kept = summary.get("checkpoint_epochs") if isinstance(summary.get("checkpoint_epochs"), dict) else {}
            record["checkpoint_epochs"] = {
                **{which: kept[which] for which in ("best", "final") if which in kept},
                **{which: load_metadata(fold_dir, which).get("epoch")
                   for which in ("best", "final") if metadata_path(fold_dir, which).is_file()}}
            records[validation_member(fold)] = record
    return records


def shared_validation(summary: Any, where: Path) -> dict[str, Any]:
    """What prediction reads of a fold's validation/summary.json (at `where`): the box refinement and second look
    checks' Dice pairs, without the sample ids (names of training cases)."""
    checks = {key: _mapping(_mapping(summary, where, "").get(key) or {}, where, key) for key in VALIDATION_PAIRS}
    shared = {key: {label: _shared_check(entry, pair, where, f"{key}.{label}") for label, entry in checks[key].items()}
              for key, pair in VALIDATION_PAIRS.items()}
    return {**shared, "checkpoint": summary.get("checkpoint"), "epoch": summary.get("epoch")}


def _shared_check(entry: Any, pair: Sequence[str], where: Path, field: str) -> dict[str, Any]:
    """One label's check: its reference and each sample's Dice pair."""
    entry = _mapping(entry, where, field)
    samples = entry.get("per_sample", [])
    if not isinstance(samples, list):
        raise _malformed(where, f"{field}.per_sample is not a list")
    return {"reference": entry.get("reference"),
            "per_sample": [{name: _mapping(sample, where, f"{field}.per_sample").get(name) for name in pair}
                           for sample in samples]}


def validation(model_dir: Path, folds: Sequence[Fold]) -> dict[str, Any]:
    """Each fold's validation figures at its last epoch, as its log.json records them."""
    figures = {}
    for fold in folds:
        path = model_dir / fold_dir_name(fold) / LOG
        summary = _mapping(_mapping(load_json(path, "training log"), path, "").get("summary") or {}, path, "summary")
        figures[str(fold)] = {key: summary.get(key) for key in ("epochs", "train_samples", "val_samples",
                                                                "final_val")}
    return figures


def _mapping(value: Any, where: Path, field: str) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else a clear error naming the file and field (a hand-edited or damaged file)."""
    if not isinstance(value, Mapping):
        raise _malformed(where, f"{field or 'its content'} is {type(value).__name__}, not an object")
    return value


def _malformed(where: Path, problem: str) -> AutomedsamError:
    return AutomedsamError(f"Cannot export: {where} is malformed ({problem}). Restore it, retrain that fold "
                           "(automedsam_train --overwrite), or export only the other folds with -f.")


def _check_folds(model_dir: Path, folds: Sequence[Fold], checkpoints: Sequence[str],
                 members: Mapping[str, Path]) -> None:
    """Every file to pack exists, and every checkpoint is plain weights (so no unreadable model is passed on)."""
    # an installed model's folds come from its model zip: no training makes them here
    reinstall = reinstall_remedy(model_dir) if (model_dir / MODEL_CARD).is_file() else None
    missing = [member for member, source in members.items() if not source.is_file()]
    if missing:
        mend = reinstall or "Finish training those folds (automedsam_train)."
        raise AutomedsamError(f"{model_dir} lacks {', '.join(missing)}. {mend} Or export only the other folds with "
                              "-f.")
    for fold in folds:
        for which in checkpoints:
            load_checkpoint(model_dir / fold_dir_name(fold), which, retrain=reinstall)


def _check_sizes(members: Mapping[str, Path], plans: Mapping[str, Any]) -> None:
    """The files to pack are within the sizes install accepts (archive_rules), so no archive is written that it
    would refuse."""
    problem = size_problem({member: source.stat().st_size for member, source in members.items()}, plans)
    if problem:
        raise AutomedsamError(f"Cannot export: {problem}, so automedsam_install_model would refuse the archive. "
                              "Retrain the fold that file belongs to with these plans (automedsam_train --overwrite) "
                              "or export only the other folds with -f.")


def _json(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"
