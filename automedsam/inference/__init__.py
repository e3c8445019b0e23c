"""The ensembling predictor: one encoder pass per image shared by all folds and labels, and `predict` for folders."""
from automedsam.inference.box_prompted import BoxPredictor
from automedsam.inference.model_folder import ModelFolder, locate_model_folder, open_model_folder, trained_models
from automedsam.inference.predictor import Predictor
from automedsam.inference.run import PredictionSummary, predict

__all__ = [
    "BoxPredictor",
    "ModelFolder",
    "PredictionSummary",
    "Predictor",
    "locate_model_folder",
    "open_model_folder",
    "predict",
    "trained_models",
]
