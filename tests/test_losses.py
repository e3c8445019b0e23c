"""Box-supervision losses against hand-computed values, gradient directions, edge cases and a tiny optimisation."""
from __future__ import annotations

import math

import pytest
import torch

from automedsam.errors import AutomedsamError
from automedsam.losses import (WeakBoxLoss, box_size_prior_loss, dice_bce_loss, empty_bce_loss, log_barrier,
                               tightness_prior_loss)

T = 5.0
LINEAR_OFFSET = 2 / T * math.log(T) + 1 / T      # psi_t(0) = -log(1/t^2)/t + 1/t
SURE = 30.0                                      # a logit whose sigmoid is 1 (or 0 negated) to float precision
PAPER_LOSSES = {"empty_bce": {"weight": 1}, "tightness": {"weight": 1e-4, "band_width": 5},
                "box_size": {"weight": 1e-2, "margins": [0.5, 0.9]}, "log_barrier_t": 5, "reason": "paper"}


def logits_of(probs: torch.Tensor) -> torch.Tensor:
    """(H, W) probabilities -> (1, 1, H, W) logits requiring grad."""
    return torch.logit(probs.double()).float().reshape(1, 1, *probs.shape).requires_grad_()


def psi(z: float) -> float:
    return -math.log(-z) / T if z <= -1 / T ** 2 else T * z + LINEAR_OFFSET


# ---------------------------------------------------------------- log-barrier
def test_log_barrier_hand_values() -> None:
    z = torch.tensor([-1.0, -0.5, 0.0, 1.0])
    expected = torch.tensor([0.0, -math.log(0.5) / 5, LINEAR_OFFSET, 5.0 + LINEAR_OFFSET])
    torch.testing.assert_close(log_barrier(z, 5.0), expected)


@pytest.mark.parametrize("t", [1.0, 2.0, 5.0, 10.0])
def test_log_barrier_value_and_slope_are_continuous_at_the_switch(t: float) -> None:
    switch = -1 / t ** 2
    z = torch.tensor([switch - 1e-6, switch, switch + 1e-6], dtype=torch.float64, requires_grad=True)
    values = log_barrier(z, t)
    values.sum().backward()
    assert abs(values[0] - values[2]) < 1e-4
    torch.testing.assert_close(z.grad, torch.full((3,), t, dtype=torch.float64), atol=1e-3, rtol=1e-4)


def test_log_barrier_is_finite_and_increasing_everywhere() -> None:
    z = torch.linspace(-1e3, 1e3, 20001, requires_grad=True)
    values = log_barrier(z, 5.0)
    values.sum().backward()
    assert torch.isfinite(values).all() and torch.isfinite(z.grad).all()
    assert (values[1:] > values[:-1]).all()
    assert (z.grad > 0).all()


# ---------------------------------------------------------------- empty BCE
def test_empty_bce_hand_value_ignores_inside() -> None:
    logits = torch.zeros(1, 1, 6, 6)
    logits[0, 0, 0, 0] = 20.0       # outside, confidently wrong
    logits[0, 0, 1, 1] = 50.0       # inside the box: no say
    value = empty_bce_loss(logits, [[[1, 1, 3, 2]]])   # 3 x 2 box, 30 outside pixels
    expected = (29 * math.log(2) + math.log1p(math.exp(20.0))) / 30
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_empty_bce_without_box_covers_the_whole_image() -> None:
    logits = torch.full((1, 1, 4, 5), math.log(3.0))    # p = 0.75 everywhere
    assert empty_bce_loss(logits, [[]]).item() == pytest.approx(math.log(4.0), rel=1e-6)


def test_empty_bce_pools_outside_pixels_of_the_batch_and_unions_boxes() -> None:
    logits = torch.zeros(2, 1, 6, 6)
    logits[1, 0, :, :3] = math.log(3.0)
    boxes = [[[0, 0, 5, 5]], [[3, 0, 5, 2], [3, 3, 5, 5]]]   # nothing outside in image 0; left half in image 1
    assert empty_bce_loss(logits, boxes).item() == pytest.approx(math.log(4.0), rel=1e-6)


