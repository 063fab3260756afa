"""Training: one loop (:class:`ClassicalTraining`) that every method extends, its history,
schedules, checkpoints, load-or-train cache and named recipes."""

from .adversarial import AdversarialMethod, AdversarialTraining
from .autoattack_training import AutoAttackTraining
from .base import ClassicalTraining, TrainingDiverged
from .cache import load_or_train
from .checkpoint import CheckpointError
from .fast import FastAdversarialTraining
from .fire import FireTraining
from .history import History
from .presets import PRESETS, preset
from .recipes import RECIPES, train_method
from .schedules import SCHEDULES, lr_factor
from .trades import TradesTraining

__all__ = ["ClassicalTraining", "TrainingDiverged", "CheckpointError", "History", "load_or_train",
           "RECIPES", "train_method", "PRESETS", "preset", "SCHEDULES", "lr_factor", "TradesTraining", "FireTraining",
           "AdversarialMethod", "AdversarialTraining", "FastAdversarialTraining", "AutoAttackTraining"]
