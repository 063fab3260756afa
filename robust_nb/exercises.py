"""Checks for the course's coding exercises: the learner's function against robust_nb's own.

Every notebook has exercises where the learner writes a piece of a method (an FGSM step, the
TRADES loss, the ECE...). The cell after each exercise calls one ``check_*`` function of this
module with the learner's function. The check runs both the learner's function and the package's
reference on fresh random inputs (several shapes and the edge cases that matter), and either
prints one line saying what passed or raises :class:`ExerciseFailed` -- an ``AssertionError``
whose message says, in a student's words, what is wrong (wrong shape, outside the eps-ball, off by
a sign, not projected, mode not restored, KL reversed...) and what to try.

How a diagnosis is found: first the properties every answer must have (a tensor of the right
shape, the input left alone, the model's mode and gradients restored, inside the eps-ball...),
each with its own message; then the number is compared with the reference; when it differs, the
typical wrong answers of that exercise are computed on the same inputs, and
the message of the one the learner's output equals is shown. An output that matches no known
mistake gets the plain facts: where it differs and by how much.

:func:`use` lets a notebook run the learner's function once its check has passed, and the
package's reference (with a note) until then, so a student copy still runs past an unfinished
exercise.

>>> rnb.exercises.check_fgsm(fgsm_attack)          # the learner's function, from the cell above
check passed: fgsm_attack matches rnb.attacks.fgsm on 4 cases ...
>>> x_adv = rnb.exercises.use(fgsm_attack)(model, x, y, eps)
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ExerciseFailed(AssertionError):
    """A learner's function failed its check; the message says what is wrong and what to try."""


# -- the reference of every exercise, with the learner's signature ------------------------------

def _ref_normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    from .models.layers import Normalize

    return Normalize(mean, std).to(device=x.device, dtype=x.dtype)(x)


def _ref_basic_block_forward(block: nn.Module, x: Tensor) -> Tensor:
    return block(x)


def _ref_dropblock_gamma(drop_prob: float, block_size: int, height: int, width: int) -> float:
    from .models.layers import dropblock_gamma

    return dropblock_gamma(drop_prob, block_size, height, width)


def _ref_keep_mask(seeds: Tensor, block_size: int) -> Tensor:
    from .models.layers import blocks_from_seeds

    return 1.0 - blocks_from_seeds(seeds if seeds.is_floating_point() else seeds.float(), block_size)


def _ref_ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    from .training.ema import WeightEMA

    ema = WeightEMA.__new__(WeightEMA)           # an EMA of ema_model that has been updated once
    ema.decay, ema.module, ema.n_averaged = float(decay), ema_model, 1
    ema.update(model)


def _ref_fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    from .attacks import fgsm

    return fgsm(model, x, y, eps)


def _ref_pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int,
             norm: str = "linf") -> Tensor:
    from .attacks import pgd

    return pgd(model, x, y, eps, alpha, steps, norm=norm, random_start=False)


def _ref_adversarial_loss(model: nn.Module, x: Tensor, y: Tensor, attack: Callable) -> Tensor:
    x_adv = attack(model, x, y).detach()
    return F.cross_entropy(model(x_adv), y)


def _ref_trades_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    from .losses import trades_loss

    return trades_loss(logits_clean, logits_adv, y, beta)


def _ref_fisher_rao(p: Tensor, q: Tensor) -> Tensor:
    from .losses import fisher_rao_distance

    return fisher_rao_distance(p, q)


def _ref_ece(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    from .calibration import expected_calibration_error

    return expected_calibration_error(probs, labels, n_bins)


def _ref_straight_through(preprocess: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    from .attacks import bpda

    return bpda(preprocess)


def _ref_corruption_errors(errors: dict, baseline_errors: dict) -> tuple[dict, float]:
    from .corruptions import CorruptionReport

    def report(errs, baseline=None):
        return CorruptionReport({c: [1 - e for e in v] for c, v in errs.items()}, 1.0, 1,
                                severities=tuple(range(1, len(next(iter(errs.values()))) + 1)),
                                baseline=baseline)

    ours = report(errors, report(baseline_errors))
    return ours.ce, ours.mce


REFERENCES: dict[str, tuple[Callable, str]] = {
    "normalize": (_ref_normalize, "rnb.models.Normalize"),
    "basic_block_forward": (_ref_basic_block_forward, "BasicBlock.forward of robust_nb.models.resnet"),
    "dropblock_gamma": (_ref_dropblock_gamma, "rnb.models.layers.dropblock_gamma"),
    "keep_mask": (_ref_keep_mask, "1 - rnb.models.layers.blocks_from_seeds"),
    "ema_update": (_ref_ema_update, "rnb.training.ema.WeightEMA.update"),
    "fgsm_attack": (_ref_fgsm, "rnb.attacks.fgsm"),
    "pgd_attack": (_ref_pgd, "rnb.attacks.pgd(..., random_start=False)"),
    "adversarial_loss": (_ref_adversarial_loss, "AdversarialTraining's loss (robust_nb.training)"),
    "trades_loss": (_ref_trades_loss, "rnb.losses.trades_loss"),
    "fisher_rao_distance": (_ref_fisher_rao, "rnb.losses.fisher_rao_distance"),
    "binned_ece": (_ref_ece, "rnb.calibration.expected_calibration_error"),
    "straight_through": (_ref_straight_through, "rnb.attacks.bpda"),
    "corruption_errors": (_ref_corruption_errors, "rnb.corruptions.CorruptionReport (.ce, .mce)"),
}

_passed: dict[str, Callable] = {}       # exercise name -> the learner's function that passed


def use(fn: Callable) -> Callable:
    """``fn`` (the learner's function for an exercise) if it has passed its check in this
    session, else the package's reference for that exercise, after printing a note; so the cells
    after an unfinished exercise still run. The exercise is found by the function's name."""
    name = getattr(fn, "__name__", None)
    if name not in REFERENCES:
        raise ValueError(f"{name!r} is not an exercise of the course; exercises: "
                         f"{', '.join(REFERENCES)}")
    if _passed.get(name) is fn:
        return fn
    reference, where = REFERENCES[name]
    print(f"note: your {name} has not passed its check yet, so the cells below use {where}")
    return reference


# -- helpers shared by the checks ---------------------------------------------------------------

def _fail(name: str, problem: str, hint: str = "") -> None:
    message = f"{name}: {problem}"
    if hint:
        message += f"\n  hint: {hint}"
    raise ExerciseFailed(message)


def _call(name: str, fn: Callable, case: str, *args, hints: dict[str, str] | None = None):
    """``fn(*args)``; an unfinished exercise or a crash becomes an ExerciseFailed naming the case
    (the original exception stays attached as the cause), with the advice of ``hints`` whose key
    occurs in the error's message."""
    try:
        return fn(*args)
    except NotImplementedError as err:
        raise ExerciseFailed(f"{name} is not written yet: replace `raise NotImplementedError()` in "
                             f"the exercise cell with your code, run that cell, then this one") \
            from err
    except ExerciseFailed:
        raise
    except Exception as err:
        advice = next((h for key, h in (hints or {}).items() if key in str(err)), "")
        raise ExerciseFailed(f"{name} raised {type(err).__name__} on {case}: {err}"
                             + (f"\n  hint: {advice}" if advice else "")) from err


def _as_tensor(name: str, out, case: str, shape: tuple, what: str = "a tensor",
               shape_hint: str = "") -> Tensor:
    if not isinstance(out, Tensor):
        _fail(name, f"returned {type(out).__name__} on {case}; it should return {what} of shape "
                    f"{shape}", "did you forget the `return` statement?" if out is None else "")
    if tuple(out.shape) != tuple(shape):
        _fail(name, f"returned shape {tuple(out.shape)} on {case}; expected {tuple(shape)}",
              shape_hint)
    return out


def _close(a: Tensor, b: Tensor, atol: float, rtol: float = 0.0) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol))


