"""Confidence intervals for accuracies: every accuracy shown to a learner carries its 95% interval.

* :func:`wilson_interval` -- the Wilson score interval for a binomial proportion (k correct out of
  n). Unlike the normal-approximation ("Wald") interval it stays inside [0, 1] and does not
  collapse to a point at k = 0 or k = n.
* :func:`format_accuracy` -- "93.1% (95% CI 91.4–94.5%, n=1000)" for prose, or the short
  "93.1% (91.4–94.5)" for tables.
* :class:`Accuracy` -- an accuracy with its n and interval; ``format(acc)`` prints it and
  ``acc.separated_from(other)`` / ``acc.above(other)`` say what the intervals separate, which is
  all a notebook asserts.

Source: E. B. Wilson, "Probable Inference, the Law of Succession, and Statistical Inference",
JASA 22 (1927), https://doi.org/10.1080/01621459.1927.10502953; the comparison of binomial
intervals in L. D. Brown, T. T. Cai, A. DasGupta, "Interval Estimation for a Binomial
Proportion", Statistical Science 16 (2001), https://doi.org/10.1214/ss/1009213286. The same
interval is ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``.

>>> low, high = wilson_interval(8, 10)
>>> round(low, 4), round(high, 4)
(0.4902, 0.9433)
>>> format_accuracy(0.931, 1000)
'93.1% (95% CI 91.4–94.5%, n=1000)'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real
from statistics import NormalDist

__all__ = ["wilson_interval", "format_accuracy", "Accuracy", "COUNT_TOLERANCE"]

COUNT_TOLERANCE = 1e-6  # relative: |acc * n - round(acc * n)| allowed, per unit of n


def _z(confidence: float) -> float:
    """The two-sided standard normal quantile for ``confidence`` (1.959964 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _check_confidence(confidence) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, Real):
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1 (0.95 for a 95% "
                         f"interval), got {confidence}")
    return confidence


def _check_n(n) -> int:
    if isinstance(n, (bool, str, bytes)):
        raise ValueError(f"n must be a positive integer, got {n!r}")
    try:
        as_int = int(n)
    except (TypeError, ValueError):
        raise ValueError(f"n must be a positive integer, got {n!r}") from None
    if as_int != n or as_int < 1:
        raise ValueError(f"n must be a positive integer (the number of images), got {n!r}")
    return as_int


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion ``successes / n``.

    With p = k/n and z the two-sided normal quantile of ``confidence``, the interval is
    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``. It always lies in [0, 1]; at k = 0
    its lower end is 0 and at k = n its upper end is 1.

    Source: Wilson 1927, https://doi.org/10.1080/01621459.1927.10502953 (see the module
    docstring); equal to ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``.

    Args:
        successes: the number of successes k (e.g. correctly classified images), 0 <= k <= n.
            A non-integer k (an accuracy times n) is used as the proportion k/n.
        n: the number of trials (images), an integer >= 1.
        confidence: the coverage, strictly between 0 and 1 (default 0.95).

    Returns:
        ``(low, high)``, floats with 0 <= low <= k/n <= high <= 1.

    Raises:
        ValueError: n < 1 or not an integer, k outside [0, n] or not finite, confidence outside
            (0, 1).

    >>> [round(v, 4) for v in wilson_interval(0, 10)]
    [0.0, 0.2775]
    """
    n = _check_n(n)
    confidence = _check_confidence(confidence)
    if isinstance(successes, (bool, str, bytes)):
        raise ValueError(f"successes must be a number, got {successes!r}")
    try:
        k = float(successes)
    except (TypeError, ValueError):
        raise ValueError(f"successes must be a number, got {successes!r}") from None
    if not math.isfinite(k) or not 0.0 <= k <= n:
        raise ValueError(f"successes must lie in [0, n] = [0, {n}], got {successes!r}")
    z = _z(confidence)
    p = k / n
    z2n = z * z / n
    denom = 1.0 + z2n
    center = (p + z2n / 2.0) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n))
    low = 0.0 if k == 0 else max(0.0, center - half)
    high = 1.0 if k == n else min(1.0, center + half)
    return low, high


def _successes(value, n: int) -> int:
    """The integer count behind an accuracy ``value`` measured on ``n`` images."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"accuracy must be a number in [0, 1], got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"accuracy must be a number in [0, 1], got {value!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"accuracy must be a fraction in [0, 1] (not a percentage), "
                         f"got {value!r}")
    k = value * n
    if abs(k - round(k)) > COUNT_TOLERANCE * n:
        raise ValueError(f"accuracy {value!r} is not a count out of n={n} "
                         f"({k:.4f} correct); pass the n it was measured on")
    return int(round(k))


def _percent(x: float, digits: int) -> str:
    return f"{100.0 * x:.{digits}f}"


