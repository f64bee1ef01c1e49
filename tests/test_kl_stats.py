"""The distribution statistics against independent computations on small hand-built inputs.

The per-position figures are taken in float32 (as from a model), so comparisons with the float64 hand
computations allow a relative 1e-5."""

import math
import statistics

import numpy as np
import pytest
import torch

from demo.measuring import kl_stats, metrics
from demo.reports import kl_report


def llamacpp_percentile(values, fraction):
    """llama.cpp's percentile lambda (tools/perplexity/perplexity.cpp), in plain python."""
    values = sorted(values)
    if fraction <= 0:
        return values[0]
    if fraction >= 1:
        return values[-1]
    p = fraction * (len(values) - 1)
    ip = int(p)
    p -= ip
    return (1 - p) * values[ip] + p * values[min(ip + 1, len(values) - 1)]


def llamacpp_uncertainty(values):
    """llama.cpp's mean_and_uncertainty from the sums, without its below-11-positions cut-off."""
    n = len(values)
    mean = sum(values) / n
    return math.sqrt((sum(v * v for v in values) / n - mean * mean) / (n - 1))


def positions(base_probs, var_probs, targets):
    """Both models' figures from [positions, vocab] probability tables (rows sum to 1)."""
    base = torch.tensor(base_probs, dtype=torch.float64).log()
    var = torch.tensor(var_probs, dtype=torch.float64).log()
    t = torch.tensor(targets)
    return metrics.position_figures(base, t), metrics.position_figures(var, t, base)


BASE = [[0.55, 0.25, 0.2], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.96, 0.02, 0.02], [0.2, 0.6, 0.2]]
VAR = [[0.25, 0.5, 0.25], [0.2, 0.7, 0.1], [0.4, 0.3, 0.3], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2]]
TARGETS = [0, 1, 2, 0, 2]


def close(value, rel=1e-5, abs=1e-9):
    return pytest.approx(value, rel=rel, abs=abs)