def _differs(name: str, got: Tensor, expected: Tensor, case: str, reference: str,
             mistakes: Sequence[tuple[Tensor, str]], atol: float) -> None:
    """Raise with the advice of the typical wrong answer ``got`` equals (``mistakes``: pairs of
    what that wrong answer returns on the same inputs and the advice), else with the facts."""
    for wrong, advice in mistakes:
        if _close(got.detach(), wrong.detach(), atol) and not _close(wrong.detach(),
                                                                    expected.detach(), atol):
            _fail(name, f"differs from {reference} on {case}.", advice)
    diff = (got.detach().double() - expected.detach().double()).abs()
    _fail(name, f"differs from {reference} on {case}: {int((diff > atol).sum())} of {diff.numel()} "
                f"values are off, by up to {diff.max().item():.3g}")


def _ok(name: str, fn: Callable, reference: str, cases: int, extra: str = "") -> None:
    _passed[name] = fn
    print(f"check passed: {name} matches {reference} on {cases} cases{extra}")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- 00: normalisation ---------------------------------------------------------------------------

def check_normalize(normalize: Callable, seed: int = 0) -> None:
    """``normalize(x, mean, std)``: ``(x - mean) / std`` per channel of (N, C, H, W) images."""
    name, ref = "normalize", "rnb.models.Normalize"
    gen = _generator(seed)
    cases = [((2, 3, 5, 3), "3 channels (width 3, so the width cannot stand in for channels)"),
             ((4, 1, 6, 6), "1 channel"), ((1, 3, 2, 7), "a single image")]
    for shape, case in cases:
        c = shape[1]
        x = torch.rand(shape, generator=gen, dtype=torch.float64)
        # float32 values (Normalize stores float32 buffers), so float64 arithmetic is exact here
        mean = tuple((torch.rand(c, generator=gen) * 0.5).tolist())
        std = tuple((0.1 + torch.rand(c, generator=gen)).tolist())
        x_before = x.clone()
        out = _as_tensor(name, _call(name, normalize, case, x, mean, std), case, shape)
        if not torch.equal(x, x_before):
            _fail(name, f"changed its input x on {case}", "compute a new tensor; don't write "
                                                         "into x (no x -= ..., x /= ...)")
        expected = _ref_normalize(x, mean, std)
        if not _close(out, expected, 1e-9):
            m = torch.tensor(mean, dtype=x.dtype)
            s = torch.tensor(std, dtype=x.dtype)
            mistakes = [
                ((x - m.view(1, -1, 1, 1)) * s.view(1, -1, 1, 1),
                        "you multiplied by std; normalising divides by it"),
                (x / s.view(1, -1, 1, 1) - m.view(1, -1, 1, 1),
                        "subtract the mean first, then divide by std"),
                ((x - m) / s,
                        "mean and std were broadcast along the last axis (the width): reshape them "
                        "to (1, C, 1, 1), e.g. torch.tensor(mean).view(1, -1, 1, 1)"),
                ((x - x.mean()) / x.std(),
                        "use the dataset's mean and std (the arguments), not the batch's"),
            ]
            _differs(name, out, expected, case, ref, mistakes, 1e-9)
    _ok(name, normalize, ref, len(cases))


# -- 01: the residual block ----------------------------------------------------------------------

def _random_block(cin: int, planes: int, stride: int, gen: torch.Generator) -> nn.Module:
    """A BasicBlock in eval mode whose BatchNorms have random statistics and affine parameters (so
    a forgotten BatchNorm shows), in float64."""
    from .models.resnet import BasicBlock

    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    block = BasicBlock(cin, planes, stride).double().eval()
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen, dtype=torch.float64) * 0.3)
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen, dtype=torch.float64))
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen, dtype=torch.float64))
                m.bias.copy_(torch.randn(m.num_features, generator=gen, dtype=torch.float64) * 0.3)
    return block


