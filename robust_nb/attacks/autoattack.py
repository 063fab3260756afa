"""AutoAttack: an ensemble of parameter-free attacks, each run on the points still robust.

Paper: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, https://arxiv.org/abs/2003.01690, following the authors'
``fra31/auto-attack`` (``autoattack/autoattack.py``, ``set_version``):

* ``"standard"``: APGD-CE (1 run), APGD-T (targeted DLR, 9 target classes), FAB-T (9 target
  classes), Square (5,000 queries); 100 iterations for the gradient attacks.
* ``"plus"``: APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts), Square (5,000 queries),
  APGD-T and FAB-T (9 target classes).
* a custom list: ``attacks=["apgd-ce", "square"]`` with any stage name of :data:`STAGES`.

Every stage sees only the points that all previous stages failed to misclassify, and a point
counts as broken only if the returned image is misclassified (checked here, and checked to lie in
the eps-ball and [0, 1]). Square runs its ``p`` schedule on raw iteration counts, as AutoAttack
calls it (``rescale_schedule=False``).

Deviations from the authors' code: the targeted stages use ``min(n_target_classes, K - 1)``
targets for a K-class model; the "rand" version (for randomised defenses) is not implemented;
each stage's own deviations are listed in its module (:mod:`.apgd`, :mod:`.fab`, :mod:`.square`).

Arguments: ``eps`` the radius in pixel space; ``norm`` "linf" or "l2"; ``version`` or
``attacks``; ``seed``; ``steps`` (100) and ``square_queries`` (5,000), the paper's budgets (the
course's quick profile lowers them to fit a CPU, which makes the evaluation weaker);
``n_target_classes`` (9); ``batch_size`` (500); ``verbose``. Inputs: images in [0, 1],
(N, C, H, W), in the model's dtype.

>>> x_adv = autoattack(model, x, y, eps=8 / 255)                     # standard version
>>> result = run_autoattack(model, x, y, eps=8 / 255, version="plus")
>>> print(result.table())                                            # robust accuracy per stage
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..modes import model_device
from ..stats import format_accuracy
from .apgd import apgd
from .core import attack_mode, check_attack_inputs, lp_norm
from .fab import fab
from .square import square


@dataclass(frozen=True)
class Stage:
    """One AutoAttack stage: an attack, its fixed options, and whether its budget is a number of
    queries (Square) or of steps and target classes (APGD, FAB)."""

    attack: Callable[..., Tensor]
    options: dict
    query_based: bool = False

    def run(self, model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, *,
            restarts: int, steps: int, queries: int, n_targets: int, seed: int,
            batch_size: int | None) -> Tensor:
        budget = (dict(queries=queries) if self.query_based
                  else dict(steps=steps, n_target_classes=n_targets))
        return self.attack(model, x, y, eps, norm=norm, restarts=restarts, seed=seed,
                           batch_size=batch_size, **budget, **self.options)


STAGES = {
    "apgd-ce": Stage(apgd, {"loss": "ce"}),
    "apgd-dlr": Stage(apgd, {"loss": "dlr"}),
    "apgd-t": Stage(apgd, {"loss": "dlr", "targeted": True}),
    "fab": Stage(fab, {"targeted": False}),
    "fab-t": Stage(fab, {"targeted": True}),
    "square": Stage(square, {"rescale_schedule": False}, query_based=True),
}
VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
}
# Restarts per stage in each version (the reference's set_version); custom lists use "standard".
_RESTARTS = {
    "standard": dict.fromkeys(STAGES, 1),
    "plus": {"apgd-ce": 5, "apgd-dlr": 5, "fab": 5, "square": 1, "apgd-t": 1, "fab-t": 1},
}


@dataclass
class AutoAttackResult:
    """What :func:`run_autoattack` found: the adversarial batch and robust accuracy per stage."""

    x_adv: Tensor
    clean_accuracy: float
    n: int                                                # images attacked
    robust_accuracy: dict = field(default_factory=dict)   # attack name -> accuracy after it
    seconds: dict = field(default_factory=dict)           # attack name -> wall time

    @property
    def final_accuracy(self) -> float:
        """Robust accuracy after the whole ensemble."""
        stages = list(self.robust_accuracy.values())
        return stages[-1] if stages else self.clean_accuracy

    def table(self) -> str:
        """Accuracy after each stage with its 95% Wilson interval (on ``n`` images), and the
        stage's wall time."""
        rows = [f"{'clean':<10} {format_accuracy(self.clean_accuracy, self.n, short=True)}"]
        rows += [f"{name:<10} {format_accuracy(acc, self.n, short=True)}   "
                 f"({self.seconds[name]:.1f} s)" for name, acc in self.robust_accuracy.items()]
        return "\n".join(rows)