def test_empty_bce_pushes_outside_logits_down_only() -> None:
    logits = torch.zeros(1, 1, 6, 6, requires_grad=True)
    empty_bce_loss(logits, [[[2, 1, 4, 3]]]).backward()
    inside = torch.zeros(6, 6, dtype=torch.bool)
    inside[1:4, 2:5] = True
    grad = logits.grad[0, 0]
    assert (grad[~inside] > 0).all()
    assert (grad[inside] == 0).all()


def test_empty_bce_is_zero_when_the_box_covers_the_image() -> None:
    logits = torch.randn(1, 1, 5, 5, requires_grad=True)
    value = empty_bce_loss(logits, [[[0, 0, 4, 4]]])
    value.backward()
    assert value.item() == 0 and (logits.grad == 0).all()


# ---------------------------------------------------------------- tightness prior
def test_tightness_hand_value() -> None:
    probs = torch.zeros(6, 6)
    probs[:, 0] = 1.0     # outside the box: ignored
    probs[:, 1] = 1.0     # one object pixel on every row of the box
    logits = logits_of(probs.clamp(1 / (1 + math.exp(SURE)), 1 / (1 + math.exp(-SURE))))
    value = tightness_prior_loss(logits, [[[1, 0, 3, 5]]], band_width=2, t=T)
    # rows: 3 bands of 2 rows, each with 2 pixels -> z = 0; columns: (1, 2) holds 6 -> z = -4, (3) holds 0 -> z = 1
    expected = 3 * psi(0.0) + psi(-4.0) + psi(1.0)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_tightness_uniform_half_with_a_short_last_band() -> None:
    logits = torch.zeros(1, 1, 6, 6)
    value = tightness_prior_loss(logits, [[[0, 0, 5, 5]]], band_width=5, t=T)
    # each line holds 3: bands of 5 lines hold 15 (z = -10), the last single line 3 (z = -2); rows and columns
    assert value.item() == pytest.approx(2 * (psi(-10.0) + psi(-2.0)), rel=1e-6)


def test_tightness_sums_boxes_and_averages_images() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 12, 12)
    one, other = [1, 2, 6, 8], [7, 0, 11, 4]
    single = tightness_prior_loss(logits, [[one]]) + tightness_prior_loss(logits, [[other]])
    assert tightness_prior_loss(logits, [[one, other]]).item() == pytest.approx(single.item(), rel=1e-6)
    batch = tightness_prior_loss(logits.repeat(2, 1, 1, 1), [[one], []])
    assert batch.item() == pytest.approx(tightness_prior_loss(logits, [[one]]).item() / 2, rel=1e-6)


@pytest.mark.parametrize("band_width", [1, 2, 3, 5, 7])
def test_tightness_matches_explicit_band_masks(band_width: int) -> None:
    generator = torch.Generator().manual_seed(band_width)
    logits = torch.randn(2, 1, 17, 13, generator=generator)
    boxes = [[[0, 0, 12, 16], [3, 4, 3, 9]], [[2, 5, 10, 11]]]
    probs = torch.sigmoid(logits[:, 0])
    terms = []
    for image, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in image_boxes:
            for axis_start, axis_end, vertical in ((y0, y1, True), (x0, x1, False)):
                for start in range(axis_start, axis_end + 1, band_width):
                    end = min(start + band_width - 1, axis_end)
                    band = torch.zeros(17, 13, dtype=torch.bool)
                    if vertical:
                        band[start:end + 1, x0:x1 + 1] = True
                    else:
                        band[y0:y1 + 1, start:end + 1] = True
                    terms.append(psi(float(end - start + 1 - probs[image][band].sum())))
    expected = sum(terms) / 2
    value = tightness_prior_loss(logits, boxes, band_width=band_width, t=T)
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_tightness_pushes_empty_bands_up_and_ignores_outside() -> None:
    logits = torch.full((1, 1, 10, 10), -3.0, requires_grad=True)
    tightness_prior_loss(logits, [[[2, 3, 8, 7]]]).backward()
    grad = logits.grad[0, 0]
    assert (grad[3:8, 2:9] < 0).all()
    grad[3:8, 2:9] = 0
    assert (grad == 0).all()


