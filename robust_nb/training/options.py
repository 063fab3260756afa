"""Every trainer's hyperparameters, declared once: one frozen dataclass per method.

A field carries its default, its check and its one-line meaning. From these declarations follow
the trainer's keyword arguments (``ClassicalTraining(model, epochs=4, ...)`` builds
``TrainOptions(epochs=4, ...)``), the validation (:func:`validate`, one function for all
methods), the checkpoint's config and the load-or-train cache key (:meth:`TrainOptions.to_dict`),
and the recipes (:mod:`.recipes` holds instances).

>>> opts = TradesOptions(epochs=76, lr=0.1, batch_size=128, eps=0.031, alpha=0.007, beta=6.0)
>>> opts.replace(epochs=10).epochs
10
>>> print(opts)                      # a two-column table
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..attacks import NORMS, madry_alpha
from ..data import AUGMENTATIONS
from .schedules import SCHEDULES

OPTIMIZERS = ("sgd", "adam", "adamw")
AMP_CHOICES = (None, False, True, "bf16", "fp16")
BN_MODES = ("eval", "train")
APGD_LOSSES = ("ce", "dlr")


# -- checks: each takes (name, value) and returns the normalised value or raises ValueError ----

def _is_whole(v) -> bool:
    """An int, or a float with an integer value (not a bool, not NaN, not a string)."""
    return (isinstance(v, numbers.Integral) and not isinstance(v, bool)) or \
        (isinstance(v, float) and v.is_integer())


def positive_int(name: str, v) -> int:
    if not _is_whole(v) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def non_negative_int(name: str, v) -> int:
    if not _is_whole(v) or v < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    return int(v)


def positive(name: str, v) -> float:
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite positive number, got {v!r}")
    return float(v)


def non_negative(name: str, v) -> float:
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return float(v)


def fraction(low_open: bool = False, high_open: bool = True) -> Callable[[str, Any], float]:
    """A number in [0, 1], with either end open."""
    def check(name: str, v) -> float:
        v = non_negative(name, v)
        if (low_open and v == 0) or (high_open and v == 1) or v > 1:
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            raise ValueError(f"{name} must lie in {lo}0, 1{hi}, got {v!r}")
        return v
    return check


def one_of(choices: tuple) -> Callable[[str, Any], Any]:
    def check(name: str, v):
        if v not in choices:
            raise ValueError(f"unknown {name} {v!r}; choose one of {choices}")
        return v
    return check


def optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda name, v: None if v is None else check(name, v)


def flag(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be True or False, got {v!r}")
    return v


def epochs_tuple(name: str, v) -> tuple[int, ...]:
    v = tuple(non_negative_int(name, e) for e in v)
    if list(v) != sorted(set(v)):
        raise ValueError(f"{name} must be increasing epoch indices, got {v!r}")
    return v


def losses_tuple(name: str, v) -> tuple[str, ...]:
    v = (v,) if isinstance(v, str) else tuple(v)
    if not v or any(x not in APGD_LOSSES for x in v) or len(set(v)) != len(v):
        raise ValueError(f"{name} must be a non-empty subset of {APGD_LOSSES}, got {v!r}")
    return v


def _augmix_severity(name: str, v) -> float:            # AugMix: the reference's levels 0.1 .. 10
    v = positive(name, v)
    if not 0.1 < v <= 10:
        raise ValueError(f"{name} must lie in (0.1, 10], got {v!r}")
    return v


def opt(default=dataclasses.MISSING, *, check: Callable, doc: str):
    """A dataclass field with its check and its meaning."""
    return field(default=default, metadata={"check": check, "doc": doc})


def eps_warmup_field():
    """The ``eps_warmup_epochs`` option of every method that attacks while training."""
    return opt(0, check=non_negative_int,
               doc="epochs over which eps (and the attack step) ramp up linearly from 0")


def validate(options: TrainOptions) -> None:
    """Run every field's check (normalising its value: ints, floats, tuples), then the
    method's cross-field checks (:meth:`TrainOptions.check_together`)."""
    for f in dataclasses.fields(options):
        value = f.metadata["check"](f.name, getattr(options, f.name))
        object.__setattr__(options, f.name, value)
    options.check_together()


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """Hyperparameters of :class:`~robust_nb.training.ClassicalTraining` (and the base of all)."""

    epochs: int = opt(check=positive_int, doc="passes over the training set")
    lr: float = opt(check=positive, doc="peak learning rate")
    batch_size: int = opt(check=positive_int, doc="images per optimizer step")
    optimizer: str = opt("sgd", check=one_of(OPTIMIZERS), doc="sgd | adam | adamw")
    momentum: float = opt(0.9, check=fraction(), doc="SGD momentum")
    nesterov: bool = opt(False, check=flag, doc="Nesterov momentum (SGD)")
    weight_decay: float = opt(5e-4, check=non_negative,
                              doc="L2 penalty (SGD, Adam) or decoupled decay (AdamW)")
    schedule: str = opt("cosine", check=one_of(SCHEDULES), doc="learning-rate schedule, per step")
    milestones: tuple = opt((), check=epochs_tuple,
                            doc="piecewise: 0-based epochs where lr is multiplied by lr_decay "
                                "(empty: at 50% and 75% of training)")
    lr_decay: float = opt(0.1, check=fraction(low_open=True), doc="piecewise: factor per milestone")
    cycle_peak: float = opt(0.4, check=fraction(low_open=True),
                            doc="onecycle: where the peak lies, as a fraction of training")
    warmup_epochs: int = opt(0, check=non_negative_int, doc="epochs of linear warm-up")
    label_smoothing: float = opt(0.0, check=fraction(), doc="Szegedy et al. 2016")
    augment: str = opt("none", check=one_of(AUGMENTATIONS), doc="on-device augmentation")
    crop_padding: int | None = opt(None, check=optional(non_negative_int),
                                   doc="padding of the random crop (None: 4 from 32 px, else 2)")
    ema_decay: float = opt(0.0, check=fraction(), doc="per-step EMA of the weights; 0 = off")
    amp: bool | str | None = opt(None, check=one_of(AMP_CHOICES),
                                 doc="mixed precision: None = auto, True, bf16, fp16, False")
    channels_last: bool = opt(False, check=flag, doc="channels_last memory format")
    grad_clip: float | None = opt(None, check=optional(positive),
                                  doc="clip the global gradient norm (None = off)")
    mixup_alpha: float = opt(0.0, check=non_negative, doc="mixup Beta(alpha, alpha); 0 = off")
    seed: int = opt(0, check=non_negative_int, doc="shuffling, augmentation, mixup, dropout")
    eval_batch_size: int = opt(500, check=positive_int, doc="batch size of the evaluations")
    # -- AugMix (Hendrycks et al. 2020; robust_nb.augmix), used by ClassicalTraining.training_loss
    augmix: bool = opt(False, check=flag, doc="AugMix: train on clean + AugMix views (+ JSD)")
    augmix_severity: float = opt(3.0, check=_augmix_severity, doc="AugMix operation strength, (0.1, 10]")
    augmix_width: int = opt(3, check=positive_int, doc="AugMix chains mixed per image")
    augmix_depth: int = opt(0, check=non_negative_int, doc="AugMix ops per chain (0: 1 to 3 at random)")
    augmix_alpha: float = opt(1.0, check=positive, doc="AugMix Dirichlet / Beta concentration")
    augmix_jsd_weight: float = opt(12.0, check=non_negative,
                                   doc="lambda of the Jensen-Shannon consistency (0: one view, CE)")
    # -- end AugMix

    def __post_init__(self):
        validate(self)

    def check_together(self) -> None:
        """Checks that involve several fields (subclasses extend them)."""
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs must be < epochs={self.epochs}, "
                             f"got {self.warmup_epochs}")
        if self.milestones and self.milestones[-1] >= self.epochs:
            raise ValueError(f"milestones must be epochs below epochs={self.epochs}, "
                             f"got {self.milestones}")
        if self.augmix and self.mixup_alpha > 0:                      # AugMix
            raise ValueError("augmix and mixup_alpha > 0 do not combine (AugMix trains on clean "
                             "images and their AugMix views); choose one")

    def replace(self, **changes) -> TrainOptions:
        """A copy with ``changes`` (checked like a new instance)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"{type(self).__name__} has no option(s) {unknown}; "
                             f"known: {', '.join(self.names())}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(cls, **kwargs) -> TrainOptions:
        """Like ``cls(**kwargs)`` with a clear error for unknown or missing options."""
        names = set(cls.names())
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"{cls.__name__} has no option(s) {unknown}; known: "
                             f"{', '.join(cls.names())}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in kwargs]
        if missing:
            raise ValueError(f"{cls.__name__} needs {', '.join(missing)}")
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """JSON-able values (tuples become lists): the checkpoint config and the cache key."""
        # AugMix settings only when it is on, so that every other config (and cache key) stays
        # what it was before AugMix existed.
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()
                if self.augmix or not k.startswith("augmix")}

    def __str__(self) -> str:
        rows = [(f.name, getattr(self, f.name), f.metadata["doc"])
                for f in dataclasses.fields(self)]
        width = max(len(name) for name, _, _ in rows)
        vwidth = max(len(_fmt(value)) for _, value, _ in rows)
        return "\n".join(f"{name:<{width}}  {_fmt(value):<{vwidth}}  {doc}"
                         for name, value, doc in rows)


def _check_eps_warmup(options) -> None:
    if options.eps_warmup_epochs > options.epochs:
        raise ValueError(f"eps_warmup_epochs must be <= epochs={options.epochs}, "
                         f"got {options.eps_warmup_epochs}")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True, kw_only=True)
class AdversarialOptions(TrainOptions):
    """What every attack-based method adds (PGD, FGSM-RS, APGD training)."""

    eps: float = opt(check=positive, doc="radius of the threat model (pixel units)")
    norm: str = opt("linf", check=one_of(NORMS), doc="linf | l2")
    bn_mode: str = opt("eval", check=one_of(BN_MODES),
                       doc="BatchNorm while crafting: eval (running) or train (batch) stats")
    robust_val: int = opt(0, check=non_negative_int,
                          doc="validation images attacked with PGD after every epoch")
    robust_val_steps: int = opt(10, check=positive_int, doc="steps of that PGD (step eps/4)")
    select_best: bool = opt(False, check=flag,
                            doc="end with the epoch of the best val_robust_acc (Rice et al.)")
    eps_warmup_epochs: int = eps_warmup_field()

    def check_together(self) -> None:
        super().check_together()
        _check_eps_warmup(self)
        if self.select_best and self.robust_val == 0:
            raise ValueError("select_best=True needs robust_val > 0 (the images it selects on)")


@dataclass(frozen=True, kw_only=True)
class PGDOptions(AdversarialOptions):
    """PGD adversarial training (Madry et al. 2018)."""

    alpha: float | None = opt(None, check=optional(positive),
                              doc="PGD step (None: 2.5 eps / steps)")
    steps: int = opt(10, check=positive_int, doc="PGD steps per batch")
    random_start: bool = opt(True, check=flag, doc="start from a random point of the ball")

    def check_together(self) -> None:
        super().check_together()
        if self.alpha is None:
            object.__setattr__(self, "alpha", madry_alpha(self.eps, self.steps))


@dataclass(frozen=True, kw_only=True)
class FastOptions(AdversarialOptions):
    """FGSM-RS with the catastrophic-overfitting guard (Wong et al. 2020)."""

    schedule: str = opt("onecycle", check=one_of(SCHEDULES), doc="learning-rate schedule")
    bn_mode: str = opt("train", check=one_of(BN_MODES),
                       doc="BatchNorm while crafting (the reference: train)")
    alpha: float | None = opt(None, check=optional(positive), doc="FGSM step (None: 1.25 eps)")
    random_start: bool = opt(True, check=flag, doc="FGSM from a random point (False: plain FGSM)")
    guard: bool = opt(True, check=flag, doc="catastrophic-overfitting check after every epoch")
    guard_drop: float = opt(0.2, check=fraction(low_open=True, high_open=False),
                            doc="stop when the guard's PGD accuracy falls by more than this")
    guard_steps: int = opt(5, check=positive_int, doc="PGD steps of the guard (step eps/4)")

    def check_together(self) -> None:
        super().check_together()
        if self.norm != "linf":
            raise ValueError(f"FGSM-RS training is L-inf only, got norm={self.norm!r}")
        if self.alpha is None:
            object.__setattr__(self, "alpha", 1.25 * self.eps)


@dataclass(frozen=True, kw_only=True)
class AutoAttackOptions(AdversarialOptions):
    """Adversarial training on APGD examples."""

    steps: int = opt(10, check=positive_int, doc="APGD iterations per batch")
    losses: tuple = opt(("ce",), check=losses_tuple, doc="APGD losses: ('ce',) or ('ce', 'dlr')")
    restarts: int = opt(1, check=positive_int, doc="APGD restarts per loss")


@dataclass(frozen=True, kw_only=True)
class TradesOptions(TrainOptions):
    """TRADES (Zhang et al. 2019)."""

    eps: float = opt(8 / 255, check=non_negative, doc="L-inf radius of the inner maximisation")
    alpha: float = opt(2 / 255, check=non_negative, doc="its step size")
    steps: int = opt(10, check=non_negative_int, doc="its number of steps")
    beta: float = opt(6.0, check=non_negative, doc="weight of the robustness term (1/lambda)")
    eps_warmup_epochs: int = eps_warmup_field()

    def check_together(self) -> None:
        super().check_together()
        _check_eps_warmup(self)
        if self.mixup_alpha or self.label_smoothing:
            raise ValueError(f"{type(self).__name__}: the method defines its own objective; "
                             f"mixup_alpha and label_smoothing must be 0")


@dataclass(frozen=True, kw_only=True)
class FireOptions(TradesOptions):
    """FIRE (Picot et al. 2022)."""

    beta: float = opt(20.0, check=non_negative, doc="weight of the Fisher-Rao term")
    stability: float = opt(1e-6, check=fraction(low_open=True),
                           doc="constant subtracted inside the arccos")
