"""Wilson intervals, the accuracy formatter and the Accuracy value type (robust_nb.stats)."""

import math

import pytest

from robust_nb.stats import Accuracy, format_accuracy, wilson_interval


def test_textbook_8_of_10():
    # Hand computation, z = 1.959964: centre (0.8 + z^2/20) / (1 + z^2/10) = 0.716740,
    # half-width z/(1 + z^2/10) * sqrt(0.8*0.2/10 + z^2/400) = 0.226578: (0.4902, 0.9433).
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.490162, abs=1e-6)
    assert high == pytest.approx(0.943318, abs=1e-6)


def test_textbook_other_levels():
    # 90%: z = 1.644854 and 99%: z = 2.575829, same formula by hand.
    assert wilson_interval(8, 10, 0.90) == pytest.approx((0.540793, 0.931442), abs=1e-6)
    assert wilson_interval(8, 10, 0.99) == pytest.approx((0.400819, 0.959869), abs=1e-6)


def test_edges_k0_and_kn():
    z2 = 1.959964 ** 2
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(z2 / (10 + z2), abs=1e-6)  # 0.277533
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(10 / (10 + z2), abs=1e-6)  # 0.722467
    assert wilson_interval(0, 1) == pytest.approx((0.0, 1 / (1 + 1 / z2)), abs=1e-6)


def test_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 1), (1, 1), (0, 7), (3, 7), (7, 7), (8, 10), (931, 1000), (4999, 5000),
                 (1, 10000)]:
        for conf in (0.5, 0.9, 0.95, 0.99):
            ci = stats.binomtest(k, n).proportion_ci(confidence_level=conf, method="wilson")
            assert wilson_interval(k, n, conf) == pytest.approx((ci.low, ci.high), abs=1e-10)


def test_contains_estimate_and_narrows_with_n():
    widths = []
    for n in (10, 100, 1000, 10000):
        low, high = wilson_interval(0.9 * n, n)
        assert 0.0 <= low < 0.9 < high <= 1.0
        widths.append(high - low)
    assert all(a > b for a, b in zip(widths, widths[1:]))
    assert widths[-1] == pytest.approx(2 * 1.959964 * math.sqrt(0.09 / 10000), rel=1e-3)


def test_monotone_in_successes_and_confidence():
    bounds = [wilson_interval(k, 50) for k in range(51)]
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(bounds, bounds[1:]))
    l90, h90 = wilson_interval(30, 50, 0.90)
    l99, h99 = wilson_interval(30, 50, 0.99)
    assert l99 < l90 and h99 > h90


@pytest.mark.parametrize("args, match", [
    ((0, 0), "positive integer"),
    ((1, -3), "positive integer"),
    ((1, 2.5), "positive integer"),
    ((True, 10), "number"),
    ((-1, 10), r"\[0, 10\]"),
    ((11, 10), r"\[0, 10\]"),
    ((float("nan"), 10), r"\[0, 10\]"),
    ((5, 10, 0.0), "between 0 and 1"),
    ((5, 10, 1.0), "between 0 and 1"),
    ((5, 10, 95), "between 0 and 1"),
    (("5", 10), "number"),
])
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        wilson_interval(*args)


def test_format_accuracy():
    assert format_accuracy(0.931, 1000) == "93.1% (95% CI 91.4–94.5%, n=1000)"
    assert format_accuracy(0.8, 10, short=True) == "80.0% (49.0–94.3)"
    assert format_accuracy(0.8, 10, digits=2) == "80.00% (95% CI 49.02–94.33%, n=10)"
    assert format_accuracy(0.8, 10, confidence=0.9, digits=0) == "80% (90% CI 54–93%, n=10)"
    assert format_accuracy(1.0, 50, short=True) == "100.0% (92.9–100.0)"


def test_format_rejects_non_counts_and_percentages():
    with pytest.raises(ValueError, match="not a count out of n=1000"):
        format_accuracy(0.9312, 1000)
    with pytest.raises(ValueError, match="not a percentage"):
        format_accuracy(93.1, 1000)


def test_accuracy_value_type():
    a = Accuracy(0.931, 1000)
    assert (a.correct, a.n) == (931, 1000)
    assert (a.low, a.high) == wilson_interval(931, 1000)
    assert float(a) == a.value == 0.931
    assert f"{a}" == str(a) == "93.1% (95% CI 91.4–94.5%, n=1000)"
    assert f"{a:short}" == "93.1% (91.4–94.5)"
    assert f"{a:.2short}" == "93.10% (91.36–94.51)"
    with pytest.raises(ValueError, match="digits"):
        format(a, "5f")
    with pytest.raises(AttributeError):
        a.value = 0.5  # frozen
    # float32 round-off of a count is tolerated and snapped to the count
    import torch
    b = Accuracy(torch.tensor(931 / 1000, dtype=torch.float32), torch.tensor(1000))
    assert b == a
    assert Accuracy.from_counts(931, 1000) == a
    with pytest.raises(ValueError, match="integer"):
        Accuracy.from_counts(930.5, 1000)
    assert a.as_dict() == {"value": 0.931, "n": 1000, "correct": 931, "low": a.low,
                           "high": a.high, "confidence": 0.95}


def test_separation():
    high, low = Accuracy(0.93, 1000), Accuracy(0.85, 1000)
    assert high.separated_from(low) and low.separated_from(high)
    assert high.above(low) and low.below(high)
    assert not low.above(high) and not high.below(low)
    # 93% vs 92% on 1000 images each: the intervals overlap, nothing may be asserted
    close = Accuracy(0.92, 1000)
    assert not high.separated_from(close) and not high.above(close)
    # the same gap on 20x more images separates
    assert Accuracy(0.93, 20000).above(Accuracy(0.92, 20000))
    # numbers are point intervals
    assert high.above(0.9) and high.below(0.95) and not high.above(0.92)
    assert high.separated_from(0.5) and not high.separated_from(0.93)
    with pytest.raises(ValueError, match="Accuracy or a number"):
        high.above("0.9")
