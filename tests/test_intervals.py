"""Intervals of small samples: every proportion the app reports (the flips' shares, the blind test's rates) has a
Wilson score interval, the blind test's ratings an interval mapped from the Wilson interval of the score share,
and a paired difference Newcombe's square-and-add interval. None of them collapses to a point when every
prompt or vote agrees, they match textbook values, and they cover the truth about as often as they say."""

import math
from statistics import NormalDist

import numpy as np
import pytest

from demo.blind import ratings
from demo.blind.votes import Outcome
from demo.measuring import flips as stats

Z = NormalDist().inv_cdf(0.975)


def _votes(preferred: int = 0, tie: int = 0, both_bad: int = 0, baseline_preferred: int = 0) -> list[Outcome]:
    """Votes of s/bf16 against its baseline s/fp32, the sides alternating."""
    choices = ["preferred"] * preferred + ["tie"] * tie + ["both_bad"] * both_bad \
        + ["baseline_preferred"] * baseline_preferred
    votes = []
    for k, choice in enumerate(choices):
        a, b = ("s/bf16", "s/fp32") if k % 2 == 0 else ("s/fp32", "s/bf16")
        if choice in ("tie", "both_bad"):
            vote = choice
        else:
            winner = "s/bf16" if choice == "preferred" else "s/fp32"
            vote = "a" if a == winner else "b"
        votes.append(Outcome("s", "s/fp32", a, b, vote, a.split("/")[1], b.split("/")[1]))
    return votes


def _row(summary: dict, variant: str = "s/bf16") -> dict:
    return next(r for r in summary["variants"] if r["variant"] == variant)


# ---- textbook values ----

def test_none_of_20_prompts_has_the_wilson_interval_not_0_to_0():
    s = stats.share([False] * 20)
    assert (s.count, s.n, s.share) == (0, 20, 0.0)
    # Wilson at 0 of n: 0 to z^2 / (n + z^2) = 3.8415 / 23.8415 = 0.1611 (Newcombe 1998, table I).
    assert s.low == 0.0 and s.high == pytest.approx(Z ** 2 / (20 + Z ** 2), abs=1e-9)
    assert s.high == pytest.approx(0.1611, abs=1e-4) and s.high > s.low


def test_all_of_3_prompts_and_all_of_3_votes_have_the_wilson_interval_not_100_to_100():
    s = stats.share([True] * 3)
    # Wilson at n of n: n / (n + z^2) to 1 = 3 / 6.8415 = 0.4385.
    assert s.share == 1.0 and s.high == 1.0 and s.low == pytest.approx(0.4385, abs=1e-4)
    three = ratings.rate_intervals(["preferred"] * 3)
    assert three["preferred"] == pytest.approx((0.4385, 1.0), abs=1e-4)
    assert three["indistinguishable"] == pytest.approx((0.4385, 1.0), abs=1e-4)
    assert three["baseline_preferred"] == pytest.approx((0.0, 0.5615), abs=1e-4)  # 0 of 3: 0 to z^2 / (3 + z^2)
    row = _row(ratings.summarize(_votes(preferred=3)))
    assert row["rates"]["preferred"] == 1.0
    assert row["intervals"]["preferred"] == [0.4385, 1.0] and row["intervals"]["tied"] == [0.0, 0.5615]


@pytest.mark.parametrize("count, n, low, high", [
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
])  # Newcombe 1998, "Two-sided confidence intervals for the single proportion", table I, the score method
def test_shares_match_newcombe_s_wilson_examples(count, n, low, high):
    s = stats.share([True] * count + [False] * (n - count))
    assert (s.low, s.high) == pytest.approx((low, high), abs=1e-4)
    # And the bounds are where the score test turns: (p_hat - p)^2 = z^2 p (1 - p) / n.
    for bound in (s.low, s.high):
        if 0 < bound < 1:
            assert (count / n - bound) ** 2 == pytest.approx(Z ** 2 * bound * (1 - bound) / n, rel=1e-9)


# ---- coverage ----

def _coverage(interval_of, p: float, n: int, draws: int = 2000, seed: int = 0) -> float:
    """Share of `draws` seeded binomial(n, p) samples whose interval (from the count) contains p."""
    counts = np.random.default_rng(seed).binomial(n, p, size=draws)
    covers = {}
    for k in set(counts.tolist()):
        low, high = interval_of(k, n)
        covers[k] = low <= p <= high
    return float(np.mean([covers[k] for k in counts.tolist()]))


@pytest.mark.parametrize("p, n", [(0.05, 20), (0.1, 10), (0.9, 15)])
def test_shares_and_rates_cover_the_true_share(p, n):
    def share(k, n):
        s = stats.share([True] * k + [False] * (n - k))
        return s.low, s.high

    def rate(k, n):
        return ratings.rate_intervals(["preferred"] * k + ["baseline_preferred"] * (n - k))["preferred"]

    # A percentile bootstrap covers 0.05 at n = 20 only when some prompt is flagged (0 of 20 reads 0-0):
    # 1 - 0.95^20 = 64% at most. Wilson's exact coverage there is 92%, at 0.1 of 10 93%, at 0.9 of 15 94%.
    assert _coverage(share, p, n) >= 0.90
    assert _coverage(rate, p, n) >= 0.90


