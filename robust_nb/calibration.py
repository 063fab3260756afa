"""Calibration: is a model's confidence the probability that it is right?

* :func:`expected_calibration_error` -- the ECE of Guo et al. 2017 (equal-width bins, top label,
  L1), the number torchmetrics' ``MulticlassCalibrationError(norm="l1")`` reports.
* :func:`calibration_error` -- the debiased L2 calibration error of Kumar et al. 2019 with
  equal-mass bins, top-label or marginal, the number of the authors' ``uncertainty-calibration``
  package (``calibration.lower_bound_scaling_ce``); plug-in Lp errors too.
* :func:`reliability_diagram` -- per-bin confidence and accuracy (``rnb.plots.reliability_diagrams``
  draws them).
* :func:`fit_temperature`, :class:`TemperatureScaled` -- temperature scaling (Guo et al. 2017).
* :func:`bootstrap_interval` -- a bootstrap confidence interval for any of these metrics.
* :func:`calibration_summary`, :func:`summary_table` -- accuracy, NLL, ECE and both L2 errors
  in one dict, and dicts of them as a text table.

Papers: Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017,
https://arxiv.org/abs/1706.04599; Kumar, Liang, Ma, "Verified Uncertainty Calibration", NeurIPS
2019, https://arxiv.org/abs/1909.10155 (code: https://github.com/p-lambda/verified_calibration).

Every metric takes ``probs`` of shape (N, K) (rows on the simplex; tensors or arrays) and integer
``labels`` of shape (N,), and returns a Python float. Bad input -- rows that do not sum to 1,
values outside [0, 1], mismatched lengths, labels outside [0, K) -- raises ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .stats import format_accuracy

MODES = ("top-label", "marginal")
SUM_TOLERANCE = 1e-3  # |sum_k p_k - 1| allowed per row (float16 softmax is off by ~1e-3)


# -- input checks ----------------------------------------------------------------------------

def _as_labels(labels, n: int) -> Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} "
                         f"of shape {tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"{n} predictions but {labels.shape[0]} labels")
    return labels


def check_probs(probs, labels) -> tuple[Tensor, Tensor]:
    """Validate class probabilities (N, K) and labels (N,); return them as tensors.

    Raises ``ValueError`` unless probs is a 2-D floating tensor with K >= 2 and N >= 1, finite,
    in [0, 1], every row summing to 1 (within ``SUM_TOLERANCE``), and labels are N integers in
    [0, K). Passing logits instead of probabilities is the usual mistake; the message says so.
    """
    probs = torch.as_tensor(probs)
    if probs.dim() != 2 or not probs.dtype.is_floating_point:
        raise ValueError(f"probs must be a 2-D float tensor (N, K), got {probs.dtype} "
                         f"of shape {tuple(probs.shape)}")
    n, k = probs.shape
    if n == 0 or k < 2:
        raise ValueError(f"probs needs at least one row and two classes, got shape {(n, k)}")
    labels = _as_labels(labels, n).to(probs.device)
    if not bool(torch.isfinite(probs).all()):
        raise ValueError("probs contains NaN or inf")
    if bool((probs < 0).any()) or bool((probs > 1).any()):
        raise ValueError("probs must lie in [0, 1]; pass softmax(logits), not logits")
    worst = (probs.double().sum(1) - 1).abs().max().item()
    if worst > SUM_TOLERANCE:
        raise ValueError(f"every row of probs must sum to 1 (worst row is off by {worst:.3g}); "
                         "pass softmax(logits), not logits or unnormalised scores")
    if bool((labels < 0).any()) or bool((labels >= k).any()):
        raise ValueError(f"labels must lie in [0, {k}), got values in "
                         f"[{labels.min().item()}, {labels.max().item()}]")
    return probs, labels


def _check_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return n_bins


def _top_label(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Confidence of the predicted class and whether it is right, both (N,), in probs' dtype."""
    confidence, pred = probs.max(dim=1)  # first maximal index on ties, like np.argmax
    return confidence, (pred == labels).to(probs.dtype)


# -- ECE (Guo et al.), the torchmetrics number -----------------------------------------------

