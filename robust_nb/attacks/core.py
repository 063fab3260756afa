"""Bookkeeping shared by every attack, so each attack file holds only its algorithm.

* :func:`check_attack_inputs` / :func:`check_model_inputs` validate the model, images, labels,
  eps and norm with clear errors (one host synchronisation); :func:`check_labels` checks labels
  against a model's number of classes.
* :func:`attack_mode` puts the model in eval mode for the attack and restores its train/eval mode
  (module by module) and its parameters' ``requires_grad`` afterwards. Attacks take gradients with
  ``torch.autograd.grad`` with respect to the input only, so parameters' ``.grad`` are untouched.
* :func:`batched` runs an attack on large inputs in chunks.
* :func:`project` keeps a point inside the eps-ball and [0, 1]; :func:`lp_norm` measures it.
* :func:`loss_and_grad` is the one gradient oracle of the gradient attacks (fgsm, pgd, apgd),
  with EOT (``eot_samples``) for randomized models; :func:`eot_logits` the matching forward pass.

Decisions every attack shares: an empty batch is returned as an empty copy; images must have the
dtype the model computes in (float64 images for a float32 model raise a ValueError that says how
to convert, rather than being attacked at a silently different precision); NaN or infinite
images and labels outside ``[0, num_classes)`` raise a ValueError.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..data import check_image_format, check_images
from ..modes import model_device, model_dtype, model_mode

NORMS = ("linf", "l2")


def check_model_inputs(model: nn.Module, x: Tensor, y: Tensor | None = None, *,
                       name: str = "images") -> None:
    """Raise ValueError unless ``x`` (and ``y``) are valid inputs of ``model``: a float (N, C, H, W)
    batch of finite values in [0, 1] in the model's dtype, and labels in ``[0, num_classes)``.

    The number of classes comes from one forward pass on one image (eval mode, no gradients; only
    when labels are given). All value checks share one host synchronisation.
    """
    _checked_num_classes(model, x, y, name)


def _checked_num_classes(model: nn.Module, x: Tensor, y: Tensor | None, name: str) -> int | None:
    """:func:`check_model_inputs`; returns the model's number of classes where it was needed."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_image_format(x, y, name=name)
    dtype = model_dtype(model)
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name} are {x.dtype} but the model computes in {dtype}; convert the "
                         f"images ({name}.to({dtype})) or the model (model.to({x.dtype}))")
    num_classes = _num_classes(model, x) if y is not None and len(x) else None
    check_images(x, y, name=name, num_classes=num_classes)
    return num_classes


def _num_classes(model: nn.Module, x: Tensor) -> int:
    with model_mode(model, training=False), torch.no_grad():
        return model(x[:1].to(model_device(model))).shape[-1]


def check_attack_inputs(model: nn.Module, x: Tensor, y: Tensor | None,
                        eps: float | None = None, norm: str | None = None, *,
                        target: Tensor | None = None, labels_required: bool = True) -> None:
    """:func:`check_model_inputs`; ``eps`` finite and >= 0; ``norm`` one of :data:`NORMS`; and
    ``target`` (a targeted attack's labels, shaped like ``y``) in ``[0, num_classes)`` (one more
    host synchronisation). ``y`` may be None only with ``labels_required=False``."""
    if y is None and labels_required:
        raise ValueError("this attack needs the true labels y, a 1-D tensor with one label per "
                         "image")
    if eps is not None and (not math.isfinite(eps) or eps < 0):
        raise ValueError(f"eps must be a finite non-negative number, got {eps}")
    if norm is not None and norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
    num_classes = _checked_num_classes(model, x, y, "images")
    if target is None:
        return
    if (not isinstance(target, Tensor) or target.shape != y.shape or target.is_floating_point()
            or target.dtype == torch.bool):
        raise ValueError("target must be a tensor of integer target labels shaped like y")
    if num_classes is not None:
        check_labels(target, num_classes, "target labels")


def check_labels(labels: Tensor, num_classes: int, name: str = "labels") -> None:
    """ValueError unless every label is a class index of a ``num_classes``-way model (one sync)."""
    if len(labels) == 0:
        return
    lo, hi = torch.stack(list(torch.aminmax(labels))).tolist()
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name} must lie in [0, {num_classes - 1}] for this model, got values in "
                         f"[{lo}, {hi}]")


