"""AutoAttack: an ensemble of parameter-free attacks, each run on the points still robust.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, https://arxiv.org/abs/2003.01690, following the authors'
``fra31/auto-attack`` (``autoattack/autoattack.py``, ``set_version``):

* ``"standard"``: APGD-CE (1 run), APGD-T (targeted DLR, 9 target classes), FAB-T (9 target
  classes), Square (5,000 queries); 100 iterations for the gradient attacks.
* ``"plus"``: APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts), Square (5,000 queries),
  APGD-T and FAB-T (9 target classes).
* a custom list: ``attacks=["apgd-ce", "square"]`` with any of :data:`ATTACKS`.

Every attack sees only the points that all previous attacks failed to misclassify, and a point
counts as broken only if the returned image is misclassified (checked here, and checked to lie in
the eps-ball and [0, 1]). The targeted attacks use ``n_target_classes`` (9) targets, at most
``num_classes - 1``. ``steps`` and ``square_queries`` default to the paper's 100 and 5,000; the
quick profile of the course lowers them to fit a CPU, which makes the evaluation weaker.

Norms: L-inf and L2. Inputs: images in [0, 1], (N, C, H, W).

>>> x_adv = autoattack(model, x, y, eps=8 / 255)                     # standard version
>>> result = run_autoattack(model, x, y, eps=8 / 255, version="plus")
>>> print(result.table())                                            # robust accuracy per stage
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._base import attack_mode, check_attack_inputs, lp_norm, model_device
from .apgd import apgd

ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
}
# Restarts per attack in each version (the reference's set_version); custom lists use "standard".
_RESTARTS = {
    "standard": dict.fromkeys(ATTACKS, 1),
    "plus": {"apgd-ce": 5, "apgd-dlr": 5, "fab": 5, "square": 1, "apgd-t": 1, "fab-t": 1},
}


@dataclass
class AutoAttackResult:
    """What :func:`run_autoattack` found: the adversarial batch and robust accuracy per stage."""

    x_adv: Tensor
    clean_accuracy: float
    robust_accuracy: dict = field(default_factory=dict)   # attack name -> accuracy after it
    seconds: dict = field(default_factory=dict)           # attack name -> wall time

    @property
    def final_accuracy(self) -> float:
        """Robust accuracy after the whole ensemble."""
        return list(self.robust_accuracy.values())[-1] if self.robust_accuracy else self.clean_accuracy

    def table(self) -> str:
        rows = [f"{'clean':<10} {self.clean_accuracy:7.2%}"]
        rows += [f"{name:<10} {acc:7.2%}   ({self.seconds[name]:.1f} s)"
                 for name, acc in self.robust_accuracy.items()]
        return "\n".join(rows)


def _run_one(name: str, model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, restarts: int,
             n_targets: int, steps: int, square_queries: int, seed: int, batch_size: int | None) -> Tensor:
    if name.startswith("apgd"):
        loss = "ce" if name == "apgd-ce" else "dlr"
        return apgd(model, x, y, eps, norm=norm, steps=steps, loss=loss, targeted=name == "apgd-t",
                    restarts=restarts, seed=seed, n_target_classes=n_targets, batch_size=batch_size)
    if name.startswith("fab"):
        from .fab import fab
        return fab(model, x, y, eps, norm=norm, targeted=name == "fab-t", n_target_classes=n_targets,
                   steps=steps, restarts=restarts, seed=seed, batch_size=batch_size)
    from .square import square
    return square(model, x, y, eps, norm=norm, queries=square_queries, restarts=restarts, seed=seed,
                  batch_size=batch_size)


def run_autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf",
                   version: str = "standard", attacks=None, seed: int = 0, *, steps: int = 100,
                   square_queries: int = 5000, n_target_classes: int = 9, batch_size: int | None = 500,
                   verbose: bool = False) -> AutoAttackResult:
    """Run AutoAttack; see the module docstring. ``attacks`` (a list of names) overrides ``version``."""
    check_attack_inputs(model, x, y, eps, norm)
    if attacks is None:
        if version not in VERSIONS:
            raise ValueError(f"unknown AutoAttack version {version!r}; choose one of {tuple(VERSIONS)} "
                             f"or pass attacks=[...]")
        attacks = VERSIONS[version]
    attacks = list(attacks)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"unknown attacks {unknown} (or an empty list); choose from {ATTACKS}")
    restarts = _RESTARTS.get(version, _RESTARTS["standard"])
    device = model_device(model)
    x0, y0 = x.detach().to(device), y.to(device)

    with attack_mode(model), torch.no_grad():
        n_classes = model(x0[:1]).shape[1]
        robust = torch.cat([model(x0[i:i + 500]).argmax(1) == y0[i:i + 500]
                            for i in range(0, len(x0), 500)])
    n_targets = min(n_target_classes, n_classes - 1)
    x_adv = x0.clone()
    result = AutoAttackResult(x_adv=x_adv, clean_accuracy=robust.sum().item() / len(robust))
    for name in attacks:
        start = time.perf_counter()
        idx = robust.nonzero().squeeze(1)
        if idx.numel() > 0:
            adv = _run_one(name, model, x0[idx], y0[idx], eps, norm, restarts[name], n_targets, steps,
                           square_queries, seed, batch_size).to(device)
            too_far = lp_norm(adv - x0[idx], norm) > eps * (1 + 1e-5) + 1e-6
            if too_far.any() or adv.min() < 0 or adv.max() > 1:
                raise RuntimeError(f"{name} returned points outside the eps-ball or [0, 1]")
            with attack_mode(model), torch.no_grad():
                fooled = torch.cat([model(adv[i:i + 500]).argmax(1) != y0[idx][i:i + 500]
                                    for i in range(0, len(adv), 500)])
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
    """AutoAttack's adversarial batch (a new tensor); ``kwargs`` go to :func:`run_autoattack`."""
    return run_autoattack(model, x, y, eps, norm, version, attacks, seed, **kwargs).x_adv
