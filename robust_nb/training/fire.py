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

from torch import Tensor

from .. import attacks
from ..losses import fire_loss
from .options import FireOptions
from .trades import TradesTraining


class FireTraining(TradesTraining):
    """FIRE (Picot et al. 2022): the authors' objective and inner attack.

    Options (:class:`~robust_nb.training.options.FireOptions`, besides those of
    :class:`ClassicalTraining`): ``eps``, ``alpha``, ``steps`` (the inner maximisation, as in
    TRADES), ``beta`` (weight of the Fisher-Rao term; the authors' configs: 20) and
    ``stability`` (the constant subtracted inside the arccos, the authors' ``eps``; 1e-6).

    >>> trainer = FireTraining(model, epochs=6, lr=0.05, batch_size=128, eps=0.1, alpha=0.025,
    ...                        steps=5, beta=20.0)
    """

    Options = FireOptions
    loss_name = "FIRE: CE + beta FR^2/4"

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        """The authors' inner maximisation: ``rnb.attacks.fisher_rao``."""
        k = self.eps_scale
        return attacks.fisher_rao(self.model, x, eps=k * self.eps, alpha=k * self.alpha,
                                  steps=self.steps, stability=self.stability,
                                  generator=self.noise_generator)

    def objective(self, logits_clean: Tensor, logits_adv: Tensor, y: Tensor) -> Tensor:
        return fire_loss(logits_clean, logits_adv, y, self.beta, self.stability)