@dataclass
class ReliabilityData:
    """Equal-width bins of top-label confidence: what a reliability diagram shows.

    ``edges`` are the ``n_bins + 1`` bin edges; bin ``i`` holds confidences in
    ``[edges[i], edges[i+1])`` and the extra last entry of ``counts``/``confidence``/``accuracy``
    holds the confidences exactly equal to 1.0 (see :func:`expected_calibration_error`).
    Empty bins have NaN confidence and accuracy. ``confidences`` and ``correct`` are the per-sample
    values (for the histogram).
    """

    edges: Tensor        # (n_bins + 1,)
    counts: Tensor       # (n_bins + 1,) int64
    confidence: Tensor   # (n_bins + 1,) mean confidence per bin
    accuracy: Tensor     # (n_bins + 1,) accuracy per bin
    confidences: Tensor  # (N,)
    correct: Tensor      # (N,) 0/1

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    @property
    def ece(self) -> float:
        """Sum over bins of (fraction of samples) * |accuracy - confidence|."""
        weight = self.counts.double() / self.counts.sum()
        gap = (self.accuracy - self.confidence).abs().nan_to_num(0.0)
        return (weight * gap).sum().item()

    @property
    def mean_confidence(self) -> float:
        return self.confidences.double().mean().item()

    @property
    def overall_accuracy(self) -> float:
        return self.correct.double().mean().item()


