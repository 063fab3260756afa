"""Exponential moving average (EMA) of a model's weights and buffers.

After every optimizer step ``ema = decay * ema + (1 - decay) * weights``, over the parameters and
the floating-point buffers (BatchNorm running statistics); the first update copies the weights.
This is the exponential form of Polyak-Ruppert averaging (Polyak & Juditsky, SIAM J. Control
Optim. 1992, https://doi.org/10.1137/0330046), as used for robust training by Gowal et al. 2020
(https://arxiv.org/abs/2010.03593).

It computes exactly what ``torch.optim.swa_utils.AveragedModel(model,
multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)`` computes for floating-point tensors
(the unit test checks it against a hand-written reference), with two deliberate differences:
the update count is a Python int (``AveragedModel`` keeps it in a device tensor and reads it back
on every update, which is a host synchronisation per step on a GPU), and integer buffers
(BatchNorm's ``num_batches_tracked``) are copied, not averaged (an average of counts is
meaningless and ``AveragedModel`` truncates it back to an integer anyway).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """An EMA copy of ``model``: ``.module`` is an ``nn.Module`` of the same architecture."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model)
        self.n_averaged = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ours = list(self.module.parameters()) + list(self.module.buffers())
        theirs = list(model.parameters()) + list(model.buffers())
        if len(ours) != len(theirs):
            raise ValueError("the model no longer matches its EMA copy "
                             "(tensors were added or removed)")
        if self.n_averaged == 0:
            torch._foreach_copy_(ours, [t.detach() for t in theirs])
        else:
            pairs = [(e, t.detach()) for e, t in zip(ours, theirs)]
            floats = [(e, t) for e, t in pairs if e.is_floating_point()]
            if floats:
                torch._foreach_lerp_([e for e, _ in floats], [t for _, t in floats],
                                     1.0 - self.decay)
            for e, t in pairs:
                if not e.is_floating_point():
                    e.copy_(t)
        self.n_averaged += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "n_averaged": self.n_averaged}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.n_averaged = int(state["n_averaged"])