# ---------------------------------------------------------------- box size prior
def test_box_size_hand_value() -> None:
    probs = torch.full((6, 6), 1 / (1 + math.exp(-SURE)))    # outside mass must not count
    probs[1:5, 1:5] = 0.5                                    # 4 x 4 box: S = 8
    value = box_size_prior_loss(logits_of(probs), [[[1, 1, 4, 4]]], margins=(0.5, 0.9), t=T)
    # lower: 0.5 * 16 - 8 = 0 ; upper: 8 - 0.9 * 16 = -6.4 ; normalised by the area 16
    assert value.item() == pytest.approx((psi(0.0) + psi(-6.4)) / 16, rel=1e-5)


@pytest.mark.parametrize(("inside_logit", "direction"), [(3.0, 1), (-3.0, -1)])
def test_box_size_gradient_sign(inside_logit: float, direction: int) -> None:
    # logit 3: S = 0.95 |B| > 0.9 |B| -> push down (positive gradient); logit -3: S = 0.05 |B| < 0.5 |B| -> push up
    logits = torch.full((1, 1, 8, 8), -5.0)
    logits[0, 0, 2:6, 1:7] = inside_logit
    logits.requires_grad_()
    box_size_prior_loss(logits, [[[1, 2, 6, 5]]]).backward()
    grad = logits.grad[0, 0]
    assert (torch.sign(grad[2:6, 1:7]) == direction).all()
    grad[2:6, 1:7] = 0
    assert (grad == 0).all()


def test_box_size_sums_boxes_and_skips_images_without_box() -> None:
    torch.manual_seed(1)
    logits = torch.randn(1, 1, 10, 10)
    one, other = [0, 0, 3, 3], [5, 2, 9, 9]
    separate = box_size_prior_loss(logits, [[one]]) + box_size_prior_loss(logits, [[other]])
    assert box_size_prior_loss(logits, [[one, other]]).item() == pytest.approx(separate.item(), rel=1e-6)
    batch = box_size_prior_loss(logits.repeat(2, 1, 1, 1), [[], [one]])
    assert batch.item() == pytest.approx(box_size_prior_loss(logits, [[one]]).item() / 2, rel=1e-6)


# ---------------------------------------------------------------- supervised Dice + BCE
def test_dice_bce_hand_value() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, :2, :2] = 1
    value = dice_bce_loss(torch.zeros(1, 1, 4, 4), target)
    # BCE of p = 0.5 is log 2; Dice = (2 * 2 + 1) / (8 + 4 + 1)
    assert value.item() == pytest.approx(math.log(2) + 1 - 5 / 13, rel=1e-6)


def test_dice_bce_on_empty_targets_is_finite_and_rewards_an_empty_prediction() -> None:
    empty = torch.zeros(2, 4, 4)                    # (B, H, W) masks are accepted too
    confident = dice_bce_loss(torch.full((2, 1, 4, 4), -SURE), empty)
    unsure = dice_bce_loss(torch.zeros(2, 1, 4, 4), empty)
    assert torch.isfinite(confident) and torch.isfinite(unsure)
    assert confident.item() == pytest.approx(0.0, abs=1e-6)
    assert unsure.item() > confident.item()


def test_dice_bce_gradient_pulls_towards_the_mask() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 1:3, 1:3] = 1
    logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
    dice_bce_loss(logits, target).backward()
    assert (logits.grad[target.bool()] < 0).all() and (logits.grad[~target.bool()] > 0).all()


