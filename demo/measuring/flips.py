"""Flips across a prompt set: how often a variant's greedy answer changes from its baseline's, and which way.

After Dutta et al. 2024 ("Accuracy is not all you need"): accuracy can stay flat while many answers flip
right -> wrong and wrong -> right, so the flips are counted, not only the accuracy.

Per variant, over the prompts both it and its baseline answered (`Outcome`, one per prompt): the share whose
answer departs from the baseline's (any token differs), the share whose first token differs, and where
prompts carry an expected answer, the accuracy of both, the change in accuracy and the flips each way (shares
of the checked prompts). Every share has a 95 % Wilson score interval (`wilson`): it keeps its coverage near
95 % at a handful of prompts and has positive width at 0 of n or n of n, where a percentile bootstrap reads
0-0 % (every resample of 20 unflagged prompts is unflagged). Two variants are compared on the prompts both
answered by Newcombe's square-and-add interval for a paired difference (`paired_difference`), built from the
two shares' Wilson intervals and their correlation over the prompts. Both are closed-form: nothing is
resampled and no seed is drawn. Pure functions: no model, the standard library only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Sequence

CONFIDENCE = 0.95


def method() -> str:
    """How the intervals are made, in words."""
    return (f"{CONFIDENCE:.0%} Wilson score interval for each share (closed-form, no resampling: positive width "
            "even at 0 or all of the prompts); Newcombe's square-and-add interval (Wilson-based, with the "
            "correlation over the same prompts) for a paired difference of two shares")


def wilson(count: float, n: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion `count` of `n`: the p whose score test does not reject,
    (p_hat - p)^2 <= z^2 p (1 - p) / n, with z the normal quantile of `confidence` (1.96 at 95 %):

        centre = (p_hat + z^2 / 2n) / (1 + z^2 / n)
        half = z / (1 + z^2 / n) * sqrt(p_hat (1 - p_hat) / n + z^2 / 4n^2)

    Chosen over the percentile bootstrap, which collapses to a point at 0 or n of n (every resample is the
    same), and over the Wald interval, which does too; its coverage stays near the nominal level at small n
    (Brown, Cai and DasGupta 2001; Newcombe 1998: 0 of 20 gives 0 to 0.161, 3 of 3 gives 0.438 to 1).
    Clopper-Pearson would guarantee at least 95 % but is wider; Wilson is the one used everywhere a
    proportion is reported here (these shares and the blind test's rates and ratings). `count` may be
    fractional (a tie counted as half a win)."""
    if not n > 0 or not 0 <= count <= n:
        raise ValueError(f"a proportion needs 0 <= count <= n and n > 0, got {count} of {n}")
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p, z2 = count / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if count == 0 else max(0.0, min(p, centre - half))  # exact at the ends; p inside despite rounding
    high = 1.0 if count == n else min(1.0, max(p, centre + half))
    return low, high


@dataclass(frozen=True)
class Outcome:
    """One prompt, one variant, against its baseline's answer to the same prompt."""

    departs: bool  # any token of the answer differs (a longer or shorter answer counts)
    first_token_differs: bool
    baseline_correct: bool | None = None  # None: the prompt has no expected answer
    variant_correct: bool | None = None

    @classmethod
    def from_departure(cls, departs_at_token: int | None, baseline_correct: bool | None = None,
                       variant_correct: bool | None = None) -> "Outcome":
        """From the index of the first differing answer token (None: the answers are the same)."""
        return cls(departs_at_token is not None, departs_at_token == 0, baseline_correct, variant_correct)


@dataclass(frozen=True)
class Share:
    """count of n prompts, its share and the Wilson score interval of the share."""

    count: int
    n: int
    share: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Difference:
    """A statistic of `a` minus the same of `b` over the same prompts, with its paired (Newcombe) interval."""

    a: str
    b: str
    n: int
    a_value: float
    b_value: float
    difference: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


@dataclass(frozen=True)
class VariantFlips:
    """One variant's flips against its baseline; the accuracy figures are None where no prompt is checked."""

    prompts: int  # prompts both answered
    departs: Share
    first_token_differs: Share
    checked: int  # of those, prompts with an expected answer
    baseline_accuracy: Share | None
    variant_accuracy: Share | None
    accuracy_change: Difference | None  # variant's accuracy minus the baseline's, paired over the checked prompts
    right_to_wrong: Share | None  # the baseline's answer right, the variant's wrong; share of the checked prompts
    wrong_to_right: Share | None

    def as_dict(self) -> dict:
        return {name: value.as_dict() if hasattr(value, "as_dict") else value
                for name, value in self.__dict__.items()}