def check_basic_block_forward(basic_block_forward: Callable, seed: int = 0) -> None:
    """``basic_block_forward(block, x)``: the forward pass of a ResNet BasicBlock (He et al. 2016,
    Fig. 2): conv1-bn1-ReLU-conv2-bn2, plus ``block.shortcut(x)``, then ReLU."""
    name, ref = "basic_block_forward", "BasicBlock.forward"
    gen = _generator(seed)
    cases = [(8, 8, 1, (2, 8, 6, 6), "a block that keeps the shape (identity shortcut)"),
             (4, 8, 2, (3, 4, 8, 8), "a block that halves the resolution and doubles the "
                                     "channels (1x1 convolution shortcut)")]
    for cin, planes, stride, shape, case in cases:
        block = _random_block(cin, planes, stride, gen)
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        expected = block(x)
        out = _as_tensor(name, _call(name, basic_block_forward, case, block, x), case,
                         tuple(expected.shape))
        if _close(out, expected, 1e-9):
            continue
        b = block
        mistakes = [
            (F.relu(b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x)))))),
                    "the skip connection is missing: add block.shortcut(x) before the last ReLU"),
            (F.relu(b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x)))))) + b.shortcut(x),
                    "apply the last ReLU after adding the shortcut, not to the branch alone"),
            (b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x))))) + b.shortcut(x),
                    "the last ReLU is missing: ReLU(branch + shortcut)"),
            (F.relu(b.bn2(b.conv2(b.bn1(b.conv1(x)))) + b.shortcut(x)),
                    "the ReLU between the two convolutions is missing"),
            (F.relu(b.conv2(F.relu(b.conv1(x))) + b.shortcut(x)),
                    "the BatchNorms are missing: conv1 -> bn1 -> ReLU -> conv2 -> bn2"),
        ]
        _differs(name, out, expected, case, ref, mistakes, 1e-9)
    _ok(name, basic_block_forward, ref, len(cases))


# -- 02: DropBlock --------------------------------------------------------------------------------

def check_dropblock(dropblock_gamma: Callable, keep_mask: Callable, seed: int = 0) -> None:
    """``dropblock_gamma(drop_prob, block_size, height, width)`` (Ghiasi et al. 2018, Eq. 1) and
    ``keep_mask(seeds, block_size)``: grow a (B, C, H-k+1, W-k+1) map of block anchors (1 = a
    block starts here, at its top-left corner) into the (B, C, H, W) keep-mask (0 = dropped)."""
    from .models.layers import blocks_from_seeds
    from .models.layers import dropblock_gamma as ref_gamma

    gen = _generator(seed)
    name = "dropblock_gamma"
    gamma_cases = [(0.1, 3, 12, 12), (0.3, 5, 14, 9), (0.1, 1, 7, 7), (0.2, 7, 7, 7)]
    for p, k, h, w in gamma_cases:
        case = f"drop_prob={p}, block_size={k}, a {h}x{w} map"
        got = _call(name, dropblock_gamma, case, p, k, h, w)
        expected = ref_gamma(p, k, h, w)
        try:
            got = float(got)
        except (TypeError, ValueError):
            _fail(name, f"returned {type(got).__name__} on {case}; it should return a number")
        if not math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12):
            wrong = {p / k**2: "the factor (H * W) / ((H - k + 1) * (W - k + 1)) is missing: seeds "
                               "only fall where a whole block fits, so there are fewer of them",
                     p: "gamma is not drop_prob: each seed drops a whole block of k * k units, "
                        "so divide by block_size ** 2 (and correct for the valid region)",
                     p * h * w / ((h - k + 1) * (w - k + 1)): "divide by block_size ** 2: each "
                                                              "seed drops k * k units"}
            hint = next((m for v, m in wrong.items()
                         if math.isclose(got, v, rel_tol=1e-9) and not math.isclose(v, expected)),
                        "")
            _fail(name, f"returned {got:.6g} on {case}; expected {expected:.6g}", hint)
    name, ref = "keep_mask", "1 - rnb.models.layers.blocks_from_seeds"
    mask_cases = [((2, 3, 10, 10), 3), ((1, 2, 9, 12), 5), ((2, 1, 6, 6), 1), ((1, 1, 5, 5), 5)]
    for (b, c, h, w), k in mask_cases:
        case = f"block_size={k} on {h}x{w} maps"
        seeds = (torch.rand((b, c, h - k + 1, w - k + 1), generator=gen) < 0.15).float()
        seeds[0, 0, 0, 0] = 1.0                             # at least one block, in the corner
        expected = 1.0 - blocks_from_seeds(seeds, k)
        out = _as_tensor(name, _call(name, keep_mask, case, seeds.clone(), k), case,
                         (b, c, h, w), "a mask",
                         "a seed anchors a block's top-left corner: zero-pad the seeds by k - 1 on "
                         "every side, then a k x k max-pool with stride 1 gives the (H, W) map")
        if _close(out, expected, 1e-6):
            continue
        mistakes = [
            (blocks_from_seeds(seeds, k),
                    "this is the mask of dropped units; keep_mask is 1 where units are kept"),
            (1 - F.avg_pool2d(F.pad(seeds, (k - 1,) * 4), k, 1) * k * k,
                    "where blocks overlap you subtracted twice (a sum-pool): use a max-pool, so a "
                    "unit covered by several blocks is simply dropped (0), never negative"),
            (F.max_pool2d(F.pad(1 - seeds, (k - 1,) * 4, value=1.0), k, 1),
                    "a max-pool of the keep-map keeps a unit if ANY seed position near it is "
                    "empty; pool the seeds (drop if any seed covers it), then take 1 - that"),
        ]
        _differs(name, out, expected, case, ref, mistakes, 1e-6)
    _ok("dropblock_gamma", dropblock_gamma, "rnb.models.layers.dropblock_gamma", len(gamma_cases))
    _ok(name, keep_mask, ref, len(mask_cases))


# -- 03: the EMA update ---------------------------------------------------------------------------

def _ema_models(gen: torch.Generator) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3)).double()
    model.train()(torch.randn(8, 1, 6, 6, generator=gen, dtype=torch.float64))   # BN statistics
    ema = copy.deepcopy(model)
    with torch.no_grad():            # training moved the weights on since the last update
        for t in list(model.parameters()) + [model[1].running_mean, model[1].running_var]:
            t.add_(torch.randn(t.shape, generator=gen, dtype=t.dtype))
        model[1].num_batches_tracked += 5
    return ema, model


