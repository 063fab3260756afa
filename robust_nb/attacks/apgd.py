"""APGD: Auto-PGD, PGD with momentum and per-sample step-size halving at checkpoints (L-inf, L2).

Paper: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, https://arxiv.org/abs/2003.01690 (Algorithm 1), following the
authors' code ``fra31/auto-attack`` (``autoattack/autopgd_base.py``):

* start at a random point on the eps-sphere (L-inf: uniform noise rescaled to L-inf norm eps;
  L2: Gaussian noise rescaled to L2 norm eps), step size ``eta = 2 eps``;
* momentum 0.75: ``z = P(x + eta * dir(g))``, ``x' = P(x + 0.75 (z - x) + 0.25 (x - x_prev))``
  (no momentum in the first step);
* checkpoints: the first after ``max(int(0.22 N), 1)`` iterations, then every ``k`` iterations with
  ``k`` shrinking by ``max(int(0.03 N), 1)`` down to ``max(int(0.06 N), 1)``; at a checkpoint a
  sample's step size is halved and it restarts from its best point (with that point's gradient)
  if (1) the loss increased in at most ``rho = 0.75`` of the steps since the last checkpoint, or
  (2) its step size was not halved at the last checkpoint and its best loss has not improved since;
* losses: CE, DLR, and targeted DLR (targets: the 2nd ... (n+1)-th most likely classes of the clean
  input, ``n_target_classes`` runs, as APGD-T); here also the CW margin and its targeted form;
* ``restarts`` runs (and each target) are applied only to points not yet misclassified.

Deviations from the authors' code, all minor: condition (1) counts increases relative to the loss
at the starting point for the first window (the reference compares with a not-yet-written row of
zeros there); for points the attack does not fool we return the highest-loss point found instead
of the clean input (both are inside the ball; robust accuracy is unaffected); the per-sample step
size bookkeeping uses ``torch.where`` instead of index assignment, so there is no host sync inside
the iteration loop; random numbers come from a generator seeded with ``seed``.

EOT (``eot_samples = k > 1``, for randomized models; Athalye et al. 2018, as in the reference's
``eot_iter`` and AutoAttack's "rand" version): every gradient, every loss that drives the
step-size halving and the best-point bookkeeping, and the logits that decide which samples are
fooled (also the clean ones that rank APGD-T's targets) are means over ``k`` passes. The
reference's ``eot_iter`` loop averages the gradient but keeps the last pass's loss and logits; here
those are averaged too, so one lucky draw neither counts as a success nor steers the step size.

Arguments: ``eps`` the radius in pixel space; ``norm`` "linf" or "l2"; ``steps`` (100);
``loss`` "ce", "cw" or "dlr"; ``targeted`` (APGD-T; use ``loss="dlr"`` for the reference's
targeted DLR) with ``n_target_classes`` (9) targets; ``restarts`` (1); ``seed``; ``batch_size``
(all at once by default); ``rho`` (0.75); ``eot_samples`` (1). Inputs: images in [0, 1],
(N, C, H, W), in the model's dtype.

>>> x_adv = apgd(model, x, y, eps=8 / 255)                                   # APGD-CE
>>> x_adv = apgd(model, x, y, eps=8 / 255, loss="dlr", targeted=True)        # APGD-T, 9 targets
>>> x_adv = apgd(noisy_model, x, y, eps=8 / 255, eot_samples=20)             # APGD-CE with EOT
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
from .objectives import loss_fn


def _sphere_start(x: Tensor, eps: float, norm: str, gen: torch.Generator) -> Tensor:
    """The reference's starting point: noise rescaled to norm exactly eps, clipped to [0, 1]."""
    if norm == "linf":
        t = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
        t = t / (per_sample(t.flatten(1).abs().amax(1), x) + 1e-12)
    else:
        t = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        t = normalize_direction(t, "l2")
    return (x + eps * t).clamp(0.0, 1.0)


