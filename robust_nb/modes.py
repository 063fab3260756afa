"""Switching a model to train or eval mode for a while, and putting every module back as it was;
where a model lives (:func:`model_device`) and the dtype it computes in (:func:`model_dtype`).

``model.train(flag)`` sets the mode of *every* submodule, so restoring with
``model.train(was_training)`` would wake up a BatchNorm the user had frozen (``bn.eval()`` inside a
training model, as in fine-tuning). :func:`model_mode` records each module's own flag instead.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put ``model`` (all its modules) in train (``True``) or eval (``False``) mode inside the
    ``with`` block; afterwards -- also on errors -- every module gets back its own previous mode.

    >>> with model_mode(model, training=False):
    ...     logits = model(x)
    """
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (cpu for a parameter-free model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating-point dtype the model computes in: that of its first floating-point parameter
    or buffer; ``None`` for a model without any (it accepts every floating dtype)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None