def check_ema_update(ema_update: Callable, seed: int = 0) -> None:
    """``ema_update(ema_model, model, decay)``: in place, ``ema = decay * ema + (1 - decay) *
    weights`` for every parameter and floating-point buffer; integer buffers are copied."""
    name, ref = "ema_update", "rnb.training.ema.WeightEMA.update"
    gen = _generator(seed)
    decays = (0.9, 0.999, 0.5)
    for decay in decays:
        case = f"decay={decay}"
        ema, model = _ema_models(gen)
        before, weights = copy.deepcopy(ema.state_dict()), copy.deepcopy(model.state_dict())
        expected = copy.deepcopy(ema)
        _ref_ema_update(expected, model, decay)
        _call(name, ema_update, case, ema, model, decay,
              hints={"Long": "integer buffers (BatchNorm's num_batches_tracked) cannot be "
                             "averaged: copy them (e.copy_(w)) when not e.is_floating_point()"})
        if any(not torch.equal(v, model.state_dict()[k]) for k, v in weights.items()):
            _fail(name, f"changed the model's own weights on {case}",
                  "only ema_model changes; read model's tensors, write into ema_model's")
        got, exp = ema.state_dict(), expected.state_dict()
        if all(torch.equal(v, before[k]) for k, v in got.items()):
            _fail(name, f"left ema_model unchanged on {case}",
                  "update ema_model's tensors in place (with torch.no_grad(): e.mul_(...).add_(...) "
                  "or e.lerp_(w, 1 - decay)); rebinding a local variable changes nothing")
        for key in exp:
            if _close(got[key], exp[key], 1e-9):
                continue
            e0, w = before[key], weights[key]
            if key.endswith("num_batches_tracked"):
                _fail(name, f"{key} is {got[key].item()}, expected {exp[key].item()} ({case})",
                      "integer buffers (BatchNorm's count of batches) are copied, not averaged")
            mistakes = [((1 - decay) * e0 + decay * w,
                                "decay and 1 - decay are swapped: the average keeps `decay` of "
                                "itself and takes only 1 - decay of the new weights"),
                        (e0, "this tensor was not averaged: average every "
                                            "parameter AND every floating-point buffer "
                                            "(model.buffers(): BatchNorm's running statistics)"),
                        (w.to(e0.dtype), "you copied the weights instead of "
                                                         "averaging them"),
                        ((e0 + w) / 2, "that is a plain mean of the two; use "
                                                      "decay * ema + (1 - decay) * weights")]
            _differs(name, got[key], exp[key], f"{case}, tensor {key!r}", ref, mistakes, 1e-9)
    _ok(name, ema_update, ref, len(decays))


# -- 04: FGSM and PGD ---------------------------------------------------------------------------

def _attack_model(gen: torch.Generator) -> nn.Module:
    """A small float64 convnet with BatchNorm (random statistics), in TRAIN mode, so an attack that
    forgets eval mode computes something else and one that forgets to restore it is caught."""
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 5)).double()
    bn = model[1]
    bn.running_mean.copy_(torch.randn(6, generator=gen, dtype=torch.float64) * 0.2)
    bn.running_var.copy_(0.5 + torch.rand(6, generator=gen, dtype=torch.float64))
    return model.train()


def _attack_inputs(gen: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
    x = torch.rand((n, 1, 8, 8), generator=gen, dtype=torch.float64)
    x[0, 0, :2] = 0.0                    # pixels on the box's edges: the [0, 1] clip matters
    x[-1, 0, -2:] = 1.0
    return x, torch.randint(0, 5, (n,), generator=gen)


def _input_grad(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    from .modes import model_mode

    with model_mode(model, training=False):
        xg = x.detach().clone().requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    return grad


def _l2_dir(g: Tensor) -> Tensor:
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))


