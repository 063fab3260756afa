"""Recipes: one per training method and profile, as data, with their source and deviations.

A :class:`Recipe` is the trainer class, its options (an instance of the method's dataclass from
:mod:`.options`), the model it trains, how many training images it holds out for validation,
where its numbers come from and what differs from the authors' code. ``print(recipe)`` shows it
all. Notebooks read numbers from recipes (``rnb.training.recipe(cfg, "trades").options.beta``)
and train through :func:`train_method`, so every notebook asking for the same recipe gets the
same cached model.

``quick`` recipes are the course's own, sized for a 2-core CPU on the embedded digits (none is a
paper's). ``full`` recipes follow the authors' code; every difference is listed. Nothing else
in the package holds a paper's hyperparameters.

>>> r = rnb.training.recipe(cfg, "trades")
>>> print(r)                                   # options, model, source, deviations
>>> model, history = rnb.training.train_method(cfg, data, "trades")
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config
from ..data import Dataset
from .adversarial import AdversarialTraining
from .autoattack_training import AutoAttackTraining
from .base import ClassicalTraining
from .cache import cached_entry, load_or_train
from .fast import FastAdversarialTraining
from .fire import FireTraining
from .history import History
from .options import TrainOptions
from .trades import TradesTraining

METHODS = ("classical", "mixup", "augmix", "pgd", "fgsm", "autoattack", "trades", "fire")


@dataclass(frozen=True)
class Recipe:
    """A training method's complete settings for one profile. See the module docstring."""

    method: str
    trainer: type
    options: TrainOptions
    source: str
    deviations: tuple[str, ...] = ()
    model: str | None = None      # None: the profile's main model (cfg.model)
    holdout: int = 0              # training images held out as the validation split

    def __post_init__(self):
        if type(self.options) is not self.trainer.Options:
            raise ValueError(f"recipe {self.method!r}: {self.trainer.__name__} takes "
                             f"{self.trainer.Options.__name__}, got "
                             f"{type(self.options).__name__}")

    def replace(self, **option_changes) -> Recipe:
        """The recipe with some options changed (checked like new options)."""
        return dataclasses.replace(self, options=self.options.replace(**option_changes))

    def __str__(self) -> str:
        lines = [f"recipe {self.method!r}: {self.trainer.__name__} on "
                 f"{self.model or 'the profile model'}"
                 + (f", {self.holdout} training images held out for validation"
                    if self.holdout else ""),
                 *textwrap.wrap(f"source: {self.source}", 100, subsequent_indent="  ",
                                break_on_hyphens=False),
                 "", str(self.options), ""]
        lines += ["deviations from the source:" if self.deviations
                  else "deviations from the source: none"]
        for d in self.deviations:
            lines += textwrap.wrap(d, 100, initial_indent="  - ", subsequent_indent="    ",
                                   break_on_hyphens=False)
        return "\n".join(lines)


# -- quick: the course's own recipes for a 2-core CPU (digits, eps = cfg.eps_linf) --------------
# SGD with momentum 0.9 and a cosine decay, no EMA (none of the papers uses one; notebook 03
# shows it as an extra), and channels_last (no effect on the numbers; faster with bf16 on CPUs and
# on tensor-core GPUs).
# Every method gets the same budget of 6 epochs, so that notebook 09 compares methods, not budgets.
_QUICK = dict(epochs=6, lr=0.05, batch_size=64, weight_decay=5e-4, schedule="cosine",
              channels_last=True)
# Attack-based methods: 5 attack steps, and eps ramped up from 0 over the first 2 epochs
# (measured at eps 0.3: PGD-AT of this net ended at 49-52% PGD accuracy without the ramp over 3
# seeds, 75% with it; notebook 05 shows both runs).
_QUICK_ROBUST = dict(_QUICK, eps_warmup_epochs=2)
_QUICK_STEPS = 5
_QUICK_ROBUST_VAL = 200        # held-out images attacked after every epoch (notebook 05's curves)
_QUICK_SOURCE = ("the course's quick recipe (no paper): sized to train in about a minute on a "
                 "2-core CPU")


