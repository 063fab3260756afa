"""Square Attack: a score-based black-box attack by random search (L-inf, L2).

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial
attack via random search", ECCV 2020, https://arxiv.org/abs/1912.00049. Follows the authors' code
in fra31/auto-attack (``square.py``) and max-andr/square-attack.

Square uses only the model's scores -- no gradients -- which is why AutoAttack includes it: a
defence that merely hides or breaks gradients does not stop it. It keeps the best point found so
far and, at each query, proposes a change on one random square window:

* L-inf: start from vertical stripes of +-eps (one random sign per column and channel), then set a
  random ``s x s`` window (one random sign per channel) to the opposite face of the eps-box.
* L2: start from a 5 x 5 grid of "pseudo-Gaussian" blocks (the ``eta`` profile: nested rectangles
  with weights 1/(k+1)^2, one half positive, the other negative) with random signs, scaled to norm
  eps; each update moves the perturbation mass of a second random window into the first window,
  adds a fresh ``eta`` profile there and rescales to norm eps. All window norms of this update are
  per channel: each channel's new window gets that channel's old mass in the two windows plus a
  1/C share of what is left of eps.

The side ``s`` follows the paper's schedule: a fraction ``p`` of the pixels, ``p`` halving from
``p_init`` after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a 10,000-query
budget. By default these marks are rescaled to the actual budget (the reference's
``resc_schedule=True``); AutoAttack runs Square with ``rescale_schedule=False``, the marks taken
as raw iteration counts (at iteration 150 of 300, ``p = p_init / 4`` instead of ``p_init / 128``).
A proposal is kept when it lowers the loss (the margin ``z_y - max_{k!=y} z_k`` by default, or
minus the cross-entropy) or when it already misclassifies. Only points not yet fooled are queried.
Restarts re-run the attack on the points still robust.

``targeted=True`` needs ``target`` labels; then the cross-entropy towards the target is minimised
(as in the paper and the reference, whatever ``loss`` says) and success means "classified as the
target".

Deviations from fra31/auto-attack, all deliberate:

* Each sample gets its own random window positions, L-inf window signs and ``eta`` orientations
  per query and per initial L2 block (AutoAttack's port draws them once for the whole batch; the
  original max-andr/square-attack code draws L-inf windows per image too).
* ``queries`` is the total number of model evaluations per point including the initial one, so a
  run makes ``queries - 1`` updates (AutoAttack's ``n_queries`` counts the updates after the
  initial evaluation, as the original code's L2 attack does; its L-inf attack counts like ours).
  The schedule of ``p`` is the same function of the update index.
* Random numbers come from a ``torch.Generator`` seeded with ``seed``, not from the global RNG.
* The L2 start uses blocks of side ``max(H // 5, 1)`` and only the blocks that fit in the image,
  so it also runs on images smaller than 5 pixels and on sizes whose last block would cross the
  border (where the reference raises); on every size the reference runs, the blocks are the same.
* Margins and losses are computed from float32 logits.

Arguments: ``eps`` the radius in pixel space; ``norm`` "linf" or "l2"; ``queries`` (default
5,000) model evaluations per point and run; ``p_init`` (0.8, AutoAttack's value) the initial
fraction of pixels a window covers; ``restarts`` (1) runs on the points still robust; ``seed``;
``loss`` "margin" (default) or "ce"; ``targeted`` with ``target``; ``batch_size`` (all at once by
default); ``rescale_schedule`` (True) as above. Inputs: images in [0, 1], (N, C, H, W).

>>> x_adv = square(model, x, y, eps=8 / 255)                       # L-inf, 5,000 queries
>>> x_adv = square(model, x, y, eps=0.5, norm="l2", queries=1000, restarts=2)
"""

from __future__ import annotations

import functools
import math

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
from .objectives import ce_loss, margin

LOSSES = ("margin", "ce")

