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

Adaptive attacks on defenses (Athalye, Carlini & Wagner 2018): :func:`bpda` wraps a
non-differentiable preprocessing (BPDA); ``eot_samples=k`` on fgsm / pgd / apgd averages each
gradient over ``k`` passes of a randomized model (EOT); ``loss="cw"`` / ``loss="dlr"`` attack a
saturated softmax. The flawed defenses they break are in :mod:`robust_nb.defenses`.

>>> x_adv = rnb.attacks.pgd(noisy_model, x, y, eps=8 / 255, alpha=2 / 255, steps=10, eot_samples=20)

The building blocks (:mod:`.core`: :func:`attack_mode`, :func:`project`, :func:`lp_norm`, ...;
:mod:`.objectives`: the per-sample losses) are public for code that writes its own attack loop.
"""

from .adaptive import BPDA, bpda
from .apgd import apgd
from .autoattack import STAGES, AutoAttackResult, Stage, autoattack, run_autoattack
from .core import (
    NORMS,
    attack_mode,
    batched,
    batchnorm_as_affine,
    check_attack_inputs,
    check_eot_samples,
    check_labels,
    check_model_inputs,
    eot_logits,
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
from .objectives import (
    LOSSES,
    ce_loss,
    ce_targeted_loss,
    cw_loss,
    cw_targeted_loss,
    dlr_loss,
    dlr_targeted_loss,
    loss_fn,
    margin,
)
from .pgd import pgd
from .registry import ATTACKS, AttackSpec, default_kwargs, get_attack, madry_alpha
from .square import square

AUTOATTACK_ATTACKS = tuple(STAGES)        # AutoAttack's stage names

__all__ = [
    # attacks
    "apgd", "autoattack", "fab", "fgsm", "fisher_rao", "pgd", "run_autoattack", "square",
    "trades_kl", "AutoAttackResult", "AUTOATTACK_ATTACKS", "STAGES", "Stage",
    # adaptive attacks (BPDA; EOT is the eot_samples keyword)
    "BPDA", "bpda",
    # registry
    "ATTACKS", "AttackSpec", "default_kwargs", "get_attack", "madry_alpha",
    # building blocks
    "NORMS", "attack_mode", "batched", "batchnorm_as_affine", "check_attack_inputs",
    "check_eot_samples", "check_labels", "check_model_inputs", "eot_logits", "loss_and_grad",
    "lp_norm", "make_generator",
    "normalize_direction", "per_sample", "project", "random_start",
    # per-sample losses
    "LOSSES", "ce_loss", "ce_targeted_loss", "cw_loss", "cw_targeted_loss", "dlr_loss",
    "dlr_targeted_loss", "loss_fn", "margin",
]