def _quick(cfg: Config) -> dict[str, Recipe]:
    base = dict(_QUICK, augment=cfg.augment, seed=cfg.seed)
    robust = dict(_QUICK_ROBUST, augment=cfg.augment, seed=cfg.seed, eps=cfg.eps_linf)
    monitored = dict(robust, robust_val=_QUICK_ROBUST_VAL)
    return {
        "classical": Recipe("classical", ClassicalTraining, ClassicalTraining.Options(**base),
                            _QUICK_SOURCE),
        "mixup": Recipe("mixup", ClassicalTraining,
                        ClassicalTraining.Options(**base, mixup_alpha=1.0),
                        _QUICK_SOURCE + "; mixup alpha 1 as Zhang et al. 2018 on CIFAR-10"),
        "augmix": Recipe("augmix", ClassicalTraining,
                         ClassicalTraining.Options(**base, augmix=True),
                         _QUICK_SOURCE + "; AugMix with the Jensen-Shannon loss (weight 12) and "
                         "the reference's width 3, depth 1-3, severity 3 (Hendrycks et al. 2020)"),
        "pgd": Recipe("pgd", AdversarialTraining,
                      AdversarialTraining.Options(**monitored, alpha=cfg.alpha_linf,
                                                  steps=_QUICK_STEPS), _QUICK_SOURCE),
        "fgsm": Recipe("fgsm", FastAdversarialTraining,
                       FastAdversarialTraining.Options(**monitored),
                       _QUICK_SOURCE + "; FGSM step 1.25 eps and the guard of Wong et al. 2020"),
        "autoattack": Recipe("autoattack", AutoAttackTraining,
                             AutoAttackTraining.Options(**robust, steps=_QUICK_STEPS - 1),
                             _QUICK_SOURCE + "; APGD-CE examples (not a paper's method) with "
                             "PGD-AT's budget: 5 gradients per batch (APGD's starting point and "
                             "4 iterations)"),
        "trades": Recipe("trades", TradesTraining,
                         TradesTraining.Options(**robust, alpha=cfg.alpha_linf,
                                                steps=_QUICK_STEPS, beta=6.0),
                         _QUICK_SOURCE + "; beta 6 as the TRADES paper on CIFAR-10"),
        "fire": Recipe("fire", FireTraining,
                       FireTraining.Options(**robust, alpha=cfg.alpha_linf,
                                            steps=_QUICK_STEPS, beta=20.0),
                       _QUICK_SOURCE + "; beta 20 as the FIRE authors' configs"),
    }


# -- full: the authors' code on CIFAR-10 --------------------------------------------------------
_CIFAR_AUG = dict(augment="crop+flip", crop_padding=4, channels_last=True)
_AMP = ("mixed precision where the device supports it (amp=None: bf16 on GPUs with native bf16, "
        "else fp16 with loss scaling); the authors trained in fp32")
_NORMALIZE = ("inputs are normalised inside the model (a Normalize first layer with the "
              "training set's mean and std); the reference feeds raw [0, 1] pixels to the network")
_SEEDED = "random draws (data order, crops, attack starts) come from our seeded generators"

# Rice, Wong & Kolter 2020 (locuslab/robust_overfitting, train_cifar.py): PreAct-ResNet-18,
# SGD lr 0.1 momentum 0.9 wd 5e-4, batch 128, 200 epochs, lr /10 at 50% and /100 at 75%,
# PGD-10 eps 8/255 step 2/255 with the model in train mode, and (with --val) 1,000 training
# images held out to pick the epoch of best PGD-10 accuracy.
_RICE = dict(_CIFAR_AUG, epochs=200, lr=0.1, batch_size=128, momentum=0.9, weight_decay=5e-4,
             schedule="piecewise", eps=8 / 255, bn_mode="train", robust_val=1000,
             robust_val_steps=10, select_best=True)
