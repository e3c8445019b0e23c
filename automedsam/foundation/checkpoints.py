"""Loading foundation-model weights safely (weights_only) with errors a user can act on."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from automedsam.errors import AutomedsamError

_SHOWN_KEYS = 5
# torch's refusals of a pickled global, reduce or object (as automedsam.checkpoint tells them): the file holds code;
# any other weights-only refusal is a damaged file
_CODE_SIGNS = ("GLOBAL ", "reduce for unrecognized function", "Can only create new object")
# what a truncated or foreign file breaks torch's unpickler with besides UnpicklingError
_DAMAGED = (RuntimeError, EOFError, KeyError, ValueError, OSError, IndexError, TypeError, AttributeError,
            AssertionError)


def read_state_dict(path: str | Path, model_name: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint file as a state dict of tensors, refusing pickled code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AutomedsamError(
            f"Checkpoint {path} for foundation model '{model_name}' does not exist. Check the --foundation-checkpoint "
            "path."
        )
    if path.stat().st_size == 0:
        raise AutomedsamError(f"Checkpoint {path} is empty (0 bytes). Download it again.")
    if not _looks_like_torch_file(path):
        raise _corrupt(path, ValueError("neither a zip archive nor a pickle"))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if any(sign in str(exc) for sign in _CODE_SIGNS):
            raise AutomedsamError(
                f"Checkpoint {path} contains Python objects or code besides tensors; automedsam only loads "
                "plain weights (torch.load weights_only=True) and refuses to run code from a file. Save the "
                "model's state_dict() alone, from a source you trust."
            ) from None
        raise _corrupt(path, exc) from None
    except _DAMAGED as exc:
        raise _corrupt(path, exc) from None
    return _as_state_dict(loaded, path)


def load_strict(network: nn.Module, state: dict[str, torch.Tensor], path: str | Path, model_name: str) -> None:
    """Strictly load `state` (read from `path`) into `network`, naming missing, unexpected and mis-shaped keys."""
    expected = network.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mis_shaped = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    if missing or unexpected or mis_shaped:
        problems = [
            _listing("missing keys", missing),
            _listing("unexpected keys", unexpected),
            _listing("shape mismatches (file vs model)", mis_shaped),
        ]
        raise AutomedsamError(
            f"Checkpoint {path} does not fit foundation model '{model_name}': "
            + "; ".join(p for p in problems if p)
            + ". Pick the foundation model that matches the checkpoint's architecture."
        )
    network.load_state_dict(state, strict=True)


def _as_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept a plain state dict, or one nested under 'model'/'state_dict' as training scripts save it."""
    if isinstance(loaded, dict):
        for wrapper in ("model", "state_dict"):
            if isinstance(loaded.get(wrapper), dict):
                loaded = loaded[wrapper]
                break
    if (
        not isinstance(loaded, dict)
        or not loaded
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items())
    ):
        raise AutomedsamError(
            f"Checkpoint {path} is not a state dict (a mapping of parameter names to tensors) but a "
            f"{type(loaded).__name__}. Give the model weights file (e.g. medsam_vit_b.pth, sam_vit_b_01ec64.pth)."
        )
    return loaded


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (legacy files: a pickle, whose first byte is the PROTO opcode)."""
    if zipfile.is_zipfile(path):
        return True
    with path.open("rb") as handle:
        return handle.read(1) == pickle.PROTO


def _corrupt(path: Path, exc: BaseException) -> AutomedsamError:
    detail = str(exc).splitlines()[0] if str(exc) else "no details"
    if detail.startswith("Weights only load failed"):  # its advice (load unsafely) must not reach users
        detail = "not a file of PyTorch tensors"
    return AutomedsamError(
        f"Checkpoint {path} cannot be read: it is truncated or not a PyTorch file "
        f"({type(exc).__name__}: {detail}). Download it again."
    )


def _listing(title: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else ""
    return f"{len(keys)} {title} ({', '.join(keys[:_SHOWN_KEYS])}{more})"
