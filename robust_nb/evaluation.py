"""Measuring models: clean accuracy, robust accuracy, eps sweeps and gradient-masking checks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attacks._base import model_device
from .data import check_images


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
    """Logits of ``model`` on ``x`` in eval mode (the model's mode is restored), on x's device."""
    check_images(x)
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        out = [model(x[i:i + batch_size].to(device)).float() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).to(x.device)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (eval mode; one host sync at the end)."""
    check_images(x, y)
    correct = (predict_logits(model, x, batch_size).argmax(1) == y).sum()
    return correct.item() / len(y)