_RICE_DEVIATIONS = (
    "the held-out 1,000 training images are a seeded torch permutation, not the reference's "
    "numpy permutation (seed 0) in generate_validation.py",
    "the learning rate drops at the first step of epoch 100 (150), the reference's at the last "
    "step of epoch 99 (149): it evaluates its schedule at the end of each step",
    "running BatchNorm statistics are not updated by the attack's forward passes (the "
    "reference's are)",
    _AMP, _SEEDED)


def _full(cfg: Config) -> dict[str, Recipe]:
    from .options import AutoAttackOptions, FastOptions, FireOptions, PGDOptions, TradesOptions

    seed = dict(seed=cfg.seed)
    he = TrainOptions(**_CIFAR_AUG, **seed, epochs=164, lr=0.1, batch_size=128, momentum=0.9,
                      weight_decay=1e-4, schedule="piecewise", milestones=(82, 123))
    return {
        "classical": Recipe(
            "classical", ClassicalTraining, he,
            "He, Zhang, Ren & Sun, 'Deep Residual Learning for Image Recognition', CVPR 2016, "
            "https://arxiv.org/abs/1512.03385, Sec. 4.2: lr 0.1 divided by 10 at 32k and 48k of "
            "64k iterations (epochs 82 and 123 of 164 at 391 steps per epoch)",
            ("model: PreAct-ResNet-18 (the robust methods' model), not the paper's ResNet-20..110",
             "trains on all 50,000 images (the paper holds out 5,000 for its curves) and without "
             "the 0.01 warm-up it used only for ResNet-110", _AMP, _SEEDED)),
        "mixup": Recipe(
            "mixup", ClassicalTraining,
            TrainOptions(**_CIFAR_AUG, **seed, epochs=200, lr=0.1, batch_size=128,
                         momentum=0.9, weight_decay=1e-4, schedule="piecewise",
                         milestones=(100, 150), mixup_alpha=1.0),
            "Zhang, Cisse, Dauphin & Lopez-Paz, 'mixup: Beyond Empirical Risk Minimization', "
            "ICLR 2018, https://arxiv.org/abs/1710.09412 (facebookresearch/mixup-cifar10, "
            "train.py: PreAct-ResNet-18, lr 0.1 /10 at epochs 100 and 150 of 200, wd 1e-4, "
            "alpha 1)",
            ("one Beta draw per batch, mixing with a shuffled copy of the batch, as the "
             "reference; the soft-target cross-entropy equals its mixed criterion", _AMP,
             _SEEDED)),
        "augmix": Recipe(
            "augmix", ClassicalTraining,
            TrainOptions(**_CIFAR_AUG, **seed, epochs=100, lr=0.1, batch_size=128, momentum=0.9,
                         nesterov=True, weight_decay=5e-4, schedule="cosine", augmix=True),
            "Hendrycks, Mu, Cubuk, Zoph, Gilmer & Lakshminarayanan, 'AugMix: A Simple Data "
            "Processing Method to Improve Robustness and Uncertainty', ICLR 2020, "
            "https://arxiv.org/abs/1912.02781 (google-research/augmix, cifar.py: WRN-40-2, 100 "
            "epochs, SGD lr 0.1 Nesterov momentum 0.9, wd 5e-4, batch 128, cosine decay per step, "
            "width 3, depth 1-3, severity 3, Jensen-Shannon weight 12)",
            ("the cosine decays to 0, the reference's to an lr of 1e-6",
             "AugMix operations run batched on the device on [0, 1] tensors (robust_nb.augmix "
             "says where they round differently from the reference's PIL operations)",
             _AMP, _SEEDED), model="wrn_40_2"),
        "pgd": Recipe(
            "pgd", AdversarialTraining,
            PGDOptions(**_RICE, **seed, alpha=2 / 255, steps=10),
            "Madry et al. 2018 (https://arxiv.org/abs/1706.06083) as trained by Rice, Wong & "
            "Kolter, 'Overfitting in adversarially robust deep learning', ICML 2020, "
            "https://arxiv.org/abs/2002.11569 (locuslab/robust_overfitting, train_cifar.py "
            "with --val)", _RICE_DEVIATIONS, model="preact_resnet18", holdout=1000),
        "fgsm": Recipe(
            "fgsm", FastAdversarialTraining,
            FastOptions(**_CIFAR_AUG, **seed, epochs=15, lr=0.2, batch_size=128, momentum=0.9,
                        weight_decay=5e-4, schedule="onecycle", cycle_peak=0.5, eps=8 / 255,
                        alpha=10 / 255, bn_mode="train", robust_val=1000),
            "Wong, Rice & Kolter, 'Fast is better than free', ICLR 2020, "
            "https://arxiv.org/abs/2001.03994 (locuslab/fast_adversarial, CIFAR10/"
            "train_fgsm.py: PreAct-ResNet-18, 15 epochs, cyclic lr 0 -> 0.2 -> 0 peaking at "
            "half of training, FGSM step 10/255 from a random start, eps 8/255)",
            ("the catastrophic-overfitting guard is on (the reference's --early-stop is "
             "opt-in); it changes nothing unless PGD accuracy on a training batch collapses",
             "the reference trains in fp16 with apex O2 and a static loss scale of 1; ours uses "
             "amp=None (bf16 on GPUs with native bf16, else fp16 with dynamic loss scaling)",
             "robust_val: PGD accuracy on a stratified subset of the test set is recorded after "
             "every epoch for the learning curves (the reference evaluates once at the end)",
             _SEEDED), model="preact_resnet18"),
        "autoattack": Recipe(
            "autoattack", AutoAttackTraining,
            AutoAttackOptions(**_RICE, **seed, steps=10),
            "not a paper's method: Rice et al.'s PGD-AT recipe (see 'pgd') with APGD-CE "
            "(Croce & Hein 2020, https://arxiv.org/abs/2003.01690) as the inner attack, 10 "
            "iterations per batch", _RICE_DEVIATIONS, model="preact_resnet18", holdout=1000),
        "trades": Recipe(
            "trades", TradesTraining,
            TradesOptions(**_CIFAR_AUG, **seed, epochs=76, lr=0.1, batch_size=128, momentum=0.9,
                          weight_decay=2e-4, schedule="piecewise", milestones=(74,), eps=0.031,
                          alpha=0.007, steps=10, beta=6.0),
            "Zhang et al., 'Theoretically Principled Trade-off between Robustness and "
            "Accuracy', ICML 2019, https://arxiv.org/abs/1901.08573 (yaodongyu/TRADES, "
            "train_trades_cifar10.py: WRN-34-10, lr 0.1 x0.1 from (1-based) epoch 75 of 76, "
            "wd 2e-4, eps 0.031, step 0.007, 10 steps, beta 6)",
            (_NORMALIZE, "the clean forward pass in train mode is shared by the CE and KL terms "
             "(the reference runs it twice; BatchNorm statistics see the clean batch once)",
             _AMP, _SEEDED), model="wrn_34_10"),
        "fire": Recipe(
            "fire", FireTraining,
            FireOptions(**_CIFAR_AUG, **seed, epochs=100, lr=0.1, batch_size=256, momentum=0.9,
                        nesterov=True, weight_decay=5e-4, schedule="piecewise",
                        milestones=(74, 89, 99), eps=0.031, alpha=0.007, steps=10, beta=20.0,
                        stability=1e-6),
            "Picot et al., 'Adversarial Robustness via Fisher-Rao Regularization', IEEE TPAMI "
            "2022, https://arxiv.org/abs/2106.06685 (MarinePICOT/Adversarial-Robustness-via-"
            "Fisher-Rao-Regularization, config/cifar10.yaml and src/train.py: WRN-34-10, batch "
            "256, Nesterov, lr 0.1 'trades_fixed': x0.1 from (1-based) epochs 75, 90 and 100 "
            "of 100, wd 5e-4, eps 0.031, step 0.007, 10 steps, beta 20)",
            ("stability 1e-6 instead of the config's 1e-12, which is a no-op in float32 (the "
             "arccos gradient is then infinite where the two distributions coincide)",
             "augmentation: pad-4 crop and flip only; the reference's CIFAR transforms also "
             "apply ColorJitter(0.25, 0.25, 0.25) and RandomRotation(15)",
             _NORMALIZE + " (get_model(..., normalize_input=False))",
             _AMP, _SEEDED), model="wrn_34_10"),
    }


