"""Adversarial attacks, one file each; every attack takes images in [0, 1] and returns a new tensor
inside the eps-ball and [0, 1], restores the model's mode and never writes parameter gradients.

>>> import robust_nb as rnb
>>> x_adv = rnb.attacks.pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10)
"""

from .apgd import apgd
from .autoattack import ATTACKS as AUTOATTACK_ATTACKS, AutoAttackResult, autoattack, run_autoattack
from .fab import fab
from .fgsm import fgsm
from .pgd import pgd
from .square import square

__all__ = ["apgd", "autoattack", "run_autoattack", "AutoAttackResult", "AUTOATTACK_ATTACKS", "fab", "fgsm",
           "pgd", "square"]