@contextlib.contextmanager
def attack_mode(model: nn.Module):
    """Eval mode and frozen parameters for the duration of an attack; both restored afterwards.

    Freezing the parameters means the attack's backward passes compute input gradients only
    (faster, and no ``.grad`` is ever written to a parameter).

    >>> with attack_mode(model):
    ...     x_adv = my_attack_loop(model, x, y)
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with model_mode(model, training=False):
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            yield model
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def batched(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
            batch_size: int | None) -> Tensor:
    """Apply ``fn(x_chunk, y_chunk) -> out_chunk`` chunk by chunk and concatenate. ``y`` is any
    tensor aligned with ``x`` along dim 0 (labels, or per-image noise)."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}")
    if batch_size is None or len(x) <= batch_size:
        return fn(x, y)
    return torch.cat([fn(x[i:i + batch_size], y[i:i + batch_size])
                      for i in range(0, len(x), batch_size)])


def lp_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-sample norm of a perturbation batch, shape (N,)."""
    flat = delta.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(p=2, dim=1)


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Project ``x_adv`` onto the eps-ball around ``x`` (in ``norm``) intersected with [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = per_sample(lp_norm(delta, "l2").clamp_min(1e-12), x)
        delta = delta * (eps / n).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


# -- shared by the gradient attacks (fgsm, pgd, apgd) -------------------------------------------

def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded generator on ``device`` (same seed, same device -> same numbers)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def check_eot_samples(eot_samples: int) -> int:
    """``eot_samples`` as an int; a ValueError unless it is a positive integer."""
    if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
        raise ValueError(f"eot_samples must be a positive integer (1: no EOT), got {eot_samples!r}")
    return eot_samples


def loss_and_grad(model: nn.Module, x_adv: Tensor, loss: Callable[..., Tensor], *loss_args: Tensor,
                  amp: bool = False, eot_samples: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample loss (B,), logits (B, K) and the gradient of the summed loss w.r.t. ``x_adv``.

    The gradient is taken with ``torch.autograd.grad`` w.r.t. the input only, so no parameter
    ``.grad`` is written. Summing (not averaging) makes each sample's gradient independent of the
    batch size. ``amp`` runs the forward pass under bf16 autocast on the input's device.

    ``eot_samples = k > 1`` is Expectation over Transformation (Athalye, Engstrom, Ilyas & Kwok,
    "Synthesizing robust adversarial examples", ICML 2018, https://arxiv.org/abs/1707.07397; used
    against randomized defenses by Athalye, Carlini & Wagner 2018,
    https://arxiv.org/abs/1802.00420): ``k`` forward/backward passes, each drawing the model's own
    randomness anew, and the loss, logits and gradient returned are their means -- a Monte-Carlo
    estimate of the gradient of the expected loss. The passes run one after another, so memory is
    that of one pass. A model whose output does not depend on ``x_adv`` through autograd (its
    preprocessing detaches the input) gets a zero gradient, which is what such a defense shows a
    gradient attack.

    >>> losses, logits, grad = loss_and_grad(model, x, ce_loss, y, eot_samples=10)
    """
    check_eot_samples(eot_samples)
    x_adv = x_adv.detach().requires_grad_(True)
    loss_sum = logits_sum = grad_sum = None
    for _ in range(eot_samples):
        with torch.enable_grad(), torch.autocast(device_type=x_adv.device.type,
                                                 dtype=torch.bfloat16, enabled=amp):
            logits = model(x_adv).float()                          # (B, K)
            losses = loss(logits, *loss_args)                      # (B,)
        grad = None
        if losses.requires_grad:
            grad, = torch.autograd.grad(losses.sum(), x_adv, allow_unused=True)
        if grad is None:                                           # the input was detached
            grad = torch.zeros_like(x_adv)
        if loss_sum is None:
            loss_sum, logits_sum, grad_sum = losses.detach(), logits.detach(), grad.detach()
        else:
            loss_sum, logits_sum = loss_sum + losses.detach(), logits_sum + logits.detach()
            grad_sum = grad_sum + grad.detach()
    if eot_samples == 1:
        return loss_sum, logits_sum, grad_sum
    return loss_sum / eot_samples, logits_sum / eot_samples, grad_sum / eot_samples


