"""The bench's app/bare statistic against an independent computation: the median of per-pair ratios and its
sign-test interval, worked out by hand and by counting sign patterns with numpy."""

import itertools

import numpy as np
import pytest

from demo.measuring.paired_ratio import paired_ratio, sign_test_rank


def coverage_by_enumeration(n: int, k: int) -> float:
    """P(k-th smallest <= median <= k-th largest) by counting the 2**n equally likely patterns of which side of
    the true median each value falls on: the interval misses when fewer than k fall below, or fewer than k above."""
    patterns = np.array(list(itertools.product((0, 1), repeat=n)))
    below = patterns.sum(axis=1)
    return float(np.mean((below >= k) & (n - below >= k)))


@pytest.mark.parametrize("n", [6, 7, 10, 13, 16])
def test_rank_is_the_widest_choice_that_keeps_95_percent(n):
    k, coverage = sign_test_rank(n)
    assert coverage == pytest.approx(coverage_by_enumeration(n, k))
    assert coverage >= 0.95
    assert coverage_by_enumeration(n, k + 1) < 0.95  # one rank narrower would not keep 95%


def test_ratio_and_interval_of_ten_hand_built_pairs():
    app = [96.0, 45.0, 99.0, 47.5, 100.0, 93.0, 48.0, 98.0, 150.0, 97.0]
    bare = [100.0, 50.0, 100.0, 50.0, 100.0, 100.0, 50.0, 100.0, 100.0, 100.0]
    # pair ratios: 0.96 0.90 0.99 0.95 1.00 0.93 0.96 0.98 1.50 0.97 -> sorted
    # 0.90 0.93 0.95 0.96 0.96 0.97 0.98 0.99 1.00 1.50; median (0.96 + 0.97) / 2; 10 pairs: k = 2
    # (1 - 2 * (1 + 10) / 1024 = 0.9785 >= 0.95; k = 3 would give 1 - 2 * 56 / 1024 = 0.8906)
    r = paired_ratio(app, bare)
    assert r.pairs == 10 and r.rank == 2
    assert r.ratio == pytest.approx(0.965)
    assert (r.low, r.high) == pytest.approx((0.93, 1.00))
    assert r.confidence == pytest.approx(1 - 22 / 1024)
    # the one disturbed pair (1.50) does not move the interval past its neighbour
    assert r.verdict(0.95) == "can't tell" and r.verdict(0.92) == "met" and r.verdict(1.01) == "not met"
    assert not r.resolves(0.02) and r.resolves(0.04)


def test_too_few_pairs_and_bad_speeds_are_refused():
    with pytest.raises(ValueError, match="at least 6"):
        paired_ratio([1.0] * 5, [1.0] * 5)
    with pytest.raises(ValueError, match="positive, finite"):
        paired_ratio([1.0] * 5 + [float("nan")], [1.0] * 6)
