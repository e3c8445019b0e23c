"""Losses that train a segmenter from tight boxes only (Kervadec et al., MIDL 2020), plus supervised Dice+BCE.

Every loss takes raw logits (B, 1, H, W) and applies the sigmoid (or its stable log forms) itself, in float32
even under autocast. Boxes come per image as a list of `[x0, y0, x1, y1]` inclusive pixel corners in the logits'
(H, W) frame (x = column); an image may have no box (object absent) or several (several components). Float
corners, such as `FoundationModel.to_low_res` returns, are rounded to the nearest pixel and clipped to the frame.

Normalisation (the weights in plans.json are tuned for it):
- empty BCE: mean over every pixel outside all boxes in the batch (a partial cross-entropy);
- tightness prior: sum of the barrier over every band of every box of an image, averaged over images;
- box size prior: per box, the two barriers divided by the box area, summed over the image's boxes, averaged
  over images. An image without a box adds nothing (the empty BCE already pushes it to background).
The log-barrier is negative once a constraint holds with margin, so these terms can be below zero.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from automedsam.errors import AutomedsamError
from automedsam.foundation.frame import frame_pixel

BoxesPerImage = Sequence[Sequence[Sequence[float]]]
DICE_SMOOTH = 1.0
TERMS = ("empty_bce", "tightness", "box_size", "pseudo_label", "supervised")


def log_barrier(z: Tensor, t: float) -> Tensor:
    """Log-barrier extension psi_t of the constraint z <= 0: a log barrier inside, its tangent line beyond.

    psi_t(z) = -log(-z)/t for z <= -1/t^2, else t*z - log(1/t^2)/t + 1/t; continuous with a continuous
    derivative at the switch, finite everywhere, so an infeasible start still gets a useful gradient.
    """
    if t <= 0:
        raise ValueError(f"log-barrier t must be > 0, got {t}")
    switch = -1.0 / t ** 2
    in_log_range = z <= switch
    safe_z = torch.where(in_log_range, z, torch.full_like(z, switch))   # no log of z > 0, even in dead branches
    inside = -torch.log(-safe_z) / t
    linear = t * z - math.log(1.0 / t ** 2) / t + 1.0 / t
    return torch.where(in_log_range, inside, linear)


def empty_bce_loss(logits: Tensor, boxes: BoxesPerImage) -> Tensor:
    """BCE towards background on pixels outside every box: the object never leaves its boxes."""
    logits = _image_logits(logits, boxes)
    outside = ~_box_union(boxes, logits.shape)
    count = int(outside.sum())
    if count == 0:
        return _zero_like(logits)
    return torch.where(outside.to(logits.device), F.softplus(logits), 0.0).sum() / count


def tightness_prior_loss(logits: Tensor, boxes: BoxesPerImage, band_width: int = 5, t: float = 5.0) -> Tensor:
    """Every band of `band_width` rows (and of columns) of a tight box holds at least its width of foreground.

    A tight box touches the object on every row and column, so each band of n lines crosses at least n object
    pixels: z = n - sum(probs in band) <= 0, one log-barrier per band. Band sums come from per-box row and column
    sums, reshaped into bands.
    """
    if band_width < 1:
        raise ValueError(f"band_width must be >= 1, got {band_width}")
    logits = _image_logits(logits, boxes)
    violations = []
    for image, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in _pixel_boxes(image_boxes, logits.shape[1:]):
            inside = torch.sigmoid(logits[image, y0:y1 + 1, x0:x1 + 1])
            for line_sums in (inside.sum(dim=1), inside.sum(dim=0)):
                band_sums, band_widths = _band_sums(line_sums, band_width)
                violations.append(band_widths - band_sums)
    if not violations:
        return _zero_like(logits)
    return log_barrier(torch.cat(violations), t).sum() / logits.shape[0]


def box_size_prior_loss(logits: Tensor, boxes: BoxesPerImage, margins: Sequence[float] = (0.5, 0.9),
                        t: float = 5.0) -> Tensor:
    """The foreground mass S inside each box stays within margins of its area: a|B| <= S <= b|B|."""
    lower, upper = margins
    if not 0 <= lower <= upper:
        raise ValueError(f"box size margins must satisfy 0 <= lower <= upper, got {tuple(margins)}")
    logits = _image_logits(logits, boxes)
    masses, areas = [], []
    for image, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in _pixel_boxes(image_boxes, logits.shape[1:]):
            masses.append(torch.sigmoid(logits[image, y0:y1 + 1, x0:x1 + 1]).sum())
            areas.append(float((x1 - x0 + 1) * (y1 - y0 + 1)))
    if not masses:
        return _zero_like(logits)
    mass = torch.stack(masses)
    area = torch.tensor(areas, device=mass.device)
    penalty = log_barrier(lower * area - mass, t) + log_barrier(mass - upper * area, t)
    return (penalty / area).sum() / logits.shape[0]


def dice_bce_loss(logits: Tensor, target_mask: Tensor) -> Tensor:
    """Soft Dice (per image, smoothed so an empty target rewards an empty prediction) plus mean BCE."""
    logits = logits.float()
    if target_mask.shape == logits.shape[:1] + logits.shape[2:] and logits.shape[1] == 1:
        target_mask = target_mask.unsqueeze(1)
    if target_mask.shape != logits.shape:
        raise ValueError(f"target mask of shape {tuple(target_mask.shape)} does not match logits "
                         f"{tuple(logits.shape)}")
    target = target_mask.to(device=logits.device, dtype=logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probs = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    overlap = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    dice = (2 * overlap + DICE_SMOOTH) / (total + DICE_SMOOTH)
    return bce + (1 - dice).mean()


class WeakBoxLoss(nn.Module):
    """The weighted sum of the terms configured in plans.json's `losses` section.

    Terms: `empty_bce`, `tightness`, `box_size` (weak, from boxes), `pseudo_label` (Dice+BCE against a given
    pseudo mask) and `supervised` (Dice+BCE against full masks). A term is used when its section is present with a
    weight > 0. `t` (from `log_barrier_t`) stays fixed through training.
    forward returns (total, {term: unweighted value as float}).
    """

    def __init__(self, config: Mapping) -> None:
        super().__init__()
        if not isinstance(config, Mapping):
            raise AutomedsamError("plans.json 'losses' must be an object; re-run automedsam_plan_and_preprocess.")
        unknown = sorted(set(config) - set(TERMS) - {"log_barrier_t", "reason"})
        if unknown:  # a misspelt term would be left out of training without a word
            raise AutomedsamError(f"plans.json 'losses' has unknown key(s) {', '.join(unknown)}; the terms are "
                                  f"{', '.join(TERMS)}, plus log_barrier_t. Fix plans.json or re-run the planner.")
        configured = {name: _term_weight(config, name) for name in TERMS if name in config}
        self.weights = {name: weight for name, weight in configured.items() if weight > 0}
        if not self.weights:
            raise AutomedsamError("plans.json 'losses' enables no term (empty_bce, tightness, box_size, "
                                  "pseudo_label, supervised with weight > 0); add one or re-run the planner.")
        self.band_width = 5
        self.margins = (0.5, 0.9)
        self.t = 5.0
        if "tightness" in self.weights:
            self.band_width = _band_width(config["tightness"])
        if "box_size" in self.weights:
            self.margins = _margins(config["box_size"])
        if {"tightness", "box_size"} & self.weights.keys():
            self.t = _barrier_t(config)

    def forward(self, logits: Tensor, boxes: BoxesPerImage, masks: Tensor | None = None,
                pseudo: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        terms: dict[str, Tensor] = {}
        if "empty_bce" in self.weights:
            terms["empty_bce"] = empty_bce_loss(logits, boxes)
        if "tightness" in self.weights:
            terms["tightness"] = tightness_prior_loss(logits, boxes, self.band_width, self.t)
        if "box_size" in self.weights:
            terms["box_size"] = box_size_prior_loss(logits, boxes, self.margins, self.t)
        if "pseudo_label" in self.weights:
            if pseudo is None:
                raise ValueError("the pseudo_label loss term needs pseudo masks")
            terms["pseudo_label"] = dice_bce_loss(logits, pseudo)
        if "supervised" in self.weights:
            if masks is None:
                raise ValueError("the supervised loss term needs ground-truth masks")
            terms["supervised"] = dice_bce_loss(logits, masks)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return total, {name: float(value.detach()) for name, value in terms.items()}


def _image_logits(logits: Tensor, boxes: BoxesPerImage) -> Tensor:
    """(B, 1, H, W) logits -> float32 (B, H, W), checked against the per-image box lists."""
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must have shape (B, 1, H, W), got {tuple(logits.shape)}")
    if len(boxes) != logits.shape[0]:
        raise ValueError(f"got box lists for {len(boxes)} images but logits for {logits.shape[0]}")
    return logits[:, 0].float()


def _pixel_boxes(image_boxes: Sequence[Sequence[float]], shape: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Inclusive integer corners inside the (H, W) frame; a box that is inverted or wholly outside is an error."""
    height, width = shape
    result = []
    for box in image_boxes:
        if len(box) != 4:
            raise ValueError(f"box {box!r} must be [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (float(value) for value in box)
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box {box!r} is inverted; corners are [x0, y0, x1, y1] with x0 <= x1, y0 <= y1")
        if x1 < -0.5 or y1 < -0.5 or x0 > width - 0.5 or y0 > height - 0.5:
            raise ValueError(f"box {box!r} lies outside the {height}x{width} frame")
        result.append((_pixel(x0, width), _pixel(y0, height), _pixel(x1, width), _pixel(y1, height)))
    return result


def _pixel(coordinate: float, size: int) -> int:
    return min(max(frame_pixel(coordinate), 0), size - 1)


def _box_union(boxes: BoxesPerImage, shape: Sequence[int]) -> Tensor:
    """Boolean (B, H, W) CPU map of the pixels covered by at least one of their image's boxes."""
    covered = torch.zeros(tuple(shape), dtype=torch.bool)
    for image, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in _pixel_boxes(image_boxes, shape[1:]):
            covered[image, y0:y1 + 1, x0:x1 + 1] = True
    return covered


def _band_sums(line_sums: Tensor, band_width: int) -> tuple[Tensor, Tensor]:
    """Sums of consecutive groups of `band_width` lines and each group's line count (the last may be short)."""
    lines = line_sums.shape[0]
    bands = -(-lines // band_width)
    padded = F.pad(line_sums, (0, bands * band_width - lines))
    widths = torch.full((bands,), float(band_width), device=line_sums.device)
    widths[-1] = lines - (bands - 1) * band_width
    return padded.view(bands, band_width).sum(dim=1), widths


def _zero_like(logits: Tensor) -> Tensor:
    """A zero still attached to the graph, so backward (and DDP) see every parameter."""
    return logits.sum() * 0.0


def _term_weight(config: Mapping, name: str) -> float:
    section = config[name]
    weight = section.get("weight") if isinstance(section, Mapping) else None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
        raise AutomedsamError(f"plans.json losses.{name} needs a finite 'weight' >= 0 (got {section!r}); "
                              "fix plans.json or re-run automedsam_plan_and_preprocess.")
    return float(weight)


def _band_width(section: Mapping) -> int:
    width = section.get("band_width", None)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise AutomedsamError(f"plans.json losses.tightness.band_width must be an integer >= 1 (got {width!r}); "
                              "fix plans.json or re-run automedsam_plan_and_preprocess.")
    return width


def _margins(section: Mapping) -> tuple[float, float]:
    margins = section.get("margins", None)
    valid = (isinstance(margins, Sequence) and len(margins) == 2
             and all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in margins)
             and 0 <= margins[0] <= margins[1])
    if not valid:
        raise AutomedsamError(f"plans.json losses.box_size.margins must be [lower, upper] with "
                              f"0 <= lower <= upper (got {margins!r}); fix plans.json or re-run the planner.")
    return float(margins[0]), float(margins[1])


def _barrier_t(config: Mapping) -> float:
    t = config.get("log_barrier_t", None)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        raise AutomedsamError(f"plans.json losses.log_barrier_t must be a number > 0 (got {t!r}); "
                              "fix plans.json or re-run automedsam_plan_and_preprocess.")
    return float(t)