def run_autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf",
                   version: str = "standard", attacks=None, seed: int = 0, *, steps: int = 100,
                   square_queries: int = 5000, n_target_classes: int = 9,
                   batch_size: int | None = 500, verbose: bool = False) -> AutoAttackResult:
    """Run AutoAttack; see the module docstring. ``attacks`` (stage names) overrides ``version``.
    Needs at least one image (the accuracies of an empty batch are undefined)."""
    check_attack_inputs(model, x, y, eps, norm)
    names = _stage_names(version, attacks)
    if len(x) == 0:
        raise ValueError("run_autoattack needs at least one image: the accuracies of an empty "
                         "batch are undefined (autoattack() returns an empty batch unchanged)")
    restarts = _RESTARTS.get(version, _RESTARTS["standard"])
    device = model_device(model)
    x0, y0 = x.detach().to(device), y.to(device)
    with attack_mode(model), torch.no_grad():
        n_classes = model(x0[:1]).shape[1]
    robust = _correct(model, x0, y0)                                   # (N,) bool
    n_targets = min(n_target_classes, n_classes - 1)
    x_adv = x0.clone()
    result = AutoAttackResult(x_adv=x_adv, clean_accuracy=robust.sum().item() / len(robust),
                             n=len(robust))
    for name in names:
        start = time.perf_counter()
        idx = robust.nonzero().squeeze(1)
        if idx.numel() > 0:
            adv = STAGES[name].run(model, x0[idx], y0[idx], eps, norm, restarts=restarts[name],
                                   steps=steps, queries=square_queries, n_targets=n_targets,
                                   seed=seed, batch_size=batch_size).to(device)
            _check_stage_output(name, adv, x0[idx], eps, norm)
            fooled = ~_correct(model, adv, y0[idx])
            x_adv[idx[fooled]] = adv[fooled]
            robust[idx[fooled]] = False
        result.robust_accuracy[name] = robust.sum().item() / len(robust)
        result.seconds[name] = time.perf_counter() - start
        if verbose:
            print(f"{name:<9} robust accuracy {result.robust_accuracy[name]:.2%} "
                  f"({result.seconds[name]:.1f} s)")
    result.x_adv = x_adv.to(x.device)
    return result


def autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf",
               version: str = "standard", attacks=None, seed: int = 0, **kwargs) -> Tensor:
    """AutoAttack's adversarial batch (a new tensor); ``kwargs`` go to :func:`run_autoattack`.
    An empty batch is returned as an empty copy."""
    if isinstance(x, Tensor) and x.dim() == 4 and len(x) == 0:
        check_attack_inputs(model, x, y, eps, norm)
        _stage_names(version, attacks)
        return x.detach().clone()
    return run_autoattack(model, x, y, eps, norm, version, attacks, seed, **kwargs).x_adv


def _stage_names(version: str, attacks) -> list[str]:
    if attacks is None:
        if version not in VERSIONS:
            raise ValueError(f"unknown AutoAttack version {version!r}; choose one of "
                             f"{tuple(VERSIONS)} or pass attacks=[...]")
        return list(VERSIONS[version])
    names = list(attacks)
    unknown = [a for a in names if a not in STAGES]
    if unknown or not names:
        raise ValueError(f"unknown attacks {unknown} (or an empty list); choose from "
                         f"{tuple(STAGES)}")
    return names


def _correct(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 500) -> Tensor:
    """(N,) bool: whether the model classifies each image correctly (eval mode, in chunks)."""
    with attack_mode(model), torch.no_grad():
        return torch.cat([model(x[i:i + chunk]).argmax(1) == y[i:i + chunk]
                          for i in range(0, len(x), chunk)])


def _check_stage_output(name: str, adv: Tensor, x: Tensor, eps: float, norm: str) -> None:
    too_far = lp_norm(adv - x, norm) > eps * (1 + 1e-5) + 1e-6
    if too_far.any() or adv.min() < 0 or adv.max() > 1:
        raise RuntimeError(f"{name} returned points outside the eps-ball or [0, 1]")