def kl_by_hand(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_percentiles_are_llamacpp_s_linear_interpolation():
    values = np.random.default_rng(3).exponential(size=37)
    found = kl_stats.points(values, kl_stats.KL_POINTS)
    for name, percent in kl_stats.KL_POINTS:
        assert found[name] == pytest.approx(llamacpp_percentile(list(values), percent / 100), rel=1e-12), name
    # the median is the middle pair's average on an even count, as llama.cpp's kld_median
    assert kl_stats.points(np.array([4.0, 1.0, 3.0, 2.0]), (("median", 50.0),))["median"] == 2.5
    assert kl_stats.points(np.zeros(0), kl_stats.KL_POINTS)["max"] is None


def test_mean_and_uncertainty_as_llamacpp_computes_it():
    values = [0.1, 0.4, 0.2, 0.9, 0.05, 0.3]
    mean, se = kl_stats.mean_and_uncertainty(np.array(values))
    assert mean == pytest.approx(statistics.fmean(values))
    assert se == pytest.approx(llamacpp_uncertainty(values))
    assert se == pytest.approx(statistics.pstdev(values) / math.sqrt(len(values) - 1))
    assert kl_stats.mean_and_uncertainty(np.array([2.0])) == (2.0, None)
    assert kl_stats.mean_and_uncertainty(np.zeros(0)) == (None, None)


def test_hand_built_distributions():
    base, var = positions(BASE, VAR, TARGETS)
    stats = kl_stats.compare(base, var)
    kls = [kl_by_hand(p, q) for p, q in zip(BASE, VAR)]
    assert stats.kl_per_position == close(kls, rel=1e-5)
    assert stats.kl["mean"] == close(statistics.fmean(kls))
    assert stats.kl["mean_uncertainty"] == close(llamacpp_uncertainty(kls))
    assert stats.kl["max"] == close(max(kls)) and stats.kl["min"] == close(0.0, abs=1e-12)
    assert stats.kl["p99_9"] == close(llamacpp_percentile(kls, 0.999))
    # Δp: the probability of the text's actual next token, variant minus baseline
    dp = [VAR[i][t] - BASE[i][t] for i, t in enumerate(TARGETS)]
    assert dp == close([-0.3, -0.1, -0.1, -0.06, 0.0])
    assert stats.delta_p["mean"] == close(statistics.fmean(dp))
    assert stats.delta_p["mean_uncertainty"] == close(llamacpp_uncertainty(dp))
    assert stats.delta_p["p25"] == close(llamacpp_percentile(dp, 0.25))
    rms = math.sqrt(statistics.fmean([d * d for d in dp]))
    assert stats.delta_p["rms"] == close(rms)
    assert stats.delta_p["rms_uncertainty"] == close(0.5 / rms * llamacpp_uncertainty([d * d for d in dp]))
    # top-1: positions 0 and 2 disagree (ties broken to the lower id by argmax: 0.3/0.3 is not a top)
    assert stats.top1_agreement == close(3 / 5)
    assert stats.top1_agreement_uncertainty == close(math.sqrt(0.6 * 0.4 / 4))
    assert stats.positions == 5 and stats.nonfinite_positions == 0


def test_perplexity_ratio_and_its_uncertainty():
    base, var = positions(BASE, VAR, TARGETS)
    stats = kl_stats.compare(base, var)
    nll_q = [-math.log(VAR[i][t]) for i, t in enumerate(TARGETS)]
    nll_b = [-math.log(BASE[i][t]) for i, t in enumerate(TARGETS)]
    assert stats.ppl["value"] == close(math.exp(statistics.fmean(nll_q)))
    assert stats.ppl_baseline["value"] == close(math.exp(statistics.fmean(nll_b)))
    differences = [q - b for q, b in zip(nll_q, nll_b)]
    assert stats.ln_ppl_ratio["value"] == close(math.log(stats.ppl["value"] / stats.ppl_baseline["value"]))
    # the standard error of the mean of the per-token differences, from the sample standard deviation
    assert stats.ln_ppl_ratio["uncertainty"] == close(statistics.stdev(differences) / math.sqrt(5))
    assert stats.log_prob_correlation == close(np.corrcoef(nll_q, nll_b)[0, 1])
    assert stats.ppl_ratio["value"] == close(stats.ppl["value"] / stats.ppl_baseline["value"])


def test_buckets_by_the_baseline_s_top_probability():
    top = np.array([0.0, 0.2499, 0.25, 0.5, 0.74, 0.75, 0.9499, 0.95, 1.0])
    kl = np.arange(9, dtype=float)
    found = kl_stats.buckets(top, kl)
    assert [b["range"] for b in found] == ["[0, 0.25)", "[0.25, 0.5)", "[0.5, 0.75)", "[0.75, 0.95)", "[0.95, 1]"]
    assert [b["positions"] for b in found] == [2, 1, 2, 2, 2]
    assert [b["kl_mean"] for b in found] == [0.5, 2.0, 3.5, 5.5, 7.5]
    assert kl_stats.buckets(np.array([0.3]), np.array([1.0]))[0] == {"range": "[0, 0.25)", "positions": 0,
                                                                      "kl_mean": None}
    base, var = positions(BASE, VAR, TARGETS)  # top probabilities 0.55, 0.8, 0.4, 0.96, 0.6
    assert [b["positions"] for b in kl_stats.compare(base, var).kl_buckets] == [0, 1, 2, 1, 1]


def test_nonfinite_positions_are_left_out_of_every_figure_and_counted():
    base_lp = torch.tensor(BASE).log()
    var_logits = torch.tensor(VAR).log()
    var_logits[1, 1] = -math.inf  # the baseline's likeliest token made impossible: KL is infinite there
    var_logits[3] = math.nan
    targets = torch.tensor(TARGETS)
    base = metrics.position_figures(base_lp, targets)
    var = metrics.position_figures(metrics.log_probs(var_logits), targets, base_lp)
    stats = kl_stats.compare(base, var)
    assert stats.nonfinite_positions == 2 and stats.positions == 3
    kept = [0, 2, 4]
    assert stats.kl["mean"] == pytest.approx(statistics.fmean(kl_by_hand(BASE[i], VAR[i]) for i in kept), rel=1e-5)
    assert stats.ppl["value"] == pytest.approx(math.exp(statistics.fmean(-math.log(VAR[i][TARGETS[i]]) for i in kept)),
                                               rel=1e-5)
    assert sum(b["positions"] for b in stats.kl_buckets) == 3 and len(stats.kl_per_position) == 3
    assert all(math.isfinite(v) for v in stats.kl_per_position)


def test_a_token_the_baseline_never_gives_adds_nothing_to_kl():
    base = torch.tensor([[0.0, 0.0, -math.inf]])  # both put -inf on token 2: 0 log 0 = 0, not NaN
    var = torch.tensor([[0.5, -0.5, -math.inf]])
    kl = metrics.position_kl_nats(metrics.log_probs(base), metrics.log_probs(var))
    p, q = [0.5, 0.5], torch.softmax(torch.tensor([0.5, -0.5]), 0).tolist()
    assert float(kl[0]) == pytest.approx(kl_by_hand(p, q), rel=1e-5)


def test_the_baseline_against_itself():
    base, _ = positions(BASE, VAR, TARGETS)
    stats = kl_stats.compare(base, base)
    assert stats.kl["max"] == 0.0 and stats.top1_agreement == 1.0 and stats.top1_agreement_uncertainty == 0.0
    assert stats.ln_ppl_ratio == {"value": 0.0, "uncertainty": 0.0} and stats.delta_p["rms_uncertainty"] is None
    assert stats.log_prob_correlation == pytest.approx(1.0)


def test_the_llamacpp_block_shows_what_could_not_be_computed_as_a_dash():
    base, var = positions(BASE, VAR, TARGETS)
    stats = kl_stats.compare(base, var).as_dict()
    row = {**stats, "variant": "v", "baseline": "b", "protocol": "llamacpp", "protocol_note": None,
           "scored_tokens": 5, "perplexity": stats["ppl"]["value"], "perplexity_uncertainty": None}
    block = kl_report.llamacpp_block(row)
    assert "Mean PPL(Q)                   : " in block and "Same top p: 60.000 ± 24.495 %" in block
    assert f"99.9%   KLD: {stats['kl']['p99_9']:10.6f}" in block
    assert "Mean PPL(Q)" in block and "±          –" in block.splitlines()[1]  # no uncertainty: a dash, not 0
    table = kl_report.bucket_table(row)
    assert "| [0, 0.25) | 0 | – |" in table and "| [0.95, 1] | 1 |" in table
