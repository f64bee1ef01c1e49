"""Fidelity to the baseline on one prompt: the baseline's greedy answer, teacher-forced through a variant.

For answer tokens a_1..a_n given the prompt, each model's next-token distribution at every answer
position is compared: mean KL(baseline || variant) in nats, top-1 agreement (share of positions
where the variant's most likely token equals the baseline's), and the first answer position where
the variant would have chosen another token than the baseline's answer (0-based; None if never).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from demo import metrics
from demo.backends import LoadedVariant
from demo.generation import prompt_ids


@dataclass(frozen=True)
class Fidelity:
    baseline: str
    kl_divergence: float
    top1_agreement: float
    first_divergence_token: int | None

    def as_dict(self) -> dict:
        return asdict(self)


def of_baseline(baseline_id: str) -> Fidelity:
    """The baseline against itself."""
    return Fidelity(baseline_id, 0.0, 1.0, None)


def answer_log_probs(loaded: LoadedVariant, prompt: str, answer_ids: list[int]) -> torch.Tensor:
    """[len(answer), vocab] float32 log-probabilities of each answer position, teacher-forced."""
    ids = prompt_ids(loaded.tokenizer, prompt)
    logits = loaded.logits(ids + list(answer_ids))  # row i predicts token i + 1
    start = len(ids) - 1
    return metrics.log_probs(logits[start:start + len(answer_ids)])


def compare(baseline_id: str, baseline_lp: torch.Tensor, variant_lp: torch.Tensor, answer_ids: list[int]) -> Fidelity:
    chosen = variant_lp.argmax(-1).tolist()
    first = next((i for i, (v, a) in enumerate(zip(chosen, answer_ids)) if v != a), None)
    return Fidelity(baseline_id, round(max(0.0, metrics.kl_divergence(baseline_lp, variant_lp)), 6),
                    round(metrics.top1_agreement(baseline_lp, variant_lp), 4), first)


def first_difference(tokens: list[int], reference: list[int]) -> int | None:
    """Index of the first token where two generated sequences differ; None if one is a prefix of the other
    and they have the same length."""
    for i, (a, b) in enumerate(zip(tokens, reference)):
        if a != b:
            return i
    return None if len(tokens) == len(reference) else min(len(tokens), len(reference))
