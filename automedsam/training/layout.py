"""Where a training run reads and writes: a fold's samples and seed, the preprocessed inputs, the results folder.

`fold_sample_ids` refuses a fold that splits.json does not have (fold names: `automedsam.folds`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from automedsam.boxes import MASK_BOXES
from automedsam.checkpoint import TRAINING_STATE
from automedsam.errors import AutomedsamError
from automedsam.files import load_json, save_json
from automedsam.folds import ALL, SPLITS_FILE, Fold, check_fold_members, load_splits
from automedsam.foundation.cache import PREPROCESSING_STATE_FILE, recorded_embeddings_key
from automedsam.paths import preprocessed_dataset_dir, results_dataset_dir
from automedsam.plans import Plans, View, weights_sha256, without_check_record, without_reasons
from automedsam.samples import view_sample_id
from automedsam.trained_models import PREVIOUS, check_no_fold_training, move_aside, results_lock

COPIED_FILES = ("plans.json", "dataset.json", "fingerprint.json")
WEIGHTS_NAMES = ("checkpoint", "sha256", "weights_file")  # how a foundation_model section names its weights file


def seed_offset(fold: Fold, fold_count: int) -> int:
    """Each fold gets its own seed (plans seed + offset): fold k adds k, 'all' adds the number of folds, so it never
    shares a numbered fold's seed."""
    return fold_count if fold == ALL else int(fold)


def fold_sample_ids(splits: dict[str, Any], fold: Fold) -> tuple[list[str], list[str]]:
    """(train, val) sample ids: the fold's few-shot draw and its held-out samples; 'all' has no validation."""
    if fold == ALL:
        return list(splits["labelled"]), []
    folds = splits["folds"]
    if fold >= len(folds):
        raise AutomedsamError(f"Fold {fold} does not exist: splits.json has {len(folds)} folds (0..{len(folds) - 1}). "
                              "Train one of them or all, or plan again with more --folds.")
    return list(folds[fold]["train"]), list(folds[fold]["val"])


def load_preprocessed(dataset_name: str, *,
                      foundation_checkpoint: str | Path | None = None) -> tuple[Path, Plans, dict[str, Any]]:
    """(preprocessed folder, plans, splits), with the fix spelled out when preprocessing has not run or splits.json
    was edited into a shape training cannot read. `foundation_checkpoint` is the weights file training is given in
    place of the planned one: the cached embeddings must have been made by the same weights."""
    folder = preprocessed_dataset_dir(dataset_name)
    missing = [name for name in ("plans.json", SPLITS_FILE) if not (folder / name).is_file()]
    if missing:
        raise AutomedsamError(
            f"{dataset_name} is not preprocessed: {', '.join(missing)} missing in {folder}. "
            f"Run automedsam_plan_and_preprocess -d {dataset_name} first."
        )
    plans = Plans.load(folder / "plans.json")
    splits = load_splits(folder / SPLITS_FILE)
    check_fold_members(splits, folder / SPLITS_FILE)  # an unlabelled sample's boxes [] would train as "absent"
    _check_made_under(folder, plans, splits, dataset_name, weights=foundation_checkpoint)
    return folder, plans, splits


def _check_made_under(folder: Path, plans: Plans, splits: Mapping[str, Any], dataset_name: str, *,
                      weights: str | Path | None) -> None:
    """Refuse samples or embeddings made under other plans than plans.json holds now (planned again with
    --plan-only, or edited, and not preprocessed since): a model would train on images normalised and cut one way
    and be described, and predict, by plans that say another. Samples an earlier automedsam wrote (boxed by an
    earlier rule) are refused as such."""
    state_path = folder / PREPROCESSING_STATE_FILE
    state = load_json(state_path, "preprocessing state") if state_path.is_file() else {}
    stale = []
    recorded_samples = state.get("samples_key") if isinstance(state, dict) else None
    if recorded_samples is not None and state.get("mask_boxes") != MASK_BOXES:
        raise _boxed_by_earlier_rule(folder, dataset_name)
    if recorded_samples is not None and recorded_samples != plans.samples_key(splits["labelled"]):
        stale.append("samples")
    recorded_embeddings = recorded_embeddings_key(folder, plans.foundation_name)
    if recorded_embeddings is not None and recorded_embeddings != plans.embeddings_key(weights=weights):
        stale.append(f"{plans.foundation_name} embeddings")
    if stale:
        raise _made_under_other_plans(folder, stale, dataset_name)