def format_accuracy(acc: float, n: int, *, confidence: float = 0.95, digits: int = 1,
                    short: bool = False) -> str:
    """An accuracy with its Wilson interval, as text.

    Args:
        acc: the accuracy as a fraction in [0, 1], measured on ``n`` images (so ``acc * n`` must
            be a whole number of correct images).
        n: the number of images.
        confidence: the interval's coverage (default 0.95).
        digits: decimals of the percentages (default 1).
        short: the table form "93.1% (91.4–94.5)" instead of
            "93.1% (95% CI 91.4–94.5%, n=1000)".

    Raises:
        ValueError: bad n or confidence (see :func:`wilson_interval`), ``acc`` outside [0, 1]
            or not a count out of ``n``.

    >>> format_accuracy(0.8, 10, short=True)
    '80.0% (49.0–94.3)'
    """
    return format(Accuracy(acc, n, confidence), f".{int(digits)}{'short' if short else ''}")


@dataclass(frozen=True)
class Accuracy:
    """An accuracy measured on ``n`` images, with its Wilson interval ``[low, high]``.

    Args:
        value: the accuracy as a fraction in [0, 1]; ``value * n`` must be a whole number
            (floating-point round-off is tolerated), else ``ValueError``.
        n: the number of images it was measured on (>= 1).
        confidence: the interval's coverage (default 0.95).

    Attributes ``correct`` (the count), ``low`` and ``high`` are computed. ``format(acc)`` gives
    "93.1% (95% CI 91.4–94.5%, n=1000)"; the format spec ``[.digits][short]`` picks the
    decimals and the short table form "93.1% (91.4–94.5)". ``float(acc)`` is the value.

    >>> a, b = Accuracy(0.93, 1000), Accuracy.from_counts(850, 1000)
    >>> f"{a}", f"{b:.0short}"
    ('93.0% (95% CI 91.2–94.4%, n=1000)', '85% (83–87)')
    >>> a.separated_from(b), a.above(b), b.above(a)
    (True, True, False)
    """

    value: float
    n: int
    confidence: float = 0.95
    correct: int = field(init=False)
    low: float = field(init=False)
    high: float = field(init=False)

    def __post_init__(self) -> None:
        n = _check_n(self.n)
        confidence = _check_confidence(self.confidence)
        correct = _successes(self.value, n)
        low, high = wilson_interval(correct, n, confidence)
        for name, v in (("value", correct / n), ("n", n), ("confidence", confidence),
                        ("correct", correct), ("low", low), ("high", high)):
            object.__setattr__(self, name, v)

    @classmethod
    def from_counts(cls, correct: int, n: int, confidence: float = 0.95) -> Accuracy:
        """The accuracy ``correct / n`` (``correct`` an integer in [0, n])."""
        n = _check_n(n)
        if isinstance(correct, bool) or int(correct) != correct or not 0 <= correct <= n:
            raise ValueError(f"correct must be an integer in [0, n] = [0, {n}], got {correct!r}")
        return cls(int(correct) / n, n, confidence)

    def __float__(self) -> float:
        return self.value

    def __format__(self, spec: str) -> str:
        rest = spec
        short = rest.endswith("short")
        if short:
            rest = rest[: -len("short")]
        digits = 1
        if rest:
            if not (rest.startswith(".") and rest[1:].isdigit()):
                raise ValueError(f"format spec for Accuracy is '[.digits][short]', got {spec!r}")
            digits = int(rest[1:])
        value, low, high = (_percent(x, digits) for x in (self.value, self.low, self.high))
        if short:
            return f"{value}% ({low}–{high})"
        level = f"{100.0 * self.confidence:g}"
        return f"{value}% ({level}% CI {low}–{high}%, n={self.n})"

    def __str__(self) -> str:
        return format(self, "")

    def _bounds(self, other) -> tuple[float, float]:
        if isinstance(other, Accuracy):
            return other.low, other.high
        if isinstance(other, bool) or not isinstance(other, Real) or not math.isfinite(other):
            raise ValueError(f"compare an Accuracy with an Accuracy or a number, got {other!r}")
        return float(other), float(other)

    def separated_from(self, other: Accuracy | float) -> bool:
        """True when the two intervals do not overlap (a number is a point interval).

        Non-overlapping 95% intervals are a conservative test of a difference: when this is
        True, the two accuracies differ by more than the sampling noise of their test sets.
        """
        low, high = self._bounds(other)
        return self.low > high or self.high < low

    def above(self, other: Accuracy | float) -> bool:
        """True when this interval lies entirely above ``other``'s (or above a number)."""
        return self.low > self._bounds(other)[1]

    def below(self, other: Accuracy | float) -> bool:
        """True when this interval lies entirely below ``other``'s (or below a number)."""
        return self.high < self._bounds(other)[0]

    def as_dict(self) -> dict:
        """``{"value", "n", "correct", "low", "high", "confidence"}`` (JSON-ready)."""
        return {"value": self.value, "n": self.n, "correct": self.correct, "low": self.low,
                "high": self.high, "confidence": self.confidence}
