"""TRADES: clean cross-entropy plus beta times the KL between clean and adversarial outputs.

Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off between Robustness
and Accuracy", ICML 2019, https://arxiv.org/abs/1901.08573; reference code
https://github.com/yaodongyu/TRADES (``trades.py``).

Each batch, as in the reference:

1. with the model in eval mode (BatchNorm uses its running statistics, nothing is updated),
   start from ``x + 0.001 * N(0, 1)`` and take ``steps`` signed-gradient ascent steps of size
   ``alpha`` on ``KL(f(x) || f(x'))`` (summed over the batch), projecting onto the L-inf ball of
   radius ``eps`` and [0, 1] after each;
2. back in train mode, the loss is ``CE(f(x), y) + beta * KL(f(x) || f(x'))`` with the KL averaged
   over the batch and gradients through both f(x) and f(x') (:func:`robust_nb.losses.trades_loss`).

Step 1 is an attack like any other, ``rnb.attacks.trades_kl``; FIRE (:mod:`.fire`) swaps in
``rnb.attacks.fisher_rao`` and its own objective, exactly as the FIRE authors' code reuses
TRADES' loop.

Deviations from the reference, all harmless: the clean forward pass in train mode is shared by the
CE and the KL terms (the reference runs ``model(x_natural)`` twice with identical outputs; only
BatchNorm's running averages see the clean batch once instead of twice); the attack's target
``softmax(f(x))`` is computed once per batch instead of once per step (same values: eval mode);
the noise comes from a seeded generator on the model's device; with ``beta = 0`` no adversarial
example is crafted (the objective is plain CE; the FIRE authors' code does the same). L-inf only
(the reference's L2 variant is not implemented).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import attacks
from ..losses import trades_loss
from .base import ClassicalTraining
from .options import TradesOptions


class TradesTraining(ClassicalTraining):
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x'))``, x' from KL ascent.

    Options (:class:`~robust_nb.training.options.TradesOptions`, besides those of
    :class:`ClassicalTraining`): ``eps`` (L-inf radius of the inner maximisation, pixel units;
    the paper: 8/255 on CIFAR-10, the code's 0.031), ``alpha`` (its step; the code's 0.007),
    ``steps`` (10 on CIFAR-10) and ``beta`` (weight of the KL term, the paper's 1/lambda; 6).

    ``History`` records the clean training accuracy (the CE term is on clean inputs) and the
    TRADES loss. Mixup and label smoothing are rejected: TRADES defines its own objective.

    >>> trainer = TradesTraining(model, epochs=6, lr=0.05, batch_size=128, eps=0.1, alpha=0.025,
    ...                          steps=5, beta=6.0)
    >>> history = trainer.fit(data, val=data.test)
    """

    Options = TradesOptions
    loss_name = "TRADES: CE + beta KL"

    @classmethod
    def passes_per_step(cls, options) -> int:
        # the divergence ascent's steps, then the clean and adversarial halves; beta 0 is plain
        # cross-entropy without the ascent (training_loss skips it)
        return 2 + options.steps if options.beta > 0 else 1

    def __init__(self, model: nn.Module, options=None, **kwargs):
        super().__init__(model, options, **kwargs)
        self.noise_generator = torch.Generator(device=self.device)
        self.noise_generator.manual_seed(self.seed + 2)

    # The inner maximisation and the training objective (FIRE swaps both).
    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        """x' from the inner maximisation: ``rnb.attacks.trades_kl`` (eval mode while crafting,
        as in the reference)."""
        k = self.eps_scale
        return attacks.trades_kl(self.model, x, eps=k * self.eps, alpha=k * self.alpha,
                                 steps=self.steps, generator=self.noise_generator)

    def objective(self, logits_clean: Tensor, logits_adv: Tensor, y: Tensor) -> Tensor:
        return trades_loss(logits_clean, logits_adv, y, self.beta)

    def training_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.beta == 0:
            # The objective no longer depends on x': plain CE, no attack (as the FIRE authors'
            # code does for beta = 0; the end point of a beta sweep costs a classical epoch).
            logits_clean = self.net(x)
            return self.objective(logits_clean, logits_clean, y), logits_clean
        x_adv = self.perturb(x, y)                  # (B, C, H, W), model back in train mode
        logits_clean = self.net(x)                  # (B, K); through DDP when distributed
        logits_adv = self.net(x_adv)                # (B, K)
        return self.objective(logits_clean, logits_adv, y), logits_clean

    def extra_state(self) -> dict:
        return {"noise_generator": self.noise_generator.get_state()}

    def load_extra_state(self, state: dict) -> None:
        if state.get("noise_generator") is not None:
            self.noise_generator.set_state(state["noise_generator"].cpu())
