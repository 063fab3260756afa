"""AugMix: mixtures of random augmentation chains, and the Jensen-Shannon consistency loss.

D. Hendrycks, N. Mu, E. D. Cubuk, B. Zoph, J. Gilmer, B. Lakshminarayanan, "AugMix: A Simple Data
Processing Method to Improve Robustness and Uncertainty", ICLR 2020,
https://arxiv.org/abs/1912.02781. Reference code: https://github.com/google-research/augmix
(``augment_and_mix.py``, ``augmentations.py``, the JSD loss in ``cifar.py``).

``augmix(x)`` mixes ``width`` chains of 1 to 3 random operations (or ``depth`` of them) with
Dirichlet(alpha) weights, then mixes the result with the clean image with a Beta(alpha, alpha)
weight:  ``x_augmix = (1 - m) x + m sum_i w_i chain_i(x)``. The operations are the reference's
list, the ones that do not overlap the test corruptions (:mod:`robust_nb.corruptions`):
autocontrast, equalize, posterize, rotate, solarize, shear_x, shear_y, translate_x, translate_y
(each of the nine equally likely, so shears and translations are picked twice as often as the
others, as in the reference). Training adds ``lambda * JS(p_clean, p_augmix1, p_augmix2)`` to the
clean images' cross-entropy (lambda = 12): ``ClassicalTraining(..., augmix=True)``.

Everything runs batched on x's device, each image with its own chain, operations and weights,
drawn from one ``torch.Generator``; no per-image Python, no host synchronisation.

>>> g = torch.Generator().manual_seed(0)
>>> x_mix = augmix(x, severity=3, width=3, depth=0, alpha=1.0, generator=g)
>>> loss = jsd_consistency(model(x), model(augmix(x, generator=g)), model(augmix(x, generator=g)))

Differences from the reference (PIL on 8-bit images):

* Images stay float between operations; the reference rounds to 8 bits after each. Equalize and
  posterize act on 8-bit levels (the image rounded to multiples of 1/255, not truncated).
* Autocontrast maps each channel's [min, max] to [0, 1] exactly (PIL: an 8-bit table, truncated);
  solarize inverts values ``>= threshold / 255``.
* Rotate, shear and translate: PIL's affine maps (about the image centre for rotations, about the
  top-left corner for shears) and its bilinear rule (zero outside the image, edge pixels repeated
  within the outer half pixel) through ``grid_sample``; no 8-bit truncation of the result.
* The translation's maximum is a third of the image's own side (the reference: of 32 px).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AUGMIX_OPS", "augmix", "augment", "apply_ops", "mixing_weights", "jsd_consistency", "augmix_loss"]

AUGMIX_OPS = ("autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y",
              "translate_x", "translate_y")
_GEOMETRIC = (3, 5, 6, 7, 8)        # indices of the affine operations in AUGMIX_OPS


def _float64(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _gamma(concentration: float, shape: tuple, generator, device) -> Tensor:
    # torch.distributions cannot take a generator; torch._standard_gamma (the op behind
    # torch.distributions.Gamma) can. Float64 so that a small alpha does not underflow to 0.
    alpha = torch.full(shape, float(concentration), dtype=_float64(device), device=device)
    return torch._standard_gamma(alpha, generator=generator)


def mixing_weights(n: int, width: int, alpha: float, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Per image: chain weights ``w`` ~ Dirichlet(alpha, ..., alpha), shape (n, width), and the
    skip weight ``m`` ~ Beta(alpha, alpha), shape (n,), both float32 on ``device``.

    Dirichlet and Beta from Gamma draws (G_i / sum G_i); where all draws underflow to 0 (a tiny
    alpha) the honest fallback is the symmetric point: equal weights, m = 1/2.
    """
    device = torch.device(device) if device is not None else (
        generator.device if generator is not None else torch.device("cpu"))
    g = _gamma(alpha, (n, width + 2), generator, device)              # (n, width + 2)
    chains, skip = g[:, :width], g[:, width:]
    total = chains.sum(1, keepdim=True)
    tiny = torch.finfo(g.dtype).tiny
    w = torch.where(total > 0, chains / total.clamp_min(tiny), torch.full_like(chains, 1 / width))
    total = skip.sum(1)
    m = torch.where(total > 0, skip[:, 0] / total.clamp_min(tiny), torch.full_like(total, 0.5))
    return w.float(), m.float()


# -- the operations ---------------------------------------------------------------------------

def _levels(x: Tensor) -> Tensor:
    return (x * 255).round().clamp(0, 255)                          # 8-bit levels, as floats


def _autocontrast(x: Tensor) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)                            # (N, C, 1, 1)
    hi = x.amax(dim=(2, 3), keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-12), x)