def _project(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    from .attacks.core import project

    return project(x_adv, x, eps, norm)


def _check_attack_contract(name: str, fn: Callable, model: nn.Module, x: Tensor, y: Tensor,
                           args: tuple, case: str, eps: float, norm: str) -> Tensor:
    """Run the learner's attack and check what every attack promises; return its output."""
    x_before = x.clone()
    for p in model.parameters():
        p.grad = None
    out = _as_tensor(name, _call(name, fn, case, model, x, y, *args), case, tuple(x.shape))
    if not torch.equal(x, x_before):
        _fail(name, f"changed its input x on {case}", "work on a copy (x_adv = x.clone()) or build "
                                                      "new tensors; never write into x")
    if out.data_ptr() == x.data_ptr():
        _fail(name, f"returned the input tensor itself on {case}", "return a new tensor")
    if not model.training:
        _fail(name, f"left the model in eval mode on {case} (it was in train mode)",
              "restore the mode the model had: `with rnb.modes.model_mode(model, training=False):` "
              "around the attack does it for you")
    if any(p.grad is not None for p in model.parameters()):
        _fail(name, f"wrote gradients into the model's parameters (.grad) on {case}",
              "take the gradient with respect to the input only: "
              "grad, = torch.autograd.grad(loss, x_adv)")
    if out.min() < -1e-12 or out.max() > 1 + 1e-12:
        _fail(name, f"returned pixels outside [0, 1] on {case} (from {out.min().item():.3g} to "
                    f"{out.max().item():.3g})", "clip the images: x_adv.clamp(0, 1)")
    delta = (out - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    if size.max() > eps * (1 + 1e-6) + 1e-9:
        what = "L-inf distance" if norm == "linf" else "L2 norm of the perturbation"
        hint = ("project after every step: x + (x_adv - x).clamp(-eps, eps)" if norm == "linf" else
                "project after every step: scale delta = x_adv - x by min(1, eps / ||delta||_2), "
                "per image (clamping each pixel does not bound the L2 norm)")
        _fail(name, f"outside the eps-ball on {case}: the {what} reaches {size.max().item():.4g} "
                    f"but eps = {eps}", hint)
    return out


def check_fgsm(fgsm_attack: Callable, seed: int = 0) -> None:
    """``fgsm_attack(model, x, y, eps)``: one step ``x + eps * sign(grad_x CE)`` in eval mode, clipped to
    [0, 1] (Goodfellow et al. 2015), leaving the model's mode and parameter grads as they were."""
    name, ref = "fgsm_attack", "rnb.attacks.fgsm"
    gen = _generator(seed)
    cases = [(0.1, 6), (0.3, 3), (0.0, 2), (0.05, 1)]
    for eps, n in cases:
        case = f"eps={eps}, {n} image(s)"
        model = _attack_model(gen)
        x, y = _attack_inputs(gen, n)
        out = _check_attack_contract(name, fgsm_attack, model, x, y, (eps,), case, eps, "linf")
        expected = _ref_fgsm(model, x, y, eps)
        if _close(out, expected, 1e-7):
            continue
        g = _input_grad(model, x, y)
        inside = (out > 1e-9) & (out < 1 - 1e-9) & (g != 0)        # pixels the [0, 1] clip left alone
        step = (out - x).abs()[inside]
        if len(step) and not torch.allclose(step, torch.full_like(step, eps), atol=1e-7):
            _fail(name, f"differs from {ref} on {case}: pixels moved by different amounts (from "
                        f"{step.min().item():.3g} to {step.max().item():.3g}), not all by eps = {eps}",
                  "you stepped along the gradient's value; FGSM steps along its sign, so every "
                  "pixel moves by exactly eps: x + eps * grad.sign()")
        mistakes = [
            ((x - eps * g.sign()).clamp(0, 1),
                    "off by a sign: your step goes down the loss. FGSM ascends it: x + eps * sign(g)"),
            (_project(x + eps * g, x, eps, "linf"),
                    "you stepped along the gradient's value; FGSM steps along its sign: "
                    "x + eps * grad.sign()"),
            (_project(x + eps * g / g.abs().amax(), x, eps, "linf"),
                    "you stepped along the (rescaled) gradient; FGSM steps along its sign"),
        ]
        xg = x.clone().requires_grad_(True)                       # on a copy: train mode updates
        train_grad, = torch.autograd.grad(F.cross_entropy(copy.deepcopy(model)(xg), y), xg)  # BN
        mistakes.append(((x + eps * train_grad.sign()).clamp(0, 1),
                                "the gradient was taken in train mode (BatchNorm used the batch's "
                                "statistics): attack the model in eval mode, `with "
                                "rnb.modes.model_mode(model, training=False):`"))
        _differs(name, out, expected, case, ref, mistakes, 1e-7)
    _ok(name, fgsm_attack, ref, len(cases), "; mode, gradients, input and [0, 1] all kept")


def check_pgd(pgd_attack: Callable, seed: int = 0) -> None:
    """``pgd_attack(model, x, y, eps, alpha, steps, norm="linf")``: ``steps`` steps of size ``alpha`` along
    sign(g) (L-inf) or g / ||g||_2 per image (L2), each followed by the projection onto the eps-ball
    and [0, 1]; no random start; eval mode; mode and parameter grads restored (Madry et al. 2018)."""
    name, ref = "pgd_attack", "rnb.attacks.pgd(..., random_start=False)"
    gen = _generator(seed)
    cases = [("linf", 0.1, 0.04, 5, 4), ("l2", 0.5, 0.2, 5, 4), ("linf", 0.2, 0.1, 1, 1),
             ("l2", 1.0, 0.3, 6, 3)]
    for norm, eps, alpha, steps, n in cases:
        case = f"norm={norm!r}, eps={eps}, alpha={alpha}, steps={steps}, {n} image(s)"
        model = _attack_model(gen)
        x, y = _attack_inputs(gen, n)
        out = _check_attack_contract(name, pgd_attack, model, x, y, (eps, alpha, steps, norm), case, eps,
                                     norm)
        expected = _ref_pgd(model, x, y, eps, alpha, steps, norm)
        if _close(out, expected, 1e-6):
            continue

        def run(direction, proj_each=True, descend=False, norm=norm, eps=eps, alpha=alpha,
                steps=steps, x=x, y=y, model=model):
            x_adv = x.clone()
            for _ in range(steps):
                g = _input_grad(model, x_adv, y)
                x_adv = x_adv + (-1 if descend else 1) * alpha * direction(g)
                x_adv = _project(x_adv, x, eps, norm) if proj_each else x_adv.clamp(0, 1)
            return _project(x_adv, x, eps, norm)

        unit = (lambda g: g.sign()) if norm == "linf" else _l2_dir
        mistakes = [
            (run(unit, descend=True),
                    "off by a sign: your steps go down the loss; PGD ascends it"),
            (run(unit, proj_each=False),
                    "you project only once, at the end: project after EVERY step, so each "
                    "gradient is taken inside the eps-ball"),
            (run(lambda g: g.sign()),
                    "for norm='l2' the step is alpha * g / ||g||_2 (per image), not the sign"),
            (run(lambda g: g / g.norm()),
                    "the L2 step must be normalised per image (g.flatten(1).norm(dim=1)), not "
                    "over the whole batch"),
            (run(lambda g: g),
                    "you stepped along the raw gradient: use sign(g) (L-inf) or g / ||g||_2 (L2)"),
        ]
        _differs(name, out, expected, case, ref, mistakes, 1e-6)
    _ok(name, pgd_attack, ref, len(cases), " (L-inf and L2); mode, gradients, input, eps-ball kept")


# -- 05: the adversarial-training loss ------------------------------------------------------------

def check_adversarial_loss(adversarial_loss: Callable, seed: int = 0) -> None:
    """``adversarial_loss(model, x, y, attack)``: the loss PGD adversarial training minimises for one
    batch (Madry et al. 2018): cross-entropy of the model, in train mode, on ``attack(model, x,
    y)``; differentiable in the model's parameters."""
    from .attacks import pgd

    name, ref = "adversarial_loss", "AdversarialTraining's loss"
    gen = _generator(seed)
    cases = [(0.1, 4, 6), (0.3, 2, 3)]
    for eps, steps, n in cases:
        case = f"a PGD-{steps} attack at eps={eps}, {n} images"
        attack = functools.partial(pgd, eps=eps, alpha=2.5 * eps / steps, steps=steps)
        model = _attack_model(gen)
        x, y = _attack_inputs(gen, n)
        twin, original = copy.deepcopy(model), copy.deepcopy(model)
        expected = _ref_adversarial_loss(twin, x, y, attack)
        exp_grads = torch.autograd.grad(expected, list(twin.parameters()))
        loss = _call(name, adversarial_loss, case, model, x, y, attack)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            _fail(name, f"returned {type(loss).__name__}"
                        f"{'' if not isinstance(loss, Tensor) else ' of shape ' + str(tuple(loss.shape))}"
                        f" on {case}; it should return the loss, a 0-d tensor",
                  "F.cross_entropy(logits, y) averages over the batch and returns a 0-d tensor")
        if not model.training:
            _fail(name, f"left the model in eval mode on {case}",
                  "the attack may switch to eval mode (rnb.attacks do, and switch back), but the "
                  "training forward pass runs in train mode")
        if not loss.requires_grad:
            _fail(name, f"returned a loss without a gradient on {case}",
                  "compute the training forward pass with gradients on (not under torch.no_grad(), "
                  "no .detach() or .item() on the loss)")
        if not _close(loss, expected, 1e-8):
            x_adv = attack(copy.deepcopy(original), x, y)
            both = copy.deepcopy(original)           # a clean pass first, then the attack's images
            with torch.no_grad():
                clean = F.cross_entropy(copy.deepcopy(original).train()(x), y)
                in_eval = F.cross_entropy(copy.deepcopy(original).eval()(x_adv), y)
                clean_first = F.cross_entropy(both(x), y)
            adv_after = F.cross_entropy(both(attack(both, x, y)), y).detach()
            mixed = "Madry et al. train on the adversarial images only; the clean loss is not part of it"
            for wrong, hint in ((clean, "this is the loss on the clean images: train on "
                                        "x_adv = attack(model, x, y)"),
                                (in_eval, "the loss was computed in eval mode: the training forward "
                                          "pass runs in train mode (BatchNorm on batch statistics)"),
                                ((clean_first + adv_after) / 2, mixed),
                                (clean_first + adv_after, mixed)):
                if _close(loss, wrong, 1e-8):
                    _fail(name, f"returned {loss.item():.6g} on {case}, expected "
                                f"{expected.item():.6g}", hint)
            _fail(name, f"returned {loss.item():.6g} on {case}, expected {expected.item():.6g}")
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        if any(g is None or not _close(g, e, 1e-7) for g, e in zip(grads, exp_grads)):
            _fail(name, f"the loss's gradient with respect to the weights differs from {ref} on "
                        f"{case}", "do not detach the logits; detach only x_adv")
        for key, value in twin.state_dict().items():
            if not _close(model.state_dict()[key], value, 1e-9):
                _fail(name, f"BatchNorm's running statistics ({key}) differ on {case}",
                      "run exactly one training forward pass (on x_adv), in train mode; an "
                      "extra forward pass in train mode updates the statistics again")
    _ok(name, adversarial_loss, ref, len(cases), "; mode and gradients as in training")


# -- 06: the TRADES loss ----------------------------------------------------------------------

def _logit_pairs(gen: torch.Generator):
    cases = []
    for b, k, scale, case in ((8, 10, 2.0, "8 samples, 10 classes"), (1, 2, 1.0, "1 sample, 2 classes"),
                              (5, 3, 300.0, "very confident logits (up to +-900)")):
        clean = torch.randn((b, k), generator=gen, dtype=torch.float64) * scale
        adv = clean + torch.randn((b, k), generator=gen, dtype=torch.float64) * scale
        cases.append((clean, adv, torch.randint(0, k, (b,), generator=gen), case))
    clean = torch.randn((4, 10), generator=gen, dtype=torch.float64)
    cases.append((clean, clean.clone(), torch.randint(0, 10, (4,), generator=gen),
                  "x' = x (equal logits: the KL term is 0)"))
    return cases


def check_trades_loss(trades_loss: Callable, seed: int = 0) -> None:
    """``trades_loss(logits_clean, logits_adv, y, beta)``: ``CE(f(x), y) + beta * KL(f(x) ||
    f(x'))``, the KL summed over classes and averaged over the batch, gradients through both
    arguments (Zhang et al. 2019)."""
    name, ref = "trades_loss", "rnb.losses.trades_loss"
    gen = _generator(seed)
    cases = _logit_pairs(gen)
    for clean, adv, y, case in cases:
        for beta in (6.0, 1.0):
            where = f"{case}, beta={beta}"
            lc, la = clean.clone().requires_grad_(True), adv.clone().requires_grad_(True)
            loss = _call(name, trades_loss, where, lc, la, y, beta)
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                _fail(name, f"returned {type(loss).__name__} on {where}; it should return a 0-d "
                            f"tensor (the batch's loss)", "average over the batch")
            if not torch.isfinite(loss):
                _fail(name, f"returned {loss.item()} on {where}",
                      "compute log-probabilities with F.log_softmax, not torch.log(softmax(...)), "
                      "which gives log(0) = -inf for confident logits")
            expected = _ref_trades_loss(clean, adv, y, beta)
            if not _close(loss, expected, 1e-8, 1e-8):
                lp, lq = F.log_softmax(clean, 1), F.log_softmax(adv, 1)
                ce = F.cross_entropy(clean, y)
                kl_pq = (lp.exp() * (lp - lq)).sum(1)
                kl_qp = (lq.exp() * (lq - lp)).sum(1)
                mistakes = [
                    (ce + beta * kl_qp.mean(),
                            "the KL is reversed: TRADES uses KL(f(x) || f(x')) = sum p_clean * "
                            "(log p_clean - log p_adv); F.kl_div(input, target) computes "
                            "KL(target || input), so pass log_softmax(adv) as input and "
                            "softmax(clean) as target"),
                    (ce + beta * kl_pq.mean() / clean.shape[1],
                            "the KL is averaged over classes too: sum it over the classes, then "
                            "average over the batch (F.kl_div(..., reduction='batchmean'))"),
                    (ce + beta * kl_pq.sum(),
                            "the KL is summed over the batch: average it over the batch"),
                    (beta * ce + kl_pq.mean(),
                            "beta weights the KL term, not the cross-entropy"),
                    (ce + beta * kl_pq.mean() + F.cross_entropy(adv, y),
                            "TRADES has no cross-entropy on x': its labels term is CE(f(x), y)"),
                    (beta * kl_pq.mean(),
                            "the cross-entropy on the clean logits is missing"),
                ]
                _differs(name, loss, expected, where, ref, mistakes, 1e-8)
            grads = torch.autograd.grad(loss, [lc, la], allow_unused=True)
            lc2, la2 = clean.clone().requires_grad_(True), adv.clone().requires_grad_(True)
            exp_grads = torch.autograd.grad(_ref_trades_loss(lc2, la2, y, beta), [lc2, la2])
            if grads[0] is None or not _close(grads[0], exp_grads[0], 1e-7, 1e-6):
                _fail(name, f"the gradient with respect to logits_clean differs on {where}",
                      "do not detach the clean distribution: in TRADES the KL also pulls f(x) "
                      "towards f(x') (no .detach() on logits_clean)")
            if grads[1] is None or not _close(grads[1], exp_grads[1], 1e-7, 1e-6):
                _fail(name, f"the gradient with respect to logits_adv differs on {where}",
                      "logits_adv must stay in the graph (no .detach())")
    _ok(name, trades_loss, ref, 2 * len(cases), " (values and gradients)")


# -- 07: the Fisher-Rao distance -------------------------------------------------------------------

def check_fisher_rao_distance(fisher_rao_distance: Callable, seed: int = 0) -> None:
    """``fisher_rao_distance(p, q)``: ``2 * arccos(sum_k sqrt(p_k q_k))`` over the last axis, for
    (..., K) probability vectors; 0 for p == q, pi for disjoint supports (Picot et al. 2022)."""
    name, ref = "fisher_rao_distance", "rnb.losses.fisher_rao_distance"
    gen = _generator(seed)

    def probs(*shape):
        return torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64) * 2, -1)

    p = probs(6, 10)
    eye = torch.eye(4, dtype=torch.float64)
    cases = [(p, probs(6, 10), "6 pairs of 10-class distributions"),
             (probs(5), probs(5), "a single pair of shape (5,)"),
             (probs(2, 3, 4), probs(2, 3, 4), "a (2, 3, 4) batch: the distance is over the last axis"),
             (p, p.clone(), "p == q (the distance is 0)"),
             (eye[:2], eye[2:], "disjoint supports (the distance is pi)"),
             (eye[:1].expand(3, 4), torch.full((3, 4), 0.25, dtype=torch.float64),
              "a one-hot p against the uniform q")]
    for a, b, case in cases:
        expected = _ref_fisher_rao(a, b)
        out = _as_tensor(name, _call(name, fisher_rao_distance, case, a.clone(), b.clone()), case,
                         tuple(expected.shape), "the distances")
        if torch.isnan(out).any():
            _fail(name, f"returned NaN on {case}",
                  "rounding can push sum sqrt(p q) a hair above 1, where arccos is NaN: clamp it to "
                  "at most 1 first" + (" (this is the p == q case)" if "p == q" in case else ""))
        if _close(out, expected, 1e-6):
            continue
        bc = (a * b).sqrt().sum(-1).clamp(max=1.0)
        mistakes = [
            (torch.acos(bc), "the factor 2 is missing: d_FR = 2 * arccos(BC)"),
            (2 * torch.acos((a * b).sum(-1).clamp(max=1.0)),
                    "take the square root of each product: BC = sum_k sqrt(p_k * q_k)"),
            (torch.acos(bc) ** 2, "that is FIRE's penalty (d_FR / 2)^2, not the "
                                                 "distance 2 * arccos(BC)"),
            (2 * torch.cos(bc), "arccos (torch.acos), not cos"),
        ]
        _differs(name, out, expected, case, ref, mistakes, 1e-6)
    _ok(name, fisher_rao_distance, ref, len(cases))