# ---- the ratings ----

def test_a_rating_from_3_wins_of_3_has_a_positive_width_interval_around_it():
    row = _row(ratings.summarize(_votes(preferred=3)))
    low, high = row["rating_interval"]
    # The fit with one imagined tie: score share 3.5 of 4, rating 400 log10(7) = 338.0.
    assert row["rating"] == pytest.approx(400 * math.log10(7), abs=0.05)
    assert low < row["rating"] < high and high - low > 100
    assert math.isfinite(low) and math.isfinite(high)
    # The interval is the Wilson interval of that share through the Elo map.
    w_low, w_high = stats.wilson(3.5, 4)
    assert (low, high) == pytest.approx((400 * math.log10(w_low / (1 - w_low)),
                                         400 * math.log10(w_high / (1 - w_high))), abs=0.05)
    # And 3 losses of 3 mirror it.
    lost = _row(ratings.summarize(_votes(baseline_preferred=3)))
    assert lost["rating"] == pytest.approx(-row["rating"], abs=0.05)
    assert lost["rating_interval"] == pytest.approx([-high, -low], abs=0.15)


@pytest.mark.parametrize("tally", [(3, 0, 0, 0), (0, 4, 1, 0), (5, 2, 1, 3), (1, 0, 0, 9), (12, 3, 0, 4)])
def test_the_rating_interval_is_consistent_with_the_bradley_terry_point(tally):
    # Every battle is the baseline against one variant, so the fit's rating is the logit of the score share
    # (wins + ties / 2 + the imagined tie's half, over votes + 1); the interval maps that share's Wilson interval.
    preferred, tie, both_bad, baseline_preferred = tally
    votes = _votes(*tally)
    # a second variant in the same base, to check each variant's interval depends on its own games only
    other = [Outcome("s", "s/fp32", "s/nf4", "s/fp32", "a", "nf4", "fp32")] * 4 \
        + [Outcome("s", "s/fp32", "s/fp32", "s/nf4", "a", "fp32", "nf4")] * 2
    row = _row(ratings.summarize(votes + other))
    games = sum(tally)
    points = preferred + (tie + both_bad) / 2
    share = (points + ratings.VIRTUAL_TIES / 2) / (games + ratings.VIRTUAL_TIES)
    assert row["rating"] == pytest.approx(400 * math.log10(share / (1 - share)), abs=0.05)
    assert row["rating_interval"] == pytest.approx(list(ratings.rating_interval(points, games)), abs=0.05)
    low, high = row["rating_interval"]
    assert low < high and low <= row["rating"] <= high
    assert _row(ratings.summarize(other), "s/nf4")["rating_interval"] \
        == _row(ratings.summarize(votes + other), "s/nf4")["rating_interval"]


@pytest.mark.parametrize("n", [3, 5])
def test_the_rating_interval_covers_the_true_rating(n):
    # A variant that beats its baseline 9 times in 10 (no ties) is 400 log10(9) = 382 points stronger. From 3 or
    # 5 votes it mostly wins them all (73%, 59%), where a bootstrap of refits reads one point (+338 or +417)
    # that misses 382; the Wilson-mapped interval holds it at least nine times in ten.
    true = 400 * math.log10(9)
    counts = np.random.default_rng(0).binomial(n, 0.9, size=2000).tolist()
    covers = {}
    for k in set(counts):
        low, high = _row(ratings.summarize(_votes(preferred=k, baseline_preferred=n - k)))["rating_interval"]
        covers[k] = low <= true <= high
    assert np.mean([covers[k] for k in counts]) >= 0.90


# ---- the paired difference ----

@pytest.mark.parametrize("value", [True, False])
def test_a_paired_difference_of_equal_flags_is_not_0_to_0(value):
    d = stats.paired_difference([value] * 20, [value] * 20, "x", "y")
    assert d.difference == 0.0 and d.low < 0 < d.high and not d.excludes_zero
    # No discordant pair in 20: each margin's Wilson half-width at 0 of 20, 0.161, on each side.
    assert (d.low, d.high) == pytest.approx((-0.1611, 0.1611), abs=1e-4)


def test_the_paired_difference_matches_newcombe_s_square_and_add_reference():
    # Cavo et al. 2012 (Fagerland, Lydersen and Laake 2017, chapter 8): 59 both, 6 only a, 16 only b, 80
    # neither; the square-and-add interval is -0.0621 (-0.1186 to -0.0046).
    a = [1] * 59 + [1] * 6 + [0] * 16 + [0] * 80
    b = [1] * 59 + [0] * 6 + [1] * 16 + [0] * 80
    d = stats.paired_difference(a, b, "x", "y")
    assert d.n == 161 and d.difference == pytest.approx(-0.0621, abs=1e-4)
    assert (d.low, d.high) == pytest.approx((-0.1186, -0.0046), abs=1e-4)
    assert d.excludes_zero and stats.closer_to_baseline(d) == "x"