def test_dice_bce_rejects_mismatched_masks() -> None:
    with pytest.raises(ValueError, match="does not match"):
        dice_bce_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


# ---------------------------------------------------------------- edge cases of every weak loss
WEAK_LOSSES = [empty_bce_loss, tightness_prior_loss, box_size_prior_loss]
EDGE_CASES = {
    "no box": [[]],
    "one pixel": [[[3, 4, 3, 4]]],
    "one pixel in a corner": [[[8, 6, 8, 6]]],
    "touching the border": [[[0, 2, 8, 6]]],
    "whole image": [[[0, 0, 8, 6]]],
    "bands not divisible": [[[1, 1, 7, 3]]],
    "several boxes": [[[0, 0, 2, 2], [5, 3, 8, 6], [4, 0, 4, 6]]],
    "overlapping boxes": [[[0, 0, 5, 5], [2, 2, 8, 6]]],
}


@pytest.mark.parametrize("loss", WEAK_LOSSES)
@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_cases_give_finite_values_and_gradients(loss, case: str) -> None:
    torch.manual_seed(0)
    logits = (torch.randn(1, 1, 7, 9) * 10).requires_grad_()
    value = loss(logits, EDGE_CASES[case])
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("loss", WEAK_LOSSES)
def test_mixed_batch_is_the_mean_of_its_parts(loss) -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 7, 9, requires_grad=True)
    boxes = [[], [[0, 0, 8, 6]], [[1, 1, 2, 2], [4, 3, 8, 6]]]
    value = loss(logits, boxes)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    if loss is not empty_bce_loss:    # the empty BCE pools pixels instead of averaging images
        parts = [loss(logits[i:i + 1], [boxes[i]]).item() for i in range(3)]
        assert value.item() == pytest.approx(sum(parts) / 3, rel=1e-5)


@pytest.mark.parametrize("loss", WEAK_LOSSES)
def test_extreme_logits_do_not_overflow(loss) -> None:
    logits = torch.full((1, 1, 6, 6), 1e4)
    logits[0, 0, ::2] = -1e4
    logits.requires_grad_()
    value = loss(logits, [[[1, 1, 4, 4]]])
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_float_corners_are_rounded_and_clipped() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 6, 6)
    for loss in WEAK_LOSSES:
        rounded = loss(logits, [[[0.6, 1.4, 2.5, 3.49]]])  # halves down: the frame pixels whose centres are inside
        assert rounded.item() == pytest.approx(loss(logits, [[[1, 1, 2, 3]]]).item())
        clipped = loss(logits, [[[-0.4, 0, 5.4, 5]]])
        assert clipped.item() == pytest.approx(loss(logits, [[[0, 0, 5, 5]]]).item())


def test_box_size_counts_the_frame_pixels_only_of_a_corner_past_the_frame() -> None:
    """A corner rounding past the frame's last pixel (5.6 in 6 pixels) must not add a column outside the frame to
    the box area the size prior is measured against."""
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 6, 6)
    past = box_size_prior_loss(logits, [[[0, 0, 5.6, 5]]])
    assert past.item() == pytest.approx(box_size_prior_loss(logits, [[[0, 0, 5, 5]]]).item())


@pytest.mark.parametrize(("boxes", "message"), [
    ([[[3, 1, 2, 4]]], "inverted"),
    ([[[7, 0, 9, 3]]], "outside"),
    ([[[1, 1, 2]]], r"\[x0, y0, x1, y1\]"),
    ([[], []], "2 images"),
])
def test_malformed_boxes_are_rejected(boxes, message: str) -> None:
    for loss in WEAK_LOSSES:
        with pytest.raises(ValueError, match=message):
            loss(torch.zeros(1, 1, 6, 6), boxes)


