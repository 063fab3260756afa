"""PGD adversarial training (Madry et al. 2018) and what every attack-based training method shares.

Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards deep learning models resistant to adversarial
attacks", ICLR 2018, https://arxiv.org/abs/1706.06083: minimise the loss at the worst point of
the eps-ball, ``min_theta E max_{||delta|| <= eps} CE(f(x + delta), y)``, approximating the inner
maximisation with K steps of projected gradient ascent from a random start in every batch.

:class:`AdversarialMethod` is the small base of :class:`AdversarialTraining` (PGD),
:class:`~robust_nb.training.fast.FastAdversarialTraining` (FGSM-RS) and
:class:`~robust_nb.training.autoattack_training.AutoAttackTraining` (APGD): each only says how to
``craft`` the examples; the loop (``ClassicalTraining``) trains on what :meth:`perturb` returns.

**BatchNorm while crafting** (``bn_mode``). ``"eval"`` (the default) crafts against the model in
eval mode, BatchNorm using its running statistics, as the TRADES and FIRE reference code do:

* the attack targets the function the model computes at test time, which is the one robustness
  is measured on;
* every example is crafted independently of the rest of the batch (with batch statistics the
  perturbation of one image shifts the normalisation of all the others);
* the K extra forward passes do not touch the running statistics.

``"train"`` crafts with batch statistics, as Madry et al.'s TensorFlow code and Wong et al.'s
``fast_adversarial`` code do (their models stay in training mode while attacking). Early in
training the running statistics lag behind the weights, so an eval-mode attack can be weaker
then; "train" avoids that at the price of the points above. Either way the running statistics
are updated only by the training forward pass: in "train" mode they are frozen while crafting
(the reference code lets the attack's forward passes update them too; a minor deviation).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn

from .. import attacks
from ..attacks._base import NORMS, attack_mode
from .base import ClassicalTraining

BN_MODES = ("eval", "train")


class _BatchStatsView(nn.Module):
    """The model as an attack sees it with ``bn_mode="train"``: ``.eval()`` on the view is ignored,
    so the wrapped model keeps using batch statistics (and dropout) while an attack runs.

    Attacks call ``attack_mode(model)``, which switches to eval mode and freezes the parameters;
    on this view only the freezing takes effect. Use it inside :func:`_frozen_bn_stats`, so that
    the running statistics are not updated by the attack's forward passes.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> "_BatchStatsView":
        self.training = mode          # the view's own flag only; the model stays as it is
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