def check_views_made(folder: Path, plans: Plans, splits: Mapping[str, Any], dataset_name: str) -> None:
    """Refuse augmentation views made under another view spec than plans.json holds now (a view's gamma edited under
    the same name): for trainers that train on views; the others never read them."""
    stale_views = [view["name"] for view in plans.views() if not _view_made(folder, view, splits["labelled"])]
    if stale_views:
        raise _made_under_other_plans(folder, [f"augmentation views {', '.join(stale_views)}"], dataset_name)


def _made_under_other_plans(folder: Path, stale: list[str], dataset_name: str) -> AutomedsamError:
    return AutomedsamError(f"{folder}'s {' and '.join(stale)} were made under other plans or another labelled set "
                           "than plans.json and splits.json hold now (planned again with --plan-only, or edited, "
                           f"since preprocessing). Run automedsam_plan_and_preprocess -d {dataset_name} "
                           "--preprocess-only to bring them up to date, then train.")


def _boxed_by_earlier_rule(folder: Path, dataset_name: str) -> AutomedsamError:
    """Samples an earlier automedsam wrote, whose masks were boxed by an earlier rule (MASK_BOXES): nothing the user
    did made them stale, so the message must not say they replanned."""
    return AutomedsamError(f"{folder}'s samples were written by an earlier automedsam: their masks were boxed by an "
                           "earlier rule than this version's. Run automedsam_plan_and_preprocess -d "
                           f"{dataset_name} --preprocess-only to rewrite them, then train.")


def _view_made(folder: Path, view: View, labelled: list[str]) -> bool:
    """Whether every labelled sample's `view` stored is the one planned now: each view's sample file records the spec
    it was made with. Views no longer planned are never read, so they do not matter; a view not written yet (planned
    with --plan-only) is reported with the other missing files when the samples are read."""
    for sid in labelled:
        path = folder / "samples" / f"{view_sample_id(sid, view)}.json"
        if not path.is_file():
            continue
        record = load_json(path, "sample")
        if not isinstance(record, dict) or record.get("view") != view:
            return False
    return True


def trainer_output_dir(dataset_name: str, trainer: str, plans: Mapping[str, Any]) -> Path:
    return results_dataset_dir(dataset_name) / f"{trainer}__{Plans(plans).name}"


def plans_changed(preprocessed_dir: Path, output_dir: Path) -> bool:
    """Whether the results folder holds folds trained with other plans than the preprocessed folder holds now. A
    folder with no trained fold holds only copies of the plans, which training replaces: nothing was trained with
    them."""
    return holds_trained_fold(output_dir) and _other_plans(preprocessed_dir, output_dir)


def holds_trained_fold(output_dir: Path) -> bool:
    """Whether a fold of the model folder saved weights or a training state. Runs that stopped before their first
    saved epoch, or failed before training (fullsup on boxes only, a foundation model that would not build), leave
    the copied JSON files alone, perhaps a log."""
    return any(path.is_file() for pattern in ("fold_*/checkpoint_*.pt", f"fold_*/{TRAINING_STATE}")
               for path in output_dir.glob(pattern))


def _other_plans(preprocessed_dir: Path, output_dir: Path) -> bool:
    existing = output_dir / "plans.json"
    if not existing.is_file():
        return False
    trained, planned = _compared_plans(preprocessed_dir, output_dir)
    return trained != planned


def _compared_plans(preprocessed_dir: Path, output_dir: Path) -> tuple[Any, Any]:
    """(the folder's plans, the plans now) as compared: a reason reworded (by an upgrade) changes no choice, so no
    fold, nor does the precision check's record (`_training_choices`); an installed model's plans name the foundation
    weights by sha256 (its export dropped the path of the machine it was trained on), so the plans now name them by
    the sha256 of the weights they build with."""
    trained = _training_choices(load_json(output_dir / "plans.json", "plans file"))
    planned = _training_choices(load_json(preprocessed_dir / "plans.json", "plans file"))
    pinned = trained.get("foundation_model") if isinstance(trained, dict) else None
    if isinstance(pinned, dict) and pinned.get("sha256") and isinstance(planned.get("foundation_model"), dict):
        trained = {**trained, "foundation_model": _named_by_hash(pinned, pinned["sha256"])}
        section = planned["foundation_model"]
        planned = {**planned, "foundation_model": _named_by_hash(section, weights_sha256(section))}
    return trained, planned