# The paper's schedule: p is halved once the iteration counter (rescaled to a 10,000-query budget
# unless rescale_schedule=False) passes each of these marks.
_P_MARKS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf",
           queries: int = 5000, p_init: float = 0.8, restarts: int = 1, seed: int = 0,
           loss: str = "margin", targeted: bool = False, batch_size: int | None = None, *,
           target: Tensor | None = None, rescale_schedule: bool = True) -> Tensor:
    """Square Attack with ``queries`` model evaluations per point (per restart), radius ``eps``.

    ``y`` are the true labels; for ``targeted=True`` pass ``target`` (the classes to reach).
    ``rescale_schedule=False`` runs the schedule of ``p`` on the raw iteration count (as if the
    budget were 10,000 queries), as AutoAttack does. Returns a new tensor on ``x``'s device: a
    fooling point where one was found, else ``x``.
    """
    check_attack_inputs(model, x, y, eps, norm)
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    if queries < 1 or restarts < 1 or not 0.0 < p_init <= 1.0:
        raise ValueError(f"need queries >= 1, restarts >= 1, 0 < p_init <= 1; "
                         f"got {queries}, {restarts}, {p_init}")
    if targeted and (not isinstance(target, Tensor) or target.shape != y.shape):
        raise ValueError("targeted=True needs `target`, a tensor of target labels shaped like y")
    device = model_device(model)
    gen = make_generator(device, seed)
    x0, y = x.detach().to(device), y.to(device)
    # Untargeted: keep the label y and push the margin below 0. Targeted: the label to reach.
    label = target.to(device) if targeted else y

    def run(xb: Tensor, lb: Tensor) -> Tensor:
        return _square_batch(model, xb, lb, eps, norm, queries, p_init, restarts, loss, targeted,
                             gen, rescale_schedule)

    with attack_mode(model), batchnorm_as_affine(model):
        out = batched(run, x0, label, batch_size)
    return out.detach().to(x.device)


def p_selection(p_init: float, it: int, queries: int, rescale: bool = True) -> float:
    """Fraction of the pixels a square covers at 0-based iteration ``it`` of ``queries``: the
    schedule is written for 10,000 queries and, with ``rescale``, stretched to ``queries``."""
    if rescale:
        it = int(it / queries * 10000)
    return p_init / 2 ** sum(it > mark for mark in _P_MARKS)


@torch.no_grad()
def _square_batch(model, x, label, eps, norm, queries, p_init, restarts, loss, targeted,
                  gen, rescale) -> Tensor:
    """The reference's ``perturb``: one run per restart on the points not yet fooled."""
    logits = model(x)
    check_labels(label, logits.shape[1], "target labels" if targeted else "labels")
    pred = logits.argmax(1)
    robust = pred != label if targeted else pred == label               # (N,)
    adv = x.clone()
    for _ in range(restarts):
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xi, li = x[idx], label[idx]
        cand = _square_run(model, xi, li, eps, norm, queries, p_init, loss, targeted, gen,
                           rescale)
        pred = model(cand).argmax(1)
        fooled = pred == li if targeted else pred != li
        adv[idx] = torch.where(_view(fooled, xi), cand, xi)
        robust[idx] = ~fooled
    return adv


def _margin_and_loss(model, x, label, loss, targeted) -> tuple[Tensor, Tensor]:
    """(margin, loss), both (B,) and both to be minimised; margin <= 0 means success."""
    logits = model(x).float()
    if targeted:                    # margin of the best other class over the target
        return -margin(logits, label), ce_loss(logits, label)
    m = margin(logits, label)
    return m, (m if loss == "margin" else -ce_loss(logits, label))


def _signs(shape, gen, device, dtype) -> Tensor:
    """Uniform random +-1 of ``shape``."""
    return torch.randint(0, 2, shape, generator=gen, device=device).to(dtype) * 2 - 1


def _window_mask(corner: Tensor, s: int, size: int) -> Tensor:
    """(B, size) boolean: True on ``corner .. corner + s - 1`` for each sample."""
    pos = torch.arange(size, device=corner.device)
    return (pos >= corner[:, None]) & (pos < corner[:, None] + s)


