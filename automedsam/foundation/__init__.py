"""Frozen foundation models (LiteMedSAM, MedSAM, SAM) behind one interface, and their embedding cache."""
from automedsam.foundation.base import EMBEDDING_SHAPE, LOW_RES_SIZE, FoundationModel, default_batch_size
from automedsam.foundation.cache import EmbeddingCache
from automedsam.foundation.frame import Frame
from automedsam.foundation.registry import FOUNDATION_MODELS, FoundationModelSpec, build_foundation_model

__all__ = [
    "EMBEDDING_SHAPE",
    "FOUNDATION_MODELS",
    "LOW_RES_SIZE",
    "EmbeddingCache",
    "FoundationModel",
    "FoundationModelSpec",
    "Frame",
    "build_foundation_model",
    "default_batch_size",
]
