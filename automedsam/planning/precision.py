"""The foundation model's precision, chosen by measurement on the device that preprocesses.

bf16 autocast of the encoder and decoder about halves their time where the device computes bf16 in hardware, and
moves the masks a little. So the planner takes bf16 only when, on the labelled samples, the frozen model prompted
with their own boxes gives masks whose Dice changes by no more than a stated tolerance against fp32: the Dice is
taken against the samples' masks where the plans may read them (regime all_labels), else against the fp32 masks:
under `--shots N` a labelled sample's mask is only ever reduced to its boxes. No test label is looked at.
The check needs the labelled samples and the model, so it runs during preprocessing, before anything is embedded,
on at most MAX_CHECK_SAMPLES of them (a seeded draw where there are more: its cost and memory stay bounded under
`--shots all`); the measured samples' embeddings in the chosen precision go straight into the cache. Each sample's
Dice changes are written as it is measured, so an interrupted check resumes with the samples not measured yet.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from automedsam.device import autocasts_in_bf16, bf16_hardware, native_bf16
from automedsam.errors import AutomedsamError
from automedsam.evaluation import dice
from automedsam.files import load_json, save_json
from automedsam.foundation.base import FoundationModel
from automedsam.progress import progress_bar
from automedsam.plans import DEFAULT_PRECISION, weights_identity, without_reasons

PRECISION_MODES = ("auto", "fp32", "bf16")
HAND_PRECISIONS = ("fp32", "bf16")  # --precision values that set the precision without a check
MAX_MEAN_ABS_CHANGE = 0.002  # mean |Dice change| over the (sample, target) pairs
MAX_DROP = 0.02  # no (sample, target) pair worse by more than this
MAX_CHECK_SAMPLES = 64  # labelled samples measured at most: a seeded draw of them where there are more
CHECK_SEED = 0
MEASURED_FILE = "precision_check_measured.json"  # each measured sample's Dice changes while the check runs
BENCHMARKS = "documentation/benchmarks.md"
RULE = (f"bf16 autocast of encoder and decoder where the device computes bf16 in hardware and the labelled samples' "
        f"box-prompted Dice moves by at most {MAX_MEAN_ABS_CHANGE} on average and drops by at most {MAX_DROP} on any "
        f"sample and target against fp32, on at most {MAX_CHECK_SAMPLES} labelled samples (a seeded draw where there "
        f"are more); else fp32 (measured: {BENCHMARKS}, Speed)")


@dataclass(frozen=True)
class CheckSample:
    """One labelled sample as the check reads it: normalised image, label map (None: boxes only), boxes by label."""

    sample_id: str
    image: np.ndarray
    mask: np.ndarray | None
    boxes: Mapping[int, Sequence[Sequence[int]]]


@dataclass(frozen=True)
class CheckResult:
    """The check's figures (for plans.json) and the labelled samples' embeddings in each precision measured."""

    figures: dict[str, Any]
    embeddings: dict[str, dict[str, torch.Tensor]]


def read_check_samples(samples_dir: Path, sample_ids: Sequence[str], *, masks: bool) -> list[CheckSample]:
    """The stored labelled samples (npz image, json boxes, and with `masks` their stored mask) of `sample_ids`."""
    samples = []
    for sid in sample_ids:
        meta = load_json(samples_dir / f"{sid}.json", "sample")
        with np.load(samples_dir / f"{sid}.npz", allow_pickle=False) as arrays:
            image = arrays["image"]
            mask = arrays["mask"] if masks and "mask" in arrays.files else None
        boxes: dict[int, list[list[int]]] = {}
        for entry in meta["boxes"]:
            boxes.setdefault(int(entry["label"]), []).append(entry["box"])
        samples.append(CheckSample(sid, image, mask, boxes))
    return samples


@torch.no_grad()
def box_prompted(foundation: FoundationModel, sample: CheckSample) -> tuple[dict[int, np.ndarray], torch.Tensor]:
    """Per label the union of the frozen model's masks for the sample's boxes of it, and the sample's embedding."""
    prepared, frame = foundation.prepare(sample.image)
    embedding = foundation.encode(prepared[None])
    prompts = [(label, box) for label, boxes in sorted(sample.boxes.items()) for box in boxes]
    masks = {label: np.zeros(frame.original_shape, dtype=bool) for label in sample.boxes}
    if prompts:
        low_res = torch.tensor([foundation.to_low_res(box, frame) for _, box in prompts], dtype=torch.float32)
        sparse, dense = foundation.box_prompt(low_res)
        logits = foundation.decode(embedding.expand(len(prompts), -1, -1, -1), sparse, dense)
        foreground = (foundation.logits_to_original(logits, frame)[:, 0] > 0).cpu().numpy()
        for (label, _), mask in zip(prompts, foreground):
            masks[label] |= mask
    return masks, embedding[0].cpu()


