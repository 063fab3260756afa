"""FIRE: clean cross-entropy plus beta times the squared Fisher-Rao distance (over 4) between the
clean and adversarial output distributions.

Picot, Messina, Boudiaf, Labeau, Ben Ayed & Piantanida, "Adversarial Robustness via Fisher-Rao
Regularization", IEEE TPAMI 2022, https://arxiv.org/abs/2106.06685; reference code
https://github.com/MarinePICOT/Adversarial-Robustness-via-Fisher-Rao-Regularization
(``src/losses.py``, ``fire_loss``; configs in ``config/``).

The authors' code is TRADES' loop with the KL replaced, in both the inner maximisation and the
objective, by ``arccos(BC - stability)^2`` averaged over the batch, where
``BC = sum_k sqrt(p_k(x) p_k(x'))``: with the model in eval mode, start at ``x + 0.001 * N(0, 1)``,
take ``steps`` sign steps of size ``alpha`` ascending that quantity (the clean distribution is a
constant), project onto the L-inf eps-ball and [0, 1]; then, in train mode, minimise
``CE(f(x), y) + beta * mean arccos(BC - stability)^2`` (:func:`robust_nb.losses.fire_loss`).

``stability`` keeps the arccos gradient finite where the distributions coincide (see
:func:`~robust_nb.losses.fire_loss`): 1e-6 as in the authors' MNIST config; their CIFAR config's
1e-12 is a no-op in float32, so we use 1e-6 in both profiles. Their configs use ``beta = 20``
(MNIST and CIFAR-10); the class default follows them. Deviations shared with TRADES: see
:mod:`.trades` (one clean forward pass in train mode, seeded noise, L-inf only); and the numerical
ones of :func:`~robust_nb.losses.fire_loss` (sqrt(p q) from log-probabilities, BC clamped to <= 1).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..losses import fire_loss, fisher_rao_penalty
from .trades import TradesTraining


class FireTraining(TradesTraining):
    """FIRE (Picot et al. 2022): the authors' objective and inner attack.

    Args (besides those of :class:`ClassicalTraining`):
        eps, alpha, steps: the inner maximisation (L-inf radius, step, steps), as in TRADES.
        beta: weight of the Fisher-Rao term (the authors' configs: 20).
        stability: the constant subtracted inside the arccos (the authors' ``eps``; 1e-6).

    >>> trainer = FireTraining(model, epochs=6, lr=0.05, batch_size=128, eps=0.1, alpha=0.025,
    ...                        steps=5, beta=20.0)
    """

    def __init__(self, model: nn.Module, *, beta: float = 20.0, stability: float = 1e-6,
                 **kwargs):
        if not (math.isfinite(stability) and 0 < stability < 1):
            raise ValueError(f"stability must lie in (0, 1), got {stability}")
        super().__init__(model, beta=beta, **kwargs)
        self.stability = float(stability)

    def config_dict(self) -> dict:
        d = super().config_dict()
        d.update(stability=self.stability)
        return d

    def divergence(self, logits_clean: Tensor, logits_adv: Tensor) -> Tensor:
        # The authors' attack loss: the batch mean of the regulariser (clean side constant).
        return fisher_rao_penalty(logits_clean, logits_adv, self.stability).mean()

    def objective(self, logits_clean: Tensor, logits_adv: Tensor, y: Tensor) -> Tensor:
        return fire_loss(logits_clean, logits_adv, y, self.beta, self.stability)