def _apgd_run(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, steps: int, loss,
              loss_args: tuple, rho: float, gen: torch.Generator,
              eot_samples: int = 1) -> tuple[Tensor, Tensor]:
    """One APGD run on a batch. Returns (x_out (B, C, H, W), fooled (B,) bool)."""
    k = max(int(0.22 * steps), 1)                         # first checkpoint
    k_min, k_decr = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)

    x_adv = _sphere_start(x, eps, norm, gen)
    loss_i, logits, grad = loss_and_grad(model, x_adv, loss, *loss_args, eot_samples=eot_samples)
    fooled = logits.argmax(1) != y                        # (B,)
    x_fooled = x_adv.clone()                              # last misclassified iterate per sample
    x_best, loss_best, grad_best = x_adv.clone(), loss_i.clone(), grad.clone()

    step = torch.full((len(x),), 2.0 * eps, device=x.device, dtype=x.dtype)     # (B,)
    history = torch.empty(steps + 1, len(x), device=x.device)                    # loss per iterate
    history[0] = loss_i
    x_prev = x_adv
    since_check = 0
    best_at_check = loss_best.clone()
    halved_at_check = torch.ones_like(fooled)   # the reference starts "reduced": (2) waits a window

    for i in range(steps):
        with torch.no_grad():
            a = 0.75 if i > 0 else 1.0
            z = project(x_adv + per_sample(step, x) * normalize_direction(grad, norm), x, eps, norm)
            x_new = project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev), x, eps, norm)
            x_prev, x_adv = x_adv, x_new

        loss_i, logits, grad = loss_and_grad(model, x_adv, loss, *loss_args,
                                             eot_samples=eot_samples)
        wrong = logits.argmax(1) != y
        x_fooled = torch.where(per_sample(wrong, x), x_adv, x_fooled)
        fooled = fooled | wrong
        history[i + 1] = loss_i
        improved = loss_i > loss_best
        x_best = torch.where(per_sample(improved, x), x_adv, x_best)
        grad_best = torch.where(per_sample(improved, x), grad, grad_best)
        loss_best = torch.where(improved, loss_i, loss_best)

        since_check += 1
        if since_check == k:
            window = history[i + 1 - k:i + 2]                                     # (k + 1, B)
            increases = (window[1:] > window[:-1]).sum(0)
            oscillating = increases <= k * rho                                     # condition (1)
            stalled = ~halved_at_check & (best_at_check >= loss_best)              # condition (2)
            halve = oscillating | stalled
            step = torch.where(halve, step / 2, step)
            x_adv = torch.where(per_sample(halve, x), x_best, x_adv)
            grad = torch.where(per_sample(halve, x), grad_best, grad)
            halved_at_check, best_at_check = halve, loss_best.clone()
            since_check = 0
            k = max(k - k_decr, k_min)

    return torch.where(per_sample(fooled, x), x_fooled, x_best), fooled


def apgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf", steps: int = 100,
         loss: str = "ce", targeted: bool = False, restarts: int = 1, seed: int = 0,
         n_target_classes: int = 9, batch_size: int | None = None, *, rho: float = 0.75,
         eot_samples: int = 1) -> Tensor:
    """APGD-CE / APGD-DLR (untargeted) or APGD-T (``targeted=True``; use ``loss="dlr"`` for the
    reference's targeted DLR). Returns a new tensor on ``x``'s device."""
    check_attack_inputs(model, x, y, eps, norm)
    if steps < 1 or restarts < 1:
        raise ValueError(f"need steps >= 1 and restarts >= 1, got {steps}, {restarts}")
    fn = loss_fn(loss, targeted)
    check_eot_samples(eot_samples)
    if len(x) == 0:
        return x.detach().clone()
    device = model_device(model)
    gen = make_generator(device, seed)
    x0, y = x.detach().to(device), y.to(device)

    def attack(xb: Tensor, yb: Tensor) -> Tensor:
        clean_logits = eot_logits(model, xb, eot_samples)
        n_classes = clean_logits.shape[1]
        if targeted and not 1 <= n_target_classes <= n_classes - 1:
            raise ValueError(f"n_target_classes must be in [1, {n_classes - 1}], "
                             f"got {n_target_classes}")
        robust = clean_logits.argmax(1) == yb
        out = xb.clone()
        # target rank r = 2 ... n+1 of the clean logits (APGD-T); a single pass for untargeted.
        ranks = range(2, n_target_classes + 2) if targeted else [None]
        for rank in ranks:
            for _ in range(restarts):
                idx = robust.nonzero().squeeze(1)          # one host sync per run, not per step
                if idx.numel() == 0:
                    return out
                args = (yb[idx],)
                if rank is not None:
                    args += (clean_logits[idx].argsort(dim=1)[:, -rank],)
                x_run, fooled = _apgd_run(model, xb[idx], yb[idx], eps, norm, steps, fn, args,
                                          rho, gen, eot_samples)
                out[idx] = x_run
                robust[idx] = ~fooled
        return out

    with attack_mode(model), batchnorm_as_affine(model):
        out = batched(attack, x0, y, batch_size)
    return out.to(x.device)