@dataclass(frozen=True)
class Measured:
    """Where the check writes each sample's Dice changes as it measures it, under the check's `key`: a rerun after an
    interruption measures only the samples not found there."""

    path: Path
    key: str

    def load(self) -> dict[str, dict[str, Any]]:
        """sample id -> {"changes": [...], "mask": bool} of the samples measured under this key (none where the file
        is absent, unreadable or of another key: they are measured again)."""
        try:
            stored = load_json(self.path, "precision check's measurements") if self.path.is_file() else {}
        except AutomedsamError:
            return {}
        samples = stored.get("samples") if isinstance(stored, dict) and stored.get("key") == self.key else {}
        if not isinstance(samples, dict):
            return {}
        return {sid: entry for sid, entry in samples.items() if _is_measurement(entry)}

    def save(self, samples: Mapping[str, Mapping[str, Any]]) -> None:
        save_json(self.path, {"key": self.key, "samples": dict(samples)})


def _is_measurement(entry: Any) -> bool:
    """Whether a stored entry reads as one sample's measurement (else that sample is measured again)."""
    return (isinstance(entry, dict) and isinstance(entry.get("mask"), bool) and isinstance(entry.get("changes"), list)
            and all(isinstance(change, (int, float)) and not isinstance(change, bool) for change in entry["changes"]))


def check_subset(labelled: Sequence[str]) -> list[str]:
    """The labelled samples the check measures, sorted: all of them up to MAX_CHECK_SAMPLES, else a draw that
    depends only on their sorted ids and CHECK_SEED, so the same plans measure the same samples."""
    ids = sorted(labelled)
    if len(ids) <= MAX_CHECK_SAMPLES:
        return ids
    drawn = np.random.default_rng(CHECK_SEED).choice(len(ids), size=MAX_CHECK_SAMPLES, replace=False)
    return [ids[index] for index in sorted(drawn)]


def measure_change(samples: Sequence[CheckSample], targets: Sequence[Mapping[str, Any]], *,
                   reference: FoundationModel, candidate: FoundationModel, labelled: int | None = None,
                   progress: bool = False, measured: Measured | None = None) -> CheckResult:
    """Dice change (candidate minus reference precision) of the box-prompted masks of every (sample, target) of
    `samples`, drawn from `labelled` labelled samples (default: they are all). With `measured`, each sample's changes
    are written there as it goes and the samples found there are not measured again; the result holds the
    embeddings (fp16, as the cache stores them) of the samples measured in this call only."""
    regions = {int(target["label"]): [int(v) for v in target.get("region", [target["label"]])] for target in targets}
    ids = {sample.sample_id for sample in samples}
    done = {sid: entry for sid, entry in (measured.load() if measured else {}).items() if sid in ids}
    embeddings: dict[str, dict[str, torch.Tensor]] = {reference.precision: {}, candidate.precision: {}}
    with progress_bar(progress) as bar:
        task = bar.add_task(f"Precision check ({reference.precision} vs {candidate.precision})", total=len(samples),
                            completed=len(done))
        for sample in samples:
            if sample.sample_id in done:
                continue
            done[sample.sample_id] = _sample_change(sample, regions, reference=reference, candidate=candidate,
                                                    embeddings=embeddings)
            if measured is not None:
                measured.save(done)
            bar.advance(task)
    entries = [done[sample.sample_id] for sample in samples]
    changes = [float(change) for entry in entries for change in entry["changes"]]
    mean_abs = float(np.mean(np.abs(changes))) if changes else 0.0
    worst = float(min(changes)) if changes else 0.0
    truth = "masks" if any(entry["mask"] for entry in entries) else "fp32 box-prompted masks"
    figures = {"candidate": candidate.precision, "samples": len(samples),
               "labelled": len(samples) if labelled is None else labelled, "pairs": len(changes), "against": truth,
               "mean_abs_dice_change": round(mean_abs, 5), "worst_dice_change": round(worst, 5),
               "tolerance": {"mean_abs_dice_change": MAX_MEAN_ABS_CHANGE, "worst_drop": MAX_DROP},
               "passed": bool(changes) and mean_abs <= MAX_MEAN_ABS_CHANGE and worst >= -MAX_DROP}
    return CheckResult(figures, embeddings)


