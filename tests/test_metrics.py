"""Quality metrics against answers computed by hand."""

import math

import pytest
import torch

from demo.measuring import metrics


def test_variant_against_itself():
    logits = torch.randn(50, 300, generator=torch.Generator().manual_seed(0))
    lp = metrics.log_probs(logits)
    assert metrics.kl_divergence(lp, lp) == pytest.approx(0.0, abs=1e-6)
    figures = metrics.position_figures(lp, torch.zeros(50, dtype=torch.long), lp)
    assert (figures.kl_nats == 0).all()


def test_uniform_distribution_gives_each_target_one_over_the_vocabulary():
    vocab = 1000
    lp = metrics.log_probs(torch.zeros(7, vocab))
    figures = metrics.position_figures(lp, torch.tensor([0, 5, 999, 3, 3, 42, 7]))
    assert figures.target_logprob_nats.tolist() == pytest.approx([-math.log(vocab)] * 7, rel=1e-5)


def test_hand_made_kl_divergence():
    p = torch.tensor([[0.5, 0.25, 0.25]])
    q = torch.tensor([[0.25, 0.5, 0.25]])
    by_hand = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(1.0)  # = 0.25 ln 2
    assert metrics.kl_divergence(p.log(), q.log()) == pytest.approx(by_hand, rel=1e-6)
    assert by_hand == pytest.approx(0.25 * math.log(2))


def test_a_token_the_baseline_never_gives_adds_nothing_and_one_the_variant_never_gives_is_infinite():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]).log()
    q = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]]).log()
    kl = metrics.position_kl_nats(p, q)
    assert kl[0].item() == pytest.approx(0.5 * math.log(0.5 / 0.25)) and kl[1].item() == math.inf


def test_top_tokens_count_positions():
    base = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]).log()
    other = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9]]).log()
    targets = torch.zeros(4, dtype=torch.long)
    same = metrics.position_figures(base, targets).top_token == metrics.position_figures(other, targets).top_token
    assert same.tolist() == [True, False, True, True]


def test_percentile():
    assert metrics.percentile([1, 2, 3, 4], 50) == 2.5
    assert metrics.percentile([10], 90) == 10
    assert metrics.percentile([0, 10], 90) == 9
