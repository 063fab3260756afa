"""TRADES' and FIRE's inner maximisations: ascend a divergence between the model's clean and
adversarial output distributions inside the L-inf ball (no labels needed).

Papers:

* TRADES: Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off between
  Robustness and Accuracy", ICML 2019, https://arxiv.org/abs/1901.08573; code
  https://github.com/yaodongyu/TRADES (``trades.py``, the loop inside ``trades_loss``). The
  divergence is ``sum_i KL(p(x_i) || p(x'_i))`` (their ``KLDivLoss(reduction="sum")``).
* FIRE: Picot, Messina, Boudiaf, Labeau, Ben Ayed & Piantanida, "Adversarial Robustness via
  Fisher-Rao Regularization", IEEE TPAMI 2022, https://arxiv.org/abs/2106.06685; code
  https://github.com/MarinePICOT/Adversarial-Robustness-via-Fisher-Rao-Regularization
  (``src/losses.py``, ``fire_loss``): TRADES' loop on the batch mean of
  ``arccos(BC - stability)^2``, ``BC = sum_k sqrt(p_k(x) p_k(x'))``
  (:func:`robust_nb.losses.fisher_rao_penalty`).

Both, as the reference code: with the model in eval mode, start at ``x + 0.001 * N(0, 1)`` (not
clipped before the first step), then ``steps`` times
``x' <- clip_[0,1](clip_eps(x' + alpha * sign(grad_x' D(f(x), f(x')))))``; the clean distribution
is a constant. Labels are not used: the attack pushes the prediction away from the clean one,
whatever it is. ``y`` is accepted (and checked when given) so that these attacks share the
``(model, x, y, **kwargs)`` signature of the others.

Deviations from the authors' code: the clean logits are computed once per call instead of once
per step (same values: eval mode); the noise comes from ``generator`` if given (the trainer keeps
one across batches for exact resume), else from a generator seeded with ``seed``, on the model's
device; with ``steps=0`` the start is projected onto the eps-ball as well as [0, 1] (the reference
clips it to [0, 1] only); FIRE's ``sqrt(p q)`` is computed from log-probabilities and ``BC``
clamped to <= 1 (see :func:`robust_nb.losses.fire_loss`). L-inf only (TRADES' L2 variant is not
implemented).

Arguments: ``eps`` the L-inf radius in pixel space (8/255); ``alpha`` the step (2/255);
``steps`` (10); ``stability`` (FIRE only, 1e-6: the constant subtracted inside the arccos);
``seed``; ``generator``; ``batch_size`` (all at once by default; the noise is drawn for the whole
batch first, so chunking changes nothing but float rounding). Inputs: images in [0, 1],
(N, C, H, W), in the model's dtype.

>>> x_adv = trades_kl(model, x, eps=8 / 255, alpha=2 / 255, steps=10)
>>> x_adv = fisher_rao(model, x, eps=8 / 255, alpha=2 / 255, steps=10, stability=1e-6)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..losses import fisher_rao_penalty, kl_divergence_sum
from ..modes import model_device
from .core import (
    attack_mode,
    batched,
    batchnorm_as_affine,
    check_attack_inputs,
    make_generator,
    project,
)

Divergence = Callable[[Tensor, Tensor], Tensor]   # (logits_clean, logits_adv) -> scalar


def trades_kl(model: nn.Module, x: Tensor, y: Tensor | None = None, eps: float = 8 / 255,
              alpha: float = 2 / 255, steps: int = 10, seed: int = 0, *,
              generator: torch.Generator | None = None,
              batch_size: int | None = None) -> Tensor:
    """TRADES' inner maximisation: sign ascent on ``sum_i KL(p(x_i) || p(x'_i))`` over the L-inf
    eps-ball intersected with [0, 1]. Returns a new tensor on ``x``'s device."""
    return _divergence_ascent(model, x, y, kl_divergence_sum, eps, alpha, steps, seed,
                              generator, batch_size)


def fisher_rao(model: nn.Module, x: Tensor, y: Tensor | None = None, eps: float = 8 / 255,
               alpha: float = 2 / 255, steps: int = 10, stability: float = 1e-6, seed: int = 0,
               *, generator: torch.Generator | None = None,
               batch_size: int | None = None) -> Tensor:
    """FIRE's inner maximisation: sign ascent on the batch mean of ``arccos(BC - stability)^2``
    over the L-inf eps-ball intersected with [0, 1]. Returns a new tensor on ``x``'s device."""
    if not (math.isfinite(stability) and 0 < stability < 1):
        raise ValueError(f"stability must lie in (0, 1), got {stability}")

    def divergence(logits_clean: Tensor, logits_adv: Tensor) -> Tensor:
        return fisher_rao_penalty(logits_clean, logits_adv, stability).mean()

    return _divergence_ascent(model, x, y, divergence, eps, alpha, steps, seed, generator,
                              batch_size)


def _divergence_ascent(model: nn.Module, x: Tensor, y: Tensor | None, divergence: Divergence,
                       eps: float, alpha: float, steps: int, seed: int,
                       generator: torch.Generator | None, batch_size: int | None) -> Tensor:
    check_attack_inputs(model, x, y, eps, labels_required=False)
    if not (math.isfinite(alpha) and alpha >= 0) or int(steps) != steps or steps < 0:
        raise ValueError(f"need a finite alpha >= 0 and an integer steps >= 0, "
                         f"got {alpha}, {steps}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if len(x) == 0:
        return x.detach().clone()
    device = model_device(model)
    gen = generator if generator is not None else make_generator(device, seed)
    x0 = x.detach().to(device)                                           # (N, C, H, W)
    noise = torch.randn(x0.shape, generator=gen, device=gen.device, dtype=x0.dtype).to(device)

    def ascend(xb: Tensor, noise_b: Tensor) -> Tensor:
        with torch.no_grad():
            logits_clean = model(xb)                                     # (B, K), a constant
        x_adv = xb + 0.001 * noise_b                                     # not clipped yet
        for _ in range(int(steps)):
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = divergence(logits_clean, model(x_adv))
            grad, = torch.autograd.grad(loss, x_adv)
            x_adv = project(x_adv.detach() + alpha * grad.sign(), xb, eps, "linf")
        return x_adv if steps else project(x_adv, xb, eps, "linf")

    with attack_mode(model), batchnorm_as_affine(model):
        out = batched(ascend, x0, noise, batch_size)
    return out.detach().to(x.device)
