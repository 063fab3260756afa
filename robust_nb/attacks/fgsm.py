"""FGSM: one signed-gradient step on the cross-entropy, optionally from a random start (L-inf).

Papers:

* Goodfellow, Shlens & Szegedy, "Explaining and harnessing adversarial examples", ICLR 2015,
  https://arxiv.org/abs/1412.6572 -- ``x + eps * sign(grad_x CE)``.
* Wong, Rice & Kolter, "Fast is better than free: revisiting adversarial training", ICLR 2020,
  https://arxiv.org/abs/2001.03994 (code: locuslab/fast_adversarial) -- "FGSM-RS": start at a
  uniform random point of the eps-ball, step ``alpha = 1.25 * eps``, project back onto the ball.

Deviations: none in the algorithm. The gradient is that of the summed (not averaged) loss, which
has the same sign; on a power-of-two batch the result equals ``torchattacks.FGSM`` pixel for
pixel (tested). The random start comes from a generator seeded with ``seed``.

Arguments: ``eps`` the L-inf radius in pixel space; ``random_start`` (False); ``alpha`` the step
(default ``eps``); ``seed``; ``amp`` bf16 autocast for the forward pass; ``batch_size`` (all at
once by default); ``loss`` "ce" (the papers'), "cw" or "dlr" (the step ascends that objective of
:mod:`.objectives` instead); ``eot_samples`` (1): the gradient is the mean over that many
forward/backward passes of a randomized model (EOT, Athalye et al. 2018). Inputs: images in
[0, 1], (N, C, H, W), in the model's dtype.

>>> x_adv = fgsm(model, x, y, eps=8 / 255)
>>> x_adv = fgsm(model, x, y, eps=8 / 255, random_start=True, alpha=10 / 255)   # FGSM-RS
>>> x_adv = fgsm(saturated_model, x, y, eps=8 / 255, loss="cw")
"""

from __future__ import annotations

from torch import Tensor, nn

from ..modes import model_device
from .core import (
    attack_mode,
    batched,
    batchnorm_as_affine,
    check_attack_inputs,
    check_eot_samples,
    loss_and_grad,
    make_generator,
    project,
)
from .core import random_start as _random_start
from .objectives import loss_fn


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, random_start: bool = False,
         alpha: float | None = None, seed: int = 0, amp: bool = False, *,
         batch_size: int | None = None, loss: str = "ce", eot_samples: int = 1) -> Tensor:
    """One L-inf gradient-sign step of size ``alpha`` (default ``eps``) from ``x`` or from a random
    point of the ball, projected onto the eps-ball and [0, 1]. Returns a new tensor."""
    check_attack_inputs(model, x, y, eps)
    alpha = float(eps) if alpha is None else float(alpha)
    if alpha < 0:
        raise ValueError(f"alpha must be non-negative, got {alpha}")
    fn = loss_fn(loss)
    check_eot_samples(eot_samples)
    if len(x) == 0:
        return x.detach().clone()
    device = model_device(model)
    gen = make_generator(device, seed)
    x0, y = x.detach().to(device), y.to(device)

    def step(xb: Tensor, yb: Tensor) -> Tensor:
        x_adv = _random_start(xb, eps, "linf", gen) if random_start else xb
        _, _, grad = loss_and_grad(model, x_adv, fn, yb, amp=amp, eot_samples=eot_samples)
        return project(x_adv + alpha * grad.sign(), xb, eps, "linf")

    with attack_mode(model), batchnorm_as_affine(model):
        out = batched(step, x0, y, batch_size)
    return out.to(x.device)
