"""PGD: projected gradient ascent on the loss inside an L-inf or L2 ball (Madry et al. 2018).

Paper: Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards deep learning models resistant to
adversarial attacks", ICLR 2018, https://arxiv.org/abs/1706.06083 (code: MadryLab/robustness).
Each step moves ``alpha`` along the steepest-ascent direction of the norm (``sign(g)`` for L-inf,
``g / ||g||_2`` for L2) and projects back onto the eps-ball intersected with [0, 1]. A good step
for ``steps`` steps is :func:`~robust_nb.attacks.madry_alpha` (``2.5 * eps / steps``).

Deviations: the L2 random start is a random direction with a radius uniform in [0, eps] (the
robustness library samples the sphere, then clips); with several restarts each sample keeps its
worst case (a misclassified point if any run found one -- for a targeted attack, a point
classified as the target -- otherwise the point of highest loss); the gradient is that of the
summed loss. With ``random_start=False`` and one restart the L-inf attack equals
``torchattacks.PGD`` step for step (tested pixel for pixel).

Arguments: ``eps`` the radius in pixel space; ``alpha`` the step; ``steps``; ``norm`` "linf" or
"l2"; ``random_start`` (True: a uniform point of the L-inf ball, or of the L2 ball as above);
``restarts`` (1); ``loss`` "ce", "cw" (the Carlini-Wagner margin ``max_{i != y} z_i - z_y``,
Carlini & Wagner 2017) or "dlr" (Croce & Hein 2020) -- see :mod:`.objectives`; ``targeted``
with ``target`` labels (then minimise CE to the target, or maximise the targeted CW / DLR loss);
``seed``; ``batch_size`` (all at once by default); ``amp`` bf16 autocast for the forward passes
(the gradient's direction is what matters, so the precision loss is harmless); ``eot_samples``
(1): average each step's gradient over that many forward/backward passes of a randomized model
(EOT, Athalye et al. 2018; also the worst-restart choice uses averaged logits). Inputs: images in
[0, 1], (N, C, H, W), in the model's dtype.

>>> x_adv = pgd(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10)
>>> x_adv = pgd(model, x, y, eps=0.5, alpha=0.1, steps=20, norm="l2", restarts=5)
>>> x_adv = pgd(noisy_model, x, y, eps=8 / 255, alpha=2 / 255, steps=10, eot_samples=20)
>>> x_adv = pgd(saturated_model, x, y, eps=8 / 255, alpha=2 / 255, steps=10, loss="cw")
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..modes import model_device
from .core import (
    attack_mode,
    batched,
    batchnorm_as_affine,
    check_attack_inputs,
    check_eot_samples,
    eot_logits,
    loss_and_grad,
    make_generator,
    normalize_direction,
    per_sample,
    project,
)
from .core import random_start as _random_start
from .objectives import loss_fn


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int,
        norm: str = "linf", random_start: bool = True, restarts: int = 1, loss: str = "ce",
        targeted: bool = False, seed: int = 0, batch_size: int | None = None, *,
        target: Tensor | None = None, amp: bool = False, eot_samples: int = 1) -> Tensor:
    """PGD with ``steps`` steps of size ``alpha`` inside the ``norm`` ball of radius ``eps``.

    ``y`` are the true labels; for ``targeted=True`` pass ``target`` (the classes to reach).
    Returns a new tensor on ``x``'s device.
    """
    if targeted and target is None:
        raise ValueError("targeted=True needs `target`, a tensor of target labels shaped like y")
    check_attack_inputs(model, x, y, eps, norm, target=target if targeted else None)
    if steps < 0 or restarts < 1 or alpha < 0:
        raise ValueError(f"need steps >= 0, restarts >= 1, alpha >= 0; "
                         f"got {steps}, {restarts}, {alpha}")
    fn = loss_fn(loss, targeted)
    check_eot_samples(eot_samples)
    if len(x) == 0:
        return x.detach().clone()
    device = model_device(model)
    gen = make_generator(device, seed)
    x0, y = x.detach().to(device), y.to(device)
    t = target.to(device) if targeted else None
    args_of = (lambda yb, tb: (yb, tb)) if targeted else (lambda yb, tb: (yb,))

    def run(xb: Tensor, yb: Tensor, tb: Tensor | None) -> Tensor:
        best, best_loss, best_hit = xb, None, None
        for _ in range(restarts):
            x_adv = _random_start(xb, eps, norm, gen) if random_start else xb
            for _ in range(steps):
                _, _, grad = loss_and_grad(model, x_adv, fn, *args_of(yb, tb), amp=amp,
                                           eot_samples=eot_samples)
                x_adv = project(x_adv + alpha * normalize_direction(grad, norm), xb, eps, norm)
            if restarts == 1:
                return x_adv
            # Worst case over restarts: success first, then the higher loss (one extra forward).
            logits = eot_logits(model, x_adv, eot_samples, amp)
            cur_loss = fn(logits, *args_of(yb, tb))
            hit = logits.argmax(1) == tb if targeted else logits.argmax(1) != yb
            if best_loss is None:
                best, best_loss, best_hit = x_adv, cur_loss, hit
                continue
            better = (hit & ~best_hit) | ((hit == best_hit) & (cur_loss > best_loss))
            best = torch.where(per_sample(better, xb), x_adv, best)
            best_loss = torch.where(better, cur_loss, best_loss)
            best_hit = best_hit | hit
        return best

    with attack_mode(model), batchnorm_as_affine(model):
        if targeted:
            pairs = torch.stack([y, t], 1)
            out = batched(lambda xb, pb: run(xb, pb[:, 0], pb[:, 1]), x0, pairs, batch_size)
        else:
            out = batched(lambda xb, yb: run(xb, yb, None), x0, y, batch_size)
    return out.detach().to(x.device)
