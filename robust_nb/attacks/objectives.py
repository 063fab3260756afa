"""Per-sample objectives attacks ascend, on logits: cross-entropy, the Carlini-Wagner margin, DLR,
and their targeted versions.

Every function maps logits ``(B, K)`` (and labels ``(B,)``) to one value per sample ``(B,)``;
attacks maximise the sum of these, so a larger value means "more adversarial" except for
:func:`margin`, which is positive while the sample is still classified correctly.

The CW loss is the margin objective of Carlini & Wagner, "Towards evaluating the robustness of
neural networks", IEEE S&P 2017, https://arxiv.org/abs/1608.04644 (their f_6, on logits), without
the confidence clamp ``max(., -kappa)``: the attack keeps ascending after the label flips (with
kappa = 0 the clamp would stop it exactly at the boundary). Unlike cross-entropy it does not go
through a softmax, so its gradient does not vanish when huge logits saturate the softmax (Carlini
& Wagner 2016, "Defensive distillation is not robust to adversarial examples",
https://arxiv.org/abs/1607.04311).

DLR ("difference of logits ratio") is from Croce & Hein 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", https://arxiv.org/abs/2003.01690,
Eq. (5) and the targeted version of Sec. 4; both are shift- and scale-invariant in the logits,
which is why they still work against models whose CE gradients vanish through huge logits.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of each sample, (B,)."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """``z_y - max_{i != y} z_i`` per sample, (B,): > 0 while the sample is still correct."""
    logits = logits.float()
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return z_y - others.amax(dim=1)


def cw_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Carlini-Wagner margin loss ``max_{i != y} z_i - z_y`` per sample, (B,): > 0 once fooled."""
    return -margin(logits, y)


def cw_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted CW loss ``z_t - max_{i != t} z_i``, (B,): > 0 once classified as ``target``
    (``y`` is unused; same signature as DLR-T)."""
    return margin(logits, target)


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """DLR loss, (B,): ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)`` (needs >= 3 classes)."""
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {logits.shape[1]}")
    z_sorted = logits.float().sort(dim=1).values                       # ascending, (B, K)
    return -margin(logits, y) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR, (B,): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` (needs >= 4 classes)."""
    if logits.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, got {logits.shape[1]}")
    logits = logits.float()
    z_sorted = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (z_sorted[:, -1] - 0.5 * (z_sorted[:, -3] + z_sorted[:, -4]) + 1e-12)


def ce_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Minus the cross-entropy towards ``target``, (B,) (``y`` is unused; same signature as DLR-T)."""
    return -F.cross_entropy(logits.float(), target, reduction="none")


# name -> (untargeted loss(logits, y), targeted loss(logits, y, target))
_LOSSES = {"ce": (ce_loss, ce_targeted_loss), "cw": (cw_loss, cw_targeted_loss),
           "dlr": (dlr_loss, dlr_targeted_loss)}
LOSSES = tuple(_LOSSES)


def loss_fn(name: str, targeted: bool = False):
    """The per-sample loss for ``name`` ("ce" | "cw" | "dlr"); targeted ones take
    ``(logits, y, target)``. A ValueError lists the known names for any other ``name``.

    >>> loss_fn("cw", targeted=False) is cw_loss
    True
    """
    if not isinstance(name, str) or name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
    return _LOSSES[name][1 if targeted else 0]