def _equalize(x: Tensor) -> Tensor:
    """PIL's ImageOps.equalize per channel: lut[i] = (step // 2 + #pixels below level i) // step
    with step = (#pixels - #pixels at the top level) // 255; unchanged where step is 0."""
    n, c, h, w = x.shape
    q = _levels(x).long().view(n, c, h * w)                          # (N, C, HW)
    hist = torch.zeros(n, c, 256, dtype=torch.long, device=x.device).scatter_add_(
        2, q, torch.ones_like(q))                                    # (N, C, 256)
    top = q.amax(2, keepdim=True)                                    # (N, C, 1)
    step = (h * w - hist.gather(2, top)) // 255                      # (N, C, 1)
    below = hist.cumsum(2) - hist                                    # (N, C, 256)
    lut = ((step // 2 + below) // step.clamp_min(1)).clamp(max=255)
    out = lut.gather(2, q).view(n, c, h, w).to(x.dtype) / 255
    return torch.where((step > 0).view(n, c, 1, 1), out, x)


def _posterize(x: Tensor, level: Tensor) -> Tensor:
    """Keep ``4 - int(level * 4 / 10)`` bits of each 8-bit value."""
    bits = 4 - (level * 4 / 10).floor()                              # (N,)
    unit = (2 ** (8 - bits)).view(-1, 1, 1, 1)
    return (torch.div(_levels(x), unit, rounding_mode="floor") * unit / 255).to(x.dtype)


def _solarize(x: Tensor, level: Tensor) -> Tensor:
    """Invert the values at or above ``256 - int(level * 256 / 10)`` (8-bit units)."""
    threshold = (256 - (level * 256 / 10).floor()).view(-1, 1, 1, 1) / 255
    return torch.where(x >= threshold, 1 - x, x)


def _affine(op: Tensor, level: Tensor, sign: Tensor, size: int) -> Tensor:
    """(N, 2, 3) maps from output to input pixel coordinates (origin at the top-left corner, as
    PIL's ``transform``); the identity for non-geometric operations."""
    n, dev = len(op), op.device
    a = torch.eye(3, device=dev).repeat(n, 1, 1)                     # (N, 3, 3)
    degrees = (level * 30 / 10).floor() * sign
    rad = -torch.deg2rad(degrees)                                    # PIL's rotate: counter-clockwise
    cos, sin, c = torch.cos(rad), torch.sin(rad), size / 2
    rot = torch.stack([torch.stack([cos, sin, c - cos * c - sin * c], 1),
                       torch.stack([-sin, cos, c + sin * c - cos * c], 1)], 1)  # (N, 2, 3)
    shear = level * 0.3 / 10 * sign
    shift = (level * (size / 3) / 10).floor() * sign
    a[:, :2] = torch.where((op == 3).view(n, 1, 1), rot, a[:, :2])
    a[:, 0, 1] = torch.where(op == 5, shear, a[:, 0, 1])
    a[:, 1, 0] = torch.where(op == 6, shear, a[:, 1, 0])
    a[:, 0, 2] = torch.where(op == 7, shift, a[:, 0, 2])
    a[:, 1, 2] = torch.where(op == 8, shift, a[:, 1, 2])
    return a[:, :2]


def _warp(x: Tensor, a: Tensor) -> Tensor:
    """``x`` at ``a @ (x + 1/2, y + 1/2, 1)`` for every output pixel, as PIL's bilinear transform:
    zero where that point lies outside the image, edge pixels repeated within the outer half
    pixel."""
    n, _, h, w = x.shape
    # normalised coordinates u = 2 p / size - 1  <=>  p = (u + 1) size / 2
    to_norm = torch.tensor([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]], device=x.device)
    from_norm = torch.linalg.inv(to_norm)
    last_row = torch.tensor([[[0, 0, 1.0]]], device=x.device).expand(n, 1, 3)
    theta = to_norm[:2] @ torch.cat([a, last_row], 1) @ from_norm           # (N, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (N, H, W, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = ((grid >= -1) & (grid < 1)).all(-1, keepdim=True).permute(0, 3, 1, 2)
    return out * inside


def augment(x: Tensor, op: Tensor, level: Tensor, sign: Tensor) -> Tensor:
    """Image ``i`` through ``AUGMIX_OPS[op[i]]`` at ``level[i]`` (the reference's level, in
    [0.1, severity]) with ``sign[i]`` (+1 or -1) for rotate, shear and translate. Deterministic.

    The reference's parameters: rotate ``int(level * 3)`` degrees; shear ``level * 0.03``;
    translate ``int(level * side / 30)`` px; posterize to ``4 - int(level * 0.4)`` bits;
    solarize above ``256 - int(level * 25.6)``; autocontrast and equalize ignore the level.
    """
    n = len(x)
    op, level, sign = op.to(x.device), level.to(x.device), sign.to(x.device)
    out = _warp(x, _affine(op, level, sign, x.shape[-1]))            # the geometric ops
    for index, fn in ((0, _autocontrast), (1, _equalize), (2, lambda v: _posterize(v, level)),
                      (4, lambda v: _solarize(v, level))):
        out = torch.where((op == index).view(n, 1, 1, 1), fn(x), out)
    return out


def apply_ops(x: Tensor, op: Tensor, severity: float, generator: torch.Generator | None = None
              ) -> Tensor:
    """:func:`augment` with each image's level drawn from U(0.1, severity) (the reference's
    ``sample_level``) and a random sign."""
    n = len(x)
    level = 0.1 + (severity - 0.1) * torch.rand(n, generator=generator, device=x.device)
    sign = torch.where(torch.rand(n, generator=generator, device=x.device) > 0.5, -1.0, 1.0)
    return augment(x, op, level, sign)


def augmix(x: Tensor, severity: float = 3, width: int = 3, depth: int = 0, alpha: float = 1.0,
           generator: torch.Generator | None = None) -> Tensor:
    """AugMix of a batch (N, C, H, W) in [0, 1]: ``(1 - m) x + m sum_i w_i chain_i(x)``.

    Args:
        severity: strength of the operations, in (0.1, 10] (the reference's ``aug_severity``, 3).
        width: chains per image (3).
        depth: operations per chain; 0 = 1 to 3, drawn per chain and image (the reference's -1).
        alpha: Dirichlet and Beta concentration (1).
        generator: a ``torch.Generator`` on x's device (None: torch's default one).
    """
    if not (0.1 < severity <= 10) or width < 1 or depth < 0 or not alpha > 0:
        raise ValueError(f"augmix needs 0.1 < severity <= 10, width >= 1, depth >= 0 and "
                         f"alpha > 0; got {severity}, {width}, {depth}, {alpha}")
    n, dev = len(x), x.device
    w, m = mixing_weights(n, width, alpha, generator, dev)          # (N, width), (N,)
    mix = torch.zeros_like(x)
    for i in range(width):
        d = (torch.full((n,), depth, device=dev) if depth > 0 else
             torch.randint(1, 4, (n,), generator=generator, device=dev))
        chain = x
        for step in range(depth or 3):
            op = torch.randint(len(AUGMIX_OPS), (n,), generator=generator, device=dev)
            chain = torch.where((step < d).view(n, 1, 1, 1), apply_ops(chain, op, severity, generator),
                                chain)
        mix = mix + w[:, i].view(n, 1, 1, 1).to(x.dtype) * chain
    m = m.view(n, 1, 1, 1).to(x.dtype)
    return ((1 - m) * x + m * mix).clamp(0, 1)


# -- the loss ---------------------------------------------------------------------------------

def jsd_consistency(*logits: Tensor) -> Tensor:
    """Jensen-Shannon divergence of the softmax distributions, ``mean_i KL(p_i || M)`` with
    ``M = mean_i p_i`` clamped to [1e-7, 1] (the reference's guard), summed over classes and
    averaged over the batch. Logits: two or more (B, K) tensors; the reference passes clean,
    AugMix 1 and AugMix 2."""
    if len(logits) < 2 or any(t.shape != logits[0].shape or t.dim() != 2 for t in logits):
        raise ValueError(f"jsd_consistency needs two or more (B, K) logits of one shape, got "
                         f"{[tuple(t.shape) for t in logits]}")
    probs = [F.softmax(t.float(), dim=1) for t in logits]
    log_mixture = (sum(probs) / len(probs)).clamp(1e-7, 1).log()
    return sum(F.kl_div(log_mixture, p, reduction="batchmean") for p in probs) / len(probs)


def augmix_loss(model: nn.Module, x: Tensor, y: Tensor, *, severity: float = 3, width: int = 3,
                depth: int = 0, alpha: float = 1.0, jsd_weight: float = 12.0,
                label_smoothing: float = 0.0, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
    """The AugMix training objective for one batch: ``(loss, logits)``.

    With ``jsd_weight > 0`` (the paper, 12): clean and two AugMix copies go through the model as
    one batch of 3B (BatchNorm sees all of them, as in the reference), cross-entropy on the clean
    third plus ``jsd_weight * jsd_consistency``; ``logits`` are the clean images'. With
    ``jsd_weight == 0`` (the reference's ``--no-jsd``): cross-entropy on one AugMix copy.
    The caller owns the model's mode and gradients (this only computes the loss).
    """
    with torch.autocast(device_type=x.device.type, enabled=False):   # augment in full precision
        views = [augmix(x, severity, width, depth, alpha, generator)
                 for _ in range(2 if jsd_weight > 0 else 1)]
    if jsd_weight == 0:
        logits = model(views[0])
        return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing), logits
    logits_all = model(torch.cat([x, *views]))                       # (3B, K)
    clean, aug1, aug2 = logits_all.split(len(x))
    loss = F.cross_entropy(clean.float(), y, label_smoothing=label_smoothing)
    return loss + jsd_weight * jsd_consistency(clean, aug1, aug2), clean

