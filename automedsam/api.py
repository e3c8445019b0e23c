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

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from automedsam.inference import Predictor, predict
from automedsam.inference.model_folder import DEFAULT_CHECKPOINT
from automedsam.io import read_image
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.training import train_fold as train

__all__ = ["load_model", "plan_and_preprocess", "predict", "segment", "train"]


def load_model(results_folder: str | Path, *, folds: Sequence[int] | str | None = None,
               checkpoint: str = DEFAULT_CHECKPOINT, device: str | torch.device | None = None,
               foundation_checkpoint: str | Path | None = None) -> Predictor:
    """A trained model folder (results/DatasetXXX_Name/TRAINER__PLANS) ready to segment arrays and files;
    `foundation_checkpoint`: the MedSAM/SAM weights where they are on this machine, when not at the planned path."""
    return Predictor.from_folder(Path(results_folder).expanduser(), folds=folds, checkpoint=checkpoint, device=device,
                                 foundation_checkpoint=foundation_checkpoint)


def segment(model: Predictor | str | Path, image: np.ndarray | str | Path, *, return_probabilities: bool = False
            ) -> np.ndarray | tuple[np.ndarray, dict[int, np.ndarray]]:
    """Label map of a numpy image (2D (H, W) / (H, W, 3) or a (Z, Y, X) volume) or of an image file.

    `model` is a loaded Predictor or a results folder (loaded on every call: load it once for many images).
    With `return_probabilities`, also the per-label probabilities (float32, the image's shape).
    """
    predictor = model if isinstance(model, Predictor) else load_model(model)
    if isinstance(image, (str, Path)):
        array, geometry = read_image(Path(image).expanduser())
        label_map, probabilities = predictor.predict_array(array, is_volume=geometry.ndim == 3)
    else:
        label_map, probabilities = predictor.predict_array(image)
    return (label_map, probabilities) if return_probabilities else label_map
