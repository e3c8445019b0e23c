"""What plans.json says, read in one place (nnU-Net's PlansManager): stages ask a `Plans` instead of reading the
dict by hand, so the meaning, defaults and checks of every section live here once.

`Plans` wraps the mapping as stored (it is itself a read-only mapping, so it can go wherever the dict went). Importing
this module loads neither torch nor segment_anything: the planner, which writes plans, shares its constants and
checks; the foundation model is loaded only when `build_foundation_model` is called.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from automedsam.errors import AutomedsamError
from automedsam.files import load_json
from automedsam.foundation.registry import build_foundation_model
from automedsam.foundation.weights_file import PACKAGED_SHA256, check_weights, is_packaged, sha256_of

if TYPE_CHECKING:
    import torch

    from automedsam.foundation.base import FoundationModel

View = dict[str, Any]
INTENSITY_WINDOW_SCHEMES = ("ct_foreground_window", "percentile_window")
PSEUDO_LABEL_SOURCES = ("box_prompt", "inscribed_ellipse", "none")
VIEW_KEYS = ("name", "flip", "rot90", "gamma", "scale")
DEFAULT_PRECISION = "fp32"
FOUNDATION_PRECISIONS = ("fp32", "bf16")  # what foundation_model.precision may hold
CHECK_OUTCOME = ("passed", "device")  # what Plans.planned_precision reads of foundation_model.precision_check
FEW_SHOT, ALL_LABELS = "few_shot", "all_labels"  # plans.json protocol.regime: what the planner learnt from labels
# Gaillochet et al. 2024's recipe: the paper2024 trainer uses it as it is, the planner starts from it.
PAPER2024_LOSSES: dict[str, Any] = {"empty_bce": {"weight": 1.0}, "tightness": {"weight": 1e-4, "band_width": 5},
                                    "box_size": {"weight": 1e-2, "margins": [0.5, 0.9]}, "log_barrier_t": 5.0}
PAPER2024_SCHEDULE: dict[str, Any] = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4, "epochs": 100,
                                      "batch_size": 4, "lr_step_epoch": 50, "lr_gamma": 0.1}
_VIEW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_SLICE_NAME = re.compile(r"z[0-9]+")  # would read as a slice id: CASE__z007


class Plans(Mapping[str, Any]):
    """A dataset's plans; `where` names the file in error messages (a Plans given as `data` keeps its own)."""

    def __init__(self, data: Mapping[str, Any], where: str | None = None) -> None:
        wrapped = isinstance(data, Plans)
        self.data: Mapping[str, Any] = data.data if wrapped else data
        self.where = where or (data.where if wrapped else "plans.json")

    @classmethod
    def load(cls, path: Path, what: str = "plans file") -> Plans:
        return cls(load_json(path, what), str(path))

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def name(self) -> str:
        return self.data["plans_name"]

    # --- intensities --------------------------------------------------------------------------------------------

    @property
    def intensity_window(self) -> tuple[str, float, float]:
        """The planned intensity window (plans.json `normalization`), checked: its scheme, lower and upper bound."""
        section = self.data["normalization"]
        scheme, lower, upper = section.get("scheme"), float(section["lower"]), float(section["upper"])
        if scheme not in INTENSITY_WINDOW_SCHEMES:
            raise AutomedsamError(f"plans.json normalization.scheme {scheme!r} is unknown; use one of "
                                  f"{', '.join(INTENSITY_WINDOW_SCHEMES)}.")
        if not upper > lower:
            raise AutomedsamError(f"plans.json normalization: upper ({upper}) must exceed lower ({lower}). Fix the "
                                  "window or regenerate the plans.")
        return scheme, lower, upper

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """The planned intensity window (plans.json `normalization`): clip to [lower, upper], scale to [0, 1], float32;
        any shape, whole volumes too. Preprocessing and prediction both call it, so a model sees the same
        intensities in training and in use. One float32 copy, worked on in place: a large volume's normalisation
        held three."""
        _, lower, upper = self.intensity_window
        normalised = np.array(image, dtype=np.float32)
        np.clip(normalised, lower, upper, out=normalised)
        normalised -= np.float32(lower)
        normalised /= np.float32(upper - lower)
        return normalised

    # --- foundation model ---------------------------------------------------------------------------------------

    @property
    def foundation_name(self) -> str:
        return self.data["foundation_model"]["name"]

    def build_foundation_model(self, *, checkpoint: str | Path | None = None,
                               device: str | torch.device | None = None,
                               precision: str | None = None) -> FoundationModel:
        """The planned frozen foundation model on `device`; `checkpoint` replaces the planned weights path (a model
        folder copied to another machine) and `precision` the planned encoder autocast.

        Plans that name the weights by `sha256` (an installed model: automedsam_install_model) build only with weights
        of that hash: the packaged ones, or a file given here or stored at install."""
        section = self.data["foundation_model"]
        weights = checkpoint or section.get("checkpoint")
        if section.get("sha256"):
            weights = check_weights(weights, model_name=section["name"], sha256=section["sha256"],
                                    weights_file=section.get("weights_file"))
        return build_foundation_model(section["name"], weights, device=device,
                                      precision=precision or self.planned_precision(device),
                                      resize=section.get("resize", "longest_side"))

    def planned_precision(self, device: str | torch.device | None) -> str:
        """The planned autocast on `device`. A precision the planner chose by measurement (a passed
        `precision_check`) holds on the kind of device it was measured on where that device computes bf16 natively,
        fp32 elsewhere; one given by hand (--precision, an edit) holds wherever bf16 autocast computes in bf16, fp32
        on a CUDA GPU without bf16 arithmetic (whose autocast would silently be fp16)."""
        section = self.data["foundation_model"]
        precision = section.get("precision", DEFAULT_PRECISION)
        if precision == DEFAULT_PRECISION:
            return precision
        import torch

        from automedsam.device import autocasts_in_bf16, native_bf16, resolve_device

        resolved = device if isinstance(device, torch.device) else resolve_device(device)
        check = section.get("precision_check")
        if not isinstance(check, Mapping) or not check.get("passed"):
            return precision if autocasts_in_bf16(resolved) else DEFAULT_PRECISION
        return precision if check.get("device") == resolved.type and native_bf16(resolved) else DEFAULT_PRECISION

    # --- slicing, targets, losses, views ------------------------------------------------------------------------

    @property
    def is_3d(self) -> bool:
        """Whether the plans were made for 3D volumes."""
        return bool(self.data["slicing"]["is_3d"])

    @property
    def slicing_axis(self) -> int | None:
        """The array axis 3D volumes are sliced along into 2D samples; None for 2D images."""
        return self.data["slicing"]["axis"]

    @property
    def targets(self) -> list[dict[str, Any]]:
        return self.data["targets"]

    @property
    def labels(self) -> list[int]:
        return [int(target["label"]) for target in self.data["targets"]]

    def planned_losses(self) -> dict[str, Any]:
        """A copy of the losses section without its reason, plus the (off by default) pseudo-label term."""
        losses = {key: copy.deepcopy(value) for key, value in self.data["losses"].items() if key != "reason"}
        losses.setdefault("pseudo_label", {"weight": 0.0})
        return losses

    def views(self) -> list[View]:
        """The augmentation views, checked and with defaults filled in; none when the plans lack the section."""
        section = self.data.get("augmentation")
        if section is None:
            return []
        views = section.get("views") if isinstance(section, Mapping) else None
        if not isinstance(views, list):
            raise AutomedsamError(f"{self.where}: augmentation.views must be a list of views such as "
                                  '{"name": "v01", "flip": [1], "rot90": 1, "gamma": 0.8}; use [] for none.')
        checked = [check_view(view, f"{self.where} augmentation.views[{index}]") for index, view in enumerate(views)]
        names = [view["name"] for view in checked]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise AutomedsamError(f"{self.where}: augmentation view name(s) {', '.join(repeated)} used twice; names "
                                  "must be unique (they name the view's sample files).")
        return checked

    def choices(self, *sections: str) -> dict[str, Any]:
        """The named sections without their reasons: what a rewording of a reason must not change."""
        return without_reasons({section: self.data[section] for section in sections})

    def embedding_choices(self, *, weights: str | Path | None = None) -> dict[str, Any]:
        """What an image's embedding depends on: the slicing, the normalisation and the foundation model with its
        precision and the contents of its weights file (`weights_identity`; `weights`, a file given in place of the
        planned one, is read for them), not the precision check (its figures nor its outcome: the precision it chose
        is here), so draws that plan the same precision share embeddings."""
        choices = self.choices("slicing", "normalization", "foundation_model")
        choices["foundation_model"] = without_check_record(choices["foundation_model"], keep=())
        choices["foundation_model"].update(weights_identity(self.data["foundation_model"], where=self.where,
                                                            weights=weights))
        return choices

    def samples_key(self, labelled: Sequence[str]) -> str:
        """A digest of what the stored samples depend on (slicing, normalisation, targets, the labelled set):
        preprocessing records it beside the samples, and training refuses samples made under another."""
        text = json.dumps(without_reasons([self.choices("slicing", "normalization", "targets"), sorted(labelled)]),
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def embeddings_key(self, *, weights: str | Path | None = None) -> str:
        """A digest of `embedding_choices`: the preprocessed folder records it beside the embeddings it caches, and
        any reader of that cache compares it with its own plans' (the one-element list keeps the keys recorded by
        earlier versions valid)."""
        text = json.dumps(without_reasons([self.embedding_choices(weights=weights)]), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def without_reasons(value: Any) -> Any:
    """A plans value (or any JSON value) with every "reason" key dropped, tuples as lists."""
    if isinstance(value, Mapping):
        return {key: without_reasons(item) for key, item in value.items() if key != "reason"}
    if isinstance(value, (list, tuple)):
        return [without_reasons(item) for item in value]
    return value


def without_check_record(section: Mapping[str, Any], *, keep: Sequence[str] = CHECK_OUTCOME) -> dict[str, Any]:
    """A foundation_model section with its precision_check cut to the fields `keep` names (by default what
    `Plans.planned_precision` reads of it): the rest records how the precision was chosen (the key of the labelled
    samples' sources, which a raw image touched changes; the measured figures), not what a model is built with."""
    chosen = {name: value for name, value in section.items() if name != "precision_check"}
    check = section.get("precision_check")
    if keep and isinstance(check, Mapping):
        chosen["precision_check"] = {name: check[name] for name in keep if name in check}
    return chosen


def weights_identity(section: Mapping[str, Any], *, where: str = "plans.json",
                     weights: str | Path | None = None) -> dict[str, str]:
    """The sha256 of a foundation_model section's checkpoint file (or of `weights`, a file given in its place, e.g.
    `--foundation-checkpoint` where the planned path is on another machine), for the keys of what the weights make:
    weights saved over the same path (a fine-tune) must not find the caches of the weights before them. Empty for
    the packaged weights (no checkpoint) and where the section pins the hash (`sha256`: an installed model, built
    only with those weights), so the keys recorded for them stay valid; `weights` given where the section plans the
    packaged weights must be a copy of them (`_check_packaged_copy`)."""
    checkpoint = section.get("checkpoint")
    if section.get("sha256"):
        return {}
    if not checkpoint:
        if weights is not None:
            _check_packaged_copy(Path(weights).expanduser(), model_name=section["name"], where=where)
        return {}
    path = Path(weights or checkpoint).expanduser()
    if not path.is_file():
        raise AutomedsamError(f"The foundation weights {path} named in {where} (foundation_model.checkpoint) do not "
                              "exist: the embeddings cached under these plans are matched to the weights by their "
                              "contents. Put the weights file back at that path, give it with "
                              "--foundation-checkpoint PATH, or plan again with --foundation-checkpoint PATH.")
    return {"weights_sha256": sha256_of(path)}


def _check_packaged_copy(path: Path, *, model_name: str, where: str) -> None:
    """Refuse weights given in place of the packaged ones that the plans name (no checkpoint): the embeddings cached
    under those plans were made by the packaged encoder, and prompt modules trained on them would later predict
    with the encoder of the file given (a fine-tune), which they never saw."""
    if not path.is_file():
        raise AutomedsamError(f"The foundation weights {path} given with --foundation-checkpoint do not exist. "
                              f"{where} plans the packaged {model_name} weights: leave --foundation-checkpoint out "
                              "to use them.")
    if not is_packaged(model_name, sha256_of(path)):
        raise AutomedsamError(f"The foundation weights {path} given with --foundation-checkpoint are not the packaged "
                              f"{model_name} weights that {where} plans (foundation_model.checkpoint is null), which "
                              "made the embeddings cached under these plans. To train with these weights, plan with "
                              f"them: automedsam_plan_and_preprocess --foundation {model_name} "
                              f"--foundation-checkpoint {path} (with your -d DATASET and draw options), then train; "
                              "to train with the packaged weights, leave --foundation-checkpoint out.")


def weights_sha256(section: Mapping[str, Any], *, weights: str | Path | None = None) -> str | None:
    """The sha256 of the weights a foundation_model section builds with (`weights`: a file given in place of the
    planned one), which a fold records as the weights it trained with: the hash the section pins (an installed
    model builds with no other), the packaged weights' known hash, or the file's (hashed once per process and file
    version). None where no file is there to tell: building the model then says what is missing."""
    if section.get("sha256"):
        return section["sha256"]
    named = weights or section.get("checkpoint")
    if not named:
        return PACKAGED_SHA256.get(section["name"])
    path = Path(named).expanduser()
    return sha256_of(path) if path.is_file() else None


def pseudo_label_source(target: Mapping[str, Any]) -> str:
    """The target's pseudo-label source, checked (plans written before the key existed: box_prompt)."""
    source = target.get("pseudo_label", "box_prompt")
    if source not in PSEUDO_LABEL_SOURCES:
        raise AutomedsamError(f"plans.json target {target.get('label')!r}: pseudo_label must be one of "
                              f"{', '.join(PSEUDO_LABEL_SOURCES)}, got {source!r}. Fix it or re-run the planner.")
    return source


def target_losses(losses: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    """One target's loss configuration: `losses` (a trainer variant's), less the pseudo-label term where its weight is
    0 or where the plans give that target no pseudo-label source, with the box size margins planned for that target."""
    chosen = dict(losses)
    if pseudo_label_source(target) == "none" or float(chosen.get("pseudo_label", {}).get("weight", 0.0)) <= 0:
        chosen.pop("pseudo_label", None)
    box_size = chosen.get("box_size")
    if box_size and str(target.get("label")) in box_size.get("target_margins", {}):
        chosen["box_size"] = {**box_size, "margins": box_size["target_margins"][str(target["label"])]}
    return chosen


def check_view(view: Any, where: str) -> View:
    """One view spec as a complete dict; AutomedsamError naming the bad key of a hand-edited one."""
    if not isinstance(view, Mapping):
        raise AutomedsamError(f"{where} must be a dict with keys {', '.join(VIEW_KEYS)}, got {view!r}.")
    unknown = sorted(set(view) - set(VIEW_KEYS))
    if unknown:
        raise AutomedsamError(f"{where} has unknown key(s) {', '.join(unknown)}; a view has {', '.join(VIEW_KEYS)}.")
    name, flip = view.get("name"), view.get("flip", [])
    rot90, gamma, scale = view.get("rot90", 0), view.get("gamma", 1.0), view.get("scale", 1.0)
    if not isinstance(name, str) or not _VIEW_NAME.fullmatch(name) or _SLICE_NAME.fullmatch(name):
        raise AutomedsamError(f"{where}: name must be letters, digits and '-' (not of the slice form z007), "
                              f"got {name!r}.")
    if not _is_flip(flip):
        raise AutomedsamError(f"{where}: flip must list distinct array axes 0 (rows) and/or 1 (columns), got {flip!r}.")
    if isinstance(rot90, bool) or not isinstance(rot90, int) or rot90 not in range(4):
        raise AutomedsamError(f"{where}: rot90 must be 0, 1, 2 or 3 (quarter turns), got {rot90!r}.")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < math.inf:
        raise AutomedsamError(f"{where}: gamma must be a finite number > 0 (1 leaves intensities unchanged), got "
                              f"{gamma!r}.")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.25 <= scale <= 4:
        raise AutomedsamError(f"{where}: scale must be a number from 0.25 to 4 (1 keeps the size, 0.7 shrinks the "
                              f"image into a black border, 1.3 enlarges the part around the boxes), got {scale!r}.")
    return {"name": name, "flip": sorted(flip), "rot90": rot90, "gamma": float(gamma), "scale": float(scale)}


def _is_flip(flip: Any) -> bool:
    return (isinstance(flip, list) and all(type(axis) is int and axis in (0, 1) for axis in flip)
            and len(set(flip)) == len(flip))
