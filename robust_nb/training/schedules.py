"""Learning-rate schedules as pure functions of the step: ``lr(step) = peak_lr * lr_factor(...)``.

The trainer sets the learning rate itself before every optimizer step, so a schedule's whole
state is one integer (the global step) and resuming from a checkpoint is exact.

* ``"constant"``: 1.
* ``"cosine"``: ``(1 + cos(pi * t)) / 2`` with ``t`` = progress in [0, 1] (Loshchilov & Hutter,
  "SGDR", ICLR 2017, https://arxiv.org/abs/1608.03983, without restarts), ending at 0.
* ``"piecewise"``: multiplied by ``decay`` (0.1) at every milestone step; without milestones,
  at 50% and 75% of training: the decay of Madry et al. / Rice et al. ("Overfitting in
  adversarially robust deep learning", ICML 2020, https://arxiv.org/abs/2002.11569: epochs 100
  and 150 of 200). Milestones give step decays such as TRADES' (x0.1 at epoch 75 of 76).
* ``"onecycle"``: linear from 0 up to 1 at ``peak`` (2/5) of training, then linearly down to 0:
  the cyclic schedule of Wong, Rice & Kolter ("Fast is better than free", ICLR 2020,
  https://arxiv.org/abs/2001.03994): their MNIST code peaks at 2/5
  (``np.interp([t], [0, 2/5 * epochs, epochs], [0, lr, 0])``), their CIFAR-10 code at 1/2
  (``CyclicLR`` with ``step_size_up = step_size_down``).

``warmup_steps > 0`` prepends a linear warm-up from ``1/warmup_steps`` to 1 (Goyal et al.,
"Accurate, large minibatch SGD", https://arxiv.org/abs/1706.02677); the schedule then runs over
the remaining steps.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "piecewise", "onecycle")


def check_schedule(name: str) -> None:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")


def lr_factor(name: str, step: int, total_steps: int, warmup_steps: int = 0, *,
              milestones: tuple[int, ...] = (), decay: float = 0.1, peak: float = 0.4) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based) of ``total_steps``.

    ``milestones`` (optimizer steps) and ``decay`` are used by "piecewise", ``peak`` (a fraction
    of the post-warm-up steps) by "onecycle".
    """
    check_schedule(name)
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must lie in [0, total_steps), got {warmup_steps} "
                         f"of {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    # Progress t in [0, 1) over the post-warm-up steps: step s uses the value at its start.
    t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    if name == "constant":
        return 1.0
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if name == "piecewise":
        drops = (sum(step >= m for m in milestones) if milestones
                 else (t >= 0.5) + (t >= 0.75))
        return round(decay ** drops, 15)        # 0.1 ** 2 is 0.010000000000000002 otherwise
    # onecycle
    if not 0 < peak < 1:
        raise ValueError(f"peak must lie in (0, 1), got {peak}")
    return t / peak if t < peak else (1.0 - t) / (1.0 - peak)
