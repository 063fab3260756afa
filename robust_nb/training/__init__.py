"""Training: one loop (:class:`ClassicalTraining`) that every method extends, the methods'
options (:mod:`.options`), history, schedules, checkpoints, load-or-train cache and recipes."""

from .adversarial import AdversarialMethod, AdversarialTraining
from .autoattack_training import AutoAttackTraining
from .base import ClassicalTraining, TrainingDiverged
from .cache import load_or_train
from .checkpoint import CheckpointError
from .fast import FastAdversarialTraining
from .fire import FireTraining
from .history import History
from .options import (
                      AdversarialOptions,
                      AutoAttackOptions,
                      FastOptions,
                      FireOptions,
                      PGDOptions,
                      TradesOptions,
                      TrainOptions,
)
from .recipes import METHODS, Recipe, pending, recipe, train_method
from .schedules import SCHEDULES, lr_factor
from .trades import TradesTraining

__all__ = [
    "ClassicalTraining", "AdversarialMethod", "AdversarialTraining", "FastAdversarialTraining",
    "AutoAttackTraining", "TradesTraining", "FireTraining",
    "TrainOptions", "AdversarialOptions", "PGDOptions", "FastOptions", "AutoAttackOptions",
    "TradesOptions", "FireOptions",
    "METHODS", "Recipe", "pending", "recipe", "train_method", "load_or_train",
    "History", "TrainingDiverged", "CheckpointError", "SCHEDULES", "lr_factor",
]
