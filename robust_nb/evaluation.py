"""Measuring models: clean accuracy, robust accuracy, eps sweeps and gradient-masking checks."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .attacks import attack_mode, ce_loss, check_model_inputs, loss_and_grad
from .attacks.registry import default_kwargs, get_attack
from .modes import model_device, model_mode
from .stats import Accuracy, format_accuracy


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
    """Logits of ``model`` on ``x`` in eval mode (the model's mode is restored), on x's device.
    ``x``: (N, C, H, W) in [0, 1] in the model's dtype; an empty batch gives (0, K) logits."""
    check_model_inputs(model, x)
    return _logits(model, x, batch_size)


def _logits(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    device = model_device(model)
    with model_mode(model, training=False):
        out = [model(x[i:i + batch_size].to(device)).float()
               for i in range(0, max(len(x), 1), batch_size)]           # one chunk if empty
    return torch.cat(out).to(x.device)                                   # (N, K)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (eval mode). Labels must lie in
    ``[0, num_classes)``; an empty batch raises (its accuracy is undefined)."""
    _check_labelled_batch(model, x, y)
    return _correct(model, x, y, batch_size).sum().item() / len(y)


def _correct(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """(N,) bool: where ``model`` (eval mode) classifies ``x`` as ``y``, on x's device."""
    return _logits(model, x, batch_size).argmax(1) == y.to(x.device)


def _check_labelled_batch(model: nn.Module, x: Tensor, y: Tensor) -> None:
    check_model_inputs(model, x, y)
    if len(x) == 0:
        raise ValueError("the accuracy of an empty batch is undefined: pass at least one image")


# -- robust accuracy and eps sweeps --------------------------------------------------------------

def robust_correct(model: nn.Module, x: Tensor, y: Tensor, attack="pgd",
                   batch_size: int | None = None, **attack_kwargs) -> Tensor:
    """Per image, whether ``model`` still classifies ``attack(model, x, y, **attack_kwargs)`` as
    ``y``: an (N,) bool tensor on x's device, whose mean is :func:`robust_accuracy`. Keep it to
    read the robust accuracy of any subset of the images without attacking them again.

    >>> ok = robust_correct(model, x, y, "pgd", eps=0.3, alpha=0.075, steps=10)
    >>> ok.float().mean().item(), ok[:200].float().mean().item()     # all images, the first 200
    """
    fn = attack if callable(attack) else get_attack(attack).fn
    _check_labelled_batch(model, x, y)
    if batch_size is not None:
        attack_kwargs["batch_size"] = batch_size
    x_adv = fn(model, x, y, **attack_kwargs)
    return _correct(model, x_adv, y, batch_size or 500)


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, attack="pgd",
                    batch_size: int | None = None, **attack_kwargs) -> float:
    """Accuracy of ``model`` on ``attack(model, x, y, **attack_kwargs)``.

    ``attack`` is a registry name (``rnb.attacks.ATTACKS``) or a callable
    ``attack(model, x, y, **kw) -> x_adv``. ``batch_size``, if given, goes to the attack and to
    the accuracy computation. :func:`robust_correct` gives the result per image.

    >>> robust_accuracy(model, x, y, "pgd", eps=0.1, alpha=0.025, steps=10)
    >>> robust_accuracy(model, x, y, "apgd", **rnb.attacks.default_kwargs("apgd", 0.1))
    """
    correct = robust_correct(model, x, y, attack, batch_size, **attack_kwargs)
    return correct.sum().item() / len(y)


@dataclass
class EpsSweep:
    """Robust accuracy as a function of eps for one or more attacks (``eps[0]`` may be 0),
    measured on ``n`` images (``None`` when unknown: then :meth:`plot` needs its ``n``)."""

    eps: list
    accuracy: dict          # attack label -> list of accuracies, one per eps
    norm: str = "linf"
    n: int | None = None    # the number of images every accuracy was measured on

    def table(self) -> str:
        """One row per eps, one column per attack; each accuracy with its 95% interval when
        ``n`` is known."""
        names = list(self.accuracy)
        cells = [[format(Accuracy(self.accuracy[a][i], self.n), "short") if self.n else
                  f"{self.accuracy[a][i]:.1%}" for a in names] for i in range(len(self.eps))]
        widths = [max(len(a), *(len(row[j]) for row in cells)) + 2 for j, a in enumerate(names)]
        lines = ["eps     " + "".join(f"{a:>{w}}" for a, w in zip(names, widths))]
        for e, row in zip(self.eps, cells):
            lines.append(f"{e:<8.4g}" + "".join(f"{c:>{w}}" for c, w in zip(row, widths)))
        return "\n".join(lines)

    def plot(self, ax=None, n: int | None = None):
        """Accuracy against eps, one line per attack with the 95% Wilson interval of every point
        (``n`` images: the sweep's own, else this argument); returns the Figure."""
        import matplotlib.pyplot as plt

        from .plots import wilson_errors

        n = n if n is not None else self.n
        if n is None:
            raise ValueError("the sweep does not know its number of images n (needed for the 95% "
                             "error bars); pass plot(n=len(y))")
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        for name, acc in self.accuracy.items():
            ax.errorbar(self.eps, acc, yerr=wilson_errors(acc, n), marker="o", capsize=3,
                        label=name)
        ax.set_xlabel(f"eps ({'L-inf' if self.norm == 'linf' else 'L2'}, pixel units)")
        ax.set_ylabel(f"accuracy ({n} images, 95% intervals)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.figure.tight_layout()
        return ax.figure


def eps_sweep(model: nn.Module, x: Tensor, y: Tensor, eps_values, attacks=("pgd",),
              norm: str = "linf", steps: int = 10, progress: bool = True,
              **attack_kwargs) -> EpsSweep:
    """Robust accuracy for every eps in ``eps_values`` and every attack name in ``attacks``.

    Attack arguments come from :func:`robust_nb.attacks.default_kwargs` (``steps`` is the budget
    of every iterative attack there), updated by ``attack_kwargs``; eps = 0 is the clean
    accuracy.
    """
    from .progress import progress as progress_bar

    eps_values = [float(e) for e in eps_values]
    if not eps_values or any(not e >= 0 for e in eps_values):
        raise ValueError(f"eps_values must be a non-empty list of non-negative numbers, "
                         f"got {eps_values}")
    for a in attacks:                         # unknown names and norms fail before any work
        default_kwargs(a, 0.0, norm, steps)
    acc = {a: [] for a in attacks}
    jobs = [(a, e) for a in attacks for e in eps_values]
    for a, e in progress_bar(jobs, desc="eps sweep", disable=not progress):
        if e == 0:
            acc[a].append(accuracy(model, x, y))
            continue
        kw = default_kwargs(a, e, norm, steps) | attack_kwargs
        acc[a].append(robust_accuracy(model, x, y, a, **kw))
    return EpsSweep(eps=eps_values, accuracy=acc, norm=norm, n=len(y))


# -- gradient masking ----------------------------------------------------------------------------

class InputQuantization(nn.Module):
    """A "defense" that only hides gradients: round each pixel to ``levels`` grey levels first.

    Rounding has zero gradient almost everywhere, so every gradient attack sees ``grad = 0`` and
    stalls, while the decision function barely changes -- the textbook case of obfuscated
    gradients (Athalye, Carlini & Wagner 2018, https://arxiv.org/abs/1802.00420; input
    quantization as a defense: Xu, Evans & Qi 2018, "Feature squeezing",
    https://arxiv.org/abs/1704.01155). A score-based attack (Square) ignores gradients and is not
    fooled. Used by notebook 04 to demonstrate :func:`gradient_masking_check`.
    """

    def __init__(self, model: nn.Module, levels: int = 8):
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be at least 2, got {levels}")
        self.model = model
        self.levels = levels

    def forward(self, x: Tensor) -> Tensor:
        q = torch.round(x * (self.levels - 1)) / (self.levels - 1)   # (B, C, H, W), zero gradient
        return self.model(q)


@dataclass
class MaskingReport:
    """Numbers behind :func:`gradient_masking_check` and the warning signs they show."""

    clean: float
    pgd: float                   # robust accuracy under PGD (steps, one run)
    pgd_strong: float            # PGD with more steps and restarts
    square: float                # robust accuracy under the gradient-free Square attack
    large_eps: float             # PGD accuracy at a very large eps (should be near chance)
    zero_grad_fraction: float    # fraction of inputs whose loss gradient is (numerically) zero
    max_logit_change: float      # largest change of the logits between two identical evaluations
    n: int                       # images checked (the accuracies' denominator)
    warnings: list = field(default_factory=list)

    @property
    def suspicious(self) -> bool:
        return bool(self.warnings)

    def __str__(self) -> str:
        acc = {name: format_accuracy(getattr(self, name), self.n, short=True)      # 95% intervals
               for name in ("clean", "pgd", "pgd_strong", "square", "large_eps")}
        rows = [f"clean accuracy            {acc['clean']}",
                f"PGD                       {acc['pgd']}",
                f"PGD, more steps, restarts {acc['pgd_strong']}",
                f"Square (no gradients)     {acc['square']}",
                f"PGD at a very large eps   {acc['large_eps']}",
                f"inputs with zero gradient {self.zero_grad_fraction:7.1%}",
                f"max logit change, rerun   {self.max_logit_change:9.2e}"]
        if not self.warnings:
            return "\n".join(rows + ["no warning signs"])
        rows += ["warnings:"] + [f"  - {w}" for w in self.warnings]
        return "\n".join(rows)


def gradient_masking_check(model: nn.Module, x: Tensor, y: Tensor, eps: float,
                           norm: str = "linf", steps: int = 10, square_queries: int = 1000,
                           large_eps: float | None = None, strong_steps: int | None = None,
                           strong_restarts: int = 5, tolerance: float = 0.05,
                           seed: int = 0) -> MaskingReport:
    """Look for the warning signs of gradient masking listed by Croce & Hein 2020
    (https://arxiv.org/abs/2003.01690) and Athalye et al. 2018 (https://arxiv.org/abs/1802.00420):

    1. the black-box Square attack beats white-box PGD;
    2. input gradients are zero (or below 1e-12 in L1 norm) for many inputs;
    3. accuracy does not fall towards chance at a very large eps (default 0.5 for L-inf -- enough
       to turn every image grey -- and 10x eps for L2);
    4. many more steps and restarts lower the accuracy a lot;
    5. the model's outputs are not deterministic (randomised defenses need EOT).

    Every PGD here takes Madry et al.'s step for its step count,
    ``rnb.attacks.madry_alpha(eps, n) = 2.5 * eps / n``: the plain PGD ``steps`` steps, the
    strong PGD ``strong_steps`` (default ``10 * steps``) steps of ``2.5 * eps / strong_steps``
    (a tenth of the plain step with the default) and ``strong_restarts`` restarts. Square gets
    ``square_queries`` queries. ``tolerance`` is the accuracy gap that counts as "a lot".
    Returns a :class:`MaskingReport`.
    """
    _check_labelled_batch(model, x, y)
    device = model_device(model)
    x, y = x.to(device), y.to(device)
    large = large_eps if large_eps is not None else (0.5 if norm == "linf" else 10 * eps)
    n_strong = strong_steps or 10 * steps
    clean = accuracy(model, x, y)
    acc_pgd = robust_accuracy(model, x, y, "pgd", seed=seed,
                              **default_kwargs("pgd", eps, norm, steps))
    acc_strong = robust_accuracy(model, x, y, "pgd", seed=seed, restarts=strong_restarts,
                                 **default_kwargs("pgd", eps, norm, n_strong))
    acc_square = robust_accuracy(model, x, y, "square", eps=eps, norm=norm,
                                 queries=square_queries, seed=seed)
    acc_large = robust_accuracy(model, x, y, "pgd", seed=seed,
                                **default_kwargs("pgd", large, norm, steps))
    with attack_mode(model):
        _, _, grad = loss_and_grad(model, x, ce_loss, y)
        zero_grad = (grad.flatten(1).abs().sum(1) <= 1e-12).float().mean().item()
        with torch.no_grad():
            change = (model(x) - model(x)).abs().max().item()
    n_classes = predict_logits(model, x[:1]).shape[1]

    warnings = []
    if acc_square < min(acc_pgd, acc_strong) - tolerance:
        warnings.append(f"Square (no gradients) beats PGD: {acc_square:.1%} < "
                        f"{min(acc_pgd, acc_strong):.1%}")
    if zero_grad > 0.1:
        warnings.append(f"{zero_grad:.0%} of the inputs have a zero loss gradient")
    if acc_large > 1.0 / n_classes + 0.1:
        warnings.append(f"accuracy stays at {acc_large:.1%} at eps={large:g} "
                        f"(expected near chance)")
    if acc_pgd - acc_strong > tolerance:
        warnings.append(f"more steps and restarts help a lot: {acc_pgd:.1%} -> {acc_strong:.1%}")
    if change > 1e-4:
        warnings.append(f"outputs change between identical evaluations (by up to {change:.2g}): "
                        f"a randomised model needs EOT")
    return MaskingReport(clean=clean, pgd=acc_pgd, pgd_strong=acc_strong, square=acc_square,
                         large_eps=acc_large, zero_grad_fraction=zero_grad, max_logit_change=change,
                         n=len(y), warnings=warnings)
