"""The figures' error bars are the 95% Wilson intervals of the accuracies they show."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from robust_nb.evaluation import EpsSweep  # noqa: E402
from robust_nb.plots import method_comparison, tradeoff_curve, wilson_errors  # noqa: E402
from robust_nb.stats import Accuracy  # noqa: E402

# Hand-checked: 8 of 10 correct, p = 0.8, z = 1.959964: the Wilson interval is
# (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n) = (0.7921 ± 0.2511) / 1.3841
# = (0.4902, 0.9433); 1 of 4: (0.0456, 0.6994); 3 of 4: (0.3006, 0.9544).
WILSON_8_10 = (0.4902, 0.9433)
WILSON_1_4 = (0.0456, 0.6994)
WILSON_3_4 = (0.3006, 0.9544)


def _vertical_spans(collection):
    """(x, low, high) of every vertical segment of an errorbar LineCollection."""
    return [(seg[0][0], min(seg[0][1], seg[1][1]), max(seg[0][1], seg[1][1]))
            for seg in collection.get_segments()]


def _horizontal_spans(collection):
    return [(seg[0][1], min(seg[0][0], seg[1][0]), max(seg[0][0], seg[1][0]))
            for seg in collection.get_segments()]


def test_wilson_errors_are_the_distances_to_the_wilson_bounds():
    err = wilson_errors([0.8, 0.25], [10, 4])
    assert err.shape == (2, 2)
    np.testing.assert_allclose(0.8 - err[0, 0], WILSON_8_10[0], atol=1e-4)
    np.testing.assert_allclose(0.8 + err[1, 0], WILSON_8_10[1], atol=1e-4)
    np.testing.assert_allclose(0.25 - err[0, 1], WILSON_1_4[0], atol=1e-4)
    np.testing.assert_allclose(0.25 + err[1, 1], WILSON_1_4[1], atol=1e-4)
    np.testing.assert_array_equal(wilson_errors([Accuracy(0.8, 10)], None), wilson_errors([0.8], 10))
    with pytest.raises(ValueError, match="n="):
        wilson_errors([0.8], None)                    # a bare accuracy needs its n
    with pytest.raises(ValueError, match="not a count"):
        wilson_errors([0.85], 10)                     # 8.5 of 10 images: not measured on n=10
    with pytest.raises(ValueError, match="one per value"):
        wilson_errors([0.8, 0.5], [10])


def test_method_comparison_bars_carry_wilson_intervals_per_metric():
    table = {"classical": {"clean": 0.8, "pgd, AA images": 0.25, "autoattack": 0.25, "s/epoch": 1.0},
             "trades": {"clean": 0.6, "pgd, AA images": 0.75, "autoattack": 0.5, "s/epoch": 3.0}}
    fig = method_comparison(table, n={"clean": 10, "pgd, AA images": 4, "autoattack": 4})
    ax = fig.axes[0]
    bars = [c for c in ax.containers if hasattr(c, "errorbar") and c.errorbar is not None]
    assert len(bars) == 3                             # one bar group per metric, each with bars
    spans = [sorted(_vertical_spans(c.errorbar.lines[2][0])) for c in bars]
    clean, pgd, aa = ([(lo, hi) for _, lo, hi in s] for s in spans)
    np.testing.assert_allclose(clean[0], WILSON_8_10, atol=1e-4)     # classical, clean: 8/10
    np.testing.assert_allclose(pgd[0], WILSON_1_4, atol=1e-4)        # classical, PGD: 1/4
    np.testing.assert_allclose(pgd[1], WILSON_3_4, atol=1e-4)        # trades, PGD: 3/4
    np.testing.assert_allclose(aa[0], WILSON_1_4, atol=1e-4)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == \
        ["clean (n=10)", "pgd, AA images (n=4)", "autoattack (n=4)"]
    plt.close(fig)
    with pytest.raises(ValueError, match="n "):
        method_comparison(table)                      # no silent bars without their n
    with pytest.raises(ValueError, match="autoattack"):
        method_comparison(table, n={"clean": 10, "pgd, AA images": 4})


def test_tradeoff_curve_has_wilson_bars_on_both_axes():
    fig = tradeoff_curve([0.8, 0.6], [0.25, 0.75], [0.0, 6.0], n=(10, 4))
    ax = fig.axes[0]
    (container,) = ax.containers
    collections = container.lines[2]
    horizontal = [c for c in collections if all(s[0][1] == s[1][1] for s in c.get_segments())]
    vertical = [c for c in collections if all(s[0][0] == s[1][0] for s in c.get_segments())]
    (x_spans,) = [_horizontal_spans(c) for c in horizontal]
    (y_spans,) = [_vertical_spans(c) for c in vertical]
    np.testing.assert_allclose(x_spans[0][1:], WILSON_8_10, atol=1e-4)   # clean 8/10, at y = 0.25
    np.testing.assert_allclose(y_spans[0][1:], WILSON_1_4, atol=1e-4)    # PGD 1/4, at x = 0.8
    np.testing.assert_allclose(y_spans[1][1:], WILSON_3_4, atol=1e-4)
    plt.close(fig)
    acc = tradeoff_curve([Accuracy(0.8, 10)], [Accuracy(0.25, 4)], [1.0])   # Accuracy carries n
    plt.close(acc)
    with pytest.raises(ValueError, match="n "):
        tradeoff_curve([0.8], [0.25], [1.0])


def test_eps_sweep_plot_has_wilson_bars():
    sweep = EpsSweep(eps=[0.0, 0.1], accuracy={"pgd": [0.8, 0.25]}, n=None)
    with pytest.raises(ValueError, match="n=len"):
        sweep.plot()
    sweep = EpsSweep(eps=[0.0, 0.1], accuracy={"pgd": [0.75, 0.25]}, n=4)
    fig = sweep.plot()
    (container,) = fig.axes[0].containers
    spans = sorted(_vertical_spans(container.lines[2][0]))
    np.testing.assert_allclose([s[1:] for s in spans], [WILSON_3_4, WILSON_1_4], atol=1e-4)
    plt.close(fig)


def test_history_plot_names_the_trainers_loss_and_bars_validation_accuracy():
    from robust_nb.training import History, TradesTraining

    records = [dict(epoch=e, loss=1.0 / (e + 1), acc=0.5, val_loss=0.5, val_acc=v, lr=0.1, time=1.0)
               for e, v in enumerate((0.5, 0.8))]
    history = History.from_dict(History(records, loss_name=TradesTraining.loss_name).to_dict())
    assert history.loss_name == TradesTraining.loss_name != "cross-entropy"
    fig = history.plot(n_val=10)
    loss_labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert f"train: {TradesTraining.loss_name}" in loss_labels
    assert "validation: cross-entropy" in loss_labels
    bars = [c for c in fig.axes[1].collections if c.get_segments()]
    spans = sorted(_vertical_spans(bars[0]))
    assert np.allclose([spans[1][1], spans[1][2]], WILSON_8_10, atol=1e-4)    # 8 of 10 at epoch 2
    with pytest.raises(ValueError, match="not a count"):
        history.plot(n_val=7)                         # 0.8 of 7 images is no whole count
    plt.close("all")


def test_reliability_diagram_bins_carry_wilson_intervals():
    import torch

    from robust_nb.calibration import reliability_diagram
    from robust_nb.plots import reliability_diagrams

    # 10 samples at confidence 0.85 (8 correct) and 4 at 0.25 (1 correct), three classes
    top = torch.tensor([0.85] * 10 + [0.35] * 4)
    probs = torch.stack([top, (1 - top) / 2, (1 - top) / 2], 1)
    labels = torch.tensor([0] * 8 + [1] * 2 + [0] + [1] * 3)
    fig = reliability_diagrams(reliability_diagram(probs, labels, n_bins=10))
    bars = [c for c in fig.axes[0].collections if c.get_segments()]
    spans = sorted(_vertical_spans(bars[0]))
    assert np.allclose([spans[0][1], spans[0][2]], WILSON_1_4, atol=1e-4)
    assert np.allclose([spans[1][1], spans[1][2]], WILSON_8_10, atol=1e-4)
    plt.close("all")