def share(flags: Sequence[bool]) -> Share:
    """How many of the prompts are flagged, and the Wilson score interval of that share."""
    values = [bool(f) for f in flags]
    if not values:
        raise ValueError("a share needs at least one prompt")
    count, n = sum(values), len(values)
    low, high = wilson(count, n)
    return Share(count, n, count / n, low, high)


def paired_difference(a_flags: Sequence[bool], b_flags: Sequence[bool], a: str = "a", b: str = "b") -> Difference:
    """mean(a_flags) - mean(b_flags) over the same prompts (aligned), with Newcombe's square-and-add interval
    for paired proportions (Newcombe 1998, "Improved confidence intervals for the difference between binomial
    proportions based on paired data", method 10, as Fagerland, Lydersen and Laake 2017, chapter 8, give it):

        L = d - sqrt((p1 - l1)^2 + (u2 - p2)^2 - 2 psi (p1 - l1)(u2 - p2))
        U = d + sqrt((p2 - l2)^2 + (u1 - p1)^2 - 2 psi (p2 - l2)(u1 - p1))

    with (l1, u1) and (l2, u2) the two shares' Wilson intervals and psi their correlation over the prompts,
    (both * neither - only_a * only_b) / sqrt of the four margins' product, that numerator less n/2 where
    it exceeds n/2, 0 where it lies in [0, n/2], and 0 when a margin is empty. What the prompts share (an
    easy or a hard prompt) enters through psi; all-equal flags give a positive-width interval around 0,
    not 0 to 0."""
    x, y = [bool(f) for f in a_flags], [bool(f) for f in b_flags]
    if len(x) != len(y) or not x:
        raise ValueError(f"a paired difference needs the same prompts on both sides, got {len(x)} and {len(y)}")
    n = len(x)
    both = sum(i and j for i, j in zip(x, y))
    only_a = sum(i and not j for i, j in zip(x, y))
    only_b = sum(j and not i for i, j in zip(x, y))
    neither = n - both - only_a - only_b
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    (l1, u1), (l2, u2) = wilson(both + only_a, n), wilson(both + only_b, n)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b
    psi = 0.0
    if margins > 0 and not 0 <= cross <= n / 2:
        psi = (cross - n / 2 if cross > n / 2 else cross) / math.sqrt(margins)
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * psi * (p1 - l1) * (u2 - p2)))
    high = d + math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * psi * (p2 - l2) * (u1 - p1)))
    return Difference(a, b, n, p1, p2, d, max(-1.0, low), min(1.0, high))


def variant_flips(outcomes: Sequence[Outcome], variant: str = "variant", baseline: str = "baseline") -> VariantFlips:
    """Every statistic of one variant from its outcomes, one per prompt both it and its baseline answered."""
    if not outcomes:
        raise ValueError("no prompt was answered by both the variant and its baseline")
    checked = [o for o in outcomes if o.baseline_correct is not None and o.variant_correct is not None]
    accuracy: dict = dict.fromkeys(("baseline_accuracy", "variant_accuracy", "accuracy_change", "right_to_wrong",
                                    "wrong_to_right"))
    if checked:
        base = [o.baseline_correct for o in checked]
        mine = [o.variant_correct for o in checked]
        accuracy = {
            "baseline_accuracy": share(base),
            "variant_accuracy": share(mine),
            "accuracy_change": paired_difference(mine, base, variant, baseline),
            "right_to_wrong": share([b and not m for b, m in zip(base, mine)]),
            "wrong_to_right": share([m and not b for b, m in zip(base, mine)]),
        }
    return VariantFlips(len(outcomes), share([o.departs for o in outcomes]),
                        share([o.first_token_differs for o in outcomes]), len(checked), **accuracy)


def closer_to_baseline(difference: Difference) -> str | None:
    """Of a departure-share difference: the variant that departs less, where the interval excludes 0."""
    if not difference.excludes_zero:
        return None
    return difference.b if difference.difference > 0 else difference.a
