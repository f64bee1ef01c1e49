"""One evaluated variant's row (results.json, results.csv, the Evaluate tab) and the columns of the CSV."""

from __future__ import annotations

from dataclasses import dataclass

FIELDS = ["variant", "baseline", "perplexity", "kl_divergence", "top1_agreement", "ttft_ms_p50",
          "decode_tokens_per_s_p50", "decode_tokens_per_s_p90", "runs", "weights_mib", "peak_memory_mib", "disk_mib",
          "achieved_bandwidth_gb_s_p50", "bandwidth_share_p50", "energy_joules_per_token_p50"]
# The CSV's columns after FIELDS: one figure each; the nested statistics and kl_per_position stay in results.json.
CSV_EXTRA = ["kernel", "scored_tokens", "error", "kl_lower_bound_top_k", "quality_note", "protocol", "kl_divergence_uncertainty",
             "kl_p99_9", "kl_max", "top1_agreement_uncertainty", "ln_ppl_ratio", "ln_ppl_ratio_uncertainty",
             "nonfinite_positions"]



@dataclass
class VariantEvaluation:
    variant: str
    baseline: str | None
    perplexity: float | None = None
    kl_divergence: float | None = None
    top1_agreement: float | None = None
    ttft_ms_p50: float | None = None
    decode_tokens_per_s_p50: float | None = None
    decode_tokens_per_s_p90: float | None = None
    runs: int = 0
    weights_mib: float | None = None
    peak_memory_mib: float | None = None
    disk_mib: float | None = None
    # Medians over the timed runs of each run's record (demo.measuring.bandwidth, demo.measuring.energy): weights
    # bytes x decode rate in 1e9 bytes/s, its fraction of the bandwidth measured on the same device, J per new token.
    achieved_bandwidth_gb_s_p50: float | None = None
    bandwidth_share_p50: float | None = None
    energy_joules_per_token_p50: float | None = None
    energy_source: str | None = None  # what the energy was read from, or why there is none
    # How its matmuls ran (demo.backends.kernels): {kind: native | emulated | unknown, reason, found_by}; None for a
    # remote variant (its engine's business) or one that never ran.
    kernel: dict | None = None
    scored_tokens: int = 0
    error: str | None = None
    kl_lower_bound_top_k: int | None = None  # remote: KL from the engine's top k only, a lower bound
    quality_note: str | None = None  # why perplexity / KL are missing (an engine without prompt log-probabilities)
    protocol: str = "sliding"  # which tokens were fed and scored: sliding | llamacpp | trace
    protocol_note: str | None = None  # what the protocol did with this tokenizer (llamacpp: which BOS)
    # The distribution statistics against the baseline (demo.measuring.kl_stats.KlStatistics), None without one.
    # perplexity, kl_divergence and top1_agreement above are their headline values, over the same positions.
    perplexity_uncertainty: float | None = None  # PPL × standard error of the mean negative log-likelihood
    ppl_baseline: dict | None = None  # {value, uncertainty}: the baseline's perplexity on the same positions
    ln_ppl_ratio: dict | None = None  # {value, uncertainty}: ln(PPL(Q) / PPL(base))
    ppl_ratio: dict | None = None  # {value, uncertainty}
    ppl_difference: dict | None = None  # {value, uncertainty}: PPL(Q) - PPL(base)
    log_prob_correlation: float | None = None  # correlation of the two models' per-token log-probabilities
    kl: dict | None = None  # nats: mean, mean_uncertainty, max, p99_9, p99, p95, p90, median, p10, p5, p1, p0_1, min
    delta_p: dict | None = None  # p_variant - p_base of the text's next token: mean ± , percentiles, rms ±
    top1_agreement_uncertainty: float | None = None  # binomial sqrt(p (1 - p) / (n - 1))
    kl_buckets: list | None = None  # [{range, positions, kl_mean}] by the baseline's top-token probability
    nonfinite_positions: int | None = None  # positions left out of every figure: NaN or infinite KL / log p
    kl_per_position: list | None = None  # finite KL per scored position, nats (results.json only: a histogram)
    # The baseline's noise floor on the same positions (demo.measuring.noise_floor): KL(baseline || baseline with
    # ε = 2^-9 multiplicative noise after every decoder layer), or {"unavailable": reason}; None without a baseline.
    noise_floor: dict | None = None

