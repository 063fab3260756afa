"""Calibration metrics against the two reference packages, temperature scaling, input checks.

References (test-only dependencies): torchmetrics' MulticlassCalibrationError(norm="l1") for the
ECE and Kumar et al.'s uncertainty-calibration package (``lower_bound_scaling_ce`` with equal-mass
bins) for the L2 / Lp calibration errors.
"""

import calibration as vc  # uncertainty-calibration, the authors' package
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from torch import nn
from torchmetrics.classification import MulticlassCalibrationError

from robust_nb.calibration import (
    TemperatureScaled,
    bootstrap_interval,
    calibration_error,
    calibration_summary,
    equal_mass_boundaries,
    expected_calibration_error,
    fit_temperature,
    reliability_diagram,
    summary_table,
)
from robust_nb.stats import format_accuracy

TOL = 1e-4  # the bar; the estimators actually agree to ~1e-12 (ECE: ~1e-6, float32 sums)


def _outputs(n, k, scale, seed, dtype=torch.float64, acc=0.6):
    """Softmax outputs of random logits and labels that agree with the argmax ~acc of the time."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, k, generator=g, dtype=torch.float64) * scale, 1).to(dtype)
    noise = torch.randint(0, k, (n,), generator=g)
    labels = torch.where(torch.rand(n, generator=g) < acc, probs.argmax(1), noise)
    return probs, labels


def _reference_ce(probs, labels, **kw):
    return vc.lower_bound_scaling_ce(probs.double().numpy(), labels.numpy(),
                                     binning_scheme=vc.get_equal_bins, **kw)


def _torchmetrics_ece(probs, labels, n_bins):
    metric = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=n_bins, norm="l1")
    return metric(probs.float(), labels).item()


@pytest.fixture(scope="module")
def real_outputs(mnist):
    """Softmax outputs of a real (if small) MNIST classifier on the 1,000 test images.

    A softmax regression trained on 1,000 images for 80 full-batch Adam steps (< 1 s): ~85% test
    accuracy, and confident enough that some float32 confidences are exactly 1.0 -- an edge case
    for binning.
    """
    (xtr, ytr), (xte, yte) = mnist.train, mnist.test
    xtr, ytr = xtr[::4], ytr[::4]  # every 4th image: 1,000, all classes
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(80):
        opt.zero_grad()
        F.cross_entropy(model(xtr), ytr).backward()
        opt.step()
    with torch.no_grad():
        logits = model(xte) * 3  # sharpen: an overconfident model, as deep nets tend to be
    return logits, torch.softmax(logits, 1), yte


# -- Kumar et al.'s debiased L2 error vs the authors' package ---------------------------------

@pytest.mark.parametrize("mode", ["top-label", "marginal"])
@pytest.mark.parametrize("n_bins", [1, 4, 15, 40])
def test_l2_error_matches_the_package_on_random_outputs(mode, n_bins):
    for seed, (n, k, scale, dtype) in enumerate([(500, 10, 3.0, torch.float64), (137, 3, 1.0, torch.float32),
                                                 (30, 5, 6.0, torch.float64)]):
        probs, labels = _outputs(n, k, scale, seed, dtype)
        for p, debias in [(2, True), (2, False), (1, False), (3, False)]:
            ours = calibration_error(probs, labels, p=p, debias=debias, mode=mode, n_bins=n_bins)
            ref = _reference_ce(probs, labels, p=p, debias=debias, num_bins=n_bins, mode=mode)
            assert ours == pytest.approx(ref, abs=TOL), (seed, p, debias)


@pytest.mark.parametrize("mode", ["top-label", "marginal"])
@pytest.mark.parametrize("n_bins", [2, 15, 50])
def test_l2_error_matches_the_package_on_real_model_outputs(real_outputs, mode, n_bins):
    _, probs, labels = real_outputs
    assert (probs.max(1).values == 1).any()  # ties at 1.0 exercise the duplicate-edge path
    for debias in (True, False):
        ours = calibration_error(probs, labels, debias=debias, mode=mode, n_bins=n_bins)
        ref = _reference_ce(probs, labels, p=2, debias=debias, num_bins=n_bins, mode=mode)
        assert ours == pytest.approx(ref, abs=TOL)


@pytest.mark.parametrize("mode", ["top-label", "marginal"])
def test_lp_debiased_matches_the_package_up_to_monte_carlo_noise(mode):
    # p != 2 with debias: both sides average 1,000 Gaussian resamples (std of the mean ~3e-4 here)
    probs, labels = _outputs(3000, 5, 2.0, seed=4)
    ours = calibration_error(probs, labels, p=1, debias=True, mode=mode, n_bins=10)
    np.random.seed(0)
    ref = _reference_ce(probs, labels, p=1, debias=True, num_bins=10, mode=mode)
    plugin = calibration_error(probs, labels, p=1, debias=False, mode=mode, n_bins=10)
    assert ours == pytest.approx(ref, abs=2e-3)
    assert ours < plugin  # the correction removes an upward bias


def test_debiased_estimator_removes_the_bias_on_calibrated_data():
    # Labels drawn from the model's own probabilities: true calibration error 0. The plug-in
    # squared error is biased upward (~ bins / n); Kumar et al.'s estimator is unbiased for the
    # binned squared error, so its average (before the clamp at 0) is far closer to 0.
    plug, debiased = [], []
    for seed in range(20):
        g = torch.Generator().manual_seed(100 + seed)
        probs = torch.softmax(torch.randn(400, 4, generator=g, dtype=torch.float64) * 2, 1)
        labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
        plug.append(calibration_error(probs, labels, debias=False, n_bins=15) ** 2)
        debiased.append(calibration_error(probs, labels, debias=True, n_bins=15) ** 2)
    assert np.mean(debiased) < 0.35 * np.mean(plug)


def test_hand_computed_l2_error():
    # top-label confidences .6 .7 .8 .9, correct 1 0 1 1, two equal-mass bins {.6,.7} {.8,.9}
    probs = torch.tensor([[.6, .4], [.3, .7], [.8, .2], [.1, .9]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1])
    # bin 1: conf .65, acc .5 -> .15^2 - .25/1 ; bin 2: conf .85, acc 1 -> .15^2 - 0
    square = 0.5 * (0.15 ** 2 - 0.25) + 0.5 * 0.15 ** 2
    assert calibration_error(probs, labels, debias=True, n_bins=2) == pytest.approx(max(square, 0) ** 0.5)
    assert calibration_error(probs, labels, debias=False, n_bins=2) == pytest.approx(0.15)
    edges = equal_mass_boundaries(torch.tensor([[.9, .6, .8, .7]], dtype=torch.float64), 2)
    assert edges.tolist() == [[0.75, 1.0]]


# -- the ECE vs torchmetrics -----------------------------------------------------------------

@pytest.mark.parametrize("n_bins", [1, 5, 15, 30])
def test_ece_matches_torchmetrics_on_random_outputs(n_bins):
    for seed, (n, k, scale) in enumerate([(1000, 10, 3.0), (77, 2, 1.0), (400, 4, 30.0)]):
        probs, labels = _outputs(n, k, scale, seed, torch.float32)
        ours = expected_calibration_error(probs, labels, n_bins)
        assert ours == pytest.approx(_torchmetrics_ece(probs, labels, n_bins), abs=TOL)


@pytest.mark.parametrize("n_bins", [5, 15])
def test_ece_matches_torchmetrics_on_real_model_outputs(real_outputs, n_bins):
    _, probs, labels = real_outputs
    ours = expected_calibration_error(probs, labels, n_bins)
    assert ours == pytest.approx(_torchmetrics_ece(probs, labels, n_bins), abs=TOL)
    assert ours > 0.005  # the sharpened model is visibly miscalibrated


def test_hand_computed_ece_and_reliability_bins():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 1])
    # 10 bins: conf .9 right (bin 9), .6 wrong (bin 6), .7 right (bin 7), 1.0 right (own bin 10)
    d = reliability_diagram(probs, labels, n_bins=10)
    assert d.counts.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1]
    assert d.accuracy[[6, 7, 9, 10]].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert torch.isnan(d.accuracy[0]) and torch.isnan(d.confidence[0])
    expected = (0.6 + 0.3 + 0.1 + 0.0) / 4
    assert d.ece == pytest.approx(expected, abs=1e-6)
    assert expected_calibration_error(probs, labels, 10) == pytest.approx(expected, abs=1e-6)
    assert d.overall_accuracy == 0.75 and d.mean_confidence == pytest.approx(0.8, abs=1e-6)


def test_plot_draws_reliability_diagrams(real_outputs):
    from robust_nb.plots import reliability_diagrams

    _, probs, labels = real_outputs
    fig = reliability_diagrams({"a": reliability_diagram(probs, labels),
                                "b": reliability_diagram(probs, labels, 5)})
    assert len(fig.axes) == 4
    assert "ECE" in fig.axes[0].texts[0].get_text()


# -- temperature scaling ------------------------------------------------------------------------

@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    # Labels sampled from softmax(z): z is calibrated, so logits z * true_t need T = true_t.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 10, generator=g, dtype=torch.float64) * 3
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    logits = (z * true_t).float()
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.03)
    # ...and it is the NLL minimiser (a second, derivative-free optimiser agrees)
    nll = lambda log_t: F.cross_entropy(logits.double() / np.exp(log_t), labels).item()  # noqa: E731
    best = minimize_scalar(nll, bounds=(-4, 4), method="bounded", options=dict(xatol=1e-9))
    assert t == pytest.approx(np.exp(best.x), rel=1e-4)


def test_temperature_scaling_lowers_nll_and_keeps_accuracy(real_outputs):
    logits, _, labels = real_outputs
    fit, held = slice(0, None, 2), slice(1, None, 2)  # two interleaved halves
    t = fit_temperature(logits[fit], labels[fit])
    assert t > 1  # the sharpened model is overconfident
    before = calibration_summary(logits[held], labels[held])
    after = calibration_summary(logits[held] / t, labels[held])
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
    assert after["accuracy"] == before["accuracy"]
    assert before["nll"] == pytest.approx(F.cross_entropy(logits[held].double(), labels[held]).item())


def test_fit_temperature_clips_when_the_data_are_separable():
    z = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
    assert fit_temperature(z, z.argmax(1), bounds=(0.05, 20)) == pytest.approx(0.05)


def test_temperature_scaled_module(mnist):
    x, y = mnist.test[0][:200], mnist.test[1][:200]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    scaled = TemperatureScaled.fit(model, x, y)
    t = scaled.temperature.item()
    assert t == pytest.approx(fit_temperature(model(x).detach(), y), rel=1e-6)
    with torch.no_grad():
        assert torch.allclose(scaled(x), model(x) / t)
    assert "temperature" in scaled.state_dict()
    assert not any(p is scaled.temperature for p in scaled.parameters())  # a buffer, never trained
    assert f"{t:.4f}" in repr(scaled)
    with pytest.raises(ValueError, match="positive"):
        TemperatureScaled(model, 0.0)


# -- bootstrap ------------------------------------------------------------------------------------

def test_bootstrap_interval_matches_the_normal_approximation_for_a_mean():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2000, 5, generator=g, dtype=torch.float64) * 2, 1)
    labels = torch.zeros(2000, dtype=torch.long)
    mean_conf = lambda p, y: p.max(1).values.mean().item()  # noqa: E731
    lo, mid, hi = bootstrap_interval(mean_conf, probs, labels, n_resamples=300, level=0.9, seed=1)
    est = mean_conf(probs, labels)
    half = 1.645 * probs.max(1).values.std().item() / 2000 ** 0.5
    assert lo < est < hi and lo <= mid <= hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.2)
    assert bootstrap_interval(mean_conf, probs, labels, n_resamples=300, seed=1) == (lo, mid, hi)


def test_bootstrap_interval_of_the_ece_narrows_with_more_data():
    widths = []
    for n in (250, 2000):
        probs, labels = _outputs(n, 10, 3.0, seed=n)
        lo, _, hi = bootstrap_interval(expected_calibration_error, probs, labels, n_resamples=60)
        widths.append(hi - lo)
    assert widths[1] < 0.6 * widths[0]  # ~ 1/sqrt(8) = 0.35 expected


# -- bad input --------------------------------------------------------------------------------------

GOOD_P = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
GOOD_Y = torch.tensor([0, 1, 1])


@pytest.mark.parametrize("probs, labels, match", [
    (torch.tensor([[0.7, 0.2], [0.2, 0.8], [0.5, 0.5]]), GOOD_Y, "sum to 1"),
    (torch.tensor([[2.0, -1.0], [0.2, 0.8], [0.5, 0.5]]), GOOD_Y, "not logits"),
    (torch.tensor([[float("nan"), 1.0], [0.2, 0.8], [0.5, 0.5]]), GOOD_Y, "NaN"),
    (GOOD_P, torch.tensor([0, 1]), "3 predictions but 2 labels"),
    (GOOD_P, torch.tensor([0, 1, 2]), r"labels must lie in \[0, 2\)"),
    (GOOD_P, torch.tensor([0.0, 1.0, 1.0]), "integer"),
    (GOOD_P, GOOD_Y[:, None], "1-D"),
    (GOOD_P[:, 0], GOOD_Y, "2-D"),
    (torch.ones(3, 1), GOOD_Y, "two classes"),
])
def test_bad_probabilities_and_labels_raise(probs, labels, match):
    for fn in (expected_calibration_error, calibration_error, reliability_diagram):
        with pytest.raises(ValueError, match=match):
            fn(probs, labels)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_bins=0), "n_bins"), (dict(n_bins=2.5), "n_bins"), (dict(mode="top"), "mode"),
    (dict(p=0.5), "p must be"), (dict(p=float("inf")), "p must be"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        calibration_error(GOOD_P, GOOD_Y, **kwargs)


def test_debiased_lp_needs_two_points_per_bin():
    with pytest.raises(ValueError, match="at least 2 points"):
        calibration_error(GOOD_P, GOOD_Y, p=1, debias=True, n_bins=3)


def test_fit_temperature_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D float"):
        fit_temperature(torch.zeros(5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(torch.zeros(5, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(torch.full((5, 3), float("nan")), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        fit_temperature(torch.zeros(5, 3), torch.full((5,), 3))
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(torch.zeros(5, 3), torch.zeros(5, dtype=torch.long), bounds=(2.0, 1.0))


def test_summary_table_lists_every_model_and_metric(real_outputs):
    logits, _, labels = real_outputs
    rows = {"raw": calibration_summary(logits, labels), "T=2": calibration_summary(logits / 2, labels)}
    lines = summary_table(rows).splitlines()
    assert len(lines) == 3 and "ECE" in lines[0] and lines[2].startswith("T=2")
    assert f"{rows['raw']['ece']:.4f}" in lines[1]
    assert rows["raw"]["n"] == len(labels)              # the accuracy with its 95% interval on n
    assert format_accuracy(rows["raw"]["accuracy"], len(labels), short=True) in lines[1]
