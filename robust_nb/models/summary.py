"""Measuring an architecture: parameters, FLOPs, and the shape of every stage's feature maps."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


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
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def feature_shapes(model: nn.Module, input_shape: tuple[int, int, int],
                   names: list[str] | None = None) -> dict[str, tuple[int, ...]]:
    """Output shape (C, H, W) of each named direct child (or of ``names``) on one image.

    Children are visited in registration order, which for the course's models is the order of
    the forward pass; containers (``nn.ModuleList``) are expanded one level (``stages.0`` ...).
    """
    modules = dict(model.named_modules())
    if names is None:
        names = []
        for name, child in model.named_children():
            if isinstance(child, nn.ModuleList):
                names += [f"{name}.{i}" for i in range(len(child))]
            else:
                names.append(name)
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"no submodule named {unknown}; the model has {list(modules)[1:12]} ...")
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [modules[n].register_forward_hook(
        lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape[1:]))) for n in names]
    was_training = model.training
    model.eval()
    try:
        model(_probe(model, input_shape))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {n: shapes[n] for n in names if n in shapes}