# -- 08: the expected calibration error ---------------------------------------------------------------

def check_ece(binned_ece: Callable, seed: int = 0) -> None:
    """``binned_ece(probs, labels, n_bins=15)``: sort the top-label confidences into ``n_bins`` equal-width
    bins; ECE = sum_b (n_b / N) |accuracy_b - confidence_b| (Guo et al. 2017), a float."""
    name, ref = "binned_ece", "rnb.calibration.expected_calibration_error"
    gen = _generator(seed)
    cases = []
    for n, k, temp, bins, case in ((500, 10, 1.0, 15, "500 predictions, 10 classes, 15 bins"),
                                   (300, 3, 0.3, 10, "300 predictions, 3 classes, 10 bins"),
                                   (40, 10, 3.0, 15, "40 predictions: many bins are empty"),
                                   (1, 4, 1.0, 5, "a single prediction")):
        logits = torch.randn((n, k), generator=gen, dtype=torch.float64) / temp
        labels = torch.randint(0, k, (n,), generator=gen)
        sure = torch.rand(n, generator=gen) < 0.6                  # accurate in part
        labels[sure] = logits.argmax(1)[sure]
        cases.append((torch.softmax(logits, 1), labels, bins, case))
    y = torch.arange(6) % 3
    cases.append((F.one_hot(y, 3).double(), y, 15, "all correct with confidence 1 (ECE 0)"))
    for probs, labels, bins, case in cases:
        expected = _ref_ece(probs, labels, bins)
        out = _call(name, binned_ece, case, probs.clone(), labels.clone(), bins)
        try:
            got = float(out)             # a float, a NumPy number or a one-element tensor
        except (TypeError, ValueError, RuntimeError):
            _fail(name, f"returned {type(out).__name__} on {case}; it should return a number "
                        f"(a float)", "did you forget the `return` statement?" if out is None else "")
        if math.isclose(got, expected, abs_tol=1e-9):
            continue
        conf, pred = probs.max(1)
        correct = (pred == labels).double()
        true_conf = probs.gather(1, labels[:, None]).squeeze(1)

        def binned(values, hits, nb=bins, weighted=True, absolute=True):
            idx = torch.bucketize(values, torch.linspace(0, 1, nb + 1, dtype=values.dtype),
                                  right=True) - 1
            total = 0.0
            used = [b for b in range(nb + 1) if (idx == b).any()]
            for b in used:
                m = idx == b
                gap = hits[m].mean() - values[m].mean()
                gap = gap.abs() if absolute else gap
                total += gap.item() * (m.double().mean().item() if weighted else 1 / len(used))
            return total

        mistakes = [
            (binned(conf, correct, weighted=False),
             "each bin's gap must be weighted by its share of the predictions, n_b / N (a plain "
             "mean over the bins lets a bin of 2 predictions count as much as one of 200)"),
            (binned(conf, correct, absolute=False),
             "take the absolute value of each bin's gap |accuracy_b - confidence_b| before adding: "
             "otherwise over- and underconfident bins cancel"),
            (abs(binned(conf, correct, absolute=False)),
             "take the absolute value of each bin's gap |accuracy_b - confidence_b| before adding: "
             "otherwise over- and underconfident bins cancel"),
            (binned(true_conf, correct),
             "use the top-label confidence (probs.max(1)), not the probability of the true class"),
            (binned(conf, correct, nb=bins - 1) if bins > 1 else math.nan,
             "you made n_bins - 1 bins: the n_bins + 1 edges are torch.linspace(0, 1, n_bins + 1)"),
            (abs(correct.mean().item() - conf.mean().item()),
             "that is |accuracy - mean confidence| over all predictions: bin them by confidence "
             "first"),
        ]
        hint = next((m for v, m in mistakes if math.isclose(got, v, abs_tol=1e-9)
                     and not math.isclose(v, expected, abs_tol=1e-9)), "")
        _fail(name, f"returned {got:.6g} on {case}; expected {expected:.6g}", hint)
    _ok(name, binned_ece, ref, len(cases))


