"""Switching a model to train or eval mode for a while, and putting every module back as it was.

``model.train(flag)`` sets the mode of *every* submodule, so restoring with
``model.train(was_training)`` would wake up a BatchNorm the user had frozen (``bn.eval()`` inside a
training model, as in fine-tuning). :func:`model_mode` records each module's own flag instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
