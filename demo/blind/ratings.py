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

from demo.blind import scripted
from demo.blind.votes import Outcome

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
    """Strengths (anchor = 1) by MM; the games' tallies are summed with bincount, so a bootstrap refit is fast."""
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


def summarize(outcomes: Sequence[Outcome], rounds: int = ROUNDS, rating_rounds: int = RATING_ROUNDS,
              seed: int = SEED) -> dict:
    """{"votes": N, "variants": [...]}: per base, its baseline (rating 0) then each variant voted against it.
    Votes that look scripted (demo.blind.scripted) are left out: "flagged_votes" counts them, and each row's
    "flagged" counts its own (a baseline's: all of its base's)."""
    flags = scripted.reasons(outcomes)
    flagged = [o for o, reason in zip(outcomes, flags) if reason is not None]
    outcomes = [o for o, reason in zip(outcomes, flags) if reason is None]
    by_base: dict[tuple[str, str], list[Outcome]] = defaultdict(list)  # a base whose baseline changed: apart
    for outcome in outcomes:
        by_base[outcome.base, outcome.baseline].append(outcome)
    variants = []
    for (base, _), group in by_base.items():
        variants += _base_rows(base, group, rounds, rating_rounds, seed)
    for row in variants:
        row["flagged"] = sum(row["variant"] in (o.variant_a, o.variant_b) for o in flagged if o.base == row["base"])
    return {"votes": len(outcomes), "flagged_votes": len(flagged), "flag_rules": scripted.RULES,
            "confidence": CONFIDENCE, "bootstrap_rounds": rounds,
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
    players, first, second, scores = _indexed(games, baseline)
    rng = np.random.default_rng(seed + 1)  # not the rates' stream: the two bootstraps stay independent
    samples = np.empty((rounds, len(players)))
    for r in range(rounds):
        k = rng.integers(0, len(games), size=len(games))  # a player absent from a resample: its virtual tie, 0
        samples[r] = ELO_SCALE * np.log(_fit(first[k], second[k], scores[k], len(players), 0, VIRTUAL_TIES))
    return ratings, {p: _percentiles(samples[:, c]) for c, p in enumerate(players)}


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _round(value: float) -> float:
    return round(value, 1) + 0.0 if math.isfinite(value) else value  # + 0.0: never "-0"
