"""Pure quality metrics over next-token distributions: perplexity, KL divergence, top-1 agreement, summed
over windows (QualityTotals) so a long text is scored in pieces and averaged once, or kept position by
position (position_figures) for their distribution (demo.measuring.kl_stats).

Shapes: logits and log-probabilities are [positions, vocab]; targets are [positions] token ids.
Position i holds the distribution over the token at i + 1 (the usual causal-LM shift is done by
the caller). Everything is computed in float32 whatever the model's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from demo.measuring.kl_stats import Positions


@dataclass(frozen=True)
class QualityTotals:
    """Sums over positions, so windows can be accumulated and averaged once at the end."""

    positions: int = 0
    nll_sum: float = 0.0  # sum of -log p(target)
    kl_sum: float = 0.0  # sum of KL(baseline || variant), nats
    top1_matches: int = 0

    def __add__(self, other: "QualityTotals") -> "QualityTotals":
        return QualityTotals(self.positions + other.positions, self.nll_sum + other.nll_sum,
                             self.kl_sum + other.kl_sum, self.top1_matches + other.top1_matches)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.positions)

    @property
    def kl_divergence(self) -> float:
        return self.kl_sum / self.positions

    @property
    def top1_agreement(self) -> float:
        return self.top1_matches / self.positions


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


def kl_divergence(baseline_logprobs: torch.Tensor, variant_logprobs: torch.Tensor) -> float:
    """Mean KL(baseline || variant) per position, in nats (llama.cpp's KLD is the same quantity)."""
    return float(position_kl_nats(baseline_logprobs, variant_logprobs).mean())


KL_CHUNK_ROWS = 64  # positions per step: a [rows, vocab] temporary stays a few MiB for a 50k vocabulary


def position_kl_nats(baseline_logprobs: torch.Tensor, variant_logprobs: torch.Tensor) -> torch.Tensor:
    """[positions] float64 KL(baseline || variant) per position, in nats, NaN and inf kept as they are.

    A token the baseline gives probability 0 adds 0 (0 log 0 = 0: torch's kl_div with log targets makes that
    0 * -inf = NaN); one the variant gives 0 and the baseline does not makes the KL infinite, as it is. Tiny
    negative sums are float rounding of a KL that is >= 0, so they are clamped to 0 (NaN stays NaN)."""
    rows = []
    for start in range(0, baseline_logprobs.shape[0], KL_CHUNK_ROWS):
        p_log = baseline_logprobs[start:start + KL_CHUNK_ROWS].float()
        q_log = variant_logprobs[start:start + KL_CHUNK_ROWS].float()
        terms = torch.where(p_log == -math.inf, 0.0, p_log.exp() * (p_log - q_log))
        rows.append(terms.sum(-1, dtype=torch.float64))
    if not rows:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat(rows).clamp_min(0.0)


def position_figures(logprobs: torch.Tensor, targets: torch.Tensor,
                     baseline_logprobs: torch.Tensor | None = None) -> Positions:
    """This model's figures at each position, as float64 numpy arrays: log p(target), top token and its
    probability, and KL(baseline || this model) (all zeros without a baseline: the model is its own)."""
    lp = logprobs.float()
    top_logprob, top_token = lp.max(-1)
    target = lp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    kl = torch.zeros(lp.shape[0]) if baseline_logprobs is None else position_kl_nats(baseline_logprobs, lp)
    as64 = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
    return Positions(as64(target), top_token.cpu().numpy().astype(np.int64), np.exp(as64(top_logprob)), as64(kl))


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
