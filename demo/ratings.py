"""Blind-test statistics (pure functions): how often each variant was preferred over, tied with, or beaten by
its baseline, with seeded bootstrap intervals, and a Bradley-Terry rating anchored at the baseline.

Outcomes are read from the quantized variant's side. "Tied" counts both "tie" and "both bad": in either case
the voter did not prefer one answer. "Indistinguishable" = preferred + tied: the share of votes in which the
quantized answer did at least as well as the baseline's. Bradley-Terry counts a tie (or both bad) as half a
win for each side, as chatbot arenas do.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from demo.votes import Outcome

OUTCOMES = ("preferred", "tie", "both_bad", "baseline_preferred")  # from the quantized variant's side
RATES = ("preferred", "tied", "baseline_preferred", "indistinguishable")
CONFIDENCE = 0.95
ROUNDS = 1000  # bootstrap rounds for the rates
RATING_ROUNDS = 200  # bootstrap rounds for the ratings (each one a fit)
SEED = 0
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


def rate_intervals(outcomes: Sequence[str], rounds: int = ROUNDS, seed: int = SEED) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap: resample the votes with replacement `rounds` times, take the middle 95%."""
    codes = np.array([OUTCOMES.index(o) for o in outcomes])
    draws = codes[np.random.default_rng(seed).integers(0, len(codes), size=(rounds, len(codes)))]
    share = {k: (draws == i).mean(axis=1) for i, k in enumerate(OUTCOMES)}
    tied = share["tie"] + share["both_bad"]
    samples = {"preferred": share["preferred"], "tied": tied, "baseline_preferred": share["baseline_preferred"],
               "indistinguishable": share["preferred"] + tied}
    return {k: _percentiles(v) for k, v in samples.items()}


def bradley_terry(games: Iterable[tuple[str, str, float]], anchor: str, virtual_ties: float = VIRTUAL_TIES,
                  tolerance: float = 1e-10, max_iterations: int = 100_000) -> dict[str, float]:
    """Ratings (Elo-scaled points, `anchor` at 0) from games (i, j, score of i: 1, 0.5 or 0).

    Maximum likelihood by Hunter's MM iteration: p_i <- W_i / sum_j n_ij / (p_i + p_j), with W_i the
    points of i and n_ij the games between i and j. Each player other than the anchor also gets
    `virtual_ties` games against the anchor scored half each."""
    wins: dict[str, float] = defaultdict(float)
    pairs: dict[tuple[str, str], float] = defaultdict(float)  # (i, j) with i < j -> games
    for i, j, score in games:
        wins[i] += score
        wins[j] += 1.0 - score
        pairs[min(i, j), max(i, j)] += 1.0
    players = sorted({anchor, *wins})
    if virtual_ties:
        for player in players:
            if player != anchor:
                wins[player] += virtual_ties / 2
                wins[anchor] += virtual_ties / 2
                pairs[min(player, anchor), max(player, anchor)] += virtual_ties
    strength = {p: 1.0 for p in players}
    for _ in range(max_iterations):
        new = {}
        for p in players:
            denominator = sum(n / (strength[i] + strength[j]) for (i, j), n in pairs.items() if p in (i, j))
            new[p] = wins[p] / denominator if denominator else strength[p]
        scale = new[anchor] or 1.0
        new = {p: s / scale for p, s in new.items()}
        # a player with no points goes to 0 at once and stays there (rating -inf): judge the others
        change = max((abs(math.log(new[p] / strength[p])) for p in players if new[p] > 0 and strength[p] > 0),
                     default=0.0)
        strength = new
        if change < tolerance:
            break
    return {p: ELO_SCALE * math.log(s) if s > 0 else -math.inf for p, s in strength.items()}


def summarize(outcomes: Sequence[Outcome], rounds: int = ROUNDS, rating_rounds: int = RATING_ROUNDS,
              seed: int = SEED) -> dict:
    """{"votes": N, "variants": [...]}: per base, its baseline (rating 0) then each variant voted against it."""
    by_base: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_base[outcome.base].append(outcome)
    variants = []
    for base, group in by_base.items():
        variants += _base_rows(base, group, rounds, rating_rounds, seed)
    return {"votes": len(outcomes), "confidence": CONFIDENCE, "bootstrap_rounds": rounds,
            "rating_bootstrap_rounds": rating_rounds, "seed": seed, "variants": variants}


def _base_rows(base: str, group: list[Outcome], rounds: int, rating_rounds: int, seed: int) -> list[dict]:
    baseline = group[0].baseline
    labels = {}
    for o in group:
        labels.setdefault(o.variant_a, o.label_a)
        labels.setdefault(o.variant_b, o.label_b)
    per_variant: dict[str, list[str]] = defaultdict(list)
    for o in group:
        variant, result = side_outcome(o)
        per_variant[variant].append(result)
    ratings, intervals = _ratings_with_intervals(group, baseline, rating_rounds, seed)
    rows = [{"variant": baseline, "label": labels.get(baseline, ""), "base": base, "baseline": baseline,
             "role": "baseline", "votes": len(group), "counts": None, "rates": None, "intervals": None,
             "rating": 0.0, "rating_interval": [0.0, 0.0]}]
    for variant, results in per_variant.items():
        rows.append({
            "variant": variant, "label": labels.get(variant, ""), "base": base, "baseline": baseline,
            "role": "quantized", "votes": len(results), "counts": {k: results.count(k) for k in OUTCOMES},
            "rates": {k: round(v, 4) for k, v in rates(results).items()},
            "intervals": {k: [round(lo, 4), round(hi, 4)]
                          for k, (lo, hi) in rate_intervals(results, rounds, seed).items()},
            "rating": _round(ratings[variant]), "rating_interval": [_round(x) for x in intervals[variant]],
        })
    return rows


def _games(group: Sequence[Outcome]) -> list[tuple[str, str, float]]:
    return [(challenger, o.baseline, _SCORE[result]) for o in group for challenger, result in [side_outcome(o)]]


def _ratings_with_intervals(group: list[Outcome], baseline: str, rounds: int, seed: int):
    games = _games(group)
    ratings = bradley_terry(games, baseline)
    rng = np.random.default_rng(seed + 1)  # not the rates' stream: the two bootstraps stay independent
    samples = defaultdict(list)
    for _ in range(rounds):
        picked = [games[k] for k in rng.integers(0, len(games), size=len(games))]
        fitted = bradley_terry(picked, baseline)
        for player in ratings:
            samples[player].append(fitted.get(player, 0.0))  # absent from a resample: only its virtual tie
    return ratings, {p: _percentiles(np.array(v)) for p, v in samples.items()}


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _round(value: float) -> float:
    return round(value, 1) + 0.0 if math.isfinite(value) else value  # + 0.0: never "-0"
