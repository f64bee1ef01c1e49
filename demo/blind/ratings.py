"""Blind-test statistics (pure functions): how often each variant was preferred over, tied with, or beaten by
its baseline, each with a 95% Wilson score interval, and a Bradley-Terry rating anchored at the baseline with
an interval mapped from the Wilson interval of the variant's score share.

Outcomes are read from the quantized variant's side. "Tied" counts both "tie" and "both bad": in either case
the voter did not prefer one answer. "Indistinguishable" = preferred + tied: the share of votes in which the
quantized answer did at least as well as the baseline's. Bradley-Terry counts a tie (or both bad) as half a
win for each side, as chatbot arenas do.

The intervals are closed-form (demo.measuring.flips.wilson, the same interval as the flips' shares), not a
bootstrap: a bootstrap of 3 votes that all agree resamples the same 3 votes every time and reads
"100% (100-100%)", where Wilson's reads 100% (44-100%). Every battle is the baseline against one variant, so a
variant's rating against the anchored baseline depends on its own games only: it is the logit of its score
share (see `rating_interval`), and its interval is that share's Wilson interval through the same map.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from demo.blind import scripted
from demo.blind.votes import Outcome
from demo.measuring.flips import wilson

OUTCOMES = ("preferred", "tie", "both_bad", "baseline_preferred")  # from the quantized variant's side
RATES = ("preferred", "tied", "baseline_preferred", "indistinguishable")
CONFIDENCE = 0.95
INTERVAL_METHOD = ("95% Wilson score interval for each rate (votes as trials); for each rating, the Wilson "
                   "interval of the variant's score share against its baseline (wins + ties / 2 + 1/2 for the "
                   "imagined tie, over its votes + 1) through the Elo map 400 * log10(p / (1 - p)); closed-form, "
                   "no resampling")
ELO_SCALE = 400 / math.log(10)  # rating points per unit of log strength: +400 means 10:1 odds
VIRTUAL_TIES = 1.0  # one imagined tie with the baseline per variant: a finite rating when all votes go one way
_SCORE = {"preferred": 1.0, "tie": 0.5, "both_bad": 0.5, "baseline_preferred": 0.0}


def side_outcome(outcome: Outcome) -> tuple[str, str]:
    """(quantized variant, its outcome against the baseline) for one voted battle."""
    challenger = outcome.variant_b if outcome.variant_a == outcome.baseline else outcome.variant_a
    if outcome.choice in ("tie", "both_bad"):
        return challenger, outcome.choice
    winner = outcome.variant_a if outcome.choice == "a" else outcome.variant_b
    return challenger, "preferred" if winner == challenger else "baseline_preferred"


def rates(outcomes: Sequence[str]) -> dict[str, float]:
    n = len(outcomes)
    share = {k: sum(o == k for o in outcomes) / n for k in OUTCOMES}
    tied = share["tie"] + share["both_bad"]
    return {"preferred": share["preferred"], "tied": tied, "baseline_preferred": share["baseline_preferred"],
            "indistinguishable": share["preferred"] + tied}


def rate_intervals(outcomes: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Each rate's 95% Wilson score interval (demo.measuring.flips.wilson), the votes taken as independent
    trials: positive width at 0 or all of the votes (3 of 3: 0.44 to 1), coverage near 95% at a handful."""
    n = len(outcomes)
    count = {k: sum(o == k for o in outcomes) for k in OUTCOMES}
    tied = count["tie"] + count["both_bad"]
    counts = {"preferred": count["preferred"], "tied": tied, "baseline_preferred": count["baseline_preferred"],
              "indistinguishable": count["preferred"] + tied}
    return {k: wilson(c, n, CONFIDENCE) for k, c in counts.items()}


def rating_interval(points: float, games: int, virtual_ties: float = VIRTUAL_TIES) -> tuple[float, float]:
    """The 95% interval of a variant's rating (Elo points, baseline 0) from its `points` (wins + ties / 2) in
    `games` against the baseline, where every game it played was against the baseline.

    Then its Bradley-Terry strength p (baseline 1) meets its score equation on its own: p / (1 + p) = s, with
    s = (points + virtual_ties / 2) / (games + virtual_ties) its score share counting the imagined ties, so
    its rating is 400 * log10(s / (1 - s)), a monotone map of s. The interval is the Wilson interval of s
    (a tie as half a success; ties make a game's score vary less than a win or a loss, so with many ties the
    interval is, if anything, wide) through the same map. Unlike a bootstrap of refits it does not collapse
    when every vote agrees (3 wins of 3: about -74 to +749 around +338), and with an imagined tie it is
    finite."""
    low, high = wilson(points + virtual_ties / 2, games + virtual_ties, CONFIDENCE)
    return _elo(low), _elo(high)


def _elo(share: float) -> float:
    """400 * log10(share / (1 - share)): the rating whose expected score against the anchor is `share`."""
    if share <= 0:
        return -math.inf
    if share >= 1:
        return math.inf
    return ELO_SCALE * math.log(share / (1 - share))


