"""The Python API for notebooks: the same stages as the commands, callable as functions.

    from automedsam import api
    api.plan_and_preprocess(1)                      # automedsam_plan_and_preprocess -d 1
    api.train(1, 0)                                 # automedsam_train 1 0
    api.predict("new_images", "predictions", dataset=1)   # automedsam_predict -i new_images -o predictions -d 1
    model = api.load_model("~/automedsam_data/results/Dataset001_HC18/default__automedsamPlans")
    label_map = api.segment(model, "new_image.png")
    label_map, probabilities = api.segment(model, volume_array, return_probabilities=True)
"""
from __future__ import annotations

import functools
import operator
import os
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from automedsam.errors import AutomedsamError
from automedsam.folds import Fold
from automedsam.foundation.weights_file import refuse_folder
from automedsam.inference import PredictionSummary, Predictor, locate_model_folder
from automedsam.inference import predict as predict_images
from automedsam.inference.model_folder import DEFAULT_CHECKPOINT
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.training import TrainingResult, train_fold

__all__ = ["load_model", "plan_and_preprocess", "predict", "segment", "train"]


# The stage itself (its signature and docstring), with the process's random generators and cudnn flags given back:
# training seeds them and makes cudnn deterministic for its own reproducibility, which must not change what a
# notebook's own code does after it.
@functools.wraps(train_fold)
def train(*args: Any, **kwargs: Any) -> TrainingResult:
    with _random_state_kept():
        return train_fold(*args, **kwargs)


# The stage itself (its signature and docstring), with batch_size checked first: the stage only refused a bad one
# with a bare ValueError, and after building the foundation model.
@functools.wraps(predict_images)
def predict(*args: Any, **kwargs: Any) -> PredictionSummary:
    _check_batch_size(kwargs.get("batch_size"))
    return predict_images(*args, **kwargs)


def load_model(results_folder: str | Path, *, folds: Sequence[Fold] | Fold | None = None,
               checkpoint: str = DEFAULT_CHECKPOINT, device: str | torch.device | None = None,
               foundation_checkpoint: str | Path | None = None) -> Predictor:
    """A trained model folder (results/DatasetXXX_Name/TRAINER__PLANS) ready to segment arrays and files;
    `foundation_checkpoint`: the MedSAM/SAM weights where they are on this machine, when not at the planned path."""
    model_folder = _model_folder_path(results_folder)
    if foundation_checkpoint is not None:
        refuse_folder(foundation_checkpoint)
    return Predictor.from_folder(model_folder, folds=folds, checkpoint=checkpoint,
                                 device=device, foundation_checkpoint=foundation_checkpoint)


def segment(model: Predictor | str | Path, image: np.ndarray | sitk.Image | str | Path, *,
            return_probabilities: bool = False) -> np.ndarray | tuple[np.ndarray, dict[int, np.ndarray]]:
    """Label map of a numpy image (2D (H, W) / (H, W, 3) or a (Z, Y, X) volume), a SimpleITK image or an image file.

    `model` is a loaded Predictor or a results folder (loaded on every call: load it once for many images).
    With `return_probabilities`, also the per-label probabilities (float32, the image's shape). An image the model
    cannot read well (constant, outside its intensity window, a volume cut across its own slices) is segmented with
    an `UnreliableSegmentationWarning`, as the command warns of it.
    """
    predictor = model if isinstance(model, Predictor) else load_model(model)
    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        label_map, probabilities = predictor.predict_loaded(predictor.load_file(path), source=str(path))
    else:
        label_map, probabilities = predictor.predict_loaded(predictor.load_image(image))
    return (label_map, probabilities) if return_probabilities else label_map


@contextmanager
def _random_state_kept() -> Iterator[None]:
    """Give back the random generators (Python's, numpy's global one, torch's on the CPU and every GPU) and cudnn's
    deterministic and benchmark flags as they were before the block."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    cudnn = torch.backends.cudnn
    deterministic, benchmark = cudnn.deterministic, cudnn.benchmark
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        cudnn.deterministic, cudnn.benchmark = deterministic, benchmark


def _check_batch_size(batch_size: object) -> None:
    """Refuse a batch size that is not a whole number >= 1 (None: the device's default)."""
    if batch_size is None:
        return
    try:
        whole = operator.index(batch_size)  # numpy integers too
    except TypeError:
        whole = None
    if isinstance(batch_size, bool) or whole is None or whole < 1:
        raise AutomedsamError(f"batch_size must be a whole number >= 1 (slices encoded together) or None for the "
                              f"device's default, got {batch_size!r}.")


def _model_folder_path(results_folder: object) -> Path:
    """A trained model folder given as a path, or an error saying what a model is; a folder that is none (the
    dataset's results folder) is refused as the command's -m refuses it, naming the model folders found there."""
    if not isinstance(results_folder, (str, os.PathLike)):
        raise AutomedsamError("A model is what api.load_model returns, or the path of a trained model folder (like "
                              "results/Dataset001_Name/default__automedsamPlans); got "
                              f"{type(results_folder).__name__} {results_folder!r:.60}.")
    return locate_model_folder(model_folder=Path(results_folder).expanduser())
