"""Flips across a prompt set: how often a variant's greedy answer changes from its baseline's, and which way.

After Dutta et al. 2024 ("Accuracy is not all you need"): accuracy can stay flat while many answers flip
right -> wrong and wrong -> right, so the flips are counted, not only the accuracy.

Per variant, over the prompts both it and its baseline answered (`Outcome`, one per prompt): the share whose
answer departs from the baseline's (any token differs), the share whose first token differs, and where
prompts carry an expected answer, the accuracy of both, the change in accuracy and the flips each way (shares
of the checked prompts). Every share has a 95 % percentile bootstrap interval over prompts (resampled with
replacement, RESAMPLES times, seeded); the same seed draws the same resamples, so the figures of one run are
resampled together. Two variants are compared on the prompts both answered by a paired bootstrap of the
difference of their departure shares. Pure functions: no model, numpy only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
DEFAULT_SEED = 0


def method(resamples: int = RESAMPLES, seed: int = DEFAULT_SEED) -> str:
    return (f"percentile bootstrap over prompts: {resamples} resamples with replacement, seed {seed}, "
            f"{CONFIDENCE:.0%} interval (the {100 * (1 - CONFIDENCE) / 2:g}th and "
            f"{100 - 100 * (1 - CONFIDENCE) / 2:g}th percentiles)")


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
    """count of n prompts, its share and the bootstrap interval of the share."""

    count: int
    n: int
    share: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Difference:
    """A statistic of `a` minus the same of `b` over the same prompts, with its paired bootstrap interval."""

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


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """[resamples, n] prompt indices drawn with replacement; the same (n, resamples, seed) draws the same."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def interval(samples: np.ndarray) -> tuple[float, float]:
    """The middle CONFIDENCE of bootstrap samples (percentiles, linear interpolation)."""
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def share(flags: Sequence[bool], resamples: int = RESAMPLES, seed: int = DEFAULT_SEED) -> Share:
    """How many of the prompts are flagged, and the bootstrap interval of that share."""
    values = np.asarray(flags, dtype=float)
    if values.size == 0:
        raise ValueError("a share needs at least one prompt")
    means = values[resample_indices(values.size, resamples, seed)].mean(axis=1)
    low, high = interval(means)
    return Share(int(values.sum()), int(values.size), float(values.mean()), low, high)


def paired_difference(a_flags: Sequence[bool], b_flags: Sequence[bool], a: str = "a", b: str = "b",
                      resamples: int = RESAMPLES, seed: int = DEFAULT_SEED) -> Difference:
    """mean(a_flags) - mean(b_flags) over the same prompts (aligned), each resample drawing the same prompts
    for both, so what the prompts share (an easy or a hard prompt) cancels out."""
    x, y = np.asarray(a_flags, dtype=float), np.asarray(b_flags, dtype=float)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"a paired difference needs the same prompts on both sides, got {x.size} and {y.size}")
    draws = resample_indices(x.size, resamples, seed)
    low, high = interval(x[draws].mean(axis=1) - y[draws].mean(axis=1))
    return Difference(a, b, int(x.size), float(x.mean()), float(y.mean()), float(x.mean() - y.mean()), low, high)


def variant_flips(outcomes: Sequence[Outcome], resamples: int = RESAMPLES, seed: int = DEFAULT_SEED,
                  variant: str = "variant", baseline: str = "baseline") -> VariantFlips:
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
            "baseline_accuracy": share(base, resamples, seed),
            "variant_accuracy": share(mine, resamples, seed),
            "accuracy_change": paired_difference(mine, base, variant, baseline, resamples, seed),
            "right_to_wrong": share([b and not m for b, m in zip(base, mine)], resamples, seed),
            "wrong_to_right": share([m and not b for b, m in zip(base, mine)], resamples, seed),
        }
    return VariantFlips(len(outcomes), share([o.departs for o in outcomes], resamples, seed),
                        share([o.first_token_differs for o in outcomes], resamples, seed), len(checked), **accuracy)


def closer_to_baseline(difference: Difference) -> str | None:
    """Of a departure-share difference: the variant that departs less, where the interval excludes 0."""
    if not difference.excludes_zero:
        return None
    return difference.b if difference.difference > 0 else difference.a