def reliability_diagram(probs, labels, n_bins: int = 15) -> ReliabilityData:
    """Per-bin mean confidence and accuracy of the top label, equal-width bins (Guo et al. 2017).

    Binning follows torchmetrics exactly (so ``.ece`` equals :func:`expected_calibration_error`):
    ``edges = linspace(0, 1, n_bins + 1)`` in probs' dtype and ``bucketize(conf, edges,
    right=True) - 1``, i.e. left-closed bins ``[a, b)``. A confidence of exactly 1.0 -- common in
    float32 for very confident models -- falls into an extra bin of its own.
    """
    probs, labels = check_probs(probs, labels)
    n_bins = _check_bins(n_bins)
    conf, correct = _top_label(probs, labels)  # (N,), (N,)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype, device=conf.device)
    index = torch.bucketize(conf, edges, right=True) - 1  # (N,) in [0, n_bins]
    counts = torch.bincount(index, minlength=n_bins + 1)
    sum_conf = torch.bincount(index, weights=conf.double(), minlength=n_bins + 1)
    sum_acc = torch.bincount(index, weights=correct.double(), minlength=n_bins + 1)
    denom = counts.double()
    empty = counts == 0
    nan = torch.full_like(denom, float("nan"))
    return ReliabilityData(
        edges=edges.cpu(), counts=counts.cpu(),
        confidence=torch.where(empty, nan, sum_conf / denom).cpu(),
        accuracy=torch.where(empty, nan, sum_acc / denom).cpu(),
        confidences=conf.detach().cpu(), correct=correct.detach().cpu())


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error: top label, ``n_bins`` equal-width bins, L1 (Guo et al. 2017).

    ``ECE = sum_b (n_b / N) |acc_b - conf_b|``. Paper: https://arxiv.org/abs/1706.04599.

    This is the number torchmetrics' ``MulticlassCalibrationError(num_classes=K, n_bins=n_bins,
    norm="l1")`` reports, binning included: left-closed bins ``[a, b)`` with confidence exactly
    1.0 in a bin of its own. Guo et al.'s reference code uses right-closed bins ``(a, b]``; the two
    differ only for confidences that land exactly on an edge (torchmetrics computes in float32;
    here the binning is in probs' dtype and the sums in float64).

    >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    >>> round(expected_calibration_error(probs, torch.tensor([0, 1, 1]), n_bins=10), 4)
    0.3333
    """
    return reliability_diagram(probs, labels, n_bins).ece


# -- the debiased L2 calibration error (Kumar et al.), the uncertainty-calibration number ----

def equal_mass_boundaries(values: Tensor, n_bins: int) -> Tensor:
    """Upper bin edges that split each row of ``values`` (R, N) into equal-count bins.

    Kumar et al.'s ``get_equal_bins``: sort, split into ``min(n_bins, N)`` consecutive chunks the
    way ``np.array_split`` does (the first ``N % parts`` chunks one longer), put an edge halfway
    between the last value of a chunk and the first of the next, and end with 1.0. Returns (R, B)
    with B = min(n_bins, N); tied values can make edges repeat (those bins are simply empty -- the
    package removes duplicate edges instead, which groups the samples identically).
    """
    r, n = values.shape
    parts = min(n_bins, n)
    q, extra = divmod(n, parts)
    i = torch.arange(1, parts, device=values.device)
    starts = i * q + torch.clamp(i, max=extra)  # (parts - 1,) first index of chunks 1..parts-1
    ordered = values.sort(dim=1).values  # (R, N)
    mids = (ordered[:, starts - 1] + ordered[:, starts]) / 2.0  # (R, parts - 1)
    return torch.cat([mids, torch.ones(r, 1, dtype=values.dtype, device=values.device)], dim=1)


def _binned_ce(values: Tensor, targets: Tensor, p: float, debias: bool, n_bins: int,
               generator: torch.Generator, resamples: int = 1000) -> Tensor:
    """Calibration error of each row (R, N) of predicted probabilities vs 0/1 targets -> (R,)."""
    r, n = values.shape
    edges = equal_mass_boundaries(values, n_bins)  # (R, B)
    # side="left": bin b holds edges[b-1] < v <= edges[b], as np.searchsorted in the package.
    index = torch.searchsorted(edges, values.contiguous(), side="left")  # (R, N)
    shape = edges.shape
    count = torch.zeros(shape, dtype=values.dtype).scatter_add_(1, index, torch.ones_like(values))
    sum_p = torch.zeros(shape, dtype=values.dtype).scatter_add_(1, index, values)
    sum_y = torch.zeros(shape, dtype=values.dtype).scatter_add_(1, index, targets)
    weight = count / n  # (R, B) fraction of samples per bin
    filled = count > 0
    safe = count.clamp_min(1)
    mean_p, mean_y = sum_p / safe, sum_y / safe  # (R, B); 0 in empty bins
    gap = (mean_p - mean_y).abs()

    if p == 2 and debias:
        # Kumar et al. (2019), Eq. (3.3) / unbiased_square_ce: the squared gap minus the variance of
        # the bin's label mean, in bins of at least 2 samples; then sqrt(max(., 0)).
        big = count >= 2
        per_bin = gap.square() - mean_y * (1 - mean_y) / (count - 1).clamp_min(1)
        square = (weight * torch.where(big, per_bin, torch.zeros_like(per_bin))).sum(1)
        return square.clamp_min(0.0).sqrt()

    plugin = (weight * torch.where(filled, gap.pow(p), torch.zeros_like(gap))).sum(1).pow(1.0 / p)
    if not debias:
        return plugin
    # p != 2: the package's normal_debiased_ce. Resample every bin's label mean from
    # N(mean_y, mean_y (1 - mean_y) / n_b) and subtract the average bias: 2 * plugin - mean.
    # It requires >= 2 samples in every bin of the de-duplicated edges (a repeated edge is the
    # package's removed bin, always empty here).
    distinct = torch.ones_like(filled)
    distinct[:, 1:] = edges[:, 1:] != edges[:, :-1]
    if bool((count[distinct] <= 1).any()):
        raise ValueError("every bin must have at least 2 points for the debiased estimator; "
                         "use fewer bins or debias=False")
    std = torch.sqrt(mean_y * (1 - mean_y) / safe)  # (R, B)
    noise = torch.randn((resamples, r, shape[1]), dtype=values.dtype, generator=generator)
    label_samples = mean_y + std * noise  # (resamples, R, B)
    resampled = (weight * (label_samples - mean_p).abs().pow(p)).sum(-1).pow(1.0 / p)
    return 2 * plugin - resampled.mean(0)


def calibration_error(probs, labels, p: float = 2, debias: bool = True, mode: str = "top-label",
                      n_bins: int = 15, *, seed: int = 0) -> float:
    """Lp calibration error with equal-mass bins; by default Kumar et al.'s debiased L2 estimator.

    Paper: Kumar, Liang, Ma, "Verified Uncertainty Calibration", NeurIPS 2019,
    https://arxiv.org/abs/1909.10155. The number equals the authors' package
    (``calibration.lower_bound_scaling_ce(probs, labels, p, debias, num_bins=n_bins,
    binning_scheme=get_equal_bins, mode=mode)``, uncertainty-calibration 0.1.4):

    * bins: ``n_bins`` equal-mass bins per score (:func:`equal_mass_boundaries`);
    * ``p=2, debias=True``: ``sqrt(max(0, sum_b w_b [(conf_b - acc_b)^2 - acc_b(1-acc_b)/(n_b-1)]))``,
      bins with fewer than 2 samples count 0 -- the squared error minus its estimated bias;
    * ``debias=False``: the plug-in ``(sum_b w_b |conf_b - acc_b|^p)^(1/p)``;
    * ``debias=True, p != 2``: the package's Gaussian-resampling correction (Monte Carlo with 1000
      draws from a generator seeded by ``seed``, so equal to the package only up to MC noise).

    ``mode="top-label"`` scores the confidence of the predicted class against correctness;
    ``mode="marginal"`` scores every class's probability against "the label is this class" and
    returns ``(mean_k CE_k^p)^(1/p)``.

    As the paper stresses, for a model with continuous outputs any binned estimate is a *lower
    bound* on the true calibration error. Computed on the CPU in float64 (sorts and scatters on
    N x K numbers; one host transfer).
    """
    probs, labels = check_probs(probs, labels)
    n_bins = _check_bins(n_bins)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p >= 1 or math.isinf(p):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    probs = probs.detach().to("cpu", torch.float64)
    labels = labels.cpu()
    generator = torch.Generator().manual_seed(seed)
    if mode == "top-label":
        conf, correct = _top_label(probs, labels)
        return _binned_ce(conf[None], correct[None], p, debias, n_bins, generator).item()
    onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)  # (N, K)
    per_class = _binned_ce(probs.T.contiguous(), onehot.T.contiguous(), p, debias, n_bins, generator)
    return per_class.pow(p).mean().pow(1.0 / p).item()


# -- uncertainty of an estimate ----------------------------------------------------------------

def bootstrap_interval(metric: Callable[[Tensor, Tensor], float], probs, labels, *,
                       n_resamples: int = 100, level: float = 0.9,
                       seed: int = 0) -> tuple[float, float, float]:
    """``(lower, middle, upper)``: a basic-bootstrap ``level`` confidence interval for ``metric``.

    Resample the N (probs, label) pairs with replacement ``n_resamples`` times, evaluate
    ``metric(probs, labels)`` on each, and reflect the quantiles around the estimate
    (``lower = 2 * est - q_hi``, ``middle = 2 * est - median``, ``upper = 2 * est - q_lo``), as
    ``bootstrap_uncertainty`` in Kumar et al.'s package does; reflecting corrects the upward bias
    of binned estimators, so ``middle`` doubles as a bias-corrected estimate. (The package's
    ``get_calibration_error_uncertainties`` passes ``alpha=0.1`` where a percentage is expected,
    i.e. a 99.9% interval; here ``level`` means what it says.)

    >>> probs = torch.softmax(torch.randn(200, 3, generator=torch.Generator().manual_seed(0)), 1)
    >>> labels = torch.zeros(200, dtype=torch.long)
    >>> lo, mid, hi = bootstrap_interval(expected_calibration_error, probs, labels)
    >>> lo <= hi
    True
    """
    probs, labels = check_probs(probs, labels)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be >= 2, got {n_resamples}")
    n = probs.shape[0]
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(n, (n_resamples, n), generator=generator).to(probs.device)
    estimate = metric(probs, labels)
    draws = torch.tensor([metric(probs[i], labels[i]) for i in index], dtype=torch.float64)
    q = torch.quantile(draws, torch.tensor([(1 - level) / 2, 0.5, (1 + level) / 2],
                                           dtype=torch.float64))
    q_lo, q_mid, q_hi = q.tolist()
    return 2 * estimate - q_hi, 2 * estimate - q_mid, 2 * estimate - q_lo


# -- temperature scaling (Guo et al.) ----------------------------------------------------------

def fit_temperature(logits, labels, *, max_iter: int = 100,
                    bounds: tuple[float, float] = (1e-2, 1e2)) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)``: temperature scaling.

    Guo et al. 2017, Sec. 4.2 (https://arxiv.org/abs/1706.04599): one scalar fitted on a
    held-out split (never the training set, where the network is overconfident by
    construction); accuracy is unchanged because dividing by T > 0 keeps the argmax.

    Like the reference code (gpleiss/temperature_scaling) this minimises the NLL with L-BFGS;
    unlike it, we optimise ``log T`` (so T stays positive) in float64 with a strong-Wolfe line
    search, starting from T = 1, instead of T itself with a fixed step of 0.01 from T = 1.5 --
    the NLL is convex in 1/T, so the minimiser is unique and this finds it. If the held-out set
    is perfectly separated the NLL keeps falling as T -> 0; the result is clipped to ``bounds``.
    """
    logits = torch.as_tensor(logits)
    if logits.dim() != 2 or not logits.dtype.is_floating_point or logits.shape[1] < 2:
        raise ValueError(f"logits must be a 2-D float tensor (N, K >= 2), got {logits.dtype} "
                         f"of shape {tuple(logits.shape)}")
    labels = _as_labels(labels, logits.shape[0])
    if logits.shape[0] == 0:
        raise ValueError("need at least one held-out example")
    z = logits.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(z).all()):
        raise ValueError("logits contains NaN or inf")
    y = labels.cpu()
    if bool((y < 0).any()) or bool((y >= z.shape[1]).any()):
        raise ValueError(f"labels must lie in [0, {z.shape[1]})")
    if not (len(bounds) == 2 and 0 < bounds[0] < bounds[1] < math.inf):
        raise ValueError(f"bounds must be (low, high) with 0 < low < high < inf, got {bounds!r}")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.clamp(lo, hi).exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return math.exp(min(max(log_t.item(), lo), hi))


