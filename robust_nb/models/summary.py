"""Measuring an architecture: parameters, FLOPs, and the shape of every stage's feature maps."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..modes import model_mode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter entries (buffers such as BN statistics and Normalize's are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _probe(model: nn.Module, input_shape: tuple[int, ...]) -> Tensor:
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.rand((1, *input_shape), device=device)


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs of one forward pass on one image of shape (C, H, W), counted by PyTorch.

    ``torch.utils.flop_counter.FlopCounterMode`` counts matrix multiplications and convolutions
    as 2 FLOPs per multiply-add (so this is twice the "MACs" many papers report) and ignores
    element-wise work (BN, activations, pooling). The model's train/eval mode is restored.
    """
    x = _probe(model, input_shape)
    with model_mode(model, training=False), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


@torch.no_grad()
def feature_shapes(model: nn.Module, input_shape: tuple[int, int, int],
                   names: list[str] | None = None) -> dict[str, tuple[int, ...]]:
    """Output shape (C, H, W) of each named direct child (or of ``names``) on one image.

    Children are visited in registration order, which for the course's models is the order of
    the forward pass; containers (``nn.ModuleList``) are expanded one level (``stages.0`` ...);
    ``nn.Identity`` placeholders (e.g. absent regularization layers) are skipped.
    """
    modules = dict(model.named_modules())
    if names is None:
        names = []
        for name, child in model.named_children():
            if isinstance(child, nn.ModuleList):
                names += [f"{name}.{i}" for i, c in enumerate(child) if not isinstance(c, nn.Identity)]
            elif not isinstance(child, nn.Identity):
                names.append(name)
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"no submodule named {unknown}; the model has {list(modules)[1:12]} ...")
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [modules[n].register_forward_hook(
        lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape[1:]))) for n in names]
    try:
        with model_mode(model, training=False):
            model(_probe(model, input_shape))
    finally:
        for h in hooks:
            h.remove()
    return {n: shapes[n] for n in names if n in shapes}


def layer_gradient_norms(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """L2 norm of the cross-entropy gradient w.r.t. each conv / linear weight, in forward order.

    One forward/backward pass on ``(x, y)`` in training mode (BatchNorm uses batch statistics, as
    in the first training step). Gradients come from ``torch.autograd.grad``, so the parameters'
    ``.grad`` are left untouched; the model's mode and its BatchNorm running statistics are
    restored. Used to compare gradient flow in plain and residual networks at initialisation (He
    et al. 2016, Sec. 4.1).
    """
    layers = [(n, m.weight) for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and ".shortcut" not in n]
    if not layers:
        raise ValueError("the model has no Conv2d or Linear layer")
    saved = [(b, b.clone()) for b in model.buffers()]      # BN running stats: put back after
    try:
        with model_mode(model, training=True):
            loss = nn.functional.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, [w for _, w in layers])
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)
    norms = torch.stack([g.norm() for g in grads]).tolist()   # one host sync
    return {name: v for (name, _), v in zip(layers, norms)}


def summarize(name: str, input_shape: tuple[int, int, int], num_classes: int = 10,
              **build_kw) -> dict:
    """``{"model", "params", "flops"}`` of ``build_model(name, ...)`` on one (C, H, W) image.

    The model is built on PyTorch's ``meta`` device: shapes only, no memory and no arithmetic,
    so even WRN-34-10 (46M parameters) is measured in milliseconds.
    """
    from . import build_model  # the registry lives in the package's __init__

    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes, in_channels=input_shape[0], **build_kw)
    return {"model": name, "params": count_parameters(model),
            "flops": count_flops(model, input_shape)}


@torch.no_grad()
def se_gates(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """The squeeze-and-excitation channel weights of every SE block on ``x``: name -> (B, C).

    Read with forward hooks on each ``SqueezeExcitation.gate`` during one eval-mode forward pass
    (the model's mode is restored). Values lie in (0, 1): the factor each channel is scaled by.
    """
    from .layers import SqueezeExcitation

    blocks = {n: m for n, m in model.named_modules() if isinstance(m, SqueezeExcitation)}
    if not blocks:
        raise ValueError("the model has no squeeze-and-excitation block (try 'se_resnet18')")
    gates: dict[str, Tensor] = {}
    hooks = [m.gate.register_forward_hook(
        lambda _m, _i, out, n=n: gates.__setitem__(n, out.detach())) for n, m in blocks.items()]
    try:
        with model_mode(model, training=False):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return gates


@torch.no_grad()
def feature_maps(model: nn.Module, x: Tensor, name: str) -> Tensor:
    """The output of submodule ``name`` (e.g. ``"stage1"``) on ``x``, in eval mode (restored)."""
    modules = dict(model.named_modules())
    if name not in modules:
        raise ValueError(f"no submodule named {name!r}; the model has {list(modules)[1:12]} ...")
    out: list[Tensor] = []
    hook = modules[name].register_forward_hook(lambda _m, _i, o: out.append(o.detach()))
    try:
        with model_mode(model, training=False):
            model(x)
    finally:
        hook.remove()
    return out[0]
