"""The standardized trainer (`train_fold`) and its plain-dict registry of variants (`TRAINER_VARIANTS`)."""
from automedsam.training.trainer import TrainingResult, train_fold
from automedsam.training.variants import TRAINER_VARIANTS, TrainerVariant, TrainingConfig, get_variant

__all__ = [
    "TRAINER_VARIANTS",
    "TrainerVariant",
    "TrainingConfig",
    "TrainingResult",
    "get_variant",
    "train_fold",
]