_PROFILES: dict[str, Callable[[Config], dict[str, Recipe]]] = {"quick": _quick, "full": _full}


def recipe(cfg: Config, method: str = "classical") -> Recipe:
    """The recipe of ``method`` in ``cfg``'s profile (see :data:`METHODS`)."""
    if method not in METHODS:
        raise ValueError(f"unknown training method {method!r}; known methods: "
                         f"{', '.join(METHODS)}")
    r = _PROFILES[cfg.profile](cfg)[method]
    from .. import smoke
    return smoke.shrink_recipe(r) if smoke.enabled() else r   # $ROBUST_NB_SMOKE=1: tiny sizes


def holdout_split(data: Dataset, n: int, seed: int):
    """``(train, val)`` pairs: ``n`` training images (a seeded random choice) held out."""
    x, y = data.train
    if not 0 < n < len(y):
        raise ValueError(f"cannot hold out {n} of {len(y)} training images")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val, train = order[:n], order[n:]
    return (x[train], y[train]), (x[val], y[val])


def _dropblock_callbacks(epochs: int) -> Callable[[nn.Module], list]:
    def make(model: nn.Module) -> list:
        from ..models import DropBlock2d, DropBlockSchedule

        # The model is built with its target drop probability; the schedule ramps up to it.
        target = max(m.drop_prob for m in model.modules() if isinstance(m, DropBlock2d))
        return [DropBlockSchedule(model, drop_prob=target, epochs=epochs)]
    return make


