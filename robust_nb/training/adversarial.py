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

import torch
from torch import Tensor, nn

from .. import attacks, evaluation
from ..data import attack_subset
from .base import ClassicalTraining
from .options import AdversarialOptions, PGDOptions


class _BatchStatsView(nn.Module):
    """The model as an attack sees it with ``bn_mode="train"``: ``.eval()`` on the view is ignored,
    so the wrapped model keeps using batch statistics (and dropout) while an attack runs.

    Attacks call ``rnb.attacks.attack_mode(model)``, which switches to eval mode and freezes the parameters;
    on this view only the freezing takes effect. Use it inside :func:`_frozen_bn_stats`, so that
    the running statistics are not updated by the attack's forward passes.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> _BatchStatsView:
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


class AdversarialMethod(ClassicalTraining):
    """Base of the attack-based training methods: train on ``craft(model, x, y)`` every batch.

    Options (:class:`~robust_nb.training.options.AdversarialOptions`, besides those of
    :class:`ClassicalTraining`): ``eps``, ``norm``, ``bn_mode`` (see the module docstring),
    ``robust_val`` (if > 0 and a validation set is given, the PGD accuracy of the evaluation
    model on ``robust_val`` validation images, a stratified seeded subset, is recorded after
    every epoch as ``val_robust_acc``: PGD with ``robust_val_steps`` steps of size eps/4 and a
    random start, at this method's eps and norm), ``eps_warmup_epochs`` (eps and the attack
    step grow linearly from 0 over these first epochs: ``eps_scale``) and ``select_best`` (keep
    the weights of the epoch with the highest ``val_robust_acc`` and end training with them: the
    early stopping of Rice, Wong & Kolter 2020, https://arxiv.org/abs/2002.11569, on a held-out
    split).

    Subclasses implement :meth:`craft`. Each batch's attack gets its own seed, derived from
    ``seed`` and the global step, so runs are reproducible and resume exactly.
    """

    Options = AdversarialOptions
    loss_name = "cross-entropy on adversarial examples"

    def __init__(self, model: nn.Module, options=None, **kwargs):
        super().__init__(model, options, **kwargs)
        self._robust_val_set: tuple[Tensor, Tensor] | None = None
        self._best: dict | None = None       # {"epoch", "acc", "state"} with select_best

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
        """A different, reproducible seed for every optimizer step (and every rank)."""
        return (self.seed * 1_000_003 + self.global_step) * self.world_size + self.rank

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
            if self._robust_val_set is None:
                self._robust_val_set = attack_subset(val_pair, min(self.robust_val,
                                                                   len(val_pair[1])), self.seed)
            out["val_robust_acc"] = self.pgd_accuracy(self.eval_model,
                                                      *self._shard(*self._robust_val_set))
        return out

    def pgd_accuracy(self, model: nn.Module, x: Tensor, y: Tensor,
                     steps: int | None = None) -> float:
        """PGD accuracy of ``model`` on ``(x, y)`` at this method's eps and norm: ``steps``
        (default ``robust_val_steps``) steps of size eps/4 from a random start. When distributed,
        each rank passes its own images and gets the accuracy over all ranks' images."""
        acc = evaluation.robust_accuracy(
            model, x, y, "pgd", eps=self.eps, alpha=self.eps / 4,
            steps=steps or self.robust_val_steps, norm=self.norm, random_start=True,
            seed=self.seed + 7, batch_size=self.eval_batch_size) if len(y) else 0.0
        return self.global_accuracy(acc, len(y))

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        super().on_epoch_end(epoch, record)
        acc = record.get("val_robust_acc")
        if not self.select_best or acc is None:
            return
        if self._best is None or acc > self._best["acc"]:
            self._best = {"epoch": epoch, "acc": acc, "state": _copy_state(self.eval_model)}
        if epoch + 1 == self.epochs:       # the last epoch: end with the best weights
            if self._best["epoch"] != epoch:
                self.eval_model.load_state_dict(self._best["state"])
            record["selected_epoch"] = self._best["epoch"]

    def extra_state(self) -> dict:
        return {"best": self._best}

    def load_extra_state(self, state: dict) -> None:
        self._best = state.get("best")


def _copy_state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class AdversarialTraining(AdversarialMethod):
    """PGD adversarial training (Madry et al. 2018, https://arxiv.org/abs/1706.06083).

    Every batch is replaced by ``rnb.attacks.pgd(model, x, y, eps, alpha, steps, norm,
    random_start)`` against the current weights, and the model is trained with cross-entropy on
    those examples only (the paper's objective; no clean term).

    Options (:class:`~robust_nb.training.options.PGDOptions`, besides those of
    :class:`AdversarialMethod` and :class:`ClassicalTraining`): ``alpha`` (the PGD step;
    default ``rnb.attacks.madry_alpha(eps, steps)`` = 2.5 eps / steps, the rule of Madry et
    al.'s ``robustness`` library: the steps together can cross the ball from side to side),
    ``steps``, ``random_start``. The paper used eps 8/255, alpha 2/255, 7 steps on CIFAR-10 and
    eps 0.3, alpha 0.01, 40 steps on MNIST; see ``rnb.training.recipe(cfg, "pgd")``.

    >>> trainer = AdversarialTraining(model, epochs=6, lr=0.05, batch_size=128, eps=0.1,
    ...                               alpha=0.025, steps=5, robust_val=200)
    >>> history = trainer.fit(data, val=data.test)      # history["val_robust_acc"] per epoch
    """

    Options = PGDOptions

    @classmethod
    def passes_per_step(cls, options) -> int:
        return 1 + options.steps                   # the PGD steps, then the training pass

    def craft(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        k = self.eps_scale
        return attacks.pgd(model, x, y, eps=k * self.eps, alpha=k * self.alpha, steps=self.steps,
                           norm=self.norm, random_start=self.random_start, seed=self.attack_seed(),
                           amp=self.attack_amp)