def _random_corners(B, s, H, W, gen, device) -> tuple[Tensor, Tensor]:
    """Top-left corners of random s x s windows, one per sample. Like the reference, the corner
    is drawn from [0, H - s) (the last row/column is reached only when s == H)."""
    vh = torch.randint(0, max(H - s, 1), (B,), generator=gen, device=device)
    vw = torch.randint(0, max(W - s, 1), (B,), generator=gen, device=device)
    return vh, vw


def _square_run(model, x, label, eps, norm, queries, p_init, loss, targeted, gen,
                rescale) -> Tensor:
    """One run (the reference's ``attack_single_run``); returns the best point per sample."""
    N, C, H, W = x.shape
    dev, dt = x.device, x.dtype
    if norm == "linf":
        x_best = (x + eps * _signs((N, C, 1, W), gen, dev, dt)).clamp(0.0, 1.0)   # stripes
    else:
        x_best = (x + eps * _unit_l2(_l2_init(N, C, H, W, gen, dev, dt))).clamp(0.0, 1.0)
    margin_min, loss_min = _margin_and_loss(model, x_best, label, loss, targeted)

    for it in range(queries - 1):
        # Only points not yet fooled are queried (one host sync per query, as in the reference).
        idx = (margin_min > 0).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xc, xbc, lc = x[idx], x_best[idx], label[idx]
        p = p_selection(p_init, it, queries, rescale)
        if norm == "linf":
            x_new = _linf_proposal(xc, xbc, eps, p, gen)
        else:
            x_new = l2_proposal(xc, xbc, eps, p, gen)
        m, lo = _margin_and_loss(model, x_new, lc, loss, targeted)
        improved = lo < loss_min[idx]
        loss_min[idx] = torch.where(improved, lo, loss_min[idx])
        improved = improved | (m <= 0)                                  # keep any success
        margin_min[idx] = torch.where(improved, m, margin_min[idx])
        x_best[idx] = torch.where(_view(improved, xc), x_new, xbc)
    return x_best


def _linf_proposal(x: Tensor, x_best: Tensor, eps: float, p: float, gen) -> Tensor:
    """Move one random s x s window per sample to a random vertex of the eps-box (per channel)."""
    B, C, H, W = x.shape
    s = min(max(round(math.sqrt(p * H * W)), 1), H, W)
    vh, vw = _random_corners(B, s, H, W, gen, x.device)
    window = (_window_mask(vh, s, H)[:, None, :, None]
              & _window_mask(vw, s, W)[:, None, None, :])               # (B, 1, H, W)
    step = 2 * eps * _signs((B, C, 1, 1), gen, x.device, x.dtype)        # (B, C, 1, 1)
    x_new = torch.where(window, x_best + step, x_best)
    return torch.minimum(torch.maximum(x_new, x - eps), x + eps).clamp(0.0, 1.0)