def _training_choices(plans: Any) -> Any:
    """What a fold's training depends on of a plans file: its choices without reasons, and of the precision check
    only its outcome (`without_check_record`); its key and figures change when a labelled raw image is touched or
    copied, though the precision and the model do not."""
    plans = without_reasons(plans)
    section = plans.get("foundation_model") if isinstance(plans, dict) else None
    if isinstance(section, dict):
        plans = {**plans, "foundation_model": without_check_record(section)}
    return plans


def _named_by_hash(section: Mapping[str, Any], sha256: str | None) -> dict[str, Any]:
    return {**{key: value for key, value in section.items() if key not in WEIGHTS_NAMES}, "sha256": sha256}


def other_plans_error(preprocessed_dir: Path, output_dir: Path) -> AutomedsamError:
    differ = differing_keys(*_compared_plans(preprocessed_dir, output_dir))
    return AutomedsamError(
        f"{output_dir} holds folds trained with other plans than {preprocessed_dir / 'plans.json'} (they differ in "
        f"{', '.join(differ) or 'their layout'}: the plans changed since, e.g. replanned after samples were added in "
        "review). Pass --overwrite to train with the new plans: that model is first moved, whole, to "
        f"{output_dir.parent / PREVIOUS}/.")


def differing_keys(trained: Any, planned: Any, prefix: str = "") -> list[str]:
    """The plans keys (one level into a section: `foundation_model.precision`) whose values differ."""
    if not (isinstance(trained, dict) and isinstance(planned, dict)):
        return [prefix] if trained != planned else []
    keys = sorted(set(trained) | set(planned))
    if prefix:
        return [f"{prefix}.{key}" for key in keys if trained.get(key) != planned.get(key)]
    return [name for key in keys for name in differing_keys(trained.get(key), planned.get(key), key)]


def move_replanned(preprocessed_dir: Path, output_dir: Path) -> Path | None:
    """For --overwrite, before the fold's lock is taken: the model trained with other plans moves, whole, to
    previous/ (where it went, or None). Every training takes this step before its own lock, so a fold lock held now
    belongs to a training of the old plans, and refuses the move; taken after the lock, the folds of one replanned
    model started in parallel refused each other."""
    with results_lock(output_dir.parent):
        if not plans_changed(preprocessed_dir, output_dir):
            return None
        check_no_fold_training(output_dir, own=None)
        return move_aside(output_dir)


def copy_dataset_files(preprocessed_dir: Path, output_dir: Path, *, overwrite: bool,
                       training: str | None = None) -> Path | None:
    """Make the results folder self-contained; never mix folds trained on different plans.

    When the plans changed since the folder's folds were trained (replanned after samples were added in review),
    --overwrite moves that model, whole (its plans and folds), to results/DatasetXXX/previous/ before the new plans
    are copied: nothing is lost, `automedsam_predict -m` still reads it, unless a fold of it other than `training`
    (the caller's) is being trained by another process: then nothing moves. A folder with no trained fold just gets
    the new copies, unless such a fold, of the old plans, trains before its first saved epoch. Returns where the
    model went, or None."""
    moved = None
    with results_lock(output_dir.parent):
        if plans_changed(preprocessed_dir, output_dir):
            if not overwrite:
                raise other_plans_error(preprocessed_dir, output_dir)
            check_no_fold_training(output_dir, own=training)
            moved = move_aside(output_dir)
        elif _other_plans(preprocessed_dir, output_dir):  # a fold of the old plans may train before its first save
            check_no_fold_training(output_dir, own=training)
        kept = ("plans.json",) if moved is None and _pins_weights(output_dir) else ()
        for name in COPIED_FILES:
            source = preprocessed_dir / name
            if source.is_file() and name not in kept:
                save_json(output_dir / name, load_json(source, name))
    return moved


def _pins_weights(output_dir: Path) -> bool:
    """Whether the folder's plans name the foundation weights by sha256 (an installed model, whose folds have no
    checkpoint metadata): replaced by the local plans, which name them by path, its folds would run on whatever
    file later lies there, unchecked. Reached only when the two plans agree but for how they name the weights."""
    existing = output_dir / "plans.json"
    plans = load_json(existing, "plans file") if existing.is_file() else None
    section = plans.get("foundation_model") if isinstance(plans, dict) else None
    return isinstance(section, dict) and bool(section.get("sha256"))
