"""The fast training step computes what the straightforward one did (issue 23): same logits, losses and weights.

The reference here is the step as first written: each target's module, then its own decoder call, then its loss.
The training loop now decodes all targets of a batch in one decoder call; with the maths unchanged, the two must
agree to float rounding on the real LiteMedSAM decoder.
"""
from __future__ import annotations

import copy

import pytest
import torch

from automedsam.distributed import DistributedContext
from automedsam.foundation.registry import build_foundation_model
from automedsam.losses import WeakBoxLoss
from automedsam.prompt_module import PromptModule
from automedsam.training.data import SampleSet, TargetSamples
from automedsam.training.initialisation import start_at_mean_box
from automedsam.training.loop import decode_targets, train_epoch

BOX_LOSSES = {"empty_bce": {"weight": 0.1}, "tightness": {"weight": 1e-4, "band_width": 5},
              "box_size": {"weight": 1e-2, "margins": [0.3, 0.86]}, "log_barrier_t": 5.0}
LOSSES = {1: {**BOX_LOSSES, "pseudo_label": {"weight": 1.0}}, 2: BOX_LOSSES}  # target 2 without a pseudo-label
BOXES = {  # per target, per sample: a box, two boxes, or none (the target is absent there)
    1: [[[40, 50, 120, 140]], [[30, 30, 90, 100], [150, 160, 200, 230]], [], [[60, 20, 140, 61]]],
    2: [[[100, 90, 180, 170]], [[10, 10, 250, 250]], [[0, 0, 30, 7]], [[64, 64, 191, 191]]],
}


@pytest.fixture(scope="module")
def foundation():
    return build_foundation_model("litemedsam", device="cpu")


def sample_set() -> SampleSet:
    generator = torch.Generator().manual_seed(3)
    embeddings = (0.5 * torch.randn(4, 256, 64, 64, generator=generator)).half()
    pseudo = (torch.rand(4, 1, 256, 256, generator=generator) > 0.6).float()
    targets = {label: TargetSamples(boxes, boxes, None, [None] * 4, pseudo if label == 1 else None)
               for label, boxes in BOXES.items()}
    return SampleSet([f"s{i}" for i in range(4)], embeddings, [None] * 4, targets, [[i] for i in range(4)])


def started_modules(foundation, data: SampleSet) -> dict[int, PromptModule]:
    torch.manual_seed(11)
    modules = {label: PromptModule(center_channels=8) for label in BOXES}
    for label, module in modules.items():
        start_at_mean_box(module, foundation, data.targets[label].boxes_low_res)
    return modules


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, *, what: str = "", scale: float = 1e-5) -> None:
    """Equal up to float32 rounding, measured against the tensor's own size: a decoder call over more rows sums in
    another order, so single elements that nearly cancel differ in their last digits, nothing more."""
    tolerance = scale * max(float(expected.abs().max()), 1e-12)
    difference = float((actual - expected).abs().max())
    assert difference <= tolerance, f"{what}: largest difference {difference:.3g} > {tolerance:.3g}"


def reference_step(modules, foundation, loss_fns, data: SampleSet, indices: list[int]) -> torch.Tensor:
    """One target at a time: its module, its own decoder call, its loss; the losses summed."""
    embeddings = data.embedding_batch(indices, torch.device("cpu"))
    total = torch.zeros(())
    for label, module in modules.items():
        labels = data.targets[label]
        logits = foundation.decode(embeddings, *module(embeddings))
        pseudo = None if labels.pseudo_low_res is None else labels.pseudo_low_res[indices]
        loss, _ = loss_fns[label](logits.float(), [labels.boxes_low_res[i] for i in indices], pseudo=pseudo)
        total = total + loss
    return total


def test_one_decoder_call_for_all_targets_gives_each_targets_own_logits_and_gradients(foundation) -> None:
    data = sample_set()
    modules = started_modules(foundation, data)
    embeddings = data.embedding_batch([0, 1, 2], torch.device("cpu"))
    batched = decode_targets(modules, foundation, embeddings)
    assert list(batched) == [1, 2] and all(logits.shape == (3, 1, 256, 256) for logits in batched.values())
    sum(logits.sigmoid().square().sum() for logits in batched.values()).backward()
    batched_grads = {label: [p.grad.clone() for p in module.parameters()] for label, module in modules.items()}
    for module in modules.values():
        module.zero_grad()
    one_by_one = {label: foundation.decode(embeddings, *module(embeddings)) for label, module in modules.items()}
    sum(logits.sigmoid().square().sum() for logits in one_by_one.values()).backward()
    assert not torch.allclose(one_by_one[1], one_by_one[2], atol=1e-2)  # the targets' prompts differ
    for label, module in modules.items():
        torch.testing.assert_close(batched[label], one_by_one[label], rtol=1e-5, atol=1e-5)
        for batched_grad, parameter in zip(batched_grads[label], module.parameters()):
            assert_close_to_scale(batched_grad, parameter.grad)


def test_training_steps_give_the_reference_losses_and_weights(foundation) -> None:
    data = sample_set()
    loss_fns = {label: WeakBoxLoss(LOSSES[label]) for label in BOXES}
    reference = started_modules(foundation, data)
    trained = copy.deepcopy(reference)
    initial = copy.deepcopy(reference)
    order = [2, 0, 3, 1]
    # plain SGD: an update proportional to the gradient, so rounding differences stay rounding differences
    reference_optimizer = torch.optim.SGD([p for m in reference.values() for p in m.parameters()], lr=0.05)
    reference_losses = []
    for start in (0, 2):
        loss = reference_step(reference, foundation, loss_fns, data, order[start:start + 2])
        reference_optimizer.zero_grad()
        loss.backward()
        reference_optimizer.step()
        reference_losses.append(float(loss.detach()))
    optimizer = torch.optim.SGD([p for m in trained.values() for p in m.parameters()], lr=0.05)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    epoch = train_epoch(trained, foundation, loss_fns, optimizer, scaler, data, order, 2, DistributedContext(),
                        torch.device("cpu"))
    assert epoch.total == pytest.approx(sum(reference_losses) / 2, rel=1e-5)
    for label in BOXES:
        moved = 0.0
        for (name, expected), actual, start in zip(reference[label].named_parameters(), trained[label].parameters(),
                                                   initial[label].parameters()):
            assert_close_to_scale(actual, expected, what=f"target {label} {name}")
            moved = max(moved, float((actual - start).abs().max()))
        assert moved > 1e-4  # the steps changed the weights, so agreeing is not agreeing on nothing