# -- 09: BPDA with the identity (straight-through) ----------------------------------------------------

def check_straight_through(straight_through: Callable, seed: int = 0) -> None:
    """``straight_through(preprocess)`` returns a function of ``x``: ``preprocess(x)`` on the
    forward pass, the identity's gradient on the backward pass (BPDA, Athalye et al. 2018)."""
    from .attacks import bpda

    name, ref = "straight_through", "rnb.attacks.bpda"
    gen = _generator(seed)
    preprocessings = [(lambda x: torch.round(x * 3) / 3, "rounding to 4 grey levels"),
                      (lambda x: (x > 0.5).to(x.dtype), "binarisation at 0.5"),
                      (lambda x: torch.round(x * 255) / 255, "8-bit quantisation")]
    for pre, case in preprocessings:
        x = torch.rand((3, 1, 5, 5), generator=gen, dtype=torch.float64)
        upstream = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        wrapped = _call(name, straight_through, case, pre)
        if not callable(wrapped):
            _fail(name, f"returned {type(wrapped).__name__} for {case}; it should return a "
                        f"function of x", "define an inner function and return it")
        xg = x.clone().requires_grad_(True)
        out = _as_tensor(name, _call(name, wrapped, case, xg), case, tuple(x.shape))
        expected = pre(x)
        if not _close(out, expected, 1e-9):
            if _close(out, x, 1e-9):
                _fail(name, f"the forward pass returned x itself on {case}",
                      "the forward value must be the real preprocessing, preprocess(x): the "
                      "attack is judged by the defense as it is")
            _fail(name, f"the forward pass differs from preprocess(x) on {case} by up to "
                        f"{(out - expected).abs().max().item():.3g}",
                  "x + (preprocess(x) - x).detach() has the value preprocess(x)")
        if not out.requires_grad:
            _fail(name, f"the output has no gradient on {case}",
                  "detach only the difference preprocess(x) - x, not the whole output")
        grad, = torch.autograd.grad(out, xg, upstream)
        ref_x = x.clone().requires_grad_(True)
        ref_grad, = torch.autograd.grad(bpda(pre)(ref_x), ref_x, upstream)
        if not _close(grad, ref_grad, 1e-9):
            if grad.abs().max() == 0:
                _fail(name, f"the gradient is zero everywhere on {case}",
                      "that is the gradient of the preprocessing itself (rounding is flat almost "
                      "everywhere): BPDA passes the incoming gradient straight through")
            _fail(name, f"the backward pass is not the identity on {case}: the gradient differs "
                        f"from the incoming one by up to {(grad - ref_grad).abs().max().item():.3g}")
    _ok(name, straight_through, ref, len(preprocessings), " (forward values and gradients)")