def _sample_change(sample: CheckSample, regions: Mapping[int, list[int]], *, reference: FoundationModel,
                   candidate: FoundationModel, embeddings: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """One sample's Dice changes over the targets it has boxes of (NaN ones left out) and whether its mask was the
    truth; its embedding in each precision goes into `embeddings`."""
    reference_masks, reference_embedding = box_prompted(reference, sample)
    candidate_masks, candidate_embedding = box_prompted(candidate, sample)
    embeddings[reference.precision][sample.sample_id] = reference_embedding.to(torch.float16)
    embeddings[candidate.precision][sample.sample_id] = candidate_embedding.to(torch.float16)
    changes = []
    for label, region in regions.items():
        if label not in sample.boxes:
            continue
        truth = reference_masks[label] if sample.mask is None else np.isin(sample.mask, region)
        change = dice(truth, candidate_masks[label]) - dice(truth, reference_masks[label])
        if not np.isnan(change):
            changes.append(float(change))
    return {"changes": changes, "mask": sample.mask is not None}


def check_key(section: Mapping[str, Any], labelled: Sequence[str], samples_key: str, device: torch.device, *,
              masks: bool, written: Mapping[str, Any]) -> str:
    """What a stored check depends on: the model and its weights, the labelled samples as written (`written`: each
    one's boxes and the digests of its image and annotation files, so a corrected box is measured again), the
    device, and what the masks are compared with."""
    model = {key: value for key, value in without_reasons(section).items()
             if key not in ("precision", "precision_check")}
    model.update(weights_identity(section))
    parts = [model, sorted(labelled), samples_key, device.type, bf16_hardware(device), masks, written]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def plan_precision(section: Mapping[str, Any], *, mode: str, device: torch.device,
                   measure: Callable[[], CheckResult], stored: Mapping[str, Any] | None = None,
                   key: str = "") -> tuple[dict[str, Any], CheckResult | None]:
    """The foundation_model section with its precision chosen (`mode` "auto": by the check, measured unless
    `stored` holds one with the same `key`), and the new measurement if one was made."""
    check_precision_option(mode, device)
    if mode != "auto":
        return precision_by_hand(section, mode=mode, device=device), None
    chosen = {name: value for name, value in section.items() if name != "precision_check"}
    if not native_bf16(device):
        return {**chosen, "precision": DEFAULT_PRECISION, "precision_check": {
            "device": device.type, "hardware": bf16_hardware(device),
            "reason": f"this {device.type} does not compute bf16 in hardware, so fp32; {RULE}"}}, None
    result = None
    if stored is not None and stored.get("key") == key:
        figures = {name: value for name, value in stored.items() if name != "reason"}
    else:
        result = measure()
        figures = {**result.figures, "device": device.type, "hardware": bf16_hardware(device), "key": key}
    precision = str(figures["candidate"]) if figures["passed"] else DEFAULT_PRECISION
    return {**chosen, "precision": precision, "precision_check": {**figures, "reason": RULE}}, result


def check_precision_option(mode: str, device: torch.device) -> None:
    """Refuse a --precision that is unknown, or bf16 on a device whose bf16 autocast does not compute in bf16 (a
    CUDA GPU without bf16 arithmetic: fp16 there), where the model would run in fp32 (Plans.planned_precision)."""
    if mode not in PRECISION_MODES:
        raise AutomedsamError(f"--precision must be one of {', '.join(PRECISION_MODES)}, got {mode!r}.")
    if mode == "bf16" and not autocasts_in_bf16(device):
        raise AutomedsamError(f"--precision bf16: this {device.type} device does not compute bf16 (a CUDA GPU of "
                              "compute capability below 8), so the foundation model would run in fp32 here, not "
                              "bf16. Give --precision auto or fp32 here, or --precision bf16 on a device that "
                              "computes it (a CUDA GPU of compute capability 8 or above, or a CPU).")


def chosen_by_check(section: Mapping[str, Any]) -> bool:
    """Whether a foundation_model section's precision was chosen by the check (measured, or fp32 on a device
    without bf16 hardware; both records name the `hardware`), not set by hand (--precision, an edit): --plan-only
    --precision auto keeps only such a choice."""
    check = section.get("precision_check")
    return isinstance(check, Mapping) and "hardware" in check


def precision_by_hand(section: Mapping[str, Any], *, mode: str, device: torch.device) -> dict[str, Any]:
    """The foundation_model section with the precision `mode` ("fp32" or "bf16", a --precision that
    check_precision_option let through) and a precision_check saying that none was made, so that a later run that
    preprocesses keeps it."""
    chosen = {name: value for name, value in section.items() if name != "precision_check"}
    return {**chosen, "precision": mode, "precision_check": {"device": device.type,
                                                             "reason": f"--precision {mode} given: no check"}}