def bradley_terry(games: Iterable[tuple[str, str, float]], anchor: str, virtual_ties: float = VIRTUAL_TIES,
                  tolerance: float = 1e-10, max_iterations: int = 100_000) -> dict[str, float]:
    """Ratings (Elo-scaled points, `anchor` at 0) from games (i, j, score of i: 1, 0.5 or 0).

    Maximum likelihood by Hunter's MM iteration: p_i <- W_i / sum_j n_ij / (p_i + p_j), with W_i the
    points of i and n_ij the games between i and j. Each player other than the anchor also gets
    `virtual_ties` games against the anchor scored half each."""
    players, first, second, scores = _indexed(list(games), anchor)
    strength = _fit(first, second, scores, len(players), 0, virtual_ties, tolerance, max_iterations)
    with np.errstate(divide="ignore"):  # a player with no points at all (no virtual ties): -inf
        return {p: float(ELO_SCALE * np.log(strength[k])) for k, p in enumerate(players)}


def _indexed(games: list[tuple[str, str, float]], anchor: str):
    """Players (the anchor first) and the games as index and score arrays."""
    players = [anchor, *sorted({p for i, j, _ in games for p in (i, j)} - {anchor})]
    index = {p: k for k, p in enumerate(players)}
    first = np.array([index[i] for i, _, _ in games], dtype=int)
    second = np.array([index[j] for _, j, _ in games], dtype=int)
    return players, first, second, np.array([s for _, _, s in games], dtype=float)


def _fit(first: np.ndarray, second: np.ndarray, scores: np.ndarray, n: int, anchor: int, virtual_ties: float,
         tolerance: float = 1e-10, max_iterations: int = 100_000) -> np.ndarray:
    """Strengths (anchor = 1) by MM; the games' tallies are summed with bincount, so a fit is fast."""
    wins = np.bincount(first, scores, n) + np.bincount(second, 1.0 - scores, n)  # W_i
    pairs = np.bincount(first * n + second, minlength=n * n).reshape(n, n).astype(float)
    pairs += pairs.T  # n_ij, symmetric
    others = np.arange(n) != anchor
    wins[others] += virtual_ties / 2
    wins[anchor] += virtual_ties / 2 * others.sum()
    pairs[others, anchor] += virtual_ties
    pairs[anchor, others] += virtual_ties
    strength = np.ones(n)
    for _ in range(max_iterations):
        denominator = (pairs / (strength[:, None] + strength[None, :])).sum(axis=1)
        new = np.where(denominator > 0, wins / np.where(denominator > 0, denominator, 1.0), strength)
        new = new / (new[anchor] or 1.0)
        alive = (new > 0) & (strength > 0)  # a player with no points drops to 0 at once and stays: judge the rest
        change = np.abs(np.log(new[alive] / strength[alive])).max(initial=0.0)
        strength = new
        if change < tolerance:
            break
    return strength


def summarize(outcomes: Sequence[Outcome]) -> dict:
    """{"votes": N, "variants": [...]}: per base, its baseline (rating 0) then each variant voted against it.
    Votes that look scripted (demo.blind.scripted) are left out: "flagged_votes" counts them, and each row's
    "flagged" counts its own (a baseline's: all of its base's). Every interval is closed-form (Wilson)."""
    flags = scripted.reasons(outcomes)
    flagged = [o for o, reason in zip(outcomes, flags) if reason is not None]
    outcomes = [o for o, reason in zip(outcomes, flags) if reason is None]
    by_base: dict[tuple[str, str], list[Outcome]] = defaultdict(list)  # a base whose baseline changed: apart
    for outcome in outcomes:
        by_base[outcome.base, outcome.baseline].append(outcome)
    variants = []
    for (base, _), group in by_base.items():
        variants += _base_rows(base, group)
    for row in variants:
        row["flagged"] = sum(row["variant"] in (o.variant_a, o.variant_b) for o in flagged if o.base == row["base"])
    return {"votes": len(outcomes), "flagged_votes": len(flagged), "flag_rules": scripted.RULES,
            "confidence": CONFIDENCE, "interval_method": INTERVAL_METHOD, "variants": variants}


def _base_rows(base: str, group: list[Outcome]) -> list[dict]:
    baseline = group[0].baseline
    labels = {}
    for o in group:
        labels.setdefault(o.variant_a, o.label_a)
        labels.setdefault(o.variant_b, o.label_b)
    per_variant: dict[str, list[str]] = defaultdict(list)
    for o in group:
        variant, result = side_outcome(o)
        per_variant[variant].append(result)
    ratings = bradley_terry(_games(group), baseline)  # the point; its interval per variant, rating_interval
    rows = [{"variant": baseline, "label": labels.get(baseline, ""), "base": base, "baseline": baseline,
             "role": "baseline", "votes": len(group), "counts": None, "rates": None, "intervals": None,
             "rating": 0.0, "rating_interval": [0.0, 0.0]}]
    for variant, results in per_variant.items():
        rows.append({
            "variant": variant, "label": labels.get(variant, ""), "base": base, "baseline": baseline,
            "role": "quantized", "votes": len(results), "counts": {k: results.count(k) for k in OUTCOMES},
            "rates": {k: round(v, 4) for k, v in rates(results).items()},
            "intervals": {k: [round(lo, 4), round(hi, 4)] for k, (lo, hi) in rate_intervals(results).items()},
            "rating": _round(ratings[variant]),
            "rating_interval": [_round(x) for x in rating_interval(sum(_SCORE[r] for r in results), len(results))],
        })
    return rows


def _games(group: Sequence[Outcome]) -> list[tuple[str, str, float]]:
    return [(challenger, o.baseline, _SCORE[result]) for o in group for challenger, result in [side_outcome(o)]]


def _round(value: float) -> float:
    return round(value, 1) + 0.0 if math.isfinite(value) else value  # + 0.0: never "-0"
