"""BPDA: attack through preprocessing that has no useful gradient (Athalye, Carlini & Wagner 2018).

Paper: Athalye, Carlini & Wagner, "Obfuscated gradients give a false sense of security:
circumventing defenses to adversarial examples", ICML 2018, https://arxiv.org/abs/1802.00420
(code: anishathalye/obfuscated-gradients), Sec. 4.1. A defense ``f(g(x))`` whose preprocessing
``g`` is non-differentiable (rounding, JPEG, a median) or has a zero gradient almost everywhere
stops every gradient attack. Backward Pass Differentiable Approximation runs ``g`` on the forward
pass and replaces it by a differentiable ``h`` with ``h(x) ~ g(x)`` on the backward pass only --
for a preprocessing that keeps images close to themselves, ``h`` = the identity (the
"straight-through" estimator). The loss the attack ascends is then the defended model's own loss
(the forward pass is exactly ``f(g(x))``); only its gradient is approximated.

The other adaptive tools live where the attacks use them: EOT for randomized defenses is the
``eot_samples`` keyword of fgsm / pgd / apgd (:func:`robust_nb.attacks.loss_and_grad`), and the
CW margin and DLR losses for saturated softmaxes are their ``loss="cw"`` / ``loss="dlr"``.

Implementation: a ``torch.autograd.Function`` rather than the paper code's straight-through form
``x + stop_gradient(g(x) - x)``. The Function returns ``g(x)`` itself, bit for bit (the
straight-through sum can differ from ``g(x)`` by a rounding of ``x + (g(x) - x)``, which moves a
point sitting exactly on a rounding level), runs ``g`` without building a graph, and evaluates a
surrogate ``h`` only on the backward pass.

>>> import robust_nb as rnb
>>> defended = rnb.defenses.discretize(model, levels=4)       # Defended(preprocess, model)
>>> x_adv = rnb.attacks.pgd(defended.bpda(), x, y, eps=0.3, alpha=0.01, steps=40)
>>> rnb.evaluation.accuracy(defended, x_adv, y)               # judged by the real defense
>>> round_bpda = rnb.attacks.bpda(torch.round)                # any callable works
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class _BPDAFunction(torch.autograd.Function):
    """forward: ``preprocess(x)``; backward: the identity, or the surrogate's vector-Jacobian
    product at ``x``."""

    @staticmethod
    def forward(ctx, x: Tensor, preprocess: Callable, surrogate: Callable | None) -> Tensor:
        out = preprocess(x)                                  # grad mode is off inside forward
        if surrogate is None and out.shape != x.shape:
            raise ValueError(f"BPDA with the identity needs a preprocessing that keeps the shape; "
                             f"it maps {tuple(x.shape)} to {tuple(out.shape)} (pass a surrogate)")
        ctx.surrogate = surrogate
        ctx.out_shape = out.shape
        if surrogate is not None:
            ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if ctx.surrogate is None:
            return grad_out, None, None
        x, = ctx.saved_tensors
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            approx = ctx.surrogate(xg)
        if approx.shape != ctx.out_shape:
            raise ValueError(f"the BPDA surrogate maps to {tuple(approx.shape)}, the preprocessing "
                             f"to {tuple(ctx.out_shape)}; they must agree")
        if not approx.requires_grad:                         # a constant surrogate: no gradient
            return torch.zeros_like(x), None, None
        grad, = torch.autograd.grad(approx, xg, grad_out)
        return grad, None, None


class BPDA(nn.Module):
    """``preprocess`` on the forward pass, the identity's (or ``surrogate``'s) gradient on the
    backward pass. Module arguments are registered as submodules, so they follow ``.to()``,
    ``.eval()`` and :func:`robust_nb.attacks.attack_mode`.

    Without gradients (``torch.no_grad()``, or an input that does not require them) it is exactly
    ``preprocess``. A randomized ``preprocess`` draws its randomness on every forward pass as
    usual (combine BPDA with EOT's ``eot_samples``); a surrogate is evaluated once per backward.
    """

    def __init__(self, preprocess: Callable[[Tensor], Tensor],
                 surrogate: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        if not callable(preprocess):
            raise ValueError(f"preprocess must be callable (a function or module mapping images "
                             f"to images), got {type(preprocess).__name__}")
        if surrogate is not None and not callable(surrogate):
            raise ValueError(f"surrogate must be None (the identity) or callable, "
                             f"got {type(surrogate).__name__}")
        self.preprocess = preprocess
        self.surrogate = surrogate

    def forward(self, x: Tensor) -> Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return self.preprocess(x)
        return _BPDAFunction.apply(x, self.preprocess, self.surrogate)

    def extra_repr(self) -> str:
        if isinstance(self.surrogate, nn.Module):
            return ""
        name = "identity" if self.surrogate is None else getattr(self.surrogate, "__name__", "?")
        return f"surrogate={name}"


def bpda(preprocess: Callable[[Tensor], Tensor],
         surrogate: Callable[[Tensor], Tensor] | None = None) -> BPDA:
    """A :class:`BPDA` module: ``preprocess`` forward, the gradient of ``surrogate`` (default: the
    identity, i.e. the incoming gradient passes straight through) backward.

    >>> q = bpda(lambda x: torch.round(x * 3) / 3)
    >>> x = torch.rand(2, 1, 4, 4, requires_grad=True)
    >>> q(x).sum().backward()                                  # x.grad is all ones
    >>> smooth = bpda(median_filter, surrogate=lambda x: F.avg_pool2d(x, 3, 1, 1))
    """
    return BPDA(preprocess, surrogate)
