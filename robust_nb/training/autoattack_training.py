"""Adversarial training on APGD examples, the first (and strongest gradient) attack of AutoAttack.

APGD: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, https://arxiv.org/abs/2003.01690 (``rnb.attacks.apgd``).
The training objective is Madry et al.'s (https://arxiv.org/abs/1706.06083): cross-entropy on the
examples the attack finds, every batch. Compared with PGD, APGD needs no step size (it starts at
``2 eps`` and halves it per sample when progress stalls) and uses momentum. AutoAttack's other
members (FAB, Square) are not used for training: they are far more expensive per example and
are meant to *check* a model, not to train it.

``losses=("ce",)`` trains on APGD-CE; ``("ce", "dlr")`` also runs APGD-DLR (the scale-invariant
loss of the same paper) and keeps, per image, whichever example has the higher cross-entropy
(the training loss), at twice the cost. As in ``rnb.attacks.apgd``, images the model already
misclassifies are not attacked (their clean version is kept: AutoAttack's convention; their loss
is already high) and an attack stops improving an image once it is misclassified.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import attacks
from ..attacks import attack_mode
from .adversarial import AdversarialMethod
from .options import AutoAttackOptions


class AutoAttackTraining(AdversarialMethod):
    """Adversarial training on APGD-CE (optionally also APGD-DLR) examples, every batch.

    Options (:class:`~robust_nb.training.options.AutoAttackOptions`, besides those of
    :class:`~robust_nb.training.adversarial.AdversarialMethod` and
    :class:`~robust_nb.training.base.ClassicalTraining`): ``steps`` (APGD iterations per batch;
    AutoAttack evaluates with 100, a handful is enough to train, as for PGD), ``losses``
    (``("ce",)`` or ``("ce", "dlr")``, see the module docstring) and ``restarts`` (per loss).

    >>> trainer = AutoAttackTraining(model, epochs=6, lr=0.05, batch_size=128, eps=0.1, steps=5)
    >>> history = trainer.fit(data, val=data.test)
    """

    Options = AutoAttackOptions

    @classmethod
    def passes_per_step(cls, options) -> int:
        # per loss and restart: APGD's gradient at its starting point and one per iteration;
        # then the training pass
        return 1 + len(options.losses) * options.restarts * (1 + options.steps)

    def craft(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        seed = self.attack_seed()
        eps = self.eps_scale * self.eps
        candidates = [attacks.apgd(model, x, y, eps=eps, norm=self.norm, steps=self.steps,
                                   loss=loss, restarts=self.restarts, seed=seed + i)
                      for i, loss in enumerate(self.losses)]
        if len(candidates) == 1:
            return candidates[0]
        # Per image, the candidate with the highest cross-entropy (one forward pass each).
        with torch.no_grad(), attack_mode(model):
            ce = torch.stack([F.cross_entropy(model(c).float(), y, reduction="none")
                              for c in candidates])                       # (L, B)
        best = ce.argmax(0)                                               # (B,)
        out = candidates[0]
        for i, c in enumerate(candidates[1:], start=1):
            out = torch.where((best == i).view(-1, *[1] * (x.dim() - 1)), c, out)
        return out

