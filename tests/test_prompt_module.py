"""The prompt module's shapes for several plan sizes, its gradients and the multi-label state dict round trip."""
from __future__ import annotations

import pytest
import torch

from automedsam.errors import AutomedsamError
from automedsam.prompt_module import PromptModule, build_prompt_module, load_modules, modules_state_dict


def plans_with(center_channels: int = 16, num_points: int = 1) -> dict:
    return {"prompt_module": {"center_channels": center_channels, "num_points": num_points, "reason": "test"}}


@pytest.mark.parametrize(("center_channels", "num_points"), [(128, 1), (32, 3), (8, 0), (64, 2)])
def test_output_shapes_follow_the_plan(center_channels: int, num_points: int) -> None:
    module = build_prompt_module(plans_with(center_channels, num_points))
    sparse, dense = module(torch.randn(2, 256, 64, 64))
    assert sparse.shape == (2, num_points + 1, 256)
    assert dense.shape == (2, 256, 64, 64)
    assert module.sparse_linear.in_features == center_channels // 2 * 8 * 8


def test_layers_are_the_papers() -> None:
    module = PromptModule()
    assert module.center_conv.kernel_size == (1, 1) and module.center_conv.out_channels == 128
    assert module.dense_conv.kernel_size == (3, 3) and module.dense_conv.padding == (1, 1)
    assert module.sparse_conv.out_channels == 64
    assert module.sparse_linear.out_features == 2 * 256


def test_dense_embedding_is_non_negative_and_sparse_is_signed() -> None:
    torch.manual_seed(0)
    sparse, dense = PromptModule(center_channels=16)(torch.randn(1, 256, 64, 64))
    assert dense.min() >= 0
    assert sparse.min() < 0 < sparse.max()


def test_smaller_embedding_grid() -> None:
    module = PromptModule(embed_dim=32, center_channels=8, num_points=2, embedding_size=16)
    sparse, dense = module(torch.randn(3, 32, 16, 16))
    assert sparse.shape == (3, 3, 32) and dense.shape == (3, 32, 16, 16)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    module = PromptModule(center_channels=16, num_points=2)
    sparse, dense = module(torch.randn(2, 256, 64, 64))
    (sparse.square().sum() + dense.sum()).backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_wrong_embedding_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="256, 64, 64"):
        PromptModule(center_channels=8)(torch.randn(1, 256, 32, 32))


@pytest.mark.parametrize("section", [
    None,
    {"center_channels": 16},
    {"center_channels": 15, "num_points": 1},
    {"center_channels": 16, "num_points": -1},
    {"center_channels": "16", "num_points": 1},
])
def test_bad_plans_give_a_user_error(section: dict | None) -> None:
    plans = {} if section is None else {"prompt_module": section}
    with pytest.raises(AutomedsamError, match="prompt_module"):
        build_prompt_module(plans)


def test_state_dict_round_trip_keeps_every_label() -> None:
    torch.manual_seed(0)
    plans = plans_with(16, 1)
    modules = {1: build_prompt_module(plans), 3: build_prompt_module(plans)}
    state = modules_state_dict(modules)
    assert all(key.split(".", 1)[0] in {"1", "3"} for key in state)
    assert "1.center_conv.weight" in state and "3.sparse_linear.bias" in state
    assert all(tensor.device.type == "cpu" for tensor in state.values())

    loaded = load_modules(state, plans)
    assert sorted(loaded) == [1, 3]
    embedding = torch.randn(1, 256, 64, 64)
    for label, module in modules.items():
        expected_sparse, expected_dense = module(embedding)
        sparse, dense = loaded[label](embedding)
        assert torch.equal(sparse, expected_sparse) and torch.equal(dense, expected_dense)
    assert not torch.equal(loaded[1].center_conv.weight, loaded[3].center_conv.weight)


def test_state_dict_is_a_snapshot() -> None:
    module = PromptModule(center_channels=8)
    state = modules_state_dict({1: module})
    with torch.no_grad():
        module.center_conv.weight.add_(1.0)
    assert not torch.equal(state["1.center_conv.weight"], module.center_conv.weight)


def test_state_dict_survives_torch_save_with_weights_only(tmp_path) -> None:
    plans = plans_with(8, 1)
    state = modules_state_dict({2: build_prompt_module(plans)})
    torch.save(state, tmp_path / "checkpoint.pt")
    loaded = load_modules(torch.load(tmp_path / "checkpoint.pt", weights_only=True), plans)
    assert torch.equal(loaded[2].dense_conv.weight, state["2.dense_conv.weight"])


def test_loading_with_other_sizes_names_the_mismatch() -> None:
    state = modules_state_dict({1: build_prompt_module(plans_with(16, 1))})
    with pytest.raises(AutomedsamError, match=r"ckpt\.pt.*label 1.*center_conv\.weight has shape"):
        load_modules(state, plans_with(32, 1), where="ckpt.pt")


def test_loading_rejects_missing_extra_and_foreign_keys() -> None:
    plans = plans_with(8, 1)
    state = modules_state_dict({1: build_prompt_module(plans)})
    missing = {key: value for key, value in state.items() if key != "1.dense_conv.bias"}
    with pytest.raises(AutomedsamError, match="missing dense_conv.bias"):
        load_modules(missing, plans)
    with pytest.raises(AutomedsamError, match="unexpected extra.weight"):
        load_modules({**state, "1.extra.weight": torch.zeros(1)}, plans)
    with pytest.raises(AutomedsamError, match="model.weight"):
        load_modules({"model.weight": torch.zeros(1)}, plans)
    with pytest.raises(AutomedsamError, match="no prompt module"):
        load_modules({}, plans)
