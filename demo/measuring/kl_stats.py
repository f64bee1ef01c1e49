"""The distribution of a variant's departure from the baseline, position by position, as llama.cpp's
`perplexity --kl-divergence` reports it (tools/perplexity/perplexity.cpp) plus exllamav3 qbench's confidence
buckets: pure numpy over per-position arrays, no model.

Every statistic is taken over the same positions: a position where any figure is NaN or infinite (a variant
that puts -inf or NaN logits) is left out of all of them and counted in `nonfinite_positions`; a figure that
cannot be computed (too few positions, a zero variance in a ratio) is None, never 0.

Formulas (n = finite positions, x̄ = mean, σ² = population variance mean(x²) - x̄²), as llama.cpp's:
- uncertainty of a mean: sqrt(σ² / (n - 1)), the standard error of the mean (llama.cpp shows 0 below 11
  positions; here it is given from 2 positions, None below);
- ln(PPL(Q)/PPL(base)) = mean of the per-token differences of negative log-likelihoods, its uncertainty
  sqrt(se_Q² + se_base² - 2 cov / (n - 1)) = the standard error of the mean of those differences; the correlation
  of the two models' per-token log-probabilities is cov / (σ_Q σ_base);
- Δp = p_variant(actual next token of the text) - p_baseline(same token); RMS Δp = sqrt(mean Δp²), its
  uncertainty 0.5 / RMS × (uncertainty of mean Δp²);
- "same top p" (top-1 agreement) uncertainty: the binomial sqrt(p (1 - p) / (n - 1));
- percentiles: linear interpolation between the order statistics at rank q/100 × (n - 1), numpy's default
  ("linear") and the one llama.cpp's percentile lambda uses; its median is the same point.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# (field, percent) as llama.cpp prints them, top down; Δp adds the quartiles llama.cpp prints for it.
KL_POINTS = (("max", 100.0), ("p99_9", 99.9), ("p99", 99.0), ("p95", 95.0), ("p90", 90.0), ("median", 50.0),
             ("p10", 10.0), ("p5", 5.0), ("p1", 1.0), ("p0_1", 0.1), ("min", 0.0))
DELTA_P_POINTS = KL_POINTS[:5] + (("p75", 75.0),) + KL_POINTS[5:6] + (("p25", 25.0),) + KL_POINTS[6:]
# exllamav3 qbench: the baseline's top-token probability, [low, high) except the last, which holds 1.0.
BUCKET_EDGES = (0.0, 0.25, 0.5, 0.75, 0.95, 1.0)


@dataclass(frozen=True)
class Positions:
    """One model's figures at each scored position (float64 / int64 numpy arrays of one length n).

    kl_nats is KL(baseline || this model) at each position; for the baseline itself it is all zeros."""

    target_logprob_nats: np.ndarray  # [n] log p(the actual next token of the text)
    top_token: np.ndarray  # [n] the most likely token id
    top_prob: np.ndarray  # [n] its probability
    kl_nats: np.ndarray  # [n]

    def __len__(self) -> int:
        return len(self.target_logprob_nats)

    @staticmethod
    def concat(parts: list["Positions"]) -> "Positions":
        if not parts:
            empty = np.zeros(0)
            return Positions(empty, np.zeros(0, dtype=np.int64), empty, empty)
        return Positions(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                           ("target_logprob_nats", "top_token", "top_prob", "kl_nats")))


@dataclass(frozen=True)
class KlStatistics:
    """Everything reported for one variant against its baseline (results.json keeps it as nested dicts)."""

    positions: int  # finite positions, the n of every figure below
    nonfinite_positions: int  # left out: NaN or infinite in either model's figures
    ppl: dict  # {value, uncertainty}: the variant's perplexity on the scored tokens
    ppl_baseline: dict  # {value, uncertainty}
    ln_ppl_ratio: dict  # {value, uncertainty}: ln(PPL(Q) / PPL(base))
    ppl_ratio: dict  # {value, uncertainty}: PPL(Q) / PPL(base)
    ppl_difference: dict  # {value, uncertainty}: PPL(Q) - PPL(base)
    log_prob_correlation: float | None  # Cor(ln PPL(Q), ln PPL(base)) over positions, in [-1, 1]
    kl: dict  # nats: mean, mean_uncertainty and the KL_POINTS
    delta_p: dict  # probability (0..1): mean, mean_uncertainty, DELTA_P_POINTS, rms, rms_uncertainty
    top1_agreement: float | None
    top1_agreement_uncertainty: float | None
    kl_buckets: list  # [{range, positions, kl_mean}] by the baseline's top-token probability
    kl_per_position: list  # the finite KL values in position order, nats (for a histogram)

    def as_dict(self) -> dict:
        return asdict(self)


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def mean_and_uncertainty(values: np.ndarray) -> tuple[float | None, float | None]:
    """The mean and its standard error sqrt(σ² / (n - 1)) (σ² the population variance); None where undefined."""
    n = len(values)
    if n == 0:
        return None, None
    mean = float(values.mean())
    if n < 2:
        return finite_or_none(mean), None
    variance = float((values * values).mean() - mean * mean)
    return finite_or_none(mean), finite_or_none(math.sqrt(max(variance, 0.0) / (n - 1)))


def points(values: np.ndarray, table: tuple) -> dict:
    """The percentiles named in table (linear interpolation); None for all of them when there are no values."""
    if len(values) == 0:
        return {name: None for name, _ in table}
    found = np.percentile(values, [q for _, q in table])
    return {name: float(v) for (name, _), v in zip(table, found)}


def finite_mask(baseline: Positions, other: Positions) -> np.ndarray:
    """Positions where every figure of both models is finite."""
    return (np.isfinite(baseline.target_logprob_nats) & np.isfinite(baseline.top_prob)
            & np.isfinite(other.target_logprob_nats) & np.isfinite(other.top_prob) & np.isfinite(other.kl_nats))


def compare(baseline: Positions, other: Positions) -> KlStatistics:
    """The statistics of `other` (a variant, or a noise-floor rerun of the baseline) against the baseline,
    both over the same scored positions."""
    if len(baseline) != len(other):
        raise ValueError(f"the baseline has {len(baseline)} scored positions and the variant {len(other)}")
    keep = finite_mask(baseline, other)
    nll, nll_base = -other.target_logprob_nats[keep], -baseline.target_logprob_nats[keep]
    kl = other.kl_nats[keep]
    ppl, ppl_base, ratio = _perplexities(nll, nll_base)
    return KlStatistics(
        positions=int(keep.sum()), nonfinite_positions=int((~keep).sum()),
        ppl=ppl, ppl_baseline=ppl_base, **ratio,
        kl=_kl(kl), delta_p=_delta_p(np.exp(-nll) - np.exp(-nll_base)),
        **_top1(baseline.top_token[keep] == other.top_token[keep]),
        kl_buckets=buckets(baseline.top_prob[keep], kl), kl_per_position=[float(v) for v in kl])


def perplexity(nll: np.ndarray) -> dict:
    """{value, uncertainty} of exp(mean nll); the uncertainty is PPL × the standard error of mean nll."""
    mean, se = mean_and_uncertainty(nll)
    value = None if mean is None else finite_or_none(math.exp(mean))
    return {"value": value, "uncertainty": None if value is None or se is None else finite_or_none(value * se)}


def _perplexities(nll: np.ndarray, nll_base: np.ndarray) -> tuple[dict, dict, dict]:
    ppl, ppl_base = perplexity(nll), perplexity(nll_base)
    ln_ratio, ln_ratio_se = mean_and_uncertainty(nll - nll_base)  # = sqrt(se² + se_base² - 2 cov/(n-1))
    n = len(nll)
    covariance = float((nll * nll_base).mean() - nll.mean() * nll_base.mean()) if n else float("nan")
    spread = float(nll.std() * nll_base.std()) if n else 0.0
    correlation = covariance / spread if spread > 0 else None
    ratio = None if ln_ratio is None else math.exp(ln_ratio)
    difference = difference_se = None
    if ppl["value"] is not None and ppl_base["value"] is not None:
        difference = ppl["value"] - ppl_base["value"]
        if ppl["uncertainty"] is not None and ppl_base["uncertainty"] is not None and n > 1:
            cross = ppl["value"] * ppl_base["value"] * covariance / (n - 1)  # llama.cpp's ppl_cov
            difference_se = math.sqrt(max(ppl["uncertainty"] ** 2 + ppl_base["uncertainty"] ** 2 - 2 * cross, 0.0))
    return ppl, ppl_base, {
        "ln_ppl_ratio": {"value": ln_ratio, "uncertainty": ln_ratio_se},
        "ppl_ratio": {"value": finite_or_none(ratio),
                      "uncertainty": None if ratio is None or ln_ratio_se is None else finite_or_none(ratio * ln_ratio_se)},
        "ppl_difference": {"value": finite_or_none(difference), "uncertainty": finite_or_none(difference_se)},
        "log_prob_correlation": finite_or_none(correlation)}


def _kl(kl: np.ndarray) -> dict:
    mean, se = mean_and_uncertainty(kl)
    return {"mean": mean, "mean_uncertainty": se, **points(kl, KL_POINTS)}


def _delta_p(delta: np.ndarray) -> dict:
    mean, se = mean_and_uncertainty(delta)
    mean_square, mean_square_se = mean_and_uncertainty(delta * delta)
    rms = None if mean_square is None else math.sqrt(mean_square)
    rms_se = None if rms is None or not rms or mean_square_se is None else 0.5 / rms * mean_square_se
    return {"mean": mean, "mean_uncertainty": se, **points(delta, DELTA_P_POINTS), "rms": rms,
            "rms_uncertainty": rms_se}


def _top1(same: np.ndarray) -> dict:
    n = len(same)
    share = float(same.mean()) if n else None
    se = math.sqrt(share * (1 - share) / (n - 1)) if n > 1 else None
    return {"top1_agreement": share, "top1_agreement_uncertainty": se}


def buckets(top_prob: np.ndarray, kl: np.ndarray) -> list[dict]:
    """Mean KL and position count per bucket of the baseline's top-token probability (BUCKET_EDGES)."""
    out = []
    for i, (low, high) in enumerate(zip(BUCKET_EDGES, BUCKET_EDGES[1:])):
        last = i == len(BUCKET_EDGES) - 2
        inside = (top_prob >= low) & ((top_prob <= high) if last else (top_prob < high))
        count = int(inside.sum())
        out.append({"range": f"[{low:g}, {high:g}{']' if last else ')'}", "positions": count,
                    "kl_mean": float(kl[inside].mean()) if count else None})
    return out
