"""Matplotlib figures used by the notebooks. Every function returns the Figure it drew."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from .stats import Accuracy


def to_numpy_image(img: Tensor) -> np.ndarray:
    """(C, H, W) tensor in [0, 1] -> (H, W) or (H, W, C) array for imshow."""
    img = img.detach().float().cpu().clamp(0, 1)
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def wilson_errors(values, n) -> np.ndarray:
    """Error bars of accuracies: the ``(2, len(values))`` array ``[value - low, high - value]`` of
    their 95% Wilson intervals (``rnb.stats``), ready for ``yerr=``/``xerr=`` of ``errorbar``.

    ``values``: accuracies as fractions, or :class:`robust_nb.stats.Accuracy` values (which carry
    their own n). ``n``: the number of images each was measured on -- one int for all, or one per
    value; needed unless every value is an ``Accuracy``. A value that is not a whole count out of
    its n raises ``ValueError`` (an accuracy measured on other images than ``n`` says).

    >>> wilson_errors([0.8], 10).round(4).tolist()
    [[0.3098], [0.1433]]
    """
    values = list(values)
    if n is None:
        if not all(isinstance(v, Accuracy) for v in values):
            raise ValueError("n (the number of images behind each accuracy) is needed for the "
                             "95% error bars, e.g. n=len(y_test); or pass rnb.stats.Accuracy values")
        ns = [v.n for v in values]
    elif isinstance(n, (list, tuple, np.ndarray)):
        if len(n) != len(values):
            raise ValueError(f"n must be one number of images or one per value ({len(values)}), "
                             f"got {len(n)}")
        ns = list(n)
    else:
        ns = [n] * len(values)
    accs = [v if isinstance(v, Accuracy) and (v.n == m or n is None) else Accuracy(float(v), m)
            for v, m in zip(values, ns)]
    return np.array([[a.value - a.low for a in accs], [a.high - a.value for a in accs]]).reshape(2, -1)


def image_grid(images: Tensor, titles=None, ncols: int = 10, scale: float = 1.2, cmap="gray"):
    """Draw a batch of images (N, C, H, W) in a grid, with optional per-image titles."""
    n = len(images)
    nrows = -(-n // ncols)
    height = scale * nrows + 0.3 * (titles is not None)
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, height), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_numpy_image(images[i]), cmap=cmap, vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=8)
    fig.tight_layout()
    return fig


def reliability_diagrams(diagrams, scale: float = 3.2):
    """Reliability diagrams side by side (Guo et al. 2017, Fig. 1), one column per model.

    ``diagrams``: a ``rnb.calibration.ReliabilityData`` or a dict ``{title: ReliabilityData}``.
    Top row: accuracy per confidence bin (blue bars, with the 95% Wilson interval of the bin's
    accuracy), the gap to the bin's mean confidence (red, hatched) and the diagonal of perfect
    calibration, with the ECE in the corner; a diamond at 1.0
    marks the confidences that are exactly 1 (their own bin in the ECE). Bottom row: histogram
    of the top-label confidence, with the accuracy and the mean confidence as vertical lines.
    """
    if not isinstance(diagrams, dict):
        diagrams = {"": diagrams}
    fig, axes = plt.subplots(2, len(diagrams), figsize=(scale * len(diagrams), scale * 1.6),
                             squeeze=False, sharex=True, gridspec_kw=dict(height_ratios=[2.2, 1]))
    for col, (title, d) in enumerate(diagrams.items()):
        top, bottom = axes[0, col], axes[1, col]
        k = d.n_bins
        left = d.edges[:-1].double().numpy()
        width = np.diff(d.edges.double().numpy())
        acc = d.accuracy[:k].nan_to_num(0.0).numpy()
        conf = d.confidence[:k].numpy()
        filled = d.counts[:k].numpy() > 0
        top.bar(left, acc, width=width, align="edge", color="tab:blue", edgecolor="black",
                linewidth=0.6, label="accuracy")
        top.bar(left[filled], (conf - acc)[filled], bottom=acc[filled], width=width[filled],
                align="edge", color="tab:red", alpha=0.35, edgecolor="tab:red", hatch="//",
                linewidth=0.6, label="gap to confidence")
        if filled.any():                    # each bin's accuracy with its 95% Wilson interval
            counts = [int(c) for c in d.counts[:k].numpy()[filled]]
            top.errorbar(left[filled] + width[filled] / 2, acc[filled], fmt="none", ecolor="black",
                         yerr=wilson_errors(acc[filled], counts), capsize=2, linewidth=0.8,
                         label="95% CI per bin")
        if d.counts[k] > 0:
            top.errorbar([1.0], [d.accuracy[k].item()], fmt="D", color="tab:purple", markersize=6,
                         yerr=wilson_errors([d.accuracy[k].item()], int(d.counts[k])), capsize=2,
                         label=f"conf = 1 ({int(d.counts[k])})", clip_on=False)
        top.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
        top.text(0.04, 0.93, f"ECE = {d.ece:.3f}", transform=top.transAxes, va="top",
                 bbox=dict(boxstyle="round", facecolor="white", alpha=0.8))
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_title(title)
        conf_all = d.confidences.double().numpy()
        bottom.hist(conf_all, bins=d.edges.double().numpy(), color="gray", edgecolor="black",
                    linewidth=0.6, weights=np.full(len(conf_all), 1.0 / len(conf_all)))
        bottom.axvline(d.overall_accuracy, color="tab:blue", linestyle="--", label="accuracy")
        bottom.axvline(d.mean_confidence, color="tab:red", linestyle=":", label="mean confidence")
        bottom.set_xlabel("confidence (top label)")
        if col == 0:
            top.set_ylabel("accuracy")
            bottom.set_ylabel("fraction of samples")
            top.legend(loc="lower right", fontsize=7)
            bottom.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return fig


def perturbation_rows(x, rows: dict, labels=None, amplify: float | None = None, scale: float = 1.3):
    """Clean images on the first row, then for each ``name -> (x_adv, preds)`` in ``rows`` the
    adversarial images and their amplified perturbations (``amplify`` x delta + 0.5; default: scaled
    so the largest |delta| of the row reaches the edge of [0, 1]). ``x`` is (N, C, H, W); titles show
    predictions (red when wrong, if ``labels`` is given). Returns the Figure."""
    import matplotlib.pyplot as plt

    n = len(x)
    fig, axes = plt.subplots(1 + 2 * len(rows), n, figsize=(scale * n, scale * (1 + 2 * len(rows)) + 0.4),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i in range(n):
        axes[0, i].imshow(to_numpy_image(x[i]), cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_ylabel("clean", fontsize=8)
    for r, (name, (x_adv, preds)) in enumerate(rows.items()):
        delta = (x_adv - x).detach().float().cpu()
        k = amplify if amplify is not None else 0.5 / max(delta.abs().max().item(), 1e-12)
        for i in range(n):
            ax = axes[1 + 2 * r, i]
            ax.imshow(to_numpy_image(x_adv[i]), cmap="gray", vmin=0, vmax=1)
            if preds is not None:
                wrong = labels is not None and int(preds[i]) != int(labels[i])
                ax.set_title(f"pred {int(preds[i])}", fontsize=8, color="red" if wrong else "black")
            axes[2 + 2 * r, i].imshow(to_numpy_image(delta[i] * k + 0.5), cmap="seismic", vmin=0, vmax=1)
        axes[1 + 2 * r, 0].set_ylabel(name, fontsize=8)
        axes[2 + 2 * r, 0].set_ylabel(f"delta x{k:.0f}", fontsize=8)
    fig.tight_layout()
    return fig


def tradeoff_curve(clean, robust, labels, ax=None, label_prefix: str = "β = ",
                   xlabel: str = "clean accuracy", ylabel: str = "robust accuracy (PGD)", *, n=None):
    """Clean vs robust accuracy, one annotated point per model with its 95% Wilson interval on
    both axes, joined in the given order (notebook 06: TRADES' beta sweep). Returns the Figure.

    ``n``: the number of test images behind the accuracies -- one int, or a pair
    ``(n_clean, n_robust)``; not needed when ``clean`` and ``robust`` hold ``rnb.stats.Accuracy``
    values.
    """
    import matplotlib.pyplot as plt

    if not len(clean) == len(robust) == len(labels):
        raise ValueError("clean, robust and labels must have the same length")
    n_clean, n_robust = n if isinstance(n, tuple) else (n, n)
    xerr, yerr = wilson_errors(clean, n_clean), wilson_errors(robust, n_robust)
    clean, robust = [float(c) for c in clean], [float(r) for r in robust]
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    ax.errorbar(clean, robust, xerr=xerr, yerr=yerr, fmt="-o", color="tab:blue", ecolor="tab:blue",
                elinewidth=1, capsize=3, label="95% intervals")
    for c, r, lab in zip(clean, robust, labels):
        ax.annotate(f"{label_prefix}{lab:g}" if isinstance(lab, (int, float)) else str(lab),
                    (c, r), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure


def method_comparison(table, metrics=("clean", "pgd, AA images", "autoattack"),
                      time_key: str = "s/epoch", *, n=None):
    """Grouped bars of accuracies per method, each with its 95% Wilson interval, and time per
    epoch beside them (notebook 09).

    ``table``: a mapping method -> {metric: value} (or a pandas DataFrame indexed by method).
    ``n``: the number of images behind each metric -- one int, or a dict metric -> n (notebook
    09: ``len(y_test)`` for clean, ``len(y_aa)`` for AutoAttack and PGD on the same images);
    not needed when the values are ``rnb.stats.Accuracy``. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    rows = table.to_dict("index") if hasattr(table, "to_dict") else dict(table)
    names = list(rows)
    if isinstance(n, dict):
        missing = [m for m in metrics if m not in n]
        if missing:
            raise ValueError(f"n has no number of images for {missing}; give one per metric "
                             f"in {list(metrics)}")
    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 1.2]})
    width = 0.8 / len(metrics)
    for i, m in enumerate(metrics):
        xs = [j + (i - (len(metrics) - 1) / 2) * width for j in range(len(names))]
        values = [rows[name][m] for name in names]
        label = m if not isinstance(n, dict) else f"{m} (n={n[m]})"
        ax.bar(xs, [float(v) for v in values], width, label=label,
               yerr=wilson_errors(values, n[m] if isinstance(n, dict) else n),
               error_kw=dict(elinewidth=1, capsize=2))
    ax.set_xticks(range(len(names)), names)
    ax.set(ylabel="accuracy", ylim=(0, 1.15), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0],
           title="accuracy on the test subset (bars: 95% intervals)")
    ax.legend(ncols=len(metrics), fontsize=8, loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    ax_t.barh(names, [rows[name][time_key] for name in names], color="tab:gray")
    ax_t.invert_yaxis()
    ax_t.set(xlabel="seconds per training epoch", title="cost")
    fig.tight_layout()
    return fig


def confusion_matrix(y_true: Tensor, y_pred: Tensor, classes, ax=None, title: str | None = None):
    """Draw the confusion matrix (rows: true class, columns: predicted class); return (fig, counts).

    ``counts[i, j]`` is the number of images of class i predicted as j (an int64 tensor, computed
    with one ``bincount``); cells are coloured by the row-normalised rate and labelled with counts.
    """
    k = len(classes)
    y_true, y_pred = y_true.detach().cpu().long(), y_pred.detach().cpu().long()
    if y_true.shape != y_pred.shape or y_true.dim() != 1:
        raise ValueError(f"y_true and y_pred must be 1-D and the same length, got "
                         f"{tuple(y_true.shape)} and {tuple(y_pred.shape)}")
    counts = torch.bincount(y_true * k + y_pred, minlength=k * k).view(k, k)   # (K, K)
    rates = counts / counts.sum(1, keepdim=True).clamp_min(1)
    if ax is None:
        fig, ax = plt.subplots(figsize=(0.45 * k + 1.5, 0.45 * k + 1.0))
    else:
        fig = ax.figure
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if counts[i, j]:
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xticks=range(k), yticks=range(k), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    return fig, counts
