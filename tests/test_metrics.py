"""Quality metrics against answers computed by hand."""

import math

import pytest
import torch

from demo.measuring import metrics


def test_variant_against_itself():
    logits = torch.randn(50, 300, generator=torch.Generator().manual_seed(0))
    lp = metrics.log_probs(logits)
    assert metrics.kl_divergence(lp, lp) == pytest.approx(0.0, abs=1e-6)
    assert metrics.window_totals(lp, torch.zeros(50, dtype=torch.long), lp).top1_agreement == 1.0


def test_uniform_distribution_has_perplexity_equal_to_vocabulary_size():
    vocab = 1000
    lp = metrics.log_probs(torch.zeros(7, vocab))
    targets = torch.tensor([0, 5, 999, 3, 3, 42, 7])
    assert metrics.window_totals(lp, targets, None).perplexity == pytest.approx(vocab, rel=1e-5)


def test_hand_made_kl_divergence():
    p = torch.tensor([[0.5, 0.25, 0.25]])
    q = torch.tensor([[0.25, 0.5, 0.25]])
    by_hand = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(1.0)  # = 0.25 ln 2
    assert metrics.kl_divergence(p.log(), q.log()) == pytest.approx(by_hand, rel=1e-6)
    assert by_hand == pytest.approx(0.25 * math.log(2))


def test_top1_agreement_counts_positions():
    base = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]).log()
    other = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9]]).log()
    assert metrics.window_totals(other, torch.zeros(4, dtype=torch.long), base).top1_agreement == 0.75


def test_window_totals_accumulate_to_the_whole():
    g = torch.Generator().manual_seed(1)
    base, var = metrics.log_probs(torch.randn(40, 64, generator=g)), metrics.log_probs(torch.randn(40, 64, generator=g))
    targets = torch.randint(0, 64, (40,), generator=g)
    whole = metrics.window_totals(var, targets, base)
    halves = metrics.window_totals(var[:25], targets[:25], base[:25]) + metrics.window_totals(var[25:], targets[25:],
                                                                                             base[25:])
    assert halves.perplexity == pytest.approx(whole.perplexity, rel=1e-5)
    assert halves.kl_divergence == pytest.approx(whole.kl_divergence, rel=1e-5)
    assert halves.top1_agreement == whole.top1_agreement


def test_percentile():
    assert metrics.percentile([1, 2, 3, 4], 50) == 2.5
    assert metrics.percentile([10], 90) == 10
    assert metrics.percentile([0, 10], 90) == 9