@contextlib.contextmanager
def _frozen_bn_stats(model: nn.Module):
    """Batch statistics without updating the running ones: ``track_running_stats=False`` makes a
    BatchNorm in train mode normalise with the batch and leave its buffers (and
    ``num_batches_tracked``) untouched. Restored afterwards."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    flags = [m.track_running_stats for m in bns]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, flag in zip(bns, flags):
            m.track_running_stats = flag


def check_eps(eps) -> float:
    """``eps`` as a float, or a ValueError: it must be finite and positive (pixel units)."""
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite positive number (pixel units), got {eps!r}")
    return float(eps)


class AdversarialMethod(ClassicalTraining):
    """Base of the attack-based training methods: train on ``craft(model, x, y)`` every batch.

    Args (besides those of :class:`ClassicalTraining`):
        eps: radius of the threat model, in pixel units of images in [0, 1].
        norm: ``"linf"`` or ``"l2"``.
        bn_mode: BatchNorm while crafting, ``"eval"`` or ``"train"`` (see the module docstring).
        robust_val: if > 0 and a validation set is given, the PGD accuracy of the evaluation
            model on ``robust_val`` validation images (evenly spaced through the set) is recorded
            after every epoch as ``val_robust_acc`` (PGD with ``robust_val_steps`` steps of size
            eps/4 and a random start, at this method's eps and norm), so robustness can be
            followed during training.
        robust_val_steps: steps of that PGD.

    Subclasses implement :meth:`craft`. Each batch's attack gets its own seed, derived from
    ``seed`` and the global step, so runs are reproducible and resume exactly.
    """

    def __init__(self, model: nn.Module, *, eps: float, norm: str = "linf", bn_mode: str = "eval",
                 robust_val: int = 0, robust_val_steps: int = 10, **kwargs):
        check_eps(eps)
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
        if bn_mode not in BN_MODES:
            raise ValueError(f"unknown bn_mode {bn_mode!r}; choose one of {BN_MODES}")
        if int(robust_val) != robust_val or robust_val < 0:
            raise ValueError(f"robust_val must be a non-negative integer, got {robust_val}")
        if int(robust_val_steps) != robust_val_steps or robust_val_steps < 1:
            raise ValueError(f"robust_val_steps must be a positive integer, got {robust_val_steps}")
        super().__init__(model, **kwargs)
        self.eps, self.norm, self.bn_mode = float(eps), norm, bn_mode
        self.robust_val, self.robust_val_steps = int(robust_val), int(robust_val_steps)

    def config_dict(self) -> dict:
        d = super().config_dict()
        d.update(eps=self.eps, norm=self.norm, bn_mode=self.bn_mode, robust_val=self.robust_val,
                 robust_val_steps=self.robust_val_steps)
        return d

    # ------------------------------------------------------------------ crafting
    @contextlib.contextmanager
    def crafting_model(self):
        """The module to attack for the current batch: the model itself (``bn_mode="eval"``; the
        attack switches it to eval mode and back) or a batch-statistics view of it (``"train"``)."""
        if self.bn_mode == "eval":
            yield self.model
            return
        with _frozen_bn_stats(self.model):
            yield _BatchStatsView(self.model)

    def attack_seed(self) -> int:
        """A different, reproducible seed for every optimizer step."""
        return self.seed * 1_000_003 + self.global_step

    @property
    def attack_amp(self) -> bool:
        """bf16 autocast inside the attacks when the loop trains in bf16."""
        return self.amp_dtype == torch.bfloat16

    def craft(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial examples for the batch ``(x, y)`` against ``model`` (subclasses)."""
        raise NotImplementedError

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        """The batch the loop trains on: adversarial examples crafted against the current weights.

        The attacks never write parameter gradients and restore the model's mode (train)."""
        with self.crafting_model() as model:
            return self.craft(model, x, y).detach()

    # ------------------------------------------------------------------ robust validation
    def _evaluate(self, val_pair) -> dict:
        out = super()._evaluate(val_pair)
        if val_pair is not None and self.robust_val > 0:
            out["val_robust_acc"] = self.robust_accuracy(self.eval_model, *val_pair)
        return out

    def robust_accuracy(self, model: nn.Module, x: Tensor, y: Tensor) -> float:
        """PGD accuracy of ``model`` (eval mode) on ``robust_val`` evenly spaced images of ``x``
        (evenly spaced, not the first ones: a test split may be sorted by class)."""
        n = min(self.robust_val, len(x))
        idx = torch.arange(n, device=x.device) * len(x) // n                  # (n,)
        x, y = x[idx], y[idx]
        x_adv = attacks.pgd(model, x, y, eps=self.eps, alpha=self.eps / 4,
                            steps=self.robust_val_steps, norm=self.norm, random_start=True,
                            seed=self.seed + 7, batch_size=self.eval_batch_size)
        with torch.no_grad(), attack_mode(model):
            correct = (model(x_adv).argmax(1) == y).sum()
        return correct.item() / len(y)


class AdversarialTraining(AdversarialMethod):
    """PGD adversarial training (Madry et al. 2018, https://arxiv.org/abs/1706.06083).

    Every batch is replaced by ``rnb.attacks.pgd(model, x, y, eps, alpha, steps, norm,
    random_start)`` against the current weights, and the model is trained with cross-entropy on
    those examples only (the paper's objective; no clean term).

    Args (besides those of :class:`AdversarialMethod` and :class:`ClassicalTraining`):
        alpha: PGD step size; default ``2.5 * eps / steps`` (the rule of thumb of Madry et al.'s
            ``robustness`` library: the steps together can cross the ball from side to side).
            The paper used eps 8/255, alpha 2/255, 7 steps on CIFAR-10 and eps 0.3, alpha
            0.01, 40 steps on MNIST.
        steps: PGD steps K per batch.
        random_start: start from a uniform random point of the ball (the paper does).

    >>> trainer = AdversarialTraining(model, epochs=6, lr=0.05, batch_size=128, eps=0.1,
    ...                               alpha=0.025, steps=5, robust_val=200)
    >>> history = trainer.fit(data, val=data.test)      # history["val_robust_acc"] per epoch
    """

    def __init__(self, model: nn.Module, *, eps: float, alpha: float | None = None,
                 steps: int = 10, random_start: bool = True, **kwargs):
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        alpha = 2.5 * check_eps(eps) / steps if alpha is None else alpha
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a finite positive number, got {alpha!r}")
        super().__init__(model, eps=eps, **kwargs)
        self.alpha, self.steps, self.random_start = float(alpha), int(steps), bool(random_start)

    def config_dict(self) -> dict:
        d = super().config_dict()
        d.update(alpha=self.alpha, steps=self.steps, random_start=self.random_start)
        return d

    def craft(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return attacks.pgd(model, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps,
                           norm=self.norm, random_start=self.random_start, seed=self.attack_seed(),
                           amp=self.attack_amp)