def l2_proposal(x: Tensor, x_best: Tensor, eps: float, p: float, gen) -> Tensor:
    """Move the perturbation of window 2 into window 1, add a fresh eta profile there and rescale
    the whole perturbation to norm eps (the reference's L2 update, per sample)."""
    B, C, H, W = x.shape
    dev, dt = x.device, x.dtype
    s = max(round(math.sqrt(p * H * W)), 3)
    s = min(s + 1 - s % 2, H, W)                                        # odd, fits the image
    delta = x_best - x                                                  # (B, C, H, W)
    vh, vw = _random_corners(B, s, H, W, gen, dev)
    vh2, vw2 = _random_corners(B, s, H, W, gen, dev)
    win1 = _window_mask(vh, s, H)[:, None, :, None] & _window_mask(vw, s, W)[:, None, None, :]
    win2 = _window_mask(vh2, s, H)[:, None, :, None] & _window_mask(vw2, s, W)[:, None, None, :]
    # Index tensors that gather / scatter window 1 as a (B, C, s, s) patch.
    offs = torch.arange(s, device=dev)
    bi = torch.arange(B, device=dev)[:, None, None, None]
    ci = torch.arange(C, device=dev)[None, :, None, None]
    ri = (vh[:, None] + offs)[:, None, :, None]
    cj = (vw[:, None] + offs)[:, None, None, :]
    patch = delta[bi, ci, ri, cj]                                       # (B, C, s, s)
    patch_norm = patch.square().sum((-2, -1), keepdim=True).sqrt()      # (B, C, 1, 1)
    norm_image = _view(lp_norm(delta, "l2"), x)                         # (B, 1, 1, 1)
    # Per channel, like every window norm of the reference's update (a sum over the pixels only).
    both = delta * (win1 | win2)
    norm_windows = both.square().sum((-2, -1), keepdim=True).sqrt()     # (B, C, 1, 1)

    new = _eta_batch(s, B, gen, dev, dt) * _signs((B, C, 1, 1), gen, dev, dt)
    new = new + patch / (patch_norm + 1e-12)
    # Budget of each channel's window: that channel's old mass in both windows plus an equal
    # share (1/C) of what is left of eps.
    budget = ((eps ** 2 - norm_image ** 2).clamp_min(0.0) / C + norm_windows ** 2).sqrt()
    new = new / (new.square().sum((-2, -1), keepdim=True).sqrt() + 1e-12) * budget
    delta = delta.masked_fill(win2, 0.0)
    delta[bi, ci, ri, cj] = new
    return (x + eps * _unit_l2(delta)).clamp(0.0, 1.0)


def _unit_l2(delta: Tensor) -> Tensor:
    """``delta / ||delta||_2`` per sample (the reference's ``normalize``, with its 1e-12)."""
    return delta / (_view(lp_norm(delta, "l2"), delta) + 1e-12)


def _l2_init(N, C, H, W, gen, dev, dt) -> Tensor:
    """The L2 starting perturbation: a grid of eta blocks of side H // 5 with random signs."""
    s = max(H // 5, 1)
    start = (H - 5 * s) // 2
    delta = torch.zeros(N, C, H, W, device=dev, dtype=dt)
    for r0 in range(start, H - s + 1, s):
        for c0 in range(start, W - s + 1, s):
            block = _eta_batch(s, N, gen, dev, dt) * _signs((N, C, 1, 1), gen, dev, dt)
            delta[:, :, r0:r0 + s, c0:c0 + s] += block
    return delta


def _eta_batch(s: int, B: int, gen, dev, dt) -> Tensor:
    """(B, 1, s, s): the eta profile of side s, transposed for a random half of the samples."""
    prof = eta_profile(s).to(device=dev, dtype=dt)
    both = torch.stack([prof, prof.T])                                  # (2, s, s)
    pick = torch.randint(0, 2, (B,), generator=gen, device=dev)
    return both[pick][:, None]


@functools.lru_cache(maxsize=64)
def eta_profile(s: int) -> Tensor:
    """The paper's s x s "pseudo-Gaussian" profile of unit L2 norm (before random transposition):
    the top half is a stack of centred rectangles with weights 1/(k+1)^2, the bottom half the
    same with a minus sign. Computed once per size, on the CPU."""
    prof = torch.cat([_rectangles(s // 2, s), -_rectangles(s - s // 2, s)])
    return (prof / prof.norm()).float()                # float64 math, float32 for every device


def _rectangles(rows: int, cols: int) -> Tensor:
    """Sum over k of 1/(k+1)^2 on the (2k+1)-wide rectangle centred at (rows//2, cols//2),
    clipped to the grid, normalised to unit L2 norm (the reference's ``eta_rectangles``)."""
    out = torch.zeros(rows, cols, dtype=torch.float64)
    if rows == 0:
        return out
    cr, cc = rows // 2, cols // 2
    for k in range(max(cr, cc) + 1):
        out[max(cr - k, 0):cr + k + 1, max(cc - k, 0):cc + k + 1] += 1.0 / (k + 1) ** 2
    return out / out.norm()
