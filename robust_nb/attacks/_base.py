"""Temporary: removed once training/ is switched to the public names (``robust_nb.attacks``,
``robust_nb.modes.model_device``). Re-exports the old private hub; import nothing new from here."""

from ..modes import model_device
from .core import (
    NORMS,
    attack_mode,
    batched,
    batchnorm_as_affine,
    check_attack_inputs,
    check_labels,
    loss_and_grad,
    lp_norm,
    make_generator,
    normalize_direction,
    project,
    random_start,
)
from .core import per_sample as _view

__all__ = ["NORMS", "_view", "attack_mode", "batched", "batchnorm_as_affine", "check_attack_inputs",
           "check_labels", "loss_and_grad", "lp_norm", "make_generator", "model_device",
           "normalize_direction", "project", "random_start"]
