"""FAB: the Fast Adaptive Boundary attack, a minimum-norm white-box attack (L-inf, L2).

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary attack",
ICML 2020, https://arxiv.org/abs/1907.02044. Follows the authors' PyTorch code in
fra31/auto-attack (``fab_base.py``, ``fab_pt.py``, ``fab_projections.py``).

FAB looks for the *smallest* perturbation that changes the decision. Each step linearises the
classifier at the current iterate ``x1``: for every class ``k`` the decision boundary
``f_k - f_y = 0`` becomes a hyperplane, and the closest one (distance ``|f_k - f_y| / ||grad||_q``,
``q`` the dual norm) is chosen. Both ``x1`` and the original ``x0`` are projected onto that
hyperplane intersected with the box [0, 1] (an exact, sorting-based projection). The next iterate
is a convex combination of the two projections, biased towards ``x0`` by
``alpha = min(||d1|| / (||d1|| + ||d2||), alpha_max)`` so that it stays close to the original,
with an overshoot ``eta``. Once a point is adversarial it is remembered if it is the closest so
far, and the iterate is pulled back towards ``x0`` by the factor ``beta``.

* ``targeted=True`` (FAB-T, the AutoAttack version): only the boundary to one target class is
  linearised, which needs one backward pass instead of one per class. It is run once for each of
  the ``n_target_classes`` most likely wrong classes (2nd, 3rd, ... highest logit at ``x0``), each
  time on the points not yet broken. Success means *misclassified*, as in the reference.
* ``restarts``: the first run starts at ``x0``; later runs start at a random point at half the
  eps radius (uniform direction in the L-inf case, Gaussian direction for L2), as in the reference.

A point counts as broken when the closest adversarial point found lies within ``eps``; it is then
returned, every other point is returned unchanged (as AutoAttack does). Defaults are the paper's
and AutoAttack's: 100 steps, ``alpha_max=0.1``, ``eta=1.05``, ``beta=0.9``, 9 target classes.
Inputs: images in [0, 1], (N, C, H, W); eps in pixel space.

Deviations from the reference: the projections solve the same piecewise-linear equation with one
cumulative-sum table instead of a per-row binary search (same result up to float rounding, tested
against the reference implementation); the L1 version is not implemented; with fewer than
``n_target_classes + 1`` classes the number of targets is reduced to ``num_classes - 1``.

>>> x_adv = fab(model, x, y, eps=0.3)                        # FAB-T, L-inf, 9 targets
>>> x_adv = fab(model, x, y, eps=1.5, norm="l2", targeted=False, restarts=3)
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
    check_labels,
    lp_norm,
    make_generator,
)
from .core import per_sample as _view


def fab(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf",
        targeted: bool = True, n_target_classes: int = 9, steps: int = 100, restarts: int = 1,
        alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, seed: int = 0,
        batch_size: int | None = None) -> Tensor:
    """FAB (``targeted=False``) or FAB-T (``targeted=True``) with radius ``eps`` in ``norm``.

    ``y`` are the true labels. Returns a new tensor on ``x``'s device: the closest adversarial
    point found where it is within ``eps``, else the original point.
    """
    check_attack_inputs(model, x, y, eps, norm)
    if steps < 0 or restarts < 1 or n_target_classes < 1:
        raise ValueError(f"need steps >= 0, restarts >= 1, n_target_classes >= 1; "
                         f"got {steps}, {restarts}, {n_target_classes}")
    if not (0.0 <= alpha_max <= 1.0 and eta > 0 and 0.0 < beta <= 1.0):
        raise ValueError(f"need 0 <= alpha_max <= 1, eta > 0, 0 < beta <= 1; "
                         f"got {alpha_max}, {eta}, {beta}")
    device = model_device(model)
    gen = make_generator(device, seed)
    x0, y = x.detach().to(device), y.to(device)

    def run(xb: Tensor, yb: Tensor) -> Tensor:
        return _fab_batch(model, xb, yb, eps, norm, targeted, n_target_classes, steps, restarts,
                          alpha_max, eta, beta, gen)

    with attack_mode(model), batchnorm_as_affine(model):
        out = batched(run, x0, y, batch_size)
    return out.detach().to(x.device)


@torch.no_grad()
def _fab_batch(model, x, y, eps, norm, targeted, n_target_classes, steps, restarts,
               alpha_max, eta, beta, gen) -> Tensor:
    """The reference's ``perturb``: one FAB run per (target, restart) on the points still robust."""
    logits = model(x).float()                                           # (N, K)
    check_labels(y, logits.shape[1])
    robust = logits.argmax(1) == y                                      # (N,)
    adv = x.clone()
    if targeted:
        n_t = min(n_target_classes, logits.shape[1] - 1)
        ranked = logits.argsort(dim=1, descending=True)                 # (N, K)
        targets = [ranked[:, k] for k in range(1, n_t + 1)]             # 2nd, 3rd, ... likeliest
    else:
        targets = [None]
    for target in targets:
        for r in range(restarts):
            idx = robust.nonzero().squeeze(1)        # one host sync per run, not per step
            if idx.numel() == 0:
                return adv
            xi, yi = x[idx], y[idx]
            cand = _fab_run(model, xi, yi, None if target is None else target[idx], eps, norm,
                            steps, r > 0, alpha_max, eta, beta, gen)
            broken = (model(cand).argmax(1) != yi) & (lp_norm(cand - xi, norm) <= eps)
            adv[idx] = torch.where(_view(broken, xi), cand, xi)
            robust[idx] = ~broken
    return adv