class TemperatureScaled(nn.Module):
    """``model`` with its logits divided by a fixed temperature: ``forward(x) = model(x) / T``.

    The temperature is a buffer (saved in the state dict, not trained). Predictions (argmax) and
    hence accuracy are those of ``model``; only the confidence changes.

    >>> scaled = TemperatureScaled(nn.Linear(4, 3), temperature=2.0)
    >>> scaled.temperature.item()
    2.0
    """

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                and temperature > 0):
            raise ValueError(f"temperature must be a finite positive number, got {temperature!r}")
        self.model = model
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
        self.register_buffer("temperature", torch.tensor(float(temperature), device=device))

    @classmethod
    def fit(cls, model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500,
            **fit_kwargs) -> TemperatureScaled:
        """Fit T on held-out images ``x`` (N, C, H, W) and labels ``y`` and wrap ``model``."""
        from .evaluation import predict_logits

        return cls(model, fit_temperature(predict_logits(model, x, batch_size), y, **fit_kwargs))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) / self.temperature

    def extra_repr(self) -> str:
        return f"temperature={self.temperature.item():.4f}"


# -- one row of a comparison table -------------------------------------------------------------

def calibration_summary(logits, labels, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, NLL, ECE and the debiased L2 errors (top-label and marginal) of ``logits``, and
    ``n``, the number of images (the accuracy's denominator)."""
    logits = torch.as_tensor(logits)
    if logits.dim() != 2 or not logits.dtype.is_floating_point:
        raise ValueError(f"logits must be a 2-D float tensor (N, K), got {logits.dtype} "
                         f"of shape {tuple(logits.shape)}")
    labels = _as_labels(labels, logits.shape[0]).to(logits.device)
    probs = torch.softmax(logits.double(), dim=1)
    return {
        "accuracy": (probs.argmax(1) == labels).double().mean().item(),
        "nll": F.cross_entropy(logits.double(), labels).item(),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "l2_ce_top": calibration_error(probs, labels, mode="top-label", n_bins=n_bins),
        "l2_ce_marginal": calibration_error(probs, labels, mode="marginal", n_bins=n_bins),
        "confidence": probs.max(1).values.mean().item(),
        "n": len(labels),
    }


SUMMARY_COLUMNS = {"accuracy": "acc", "confidence": "mean conf", "nll": "NLL", "ece": "ECE",
                   "l2_ce_top": "L2 top", "l2_ce_marginal": "L2 marginal"}


def summary_table(summaries: dict[str, dict[str, float]]) -> str:
    """Rows of :func:`calibration_summary` dicts as an aligned text table (one row per name);
    the accuracy with its 95% Wilson interval on the summary's ``n`` images."""
    width = max(len("model"), *(len(name) for name in summaries))
    head = (f"{'model':<{width}}{SUMMARY_COLUMNS['accuracy']:>19}"
            + "".join(f"{h:>12}" for key, h in SUMMARY_COLUMNS.items() if key != "accuracy"))
    rows = [f"{name:<{width}}{format_accuracy(s['accuracy'], s['n'], short=True):>19}"
            + "".join(f"{s[key]:>12.4f}" for key in SUMMARY_COLUMNS if key != "accuracy")
            for name, s in summaries.items()]
    return "\n".join([head, *rows])
