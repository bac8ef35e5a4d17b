"""Is one arm of a comparison better than the reference arm? Welch's t-test and its interval.

Seeds of two arms are independent samples with possibly different spreads (a frozen-position
arm can vary less than a learned one), so the test is Welch's unequal-variance t-test, not
Student's pooled one: the difference of the means, its confidence interval from the
Welch-Satterthwaite degrees of freedom, and the two-sided p-value, all from ``scipy.stats``.

With fewer than :data:`MIN_SEEDS` seeds in either arm no interval or p-value is given: a
variance from two numbers is itself a guess, and the interval it gives is meaningless.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MIN_SEEDS", "Difference", "welch_difference"]

#: The fewest seeds per arm for which an interval and a p-value are reported.
MIN_SEEDS = 3


@dataclass(frozen=True)
class Difference:
    """``mean(values) - mean(reference)`` with Welch's interval and test.

    Attributes:
        difference: the difference of the means (the units of the values).
        n, n_reference: the sample sizes (seeds).
        low, high: the two-sided confidence interval of the difference; ``None`` with too few
            seeds or no spread in either sample.
        p_value: two-sided p-value of Welch's t-test (no difference in means); ``None`` likewise.
        df: the Welch-Satterthwaite degrees of freedom (``None`` likewise).
        confidence: the interval's confidence level.
    """

    difference: float
    n: int
    n_reference: int
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    df: float | None = None
    confidence: float = 0.95

    @property
    def enough_seeds(self) -> bool:
        return min(self.n, self.n_reference) >= MIN_SEEDS

    @property
    def tested(self) -> bool:
        """Whether an interval and a p-value exist."""
        return self.p_value is not None

    def why_untested(self) -> str:
        """Why there is no p-value (empty when there is one)."""
        if self.tested:
            return ""
        if not self.enough_seeds:
            return f"not enough seeds ({self.n} and {self.n_reference}; {MIN_SEEDS} needed)"
        return "no spread in either arm"


def welch_difference(values: Sequence[float], reference: Sequence[float], confidence: float = 0.95) -> Difference:
    """Welch's comparison of ``values`` (one arm's seeds) with ``reference`` (the reference arm's).

    Args:
        values, reference: one number per seed (e.g. test top-1), at least one each.
        confidence: level of the two-sided interval, in (0, 1).

    Returns:
        :class:`Difference`; its interval and p-value are ``None`` when either sample has fewer
        than :data:`MIN_SEEDS` values or neither has any spread.
    """
    if not values or not reference:
        raise ValueError(f"values and reference need at least one number each, got {len(values)} and {len(reference)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    values, reference = [float(v) for v in values], [float(v) for v in reference]
    difference = sum(values) / len(values) - sum(reference) / len(reference)
    result = Difference(difference, len(values), len(reference), confidence=confidence)
    if not result.enough_seeds or (len(set(values)) == 1 and len(set(reference)) == 1):  # no spread: no test
        return result
    from scipy import stats  # a second of import time: only when there is something to test

    with warnings.catch_warnings():  # nearly equal values: scipy warns of precision loss, the numbers stand
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_ind(values, reference, equal_var=False)
        interval = test.confidence_interval(confidence_level=confidence)
    return Difference(difference, len(values), len(reference), float(interval.low), float(interval.high),
                      float(test.pvalue), float(test.df), confidence)