def _fab_run(model, x0, y, target, eps, norm, steps, random_start, alpha_max, eta, beta,
             gen) -> Tensor:
    """One FAB run (the reference's ``attack_single_run``): the closest adversarial point found
    for each sample, or the sample itself where none was found. Every sample is attacked for all
    ``steps``; there is no host synchronisation inside the loop."""
    B = len(x0)
    x0_flat = x0.flatten(1)                                             # (B, D)
    best = x0.clone()
    best_dist = torch.full((B,), float("inf"), device=x0.device)
    x1 = x0.clone()
    if random_start:
        if norm == "linf":
            t = torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype) * 2 - 1
        else:
            t = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        x1 = (x0 + 0.5 * eps * t / _view(lp_norm(t, norm).clamp_min(1e-12), t)).clamp(0.0, 1.0)
    rows = torch.arange(B, device=x0.device)
    for _ in range(steps):
        df, dg = _boundary_linearisation(model, x1, y, target)          # (B, M), (B, M, D)
        # Distance to each linearised boundary; the dual norm of the gradient is in the
        # denominator (L1 for the L-inf attack, L2 for L2).
        dual = dg.abs().sum(-1) if norm == "linf" else dg.norm(dim=-1)
        k = (df.abs() / (dual + 1e-12)).argmin(1)                       # (B,)
        w = dg[rows, k]                                                 # (B, D)
        b = (w * x1.flatten(1)).sum(1) - df[rows, k]                    # hyperplane <w, z> = b
        d = project_onto_hyperplane_box(torch.cat([x1.flatten(1), x0_flat]),
                                        torch.cat([w, w]), torch.cat([b, b]), norm)
        d1, d2 = d[:B].view_as(x0), d[B:].view_as(x0)
        a = lp_norm(d, norm).clamp_min(1e-8)
        alpha = (a[:B] / (a[:B] + a[B:])).clamp(0.0, alpha_max)         # bias towards x0
        alpha = _view(alpha, x0)
        x1 = ((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha).clamp(0.0, 1.0)

        is_adv = model(x1).argmax(1) != y                               # (B,)
        dist = lp_norm(x1 - x0, norm)
        closer = is_adv & (dist < best_dist)
        best = torch.where(_view(closer, x0), x1, best)
        best_dist = torch.where(closer, dist, best_dist)
        # Adversarial: step back towards x0 to look for a closer boundary point.
        x1 = torch.where(_view(is_adv, x0), x0 + (x1 - x0) * beta, x1)
    return best


def _boundary_linearisation(model: nn.Module, x: Tensor, y: Tensor,
                            target: Tensor | None) -> tuple[Tensor, Tensor]:
    """Logit differences ``f_k - f_y`` (B, M) and their input gradients (B, M, D).

    Untargeted: M = K classes, one backward pass per class (as the reference), and the entry of
    the true class is set to 1e10 so it is never the closest boundary. Targeted: M = 1, the
    difference ``f_target - f_y`` and one backward pass.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x).float()                                        # (B, K)
        if target is not None:
            diff = logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])  # (B, 1)
            grad, = torch.autograd.grad(diff.sum(), x)
            return diff.detach(), grad.flatten(1)[:, None]
        B, K = logits.shape
        onehot_y = torch.zeros_like(logits).scatter_(1, y[:, None], 1.0)
        eye = torch.eye(K, device=x.device, dtype=logits.dtype)
        grads = [torch.autograd.grad(logits, x, grad_outputs=eye[k].expand(B, K) - onehot_y,
                                     retain_graph=k < K - 1)[0].flatten(1) for k in range(K)]
    df = (logits - logits.gather(1, y[:, None])).detach()
    df = df.scatter(1, y[:, None], 1e10)
    return df, torch.stack(grads, 1)                                     # (B, K), (B, K, D)


# -- exact projections onto {z : <w, z> = b} intersected with the box [0, 1]^D ------------------

def project_onto_hyperplane_box(t: Tensor, w: Tensor, b: Tensor, norm: str) -> Tensor:
    """Per row, the smallest step ``d`` (in ``norm``) with ``<w, t + d> = b`` and ``t + d`` in
    [0, 1]^D. Where the hyperplane cannot be reached inside the box, the step to the box corner
    that gets closest to it. ``t``, ``w``: (B, D); ``b``: (B,). Returns (B, D).

    Write ``c = <w, t> - b`` and flip signs so that ``c >= 0``: the step has to lower ``<w, .>``
    by ``c``. Moving every coordinate against ``w`` with "speed" ``lam`` (L-inf: ``|d_i| = lam``,
    L2: ``d_i = -lam * w_i``) until it hits a face of the box at ``lam = cap_i`` lowers it by
    ``sum_i weight_i * min(lam, cap_i)`` (L-inf: ``weight = |w|``, ``cap`` = room to the face;
    L2: ``weight = w^2``, ``cap`` = room / ``|w_i|``). That function of ``lam`` is piecewise
    linear and increasing; :func:`_solve_capped` finds where it reaches ``c``. These are the KKT
    conditions behind the reference's ``projection_linf`` / ``projection_l2``.
    """
    c = (w * t).sum(1) - b
    flip = torch.where(c >= 0, 1.0, -1.0).to(w.dtype)
    w, c = w * flip[:, None], c * flip                                   # now c >= 0
    if norm == "linf":
        active = w != 0
        room = torch.where(w > 0, t, 1 - t)                              # distance to the face
        weight = torch.where(active, w.abs(), torch.zeros_like(w))
        lam = _solve_capped(weight, room, c)
        d = -w.sign() * torch.minimum(lam[:, None], room)
    else:
        active = w.abs() > 1e-8                                          # as the reference
        w = torch.where(active, w, torch.zeros_like(w))
        safe_w = torch.where(active, w, torch.ones_like(w))
        cap = torch.where(active, torch.where(w > 0, t, t - 1) / safe_w, torch.zeros_like(w))
        lam = _solve_capped(w * w, cap, c)
        d = -w * torch.minimum(lam[:, None], cap)
    return torch.where(active, d, torch.zeros_like(d))


def _solve_capped(weight: Tensor, cap: Tensor, target: Tensor) -> Tensor:
    """``lam >= 0`` with ``sum_i weight_i * min(lam, cap_i) = target`` for each row, or +inf where
    even ``lam = inf`` falls short. ``weight``, ``cap``: (B, D), non-negative; ``target``: (B,).

    Sorting the caps, the value at the k-th cap is ``sum_{j<=k} w_j cap_j + cap_k sum_{j>k} w_j``;
    the first cap where it reaches ``target`` names the linear piece that holds the solution.
    """
    cap_s, order = cap.sort(dim=1)                                       # ascending caps
    w_s = weight.gather(1, order)
    below = (w_s * cap_s).cumsum(1)                                      # sum_{j<=k} w_j cap_j
    above = w_s.flip(1).cumsum(1).flip(1)                                # sum_{j>=k} w_j
    above_excl = torch.cat([above[:, 1:], torch.zeros_like(above[:, :1])], 1)
    at_caps = below + cap_s * above_excl                                 # value at lam = cap_k
    k = (at_caps < target[:, None]).sum(1, keepdim=True)                 # (B, 1) solution's piece
    feasible = k.squeeze(1) < cap.shape[1]
    k = k.clamp(max=cap.shape[1] - 1)
    below_prev = torch.cat([torch.zeros_like(below[:, :1]), below], 1).gather(1, k).squeeze(1)
    slope = above.gather(1, k).squeeze(1)
    lam = ((target - below_prev) / slope.clamp_min(1e-30)).clamp_min(0.0)
    return torch.where(feasible, lam, torch.full_like(lam, float("inf")))
