"""Pure loss functions and the batch transforms they need: mixup, then TRADES / FIRE.

Nothing here touches a model's train/eval mode, zeroes gradients or picks a device: every function
takes tensors and returns tensors on the device it was given.

* :func:`mixup_batch` -- mixup (Zhang et al. 2018, https://arxiv.org/abs/1710.09412).
* :func:`trades_loss`, :func:`kl_divergence_sum` -- TRADES (Zhang et al. 2019,
  https://arxiv.org/abs/1901.08573).
* :func:`fisher_rao_distance`, :func:`fire_loss` -- FIRE (Picot et al. 2022,
  https://arxiv.org/abs/2106.06685).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _beta_sample(alpha: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """One draw of lam ~ Beta(alpha, alpha) as a 0-d tensor on ``device``, without a host sync.

    torch.distributions.Beta cannot take a generator, so we use Beta(a, a) = G1 / (G1 + G2) with
    G1, G2 ~ Gamma(a, 1) i.i.d., drawn by ``torch._standard_gamma`` (the op behind
    torch.distributions.Gamma, which does accept a generator). Float64 where the device has it, so
    that a small alpha (both gammas tiny) does not underflow to 0/0; if it still does, the two
    draws are equally likely to be the larger one, so 1/2 is the honest fallback.
    """
    dtype = torch.float32 if device.type == "mps" else torch.float64
    g = torch._standard_gamma(torch.full((2,), float(alpha), dtype=dtype, device=device),
                              generator=generator)  # (2,)
    total = g.sum()
    return torch.where(total > 0, g[0] / total.clamp_min(torch.finfo(dtype).tiny),
                       torch.full_like(total, 0.5))


def mixup_batch(x: Tensor, y: Tensor, alpha: float, num_classes: int,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Mix a batch with a shuffled copy of itself: mixup (Zhang et al. 2018).

    Paper: "mixup: Beyond Empirical Risk Minimization", https://arxiv.org/abs/1710.09412;
    reference code facebookresearch/mixup-cifar10 (``mixup_data``). As there, ONE
    ``lam ~ Beta(alpha, alpha)`` is drawn per batch and the partner of example ``i`` is
    ``perm[i]`` for a random permutation of the batch::

        x_mixed = lam * x + (1 - lam) * x[perm]                        # (B, C, H, W)
        soft    = lam * onehot(y) + (1 - lam) * onehot(y[perm])        # (B, num_classes)

    Cross-entropy against ``soft`` equals the reference's
    ``lam * CE(logits, y) + (1 - lam) * CE(logits, y[perm])`` (CE is linear in the target), so
    ``F.cross_entropy(logits, soft)`` is the mixup loss. ``alpha == 0`` means lam = 1 (no mixing),
    as in the reference code. Images stay in [0, 1] (a convex combination).

    Randomness: from ``generator`` if given (lam and the permutation are drawn on the generator's
    device and moved to ``x``'s device), else from torch's default generator of ``x``'s device.
    No host synchronisation: lam stays a 0-d tensor. (The Gamma draw behind lam has CPU and CUDA
    kernels; on another backend pass a CPU generator -- only lam and the permutation are drawn
    there, then moved.)

    >>> x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    >>> xm, t = mixup_batch(x, y, alpha=1.0, num_classes=10, generator=torch.Generator().manual_seed(0))
    >>> xm.shape, t.shape, bool(torch.allclose(t.sum(1), torch.ones(8)))
    (torch.Size([8, 1, 28, 28]), torch.Size([8, 10]), True)
    """
    if not torch.is_floating_point(x) or x.dim() < 2:
        raise ValueError(f"x must be a floating-point batch (B, ...), got {x.dtype} {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0] or torch.is_floating_point(y):
        raise ValueError(f"y must be integer labels of shape ({x.shape[0]},), got {y.dtype} "
                         f"{tuple(y.shape)}")
    if not alpha >= 0:  # also rejects NaN
        raise ValueError(f"mixup alpha must be >= 0, got {alpha}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    batch = x.shape[0]
    onehot = F.one_hot(y, num_classes).to(x.dtype)  # (B, K); raises on labels >= num_classes
    if alpha == 0:
        return x.clone(), onehot

    rng_device = generator.device if generator is not None else x.device
    lam = _beta_sample(alpha, generator, rng_device).to(device=x.device, dtype=x.dtype)  # ()
    perm = torch.randperm(batch, device=rng_device, generator=generator).to(x.device)   # (B,)
    x_mixed = torch.lerp(x[perm], x, lam)            # lam * x + (1 - lam) * x[perm]
    soft = torch.lerp(onehot[perm], onehot, lam)     # (B, K)
    return x_mixed, soft


# -- TRADES and FIRE: clean cross-entropy plus a divergence between clean and adversarial outputs --

def _check_logit_pair(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> None:
    if logits_clean.dim() != 2 or logits_clean.shape != logits_adv.shape:
        raise ValueError("logits_clean and logits_adv must both have shape (B, K); got "
                         f"{tuple(logits_clean.shape)} and {tuple(logits_adv.shape)}")
    if y.shape != logits_clean.shape[:1] or y.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"y must be integer labels of shape ({logits_clean.shape[0]},); "
                         f"got {tuple(y.shape)} {y.dtype}")
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite non-negative number, got {beta}")


def _at_least_float32(t: Tensor) -> Tensor:
    """Half-precision logits (autocast) are upcast; float32 / float64 stay as they are."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def trades_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """The TRADES objective ``CE(f(x), y) + beta * KL(f(x) || f(x'))``, a scalar.

    Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019,
    https://arxiv.org/abs/1901.08573; reference code https://github.com/yaodongyu/TRADES
    (``trades.py``). As there, the KL is summed over classes and averaged over the batch
    (``KLDivLoss(reduction="sum") / batch_size``) and gradients flow through BOTH arguments: the
    clean distribution is not detached, so the regulariser also pulls f(x) towards f(x').

    ``logits_clean``, ``logits_adv``: (B, K) logits of the model on x and on its adversarial x';
    ``y``: (B,) labels; ``beta``: weight of the robustness term (the paper's 1/lambda, 6 on
    CIFAR-10). Computed in (at least) float32 from log-softmaxes (the same value as the reference's
    ``softmax`` / ``log_softmax`` pair, without log(0) for underflowed probabilities).
    """
    _check_logit_pair(logits_clean, logits_adv, y, beta)
    logits_clean, logits_adv = _at_least_float32(logits_clean), _at_least_float32(logits_adv)
    natural = F.cross_entropy(logits_clean, y)
    log_p = F.log_softmax(logits_clean, dim=1)                      # (B, K) clean
    log_q = F.log_softmax(logits_adv, dim=1)                        # (B, K) adversarial
    kl = (log_p.exp() * (log_p - log_q)).sum() / len(y)             # KL(p || q), batch mean
    return natural + beta * kl


def kl_divergence_sum(logits_clean: Tensor, logits_adv: Tensor) -> Tensor:
    """``sum_i KL(softmax(clean_i) || softmax(adv_i))`` over the batch, a scalar: the loss TRADES'
    inner maximisation ascends (the reference's ``KLDivLoss(reduction="sum")`` of
    ``log_softmax(adv)`` against ``softmax(clean)``), computed in (at least) float32 from
    log-softmaxes. ``logits_clean``, ``logits_adv``: (B, K)."""
    if logits_clean.dim() != 2 or logits_clean.shape != logits_adv.shape:
        raise ValueError("logits_clean and logits_adv must both have shape (B, K); got "
                         f"{tuple(logits_clean.shape)} and {tuple(logits_adv.shape)}")
    log_p = F.log_softmax(_at_least_float32(logits_clean), dim=1)     # (B, K)
    log_q = F.log_softmax(_at_least_float32(logits_adv), dim=1)       # (B, K)
    return (log_p.exp() * (log_p - log_q)).sum()


def fisher_rao_distance(p: Tensor, q: Tensor) -> Tensor:
    """Fisher-Rao distance ``2 * arccos(sum_k sqrt(p_k q_k))`` between categorical distributions.

    ``p``, ``q``: (..., K) probability vectors (non-negative, summing to 1 along the last axis);
    returns the (...,) distances, in [0, pi]: 0 for equal distributions, pi for disjoint supports.
    Picot et al., "Adversarial Robustness via Fisher-Rao Regularization", IEEE TPAMI 2022,
    https://arxiv.org/abs/2106.06685, eq. (5).

    Computed through the equivalent ``4 * arcsin(||sqrt(p) - sqrt(q)||_2 / 2)`` (since
    ``||sqrt p - sqrt q||^2 = 2 - 2 * sum sqrt(p q)`` for normalised p, q): the value is exact at
    p == q (no cancellation in ``1 - BC``) and the gradient stays finite there, where arccos'
    is infinite (torch gives the norm a zero subgradient at 0). Entries that are exactly 0 get a
    zero gradient instead of sqrt's infinite one (they are clamped to the smallest normal float).
    """
    if p.shape != q.shape or p.dim() < 1:
        raise ValueError(f"p and q must have the same shape (..., K); got {tuple(p.shape)} "
                         f"and {tuple(q.shape)}")
    # One host sync: this is a measurement, not a training-loop hot path (fire_loss is).
    for name, t in (("p", p), ("q", q)):
        if not bool(((t >= 0).all() & (t.sum(-1) - 1).abs().le(1e-3).all()).item()):
            raise ValueError(f"{name} must hold probability vectors (>= 0, summing to 1 "
                             "along the last axis)")
    tiny = torch.finfo(p.dtype).tiny
    gap = (p.clamp_min(tiny).sqrt() - q.clamp_min(tiny).sqrt()).norm(p=2, dim=-1)  # (...,)
    return 4 * torch.asin((gap / 2).clamp(max=1.0))


def fire_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float,
              stability: float = 1e-6) -> Tensor:
    """The FIRE objective ``CE(f(x), y) + beta * mean_i arccos(BC_i - stability)^2``, a scalar.

    Picot et al., "Adversarial Robustness via Fisher-Rao Regularization", IEEE TPAMI 2022,
    https://arxiv.org/abs/2106.06685; reference code
    https://github.com/MarinePICOT/Adversarial-Robustness-via-Fisher-Rao-Regularization
    (``src/losses.py``, ``fire_loss``). ``BC_i = sum_k sqrt(p_k(x_i) p_k(x'_i))`` is the
    Bhattacharyya coefficient, so without the stabiliser the regulariser is
    ``(fisher_rao_distance / 2)^2`` averaged over the batch; as in the reference, gradients flow
    through both the clean and the adversarial distribution.

    How the arccos gradient stays finite (as the authors do): ``arccos'(u) = -1/sqrt(1-u^2)`` is
    infinite at u = 1, i.e. whenever the two distributions coincide (which is exactly where the
    inner attack starts). The reference subtracts a small constant ``args.eps`` inside the
    arccos; ``stability`` is that constant. Their MNIST config uses 1e-6 (our default); their
    CIFAR config uses 1e-12, which in float32 leaves ``1 - 1e-12 == 1`` and so would not help.

    Deviations, numerical only (same value where the reference is finite): ``sqrt(p_k q_k)`` is
    computed as ``exp((log p_k + log q_k) / 2)`` from log-softmaxes, because the reference's
    ``(p * q) ** 0.5`` has an infinite derivative (NaN after softmax's backward) when the product
    underflows to 0 for confident models; and BC's value is clamped to <= 1 before the stabiliser
    is subtracted (float32 rounding can put it a hair above 1, which Cauchy-Schwarz forbids), with
    the gradient passed through unchanged.
    """
    _check_logit_pair(logits_clean, logits_adv, y, beta)
    if not 0 < stability < 1:
        raise ValueError(f"stability must lie in (0, 1), got {stability}")
    logits_clean, logits_adv = _at_least_float32(logits_clean), _at_least_float32(logits_adv)
    natural = F.cross_entropy(logits_clean, y)
    return natural + beta * fisher_rao_penalty(logits_clean, logits_adv, stability).mean()


def fisher_rao_penalty(logits_p: Tensor, logits_q: Tensor, stability: float = 1e-6) -> Tensor:
    """Per-sample ``arccos(BC - stability)^2``, shape (B,), between softmax(logits_p) and
    softmax(logits_q).

    FIRE's regulariser (and the loss its inner attack ascends); see :func:`fire_loss`.
    """
    log_p = F.log_softmax(_at_least_float32(logits_p), dim=1)       # (B, K)
    log_q = F.log_softmax(_at_least_float32(logits_q), dim=1)       # (B, K)
    bc = ((log_p + log_q) / 2).exp().sum(1)                         # (B,) Bhattacharyya coeff.
    # Clamp the value to <= 1 but let the gradient through unchanged (straight-through): near
    # coincidence, where FIRE's inner attack starts, the authors' gradient must survive.
    bc = bc - (bc - bc.clamp(max=1.0)).detach()
    return torch.acos(bc - stability) ** 2
