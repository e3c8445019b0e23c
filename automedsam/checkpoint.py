"""Checkpoints of prompt modules and of the training state, written atomically, read without pickle.

Weights files (`checkpoint_{best,final,latest}.pt`) hold only the modules' tensors, keys
"<label>.<param name>", with their metadata in a JSON file beside them. `training_state_latest.pt` is the
single file a resume reads: epoch, weights, optimiser and scheduler state, RNG states and the best score so
far. It is written last, so a crash while saving leaves the previous complete state in place.
"""
from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automedsam.errors import AutomedsamError
from automedsam.files import atomic_path, load_json, permission_denied_error, save_json

TRAINING_STATE = "training_state_latest.pt"
_CODE_SIGNS = ("GLOBAL ", "reduce for unrecognized function", "Can only create new object")  # torch's refusals


def weights_path(fold_dir: Path, which: str) -> Path:
    """`which` is 'best', 'final' or 'latest'."""
    return Path(fold_dir) / f"checkpoint_{which}.pt"


def metadata_path(fold_dir: Path, which: str) -> Path:
    return Path(fold_dir) / f"checkpoint_{which}.json"


def is_complete(fold_dir: Path, which: str) -> bool:
    """Whether checkpoint `which` of `fold_dir` is whole, and `final` thus the fold finished. Training writes the
    metadata after the weights, so a run stopped between the two leaves weights without metadata beside its resume
    file, and `--c` writes both again; a model installed from an archive has weights without metadata and no resume
    file, and those are complete."""
    fold_dir = Path(fold_dir)
    if not weights_path(fold_dir, which).is_file():
        return False
    return metadata_path(fold_dir, which).is_file() or not (fold_dir / TRAINING_STATE).is_file()


def save_checkpoint(fold_dir: Path, which: str, weights: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write the weights, then their metadata: a JSON file always describes a complete weights file."""
    _torch_save(weights_path(fold_dir, which), {key: value.detach().cpu() for key, value in weights.items()})
    save_json(metadata_path(fold_dir, which), metadata)


def load_checkpoint(fold_dir: Path, which: str, device: torch.device | str = "cpu", *,
                    retrain: str | None = None) -> dict[str, torch.Tensor]:
    """The weights of one checkpoint, as a state dict of tensors on `device`. `retrain`: the sentence that says what
    replaces the fold over a damaged file, for the error messages (prediction knows the model's dataset and trainer,
    and whether it was installed from a model zip instead)."""
    state = _torch_load(weights_path(fold_dir, which), device, retrain=retrain)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AutomedsamError(f"{weights_path(fold_dir, which)} is not a prompt-module checkpoint. "
                              f"{_retrain_advice(retrain)}")
    return state


def load_metadata(fold_dir: Path, which: str) -> dict[str, Any]:
    return load_json(metadata_path(fold_dir, which), "checkpoint metadata")


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states as plain lists, for JSON and weights_only files."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state().tolist(),
        "cuda": [state.tolist() for state in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [np_kind, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "python": [py_version, list(py_internal), py_gauss],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():  # a run resumed on fewer GPUs than it was saved on
        visible = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in visible])
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_kind, np.asarray(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss))
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))


def save_training_state(
    fold_dir: Path,
    epoch: int,
    weights: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    progress: dict[str, Any],
    *,
    scaler: dict[str, Any] | None = None,
) -> None:
    """Save everything a resume needs after `epoch`; `progress` holds JSON-able numbers (best score, ...), `scaler`
    the fp16 gradient scaler's state (its loss scale: restarting at the initial one skips the first steps).

    The user-facing `checkpoint_latest.pt/.json` come first, the resume file last (the commit point).
    """
    rng = capture_rng_state()
    save_checkpoint(fold_dir, "latest", weights, {"epoch": epoch, "rng": rng, **progress})
    cpu_weights = {key: value.detach().cpu() for key, value in weights.items()}
    state = {
        "epoch": epoch,
        "weights": cpu_weights,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "rng": rng,
        "progress": progress,
        "scaler": scaler or {},
    }
    _torch_save(Path(fold_dir) / TRAINING_STATE, state)


def require_training_state(fold_dir: Path) -> Path:
    """The resume file's path; AutomedsamError when there is nothing to resume."""
    path = Path(fold_dir) / TRAINING_STATE
    if not path.is_file():
        raise AutomedsamError(
            f"Nothing to resume in {fold_dir}: {TRAINING_STATE} does not exist (the run stopped before its first "
            "saved epoch, or never started). Run the same command without --c to start training."
        )
    return path


def load_training_state(fold_dir: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The dict written by `save_training_state`."""
    path = require_training_state(fold_dir)
    state = _torch_load(path, device)
    expected = {"epoch", "weights", "optimizer", "scheduler", "rng", "progress"}
    if not isinstance(state, dict) or not expected <= set(state):
        raise AutomedsamError(f"{path} is not a training state written by automedsam. Delete it and retrain.")
    return state


def _torch_save(path: Path, obj: Any) -> None:
    """Saved through a file object: given a path, torch names the archive's folder after the temporary name, so
    the same weights would give other bytes each time."""
    with atomic_path(path, suffix=".pt") as tmp, open(tmp, "wb") as stream:
        torch.save(obj, stream)


def _torch_load(path: Path, device: torch.device | str, *, retrain: str | None = None) -> Any:
    if not path.is_file():
        raise AutomedsamError(f"Checkpoint {path} does not exist. {_retrain_advice(retrain)}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except PermissionError:  # refused, not damaged: retraining would replace a fold that only needs a permission
        raise permission_denied_error(path) from None
    except pickle.UnpicklingError as exc:
        if any(sign in str(exc) for sign in _CODE_SIGNS):  # torch's advice to load it unsafely must not reach users
            raise AutomedsamError(f"Checkpoint {path} contains Python objects or code besides tensors, so automedsam "
                                  f"refuses to load it (it never runs code from a file). {_retrain_advice(retrain)}"
                                  ) from None
        raise _unreadable(path, exc, retrain=retrain) from None
    except (RuntimeError, EOFError, ValueError, OSError, IndexError, KeyError, TypeError, AttributeError) as exc:
        raise _unreadable(path, exc, retrain=retrain) from None  # a truncated or foreign file breaks the unpickler


def _unreadable(path: Path, exc: BaseException, *, retrain: str | None) -> AutomedsamError:
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if first_line.startswith("Weights only load failed"):  # its advice (load unsafely) must not reach users
        first_line = "not a file of PyTorch tensors"
    return AutomedsamError(f"Checkpoint {path} cannot be read ({first_line}). {_retrain_advice(retrain)}")


def _retrain_advice(retrain: str | None) -> str:
    """What to do about a damaged checkpoint: `retrain`, else training its whole fold again (deleting only the file
    left the fold's .json, and training took it for finished)."""
    return retrain or "Its fold must be retrained: `automedsam_train DATASET FOLD --overwrite` replaces it."
