"""Temporary: removed once training/ is switched to the public names (``robust_nb.attacks``,
``robust_nb.modes.model_device``). Re-exports the old private hub; import nothing new from here."""

from ..modes import model_device  # noqa: F401
from .core import (NORMS, attack_mode, batched, batchnorm_as_affine, check_attack_inputs,  # noqa: F401
                   check_labels, loss_and_grad, lp_norm, make_generator, normalize_direction,
                   project, random_start)
from .core import per_sample as _view  # noqa: F401