def train_method(cfg: Config, data: Dataset, method: str = "classical", *,
                 model_name: str | None = None, regularization: str | None = None,
                 quiet: bool = False, **overrides) -> tuple[nn.Module, History]:
    """Train (or load from the cache) the model of ``method``'s recipe on ``data``.

    The model is ``model_name``, else the recipe's, else ``cfg.model``, initialised from the
    recipe's seed whatever the global generator's state (so the same call gives the same cache
    entry in every notebook). It trains on ``data.train`` (less the recipe's held-out images)
    and is validated after every epoch on the held-out images, else on ``data.test``.
    ``overrides`` replace recipe options (and so change the cache key).
    ``regularization="dropblock"`` adds the linear DropBlock schedule of Ghiasi et al. 2018.
    An interrupted training resumes from its last finished epoch (see ``load_or_train``).
    Before it trains a model that is not in the cache it prints one line (even when ``quiet``):
    the recipe, the model, the epochs and the optimizer steps. :func:`pending` says the same
    for several models at once, before any of them trains.

    >>> model, history = rnb.training.train_method(cfg, data, "classical")
    """
    job = _Job(cfg, data, method, model_name, regularization, overrides)
    return load_or_train(*job.args, **job.kwargs, quiet=quiet, announce=job.announce())


# Part of every cache key of train_method: raise it when what a training records in its History
# changes (2: the FGSM guard's guard_fgsm_acc), so that cached models are retrained, not served
# with Histories that lack what the notebooks now read.
_RECORDS_VERSION = 2