# ---------------------------------------------------------------- combined loss
def test_weak_box_loss_is_the_weighted_sum_of_its_terms() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 16, 16, requires_grad=True)
    boxes = [[[2, 3, 9, 12]], [[0, 0, 4, 4], [10, 8, 15, 15]]]
    total, terms = WeakBoxLoss(PAPER_LOSSES)(logits, boxes)
    expected = {"empty_bce": empty_bce_loss(logits, boxes).item(),
                "tightness": tightness_prior_loss(logits, boxes, 5, 5.0).item(),
                "box_size": box_size_prior_loss(logits, boxes, (0.5, 0.9), 5.0).item()}
    assert terms == pytest.approx(expected, rel=1e-6)
    weighted = expected["empty_bce"] + 1e-4 * expected["tightness"] + 1e-2 * expected["box_size"]
    assert total.item() == pytest.approx(weighted, rel=1e-6)
    total.backward()
    assert torch.isfinite(logits.grad).all()


def test_weak_box_loss_t_can_be_raised_during_training() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 12, 12)
    boxes = [[[2, 2, 9, 9]]]
    loss = WeakBoxLoss(PAPER_LOSSES)
    _, before = loss(logits, boxes)
    loss.t = 10.0
    _, after = loss(logits, boxes)
    assert after["tightness"] == pytest.approx(tightness_prior_loss(logits, boxes, 5, 10.0).item(), rel=1e-6)
    assert after["tightness"] != pytest.approx(before["tightness"])


def test_weak_box_loss_optional_terms() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 8, 8)
    mask = (torch.rand(1, 1, 8, 8) > 0.5).float()
    pseudo = (torch.rand(1, 1, 8, 8) > 0.5).float()
    config = {"supervised": {"weight": 2.0}, "pseudo_label": {"weight": 0.5}, "empty_bce": {"weight": 0}}
    total, terms = WeakBoxLoss(config)(logits, [[[0, 0, 3, 3]]], masks=mask, pseudo=pseudo)
    assert set(terms) == {"supervised", "pseudo_label"}
    expected = 2.0 * dice_bce_loss(logits, mask).item() + 0.5 * dice_bce_loss(logits, pseudo).item()
    assert total.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="ground-truth masks"):
        WeakBoxLoss(config)(logits, [[]], pseudo=pseudo)


@pytest.mark.parametrize(("change", "message"), [
    ({"log_barrier_t": None}, "log_barrier_t"),
    ({"tightness": {"weight": 1e-4, "band_width": 0}}, "band_width"),
    ({"box_size": {"weight": 1e-2, "margins": [0.9, 0.5]}}, "margins"),
    ({"empty_bce": {"weight": -1}}, "empty_bce"),
    ({"empty_bce": {"weight": float("inf")}}, "finite"),
    ({"tightnes": {"weight": 1e-4, "band_width": 5}}, "unknown key.*tightnes"),  # misspelt: was silently left out
    ({"empty_bce": {"weight": 0}, "tightness": {"weight": 0}, "box_size": {"weight": 0}}, "no term"),
])
def test_weak_box_loss_rejects_bad_plans(change: dict, message: str) -> None:
    config = {**PAPER_LOSSES, **change}
    config = {key: value for key, value in config.items() if value is not None}
    with pytest.raises(AutomedsamError, match=message):
        WeakBoxLoss(config)


@pytest.mark.parametrize("start", [0.0, -4.0, 4.0])
def test_optimising_a_free_logit_map_fills_the_box_only(start: float) -> None:
    logits = torch.full((1, 1, 32, 32), start, requires_grad=True)
    box = [8, 10, 20, 24]
    loss = WeakBoxLoss(PAPER_LOSSES)
    optimiser = torch.optim.Adam([logits], lr=0.1)
    for _ in range(300):
        total, _ = loss(logits, [[box]])
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    probs = torch.sigmoid(logits.detach())[0, 0]
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[10:25, 8:21] = True
    assert (probs[inside] > 0.5).float().mean() > 0.95
    assert 0.5 <= probs[inside].mean() <= 0.95
    assert probs[~inside].max() < 0.05
