"""Fast adversarial training: FGSM from a random start, a cyclic learning rate, and a guard
against catastrophic overfitting (Wong, Rice & Kolter 2020).

Wong, Rice & Kolter, "Fast is better than free: revisiting adversarial training", ICLR 2020,
https://arxiv.org/abs/2001.03994; reference code https://github.com/locuslab/fast_adversarial
(``CIFAR10/train_fgsm.py``).

Per batch (as in the reference): ``delta ~ U(-eps, eps)`` clipped so that ``x + delta`` stays in
[0, 1], one signed-gradient step of size ``alpha = 1.25 eps``, projection onto the eps-ball and
[0, 1] (``rnb.attacks.fgsm(..., random_start=True)``), then a cross-entropy step on the result.
The schedule defaults to ``"onecycle"``, the paper's cyclic learning rate (linear up to the peak
at 2/5 of training, then linearly down to 0).

**Catastrophic overfitting.** With too large a step (or no random start, or long training),
FGSM training suddenly collapses: within an epoch the model becomes robust to FGSM but not at
all to PGD (PGD accuracy falls to ~0 while FGSM accuracy rises). The reference code's
``--early-stop`` guard, reproduced here (``guard=True``): after every epoch, attack the first
training batch of that epoch with PGD (5 steps of size eps/4, one random start) and measure the
accuracy; if it fell by more than ``guard_drop`` (0.2) since the previous epoch, stop training
and restore the weights of the previous epoch, the last one before the collapse. This class also
restores the EMA weights, tells the learner (``rnb.progress.notify``: a highlighted note in a
notebook, a ``RuntimeWarning`` elsewhere), and sets ``History.stopped`` to a sentence that says so.

Defaults that follow the reference rather than :class:`AdversarialTraining`: ``bn_mode="train"``
(the reference model stays in training mode while crafting and while the guard measures).
L-inf only, like the paper.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from .. import attacks, evaluation, progress
from .adversarial import AdversarialMethod
from .options import FastOptions


class FastAdversarialTraining(AdversarialMethod):
    """FGSM-RS adversarial training with the catastrophic-overfitting guard of Wong et al. 2020.

    Options (:class:`~robust_nb.training.options.FastOptions`, besides those of
    :class:`~robust_nb.training.adversarial.AdversarialMethod` and
    :class:`~robust_nb.training.base.ClassicalTraining`):
        alpha: FGSM step; default ``1.25 * eps`` (the paper's choice; 2 eps and more lead to
            catastrophic overfitting on CIFAR-10).
        random_start: start from a uniform point of the ball (``False`` is plain FGSM training,
            which overfits catastrophically).
        guard: run the catastrophic-overfitting check after every epoch (see the module doc).
        guard_drop: stop when the guard's PGD accuracy falls by more than this (reference: 0.2).
        guard_steps: PGD steps of the check (reference: 5, step eps/4, one restart).
        schedule: default ``"onecycle"`` (the cyclic learning rate); ``bn_mode`` default "train".

    Each record of the History gains ``guard_pgd_acc`` (PGD accuracy on that epoch's first
    training batch) and ``guard_fgsm_acc`` (accuracy on the training FGSM step, same batch);
    when the guard fires, the record of the collapsed epoch also gets
    ``rolled_back_to`` (the epoch whose weights were restored), ``History.stopped`` says what
    happened, and a ``RuntimeWarning`` is issued.

    >>> trainer = FastAdversarialTraining(model, epochs=6, lr=0.05, batch_size=128, eps=0.1)
    >>> history = trainer.fit(data, val=data.test)
    >>> history.stopped            # None, or why the guard stopped training
    """

    Options = FastOptions

    @classmethod
    def passes_per_step(cls, options) -> int:
        return 2                                   # the FGSM step, then the training pass

    def __init__(self, model: nn.Module, options=None, **kwargs):
        super().__init__(model, options, **kwargs)
        self._guard_batch: tuple[Tensor, Tensor] | None = None
        self._guard_prev: float | None = None     # the last accepted epoch's guard accuracy
        self._best_epoch: int | None = None       # the last accepted epoch
        self._best_state: dict | None = None      # its weights (model, and EMA if any)

    def craft(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if self.guard and self._guard_batch is None:
            self._guard_batch = (x.detach(), y)     # the epoch's first batch, as in the reference
        k = self.eps_scale
        return attacks.fgsm(model, x, y, eps=k * self.eps, random_start=self.random_start,
                            alpha=k * self.alpha, seed=self.attack_seed(), amp=self.attack_amp)

    # ------------------------------------------------------------------ the guard
    def guard_accuracy(self, x: Tensor, y: Tensor) -> float:
        """PGD-``guard_steps`` accuracy (step eps/4, random start) of the trained weights on a
        batch, with the same BatchNorm mode as the crafting."""
        with self.crafting_model() as model:
            return self.pgd_accuracy(model, x, y, steps=self.guard_steps)

    def fgsm_accuracy(self, x: Tensor, y: Tensor) -> float:
        """Accuracy on the training attack itself (the FGSM step at the full eps, from a random
        start when the method uses one), same BatchNorm mode: beside :meth:`guard_accuracy` it
        shows catastrophic overfitting's signature, FGSM accuracy far above PGD accuracy."""
        with self.crafting_model() as model:
            acc = evaluation.robust_accuracy(
                model, x, y, "fgsm", eps=self.eps, alpha=self.alpha,
                random_start=self.random_start, seed=self.seed + 11)
        return self.global_accuracy(acc, len(y))              # over every rank's guard batch

    def _snapshot(self) -> dict:
        return {"model": copy.deepcopy(self.model.state_dict()),
                "ema": copy.deepcopy(self.ema.state_dict()) if self.ema is not None else None}

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        super().on_epoch_end(epoch, record)
        if not self.guard or self._guard_batch is None:
            return
        acc = self.guard_accuracy(*self._guard_batch)
        record["guard_fgsm_acc"] = self.fgsm_accuracy(*self._guard_batch)
        self._guard_batch = None
        record["guard_pgd_acc"] = acc
        if self._guard_prev is not None and acc - self._guard_prev < -self.guard_drop:
            self.model.load_state_dict(self._best_state["model"])
            if self.ema is not None:
                self.ema.load_state_dict(self._best_state["ema"])
            record["rolled_back_to"] = self._best_epoch
            self.stop_reason = (
                f"catastrophic overfitting caught at epoch {epoch + 1}: PGD accuracy on a training "
                f"batch fell from {self._guard_prev:.0%} to {acc:.0%}; training stopped and the "
                f"weights of epoch {self._best_epoch + 1} (the last before the collapse) restored")
            progress.notify(self.stop_reason, RuntimeWarning, stacklevel=4)   # at the fit() call
            return
        self._guard_prev, self._best_epoch = acc, epoch
        self._best_state = self._snapshot()

    # ------------------------------------------------------------------ checkpoints
    def extra_state(self) -> dict:
        return {**super().extra_state(), "guard_prev": self._guard_prev,
                "best_epoch": self._best_epoch, "best_state": self._best_state}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self._guard_prev = state.get("guard_prev")
        self._best_epoch = state.get("best_epoch")
        self._best_state = state.get("best_state")
