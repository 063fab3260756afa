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

:func:`divergence_ascent` is step 1 for any divergence; FIRE (:mod:`.fire`) reuses it with the
Fisher-Rao divergence, exactly as the FIRE authors' code reuses TRADES' loop.

Deviations from the reference, all harmless: the clean forward pass in train mode is shared by the
CE and the KL terms (the reference runs ``model(x_natural)`` twice with identical outputs; only
BatchNorm's running averages see the clean batch once instead of twice); the attack's target
``softmax(f(x))`` is computed once per batch instead of once per step (same values: eval mode);
the noise comes from a seeded generator on the model's device; with ``beta = 0`` no adversarial
example is crafted (the objective is plain CE; the FIRE authors' code does the same). L-inf only
(the reference's L2 variant is not implemented).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks._base import attack_mode, project
from ..losses import _at_least_float32, trades_loss
from .base import ClassicalTraining

Divergence = Callable[[Tensor, Tensor], Tensor]   # (logits_clean, logits_adv) -> scalar


def kl_divergence_sum(logits_clean: Tensor, logits_adv: Tensor) -> Tensor:
    """``sum_i KL(softmax(clean_i) || softmax(adv_i))``: the reference's ``KLDivLoss(sum)``."""
    log_p = F.log_softmax(_at_least_float32(logits_clean), dim=1)     # (B, K)
    log_q = F.log_softmax(_at_least_float32(logits_adv), dim=1)       # (B, K)
    return (log_p.exp() * (log_p - log_q)).sum()


def divergence_ascent(model: nn.Module, x: Tensor, divergence: Divergence, eps: float,
                      alpha: float, steps: int, generator: torch.Generator | None = None) -> Tensor:
    """The TRADES inner maximisation: ascend ``divergence(f(x), f(x'))`` over the L-inf eps-ball.

    Starts at ``x + 0.001 * N(0, 1)`` (not clipped before the first step, as in the reference),
    then ``steps`` times: ``x' <- clip_[0,1](proj_eps(x' + alpha * sign(grad)))``. The model is in
    eval mode with frozen parameters throughout (:func:`~robust_nb.attacks._base.attack_mode`
    restores both), so no parameter ``.grad`` is written. Returns a detached tensor. Use
    ``x`` with shape (B, C, H, W) on the model's device.
    """
    with attack_mode(model):
        with torch.no_grad():
            logits_clean = model(x).detach()                                    # (B, K)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = x.detach() + 0.001 * noise                                      # (B, C, H, W)
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = divergence(logits_clean, model(x_adv))
            grad, = torch.autograd.grad(loss, x_adv)
            x_adv = project(x_adv.detach() + alpha * grad.sign(), x, eps, "linf")
    return x_adv.detach().clamp(0.0, 1.0)


class TradesTraining(ClassicalTraining):
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x'))``, x' from KL ascent.

    Args (besides those of :class:`ClassicalTraining`):
        eps: L-inf radius of the inner maximisation (pixel units; the paper: 8/255 on CIFAR-10).
        alpha: its step size (the paper: 2/255 on CIFAR-10, the code's 0.007).
        steps: its number of steps (10 on CIFAR-10).
        beta: weight of the KL term, the paper's 1/lambda (6 on CIFAR-10).

    ``History`` records the clean training accuracy (the CE term is on clean inputs) and the
    TRADES loss. Mixup and label smoothing are rejected: TRADES defines its own objective.

    >>> trainer = TradesTraining(model, epochs=6, lr=0.05, batch_size=128, eps=0.1, alpha=0.025,
    ...                          steps=5, beta=6.0)
    >>> history = trainer.fit(data, val=data.test)
    """

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, alpha: float = 2 / 255,
                 steps: int = 10, beta: float = 6.0, **kwargs):
        if not (math.isfinite(eps) and eps >= 0 and math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"eps and alpha must be finite and >= 0, got {eps}, {alpha}")
        if int(steps) != steps or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps}")
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite non-negative number, got {beta}")
        if kwargs.get("mixup_alpha", 0.0) or kwargs.get("label_smoothing", 0.0):
            raise ValueError(f"{type(self).__name__} defines its own objective; mixup_alpha and "
                             "label_smoothing are not supported")
        super().__init__(model, **kwargs)
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)
        self.beta = float(beta)
        self.noise_generator = torch.Generator(device=self.device)
        self.noise_generator.manual_seed(self.seed + 2)

    def config_dict(self) -> dict:
        d = super().config_dict()
        d.update(eps=self.eps, alpha=self.alpha, steps=self.steps, beta=self.beta)
        return d

    # The divergence the inner maximisation ascends, and the training objective.
    def divergence(self, logits_clean: Tensor, logits_adv: Tensor) -> Tensor:
        return kl_divergence_sum(logits_clean, logits_adv)

    def objective(self, logits_clean: Tensor, logits_adv: Tensor, y: Tensor) -> Tensor:
        return trades_loss(logits_clean, logits_adv, y, self.beta)

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        """x' from the inner maximisation (eval mode while crafting, as in the reference)."""
        return divergence_ascent(self.model, x, self.divergence, self.eps, self.alpha,
                                 self.steps, self.noise_generator)

    def training_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.beta == 0:
            # The objective no longer depends on x': plain CE, no attack (as the FIRE authors'
            # code does for beta = 0; the end point of a beta sweep costs a classical epoch).
            logits_clean = self.model(x)
            return self.objective(logits_clean, logits_clean, y), logits_clean
        x_adv = self.perturb(x, y)                  # (B, C, H, W), model back in train mode
        logits_clean = self.model(x)                # (B, K)
        logits_adv = self.model(x_adv)              # (B, K)
        return self.objective(logits_clean, logits_adv, y), logits_clean

    def extra_state(self) -> dict:
        return {"noise_generator": self.noise_generator.get_state()}

    def load_extra_state(self, state: dict) -> None:
        if state.get("noise_generator") is not None:
            self.noise_generator.set_state(state["noise_generator"].cpu())