@torch.no_grad()
def eot_logits(model: nn.Module, x: Tensor, eot_samples: int = 1, amp: bool = False) -> Tensor:
    """Logits (B, K) of ``model`` on ``x``, averaged over ``eot_samples`` forward passes (no
    gradients): the decisions an EOT attack takes (which restart is worst, which samples are
    already fooled) on a randomized model."""
    check_eot_samples(eot_samples)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        total = model(x).float()
        for _ in range(eot_samples - 1):
            total = total + model(x).float()
    return total / eot_samples if eot_samples > 1 else total


def per_sample(t: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1) for broadcasting against a batch like ``like``."""
    return t.view(-1, *([1] * (like.dim() - 1)))


def normalize_direction(g: Tensor, norm: str) -> Tensor:
    """Steepest-ascent direction of unit ``norm``: sign(g) for L-inf, g / ||g||_2 for L2."""
    if norm == "linf":
        return g.sign()
    return g / per_sample(lp_norm(g, "l2"), g).clamp_min(1e-12)


def random_start(x: Tensor, eps: float, norm: str, generator: torch.Generator) -> Tensor:
    """A uniformly random point of the L-inf ball, or a random point of the L2 ball (random
    direction, radius uniform in [0, eps]), clipped to [0, 1]."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = (u * 2 - 1) * eps
    else:
        d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        r = torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype) * eps
        delta = normalize_direction(d, "l2") * per_sample(r, x)
    return (x + delta).clamp(0.0, 1.0)


def _eval_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``(scale, shift)``, each (C,): the eval-mode BatchNorm as ``x * scale + shift``, with PyTorch's
    CPU arithmetic (``scale = w / sqrt(var + eps)``, ``shift = b - mean * scale``)."""
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    return scale, shift


class _EvalBatchNorm(nn.Module):
    """An eval-mode BatchNorm as a per-channel affine map ``x * scale + shift``: outputs agree
    with the BatchNorm's up to float rounding, and its backward is one vectorised multiply
    instead of ``native_batch_norm_backward`` (why this pays: benchmarks/README.md)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        scale, shift = _eval_affine(bn)
        self.register_buffer("scale", scale.view(-1, 1, 1))       # (C, 1, 1)
        self.register_buffer("shift", shift.view(-1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.shift, x, self.scale)


class _FoldedConv(nn.Module):
    """A Conv2d and the eval-mode BatchNorm right after it as one convolution: weights scaled per
    output channel, the shift as its bias. Saves the affine map's pass over the feature map
    forward and backward (PGD on the quick ConvNet 1.06-1.29x faster than with the affine map
    alone: benchmarks/batchnorm_swap.py)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__()
        scale, shift = _eval_affine(bn)
        weight = conv.weight.detach() * scale.view(-1, 1, 1, 1)
        if conv.weight.is_contiguous(memory_format=torch.channels_last):
            weight = weight.contiguous(memory_format=torch.channels_last)
        bias = shift if conv.bias is None else conv.bias.detach() * scale + shift
        self.register_buffer("weight", weight)                     # (C_out, C_in, k, k)
        self.register_buffer("bias", bias)                         # (C_out,)
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return self.conv._conv_forward(x, self.weight, self.bias)


def _frozen_bn(module: nn.Module) -> bool:
    return (type(module) is nn.BatchNorm2d and module.track_running_stats
            and module.running_var is not None)


@contextlib.contextmanager
def batchnorm_as_affine(model: nn.Module):
    """While an attack runs (model in eval mode), replace each BatchNorm2d that uses running
    statistics by the fixed affine map it computes: folded into the Conv2d just before it where
    the two are neighbours in an ``nn.Sequential`` (:class:`_FoldedConv`, the BatchNorm replaced
    by an Identity), else as :class:`_EvalBatchNorm`. The original modules are put back
    afterwards, also on errors. Hooks registered on the replaced modules do not fire meanwhile
    (hooks on their parents do)."""
    swapped = []                                   # (parent, name, original module)
    if not model.training:
        for parent in list(model.modules()):
            children = list(parent.named_children())
            folded = set()
            if isinstance(parent, nn.Sequential):
                for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
                    if type(conv) is nn.Conv2d and _frozen_bn(bn):
                        setattr(parent, conv_name, _FoldedConv(conv, bn))
                        setattr(parent, bn_name, nn.Identity())
                        swapped += [(parent, conv_name, conv), (parent, bn_name, bn)]
                        folded |= {conv_name, bn_name}
            for name, child in children:
                if name not in folded and _frozen_bn(child):
                    setattr(parent, name, _EvalBatchNorm(child))
                    swapped.append((parent, name, child))
    try:
        yield model
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)
