"""FGSM: one signed-gradient step (Goodfellow et al. 2015), optionally from a random start (Wong et al. 2020).

* Goodfellow, Shlens & Szegedy, "Explaining and harnessing adversarial examples", ICLR 2015,
  https://arxiv.org/abs/1412.6572 -- ``x + eps * sign(grad_x CE)``.
* Wong, Rice & Kolter, "Fast is better than free: revisiting adversarial training", ICLR 2020,
  https://arxiv.org/abs/2001.03994 -- start at a uniform random point of the eps-ball, step
  ``alpha = 1.25 * eps``, project back onto the ball ("FGSM-RS").

Norm: L-inf. Defaults: no random start, ``alpha = eps``. Inputs: images in [0, 1], (N, C, H, W).

>>> x_adv = fgsm(model, x, y, eps=8 / 255)
>>> x_adv = fgsm(model, x, y, eps=8 / 255, random_start=True, alpha=10 / 255)   # FGSM-RS
"""

from __future__ import annotations

from torch import Tensor, nn

from ._base import (attack_mode, batchnorm_as_affine, check_attack_inputs, loss_and_grad, make_generator,
                    model_device, project, random_start as _random_start)
from ._losses import ce_loss


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, random_start: bool = False,
         alpha: float | None = None, seed: int = 0, amp: bool = False) -> Tensor:
    """One L-inf gradient-sign step of size ``alpha`` (default ``eps``; 1.25 eps is Wong et al.'s
    choice with a random start), projected onto the eps-ball and [0, 1]. Returns a new tensor."""
    check_attack_inputs(model, x, y, eps)
    alpha = float(eps) if alpha is None else float(alpha)
    if alpha < 0:
        raise ValueError(f"alpha must be non-negative, got {alpha}")
    device = model_device(model)
    x0, y = x.detach().to(device), y.to(device)
    with attack_mode(model), batchnorm_as_affine(model):
        x_adv = _random_start(x0, eps, "linf", make_generator(device, seed)) if random_start else x0
        _, _, grad = loss_and_grad(model, x_adv, ce_loss, y, amp=amp)
        x_adv = project(x_adv + alpha * grad.sign(), x0, eps, "linf")
    return x_adv.to(x.device)