# -- 10: corruption error and mCE -------------------------------------------------------------------

def check_corruption_errors(corruption_errors: Callable, seed: int = 0) -> None:
    """``corruption_errors(errors, baseline_errors)`` -> ``(ce, mce)``: for every corruption c,
    ``CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}`` (errors summed over the severities first), and
    ``mCE`` = the mean of the CEs over the corruptions (Hendrycks & Dietterich 2019)."""
    name, ref = "corruption_errors", "rnb.corruptions.CorruptionReport (.ce, .mce)"
    gen = _generator(seed)
    cases = []
    for n_c, n_s, case in ((4, 5, "4 corruptions x 5 severities"), (1, 5, "a single corruption"),
                           (3, 2, "3 corruptions x 2 severities")):
        names = ["gaussian_noise", "contrast", "gaussian_blur", "pixelate"][:n_c]
        errs = {c: (torch.rand(n_s, generator=gen) * 0.8).tolist() for c in names}
        base = {c: (0.05 + torch.rand(n_s, generator=gen) * 0.8).tolist() for c in names}
        cases.append((errs, base, case))
    for errs, base, case in cases:
        exp_ce, exp_mce = _ref_corruption_errors(errs, base)
        out = _call(name, corruption_errors, case, copy.deepcopy(errs), copy.deepcopy(base))
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], dict)):
            _fail(name, f"returned {type(out).__name__} on {case}; it should return a pair "
                        f"(ce, mce): a dict corruption -> CE, and a float")
        ce, mce = out
        if set(ce) != set(exp_ce):
            _fail(name, f"the CE dict has keys {sorted(ce)} on {case}; expected one per "
                        f"corruption: {sorted(exp_ce)}")
        for c in exp_ce:
            got = float(ce[c])
            if math.isclose(got, exp_ce[c], rel_tol=1e-9):
                continue
            e, b = errs[c], base[c]
            wrong = [(sum(x / y for x, y in zip(e, b)) / len(e),
                      "sum the errors over the severities first, then divide: CE_c = sum_s E / "
                      "sum_s E_base (not the mean of per-severity ratios)"),
                     (sum(b) / sum(e), "the ratio is upside down: the model's error over the "
                                       "baseline's (CE < 1 means better than the baseline)"),
                     (sum(e), "divide by the baseline's summed errors"),
                     (sum(1 - x for x in e) / sum(1 - y for y in b),
                      "CE is a ratio of errors (1 - accuracy), not of accuracies")]
            hint = next((m for v, m in wrong if math.isclose(got, v, rel_tol=1e-9)), "")
            _fail(name, f"CE of {c!r} is {got:.6g} on {case}; expected {exp_ce[c]:.6g}", hint)
        if not math.isclose(float(mce), exp_mce, rel_tol=1e-9):
            pooled = sum(map(sum, errs.values())) / sum(map(sum, base.values()))
            hint = ("mCE is the plain mean of the per-corruption CEs, not a ratio of errors "
                    "pooled over all corruptions" if math.isclose(float(mce), pooled, rel_tol=1e-9)
                    else "mCE = the mean of the CE values over the corruptions")
            _fail(name, f"mCE is {float(mce):.6g} on {case}; expected {exp_mce:.6g}", hint)
    _ok(name, corruption_errors, ref, len(cases))
