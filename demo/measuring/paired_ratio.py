"""The ratio of two speeds measured in interleaved pairs, with a distribution-free interval.

Each pair is one run of each path (app, bare) back to back on the same loaded variant, so whatever else the
machine is doing at that moment slows both alike and cancels in the pair's ratio. The statistic is the
median of the per-pair ratios, and its interval is the sign-test (binomial order-statistic) interval
for a median: between the k-th smallest and the k-th largest pair ratio, with k the largest for which
P(Binomial(n, 1/2) < k) is at most (1 - confidence) / 2. Why this one rather than a t interval on log ratios:
on shared cores a burst of other work hits a pair now and then and makes its ratio an outlier; the
median and its order-statistic interval move by at most one rank for it, where a mean and its standard
deviation move with the outlier's size; and the interval's coverage is exact for any distribution of the
pair ratios (independent pairs, a continuous distribution), with no normality assumed. Its price is
width: about 1.25 times a t interval's for normal data, paid by running more pairs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Sequence

CONFIDENCE = 0.95
MIN_PAIRS = 6  # fewer pairs cannot give a 95% sign-test interval at all (2 / 2**5 > 0.05)


@dataclass(frozen=True)
class PairedRatio:
    ratio: float  # median of the per-pair ratios (numerator / denominator)
    low: float  # the interval's ends: order statistics of the pair ratios
    high: float
    pairs: int
    confidence: float  # the interval's exact coverage (at least the confidence asked for)
    rank: int  # the interval is [k-th smallest, k-th largest] pair ratio, k = rank

    def resolves(self, fraction: float) -> bool:
        """Whether the interval lies within ±fraction of the ratio (0.02: it can tell a 2% difference)."""
        return self.low >= self.ratio * (1 - fraction) and self.high <= self.ratio * (1 + fraction)

    def verdict(self, target: float) -> str:
        """'met' when the whole interval is at or above target, 'not met' when it is wholly below, else
        "can't tell": the pairs cannot say which side of the target the ratio is on."""
        if self.low >= target:
            return "met"
        if self.high < target:
            return "not met"
        return "can't tell"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sign_test_rank(pairs: int, confidence: float = CONFIDENCE) -> tuple[int, float]:
    """(k, coverage): the largest k for which [k-th smallest, k-th largest] of `pairs` values covers their
    median with probability at least confidence, and that probability, 1 - 2 P(Binomial(pairs, 1/2) < k)."""
    if pairs < 1:
        raise ValueError("no pairs")
    best: tuple[int, float] | None = None
    below = 0  # P(Binomial(pairs, 1/2) <= k - 1), in units of 2**-pairs
    for k in range(1, (pairs + 1) // 2 + 1):
        below += math.comb(pairs, k - 1)
        coverage = 1 - 2 * below / 2**pairs
        if coverage < confidence:
            break
        best = (k, coverage)
    if best is None:
        raise ValueError(f"{pairs} pairs cannot give a {confidence:.0%} sign-test interval; "
                         f"at least {MIN_PAIRS} are needed for 95%")
    return best


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float],
                 confidence: float = CONFIDENCE) -> PairedRatio:
    """The median of numerators[i] / denominators[i] over the pairs, with its sign-test interval."""
    if len(numerators) != len(denominators):
        raise ValueError("numerators and denominators must pair up")
    ratios = sorted(a / b for a, b in zip(numerators, denominators))
    if not all(math.isfinite(r) and r > 0 for r in ratios):
        raise ValueError("every pair needs two positive, finite speeds")
    k, coverage = sign_test_rank(len(ratios), confidence)
    return PairedRatio(statistics.median(ratios), ratios[k - 1], ratios[-k], len(ratios), coverage, k)
