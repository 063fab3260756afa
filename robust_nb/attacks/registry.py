"""The attack registry: every attack of the package by name, with the norms it supports and its
default keyword arguments for a radius, a norm and a step budget.

Code that picks an attack by name (``rnb.evaluation.robust_accuracy``, ``eps_sweep``, the
widgets) goes through :func:`get_attack` and :func:`default_kwargs`, so each default lives here
and nowhere else:

* the PGD-style step is :func:`madry_alpha`, ``2.5 * eps / steps``, for PGD and for the TRADES
  and FIRE ascents;
* ``steps`` is the budget of every iterative attack: gradient steps for PGD, APGD, FAB, TRADES
  and FIRE (and AutoAttack's gradient stages); Square gets ``50 * steps`` queries, AutoAttack's
  ratio (5,000 queries for 100 steps); FGSM ignores it. Pass ``steps=100`` for the paper's
  AutoAttack budget.
* ``eot_samples`` (Expectation over Transformation, for randomized models) is accepted by the
  gradient attacks whose spec has ``eot=True`` (fgsm, pgd, apgd); ``default_kwargs`` adds it when
  asked for more than one sample and refuses it for the other attacks.

>>> import robust_nb as rnb
>>> kwargs = rnb.attacks.default_kwargs("pgd", eps=8 / 255, steps=10)
>>> x_adv = rnb.attacks.get_attack("pgd")(model, x, y, **kwargs)
>>> kwargs = rnb.attacks.default_kwargs("apgd", eps=8 / 255, steps=100, eot_samples=20)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from .apgd import apgd
from .autoattack import autoattack
from .core import check_eot_samples
from .divergence import fisher_rao, trades_kl
from .fab import fab
from .fgsm import fgsm
from .pgd import pgd
from .square import square

SQUARE_QUERIES_PER_STEP = 50     # AutoAttack's budgets: 5,000 Square queries for 100 APGD steps
_NORM_NAMES = {"linf": "L-inf", "l2": "L2"}


def madry_alpha(eps: float, steps: int) -> float:
    """The PGD step ``2.5 * eps / steps``: the rule of thumb of Madry et al.'s ``robustness``
    library (https://robustness.readthedocs.io): together the steps can cross the ball from side
    to side and then some, whatever the start.

    >>> madry_alpha(8 / 255, 10) * 255
    2.0
    """
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite non-negative number, got {eps}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    return 2.5 * eps / steps


@dataclass(frozen=True)
class AttackSpec:
    """One registry entry. Calling the spec calls the attack: ``spec(model, x, y, **kwargs)``."""

    name: str
    fn: Callable[..., Tensor]               # fn(model, x, y, **kwargs) -> x_adv
    norms: tuple[str, ...]
    defaults: Callable[[float, str, int], dict]   # (eps, norm, steps) -> keyword arguments
    summary: str
    eot: bool = False                       # accepts eot_samples (EOT over a randomized model)

    def __call__(self, model, x: Tensor, y: Tensor | None, **kwargs) -> Tensor:
        return self.fn(model, x, y, **kwargs)


# Default keyword arguments per attack family: (eps, norm, steps) -> kwargs.
def _fgsm_defaults(eps: float, norm: str, steps: int) -> dict:
    return dict(eps=eps)


def _pgd_defaults(eps: float, norm: str, steps: int) -> dict:
    return dict(eps=eps, alpha=madry_alpha(eps, steps), steps=steps, norm=norm)


def _steps_defaults(eps: float, norm: str, steps: int) -> dict:
    return dict(eps=eps, norm=norm, steps=steps)


def _square_defaults(eps: float, norm: str, steps: int) -> dict:
    return dict(eps=eps, norm=norm, queries=SQUARE_QUERIES_PER_STEP * steps)


def _autoattack_defaults(eps: float, norm: str, steps: int) -> dict:
    return dict(eps=eps, norm=norm, steps=steps, square_queries=SQUARE_QUERIES_PER_STEP * steps)


def _ascent_defaults(eps: float, norm: str, steps: int) -> dict:
    return dict(eps=eps, alpha=madry_alpha(eps, steps), steps=steps)


_BOTH = ("linf", "l2")
_SPECS = (
    AttackSpec("fgsm", fgsm, ("linf",), _fgsm_defaults,
               "one gradient-sign step (Goodfellow et al. 2015)", eot=True),
    AttackSpec("pgd", pgd, _BOTH, _pgd_defaults,
               "projected gradient ascent (Madry et al. 2018)", eot=True),
    AttackSpec("apgd", apgd, _BOTH, _steps_defaults,
               "Auto-PGD, step size adapted per sample (Croce & Hein 2020)", eot=True),
    AttackSpec("fab", fab, _BOTH, _steps_defaults,
               "minimum-norm boundary attack, FAB-T by default (Croce & Hein 2020)"),
    AttackSpec("square", square, _BOTH, _square_defaults,
               "score-based random search, no gradients (Andriushchenko et al. 2020)"),
    AttackSpec("autoattack", autoattack, _BOTH, _autoattack_defaults,
               "APGD-CE, APGD-T, FAB-T, Square on the points still robust (Croce & Hein 2020)"),
    AttackSpec("trades", trades_kl, ("linf",), _ascent_defaults,
               "TRADES' KL ascent, no labels needed (Zhang et al. 2019)"),
    AttackSpec("fire", fisher_rao, ("linf",), _ascent_defaults,
               "FIRE's Fisher-Rao ascent, no labels needed (Picot et al. 2022)"),
)

ATTACKS: dict[str, AttackSpec] = {spec.name: spec for spec in _SPECS}


def get_attack(name: str) -> AttackSpec:
    """The registry entry of ``name``; a ValueError lists the known names for an unknown one."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {tuple(ATTACKS)}")
    return ATTACKS[name]


def default_kwargs(name: str, eps: float, norm: str = "linf", steps: int = 10, *,
                   eot_samples: int = 1) -> dict:
    """Keyword arguments for attack ``name`` at radius ``eps`` in ``norm`` with a budget of
    ``steps`` (see the module docstring); a ValueError for a norm the attack does not support.
    ``eot_samples > 1`` adds EOT's sample count (each step then costs that many passes); a
    ValueError for an attack without EOT.

    >>> default_kwargs("pgd", 0.1, steps=5)
    {'eps': 0.1, 'alpha': 0.05, 'steps': 5, 'norm': 'linf'}
    >>> default_kwargs("fgsm", 0.1, eot_samples=10)
    {'eps': 0.1, 'eot_samples': 10}
    """
    spec = get_attack(name)
    if norm not in spec.norms:
        supported = " and ".join(_NORM_NAMES[n] for n in spec.norms)
        raise ValueError(f"{name} supports {supported} only ({spec.norms}), got norm={norm!r}")
    madry_alpha(eps, steps)                 # the same checks of eps and steps for every attack
    kwargs = spec.defaults(eps, norm, steps)
    if check_eot_samples(eot_samples) > 1:
        if not spec.eot:
            with_eot = tuple(n for n, s in ATTACKS.items() if s.eot)
            raise ValueError(f"{name} has no EOT (eot_samples); the attacks with EOT are {with_eot}")
        kwargs["eot_samples"] = eot_samples
    return kwargs