class _Job:
    """Everything :func:`train_method` hands to ``load_or_train`` for one call."""

    def __init__(self, cfg: Config, data: Dataset, method: str, model_name: str | None,
                 regularization: str | None, overrides: dict):
        r = recipe(cfg, method)
        options = r.options.replace(**overrides) if overrides else r.options
        from .. import smoke
        if smoke.enabled():              # overrides (epochs=...) stay tiny in a smoke run too
            options = smoke.shrink_options(options)
        self.method, self.recipe, self.options, self.overrides = method, r, options, overrides
        self.name = model_name or r.model or cfg.model

        def build() -> nn.Module:
            from .. import models

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(options.seed)
                model = models.for_config(cfg, data, name=self.name, regularization=regularization)
            return model.to(cfg.device)

        train, val = (holdout_split(data, r.holdout, options.seed) if r.holdout
                      else (data.train, data.test))
        make_callbacks = (_dropblock_callbacks(options.epochs) if regularization == "dropblock"
                          else None)
        self.build, self.train = build, train
        self.n_train = len(train[1])
        self.steps = options.epochs * -(-self.n_train // options.batch_size)   # last batch kept
        self.args = (r.trainer, build, train, val)
        self.kwargs = dict(options=options, profile=cfg.profile, make_callbacks=make_callbacks,
                           key_extra={"recipe": method, "records": _RECORDS_VERSION})

    def changes(self) -> str:
        changed = ", ".join(f"{k}={v!r}" for k, v in self.overrides.items())
        return f" with {changed}" if changed else ""

    def label(self) -> str:
        return f"{self.method!r}{self.changes()}"

    def announce(self) -> str:
        o = self.options
        return (f"not in the cache: training the {self.method!r} recipe{self.changes()} "
                f"({self.recipe.trainer.__name__}) "
                f"on {self.name}: {o.epochs} epoch(s) x {self.steps // o.epochs} batches of "
                f"{o.batch_size} = {self.steps:,} optimizer steps on {self.n_train:,} images (this "
                f"can take minutes; the model is cached for next time)")

    def passes_per_step(self) -> int:
        """Forward-backward passes of a batch per optimizer step (the attack's steps included)."""
        return self.recipe.trainer.passes_per_step(self.options)


def _seconds_per_pass(job: _Job, model: nn.Module) -> float:
    """One forward-backward pass of a training batch through ``job``'s (untrained) ``model``,
    timed (best of 4)."""
    import time

    model.train()
    x = job.train[0][: job.options.batch_size].to(next(model.parameters()).device)
    y = job.train[1][: len(x)].to(x.device)
    best = float("inf")
    for _ in range(4):                                      # the first is a warm-up
        start = time.perf_counter()
        nn.functional.cross_entropy(model(x), y).backward()
        model.zero_grad(set_to_none=True)
        float(x[0, 0, 0, 0])                                # wait for the device
        best = min(best, time.perf_counter() - start)
    return best


def pending(cfg: Config, data: Dataset, jobs, *, verbose: bool = True) -> list[str]:
    """Which of ``jobs`` :func:`train_method` would train (not in the cache), and a rough time.

    ``jobs`` are method names or ``(method, overrides)`` pairs (``overrides`` a dict of
    :func:`train_method`'s keyword arguments). Prints one line that says how many models will
    be trained and about how long it will take on this machine (estimated from one timed
    training batch per model, times the optimizer steps and the attack's passes per step; the
    real time is usually somewhat longer), and returns the labels of the missing models.

    >>> rnb.training.pending(cfg, data, ["classical", "pgd", ("trades", {"beta": 1.0})])
    """
    jobs, missing, seconds, seen = list(jobs), [], 0.0, set()
    for job in jobs:
        method, kw = (job, {}) if isinstance(job, str) else job
        kw = dict(kw)
        j = _Job(cfg, data, method, kw.pop("model_name", None), kw.pop("regularization", None),
                 kw)
        path, cached, model = cached_entry(*j.args, **j.kwargs, quiet=True)
        if not cached and path not in seen:             # two jobs may name the same model
            missing.append(j.label())
            seconds += j.steps * j.passes_per_step() * _seconds_per_pass(j, model)
        seen.add(path)
    if verbose:
        if missing:
            print(f"{len(missing)} of {len(seen)} models are not in the cache and will be trained "
                  f"below: {', '.join(missing)}; roughly {_duration(seconds)} on this machine "
                  f"(estimated from one timed batch each); they are cached for next time")
        else:
            print(f"every model needed here ({len(seen)}) is in the cache: nothing to train")
    return missing


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
