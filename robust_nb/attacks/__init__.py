"""Adversarial attacks, one file each, and the registry that names them.

Every attack takes images in [0, 1] of shape (N, C, H, W), in the model's dtype, and returns a
new tensor inside the eps-ball and [0, 1]; it restores the model's mode (module by module) and
never writes parameter gradients. An empty batch comes back as an empty copy; NaN or infinite
images, labels outside ``[0, num_classes)`` and images whose dtype differs from the model's raise
a ValueError that says what to fix.

>>> import robust_nb as rnb
>>> x_adv = rnb.attacks.pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10)
>>> spec = rnb.attacks.get_attack("apgd")                 # by name: the registry
>>> x_adv = spec(model, x, y, **rnb.attacks.default_kwargs("apgd", 8 / 255, steps=100))

The building blocks (:mod:`.core`: :func:`attack_mode`, :func:`project`, :func:`lp_norm`, ...;
:mod:`.objectives`: the per-sample losses) are public for code that writes its own attack loop.
"""

from .apgd import apgd
from .autoattack import STAGES, AutoAttackResult, Stage, autoattack, run_autoattack
from .core import (
    NORMS,
    attack_mode,
    batched,
    batchnorm_as_affine,
    check_attack_inputs,
    check_labels,
    check_model_inputs,
    loss_and_grad,
    lp_norm,
    make_generator,
    normalize_direction,
    per_sample,
    project,
    random_start,
)
from .divergence import fisher_rao, trades_kl
from .fab import fab
from .fgsm import fgsm
from .objectives import ce_loss, ce_targeted_loss, dlr_loss, dlr_targeted_loss, margin
from .pgd import pgd
from .registry import ATTACKS, AttackSpec, default_kwargs, get_attack, madry_alpha
from .square import square

AUTOATTACK_ATTACKS = tuple(STAGES)        # AutoAttack's stage names

__all__ = [
    # attacks
    "apgd", "autoattack", "fab", "fgsm", "fisher_rao", "pgd", "run_autoattack", "square",
    "trades_kl", "AutoAttackResult", "AUTOATTACK_ATTACKS", "STAGES", "Stage",
    # registry
    "ATTACKS", "AttackSpec", "default_kwargs", "get_attack", "madry_alpha",
    # building blocks
    "NORMS", "attack_mode", "batched", "batchnorm_as_affine", "check_attack_inputs",
    "check_labels", "check_model_inputs", "loss_and_grad", "lp_norm", "make_generator",
    "normalize_direction", "per_sample", "project", "random_start",
    # per-sample losses
    "ce_loss", "ce_targeted_loss", "dlr_loss", "dlr_targeted_loss", "margin",
]
