"""Welch's comparison of two arms: the numbers against the formulas written out and against scipy's
own test, and the cases where no interval or p-value may be given."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats

from lightning_modules.significance import MIN_SEEDS, welch_difference

CASES = [
    ([0.801, 0.812, 0.795, 0.820, 0.806], [0.790, 0.779, 0.801, 0.785, 0.792]),  # 5 seeds each
    ([0.85, 0.86, 0.84], [0.80, 0.83, 0.79, 0.81, 0.82, 0.78]),  # unequal sizes
    ([0.70, 0.90, 0.75, 0.88], [0.80, 0.801, 0.799]),  # very unequal spreads
]


def _welch_by_hand(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float, float, float, float]:
    """(difference, low, high, p, df) from the Welch-Satterthwaite formulas and t quantiles."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)  # squared standard errors
    difference = statistics.mean(a) - statistics.mean(b)
    error = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df) * error
    p = 2 * stats.t.sf(abs(difference) / error, df)
    return difference, difference - half, difference + half, p, df


@pytest.mark.parametrize("a,b", CASES)
def test_welch_matches_the_formulas_and_scipys_test(a, b):
    got = welch_difference(a, b)
    difference, low, high, p, df = _welch_by_hand(a, b)
    assert got.difference == pytest.approx(difference, abs=1e-12)
    assert (got.low, got.high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    assert got.p_value == pytest.approx(p, rel=1e-9) and got.df == pytest.approx(df, rel=1e-9)
    reference = stats.ttest_ind(a, b, equal_var=False)
    assert got.p_value == pytest.approx(reference.pvalue, rel=1e-12) and got.df == pytest.approx(reference.df)
    # the interval holds 0 exactly when the test does not reject at 5%
    assert (got.low <= 0 <= got.high) == (got.p_value >= 0.05)


def test_a_90_percent_interval_is_narrower():
    a, b = CASES[0]
    wide, narrow = welch_difference(a, b), welch_difference(a, b, confidence=0.9)
    _, low, high, _, _ = _welch_by_hand(a, b, 0.9)
    assert (narrow.low, narrow.high) == (pytest.approx(low), pytest.approx(high))
    assert wide.low < narrow.low < narrow.high < wide.high and narrow.p_value == wide.p_value


def test_too_few_seeds_give_a_difference_but_no_interval_or_p_value():
    assert MIN_SEEDS == 3
    for a, b in (([0.8, 0.81], [0.7, 0.72, 0.71]), ([0.8, 0.81, 0.79], [0.7]), ([0.8], [0.7])):
        got = welch_difference(a, b)
        assert got.difference == pytest.approx(statistics.mean(a) - statistics.mean(b))
        assert (got.low, got.high, got.p_value, got.df) == (None, None, None, None) and not got.tested
        assert got.why_untested() == f"not enough seeds ({len(a)} and {len(b)}; 3 needed)"
    same = welch_difference([0.8] * 3, [0.7] * 4)
    assert not same.tested and same.why_untested() == "no spread in either arm"


def test_bad_arguments():
    with pytest.raises(ValueError, match="values and reference need at least one number each, got 0 and 2"):
        welch_difference([], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 95"):
        welch_difference([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], confidence=95)
