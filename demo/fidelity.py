"""Fidelity to the baseline on one prompt, as two separate figures.

(1) Own-answer departure: the first answer token where the variant's own generated answer differs
    from the baseline's generated answer (`first_difference`, `departure_char`).
(2) Teacher-forced agreement: the baseline's answer a_1..a_n fed through both models in one forward
    pass each; at every answer position the two next-token distributions are compared: mean
    KL(baseline || variant) in nats, top-1 agreement (share of positions where the variant's most
    likely token equals the baseline's most likely token, never the sampled answer token), the first
    position where those two differ (0-based; None exactly when agreement is 100%), and the margin
    there: both tokens with their probabilities under both models, so a near tie reads as one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from demo import metrics
from demo.backends import LoadedVariant
from demo.generation import prompt_ids

# Under the variant, its top-1 token beats the baseline's top-1 token by less than this probability:
# the disagreement is a near tie, a rounding-sized difference can flip it either way.
NEAR_TIE_P = 0.1


@dataclass(frozen=True)
class Margin:
    """Both models' top-1 tokens at the first teacher-forced disagreement, with each model's probabilities."""

    position: int  # 0-based answer token
    baseline_token: str
    baseline_token_id: int
    baseline_token_p_baseline: float
    baseline_token_p_variant: float
    variant_token: str
    variant_token_id: int
    variant_token_p_baseline: float
    variant_token_p_variant: float
    near_tie: bool  # the variant preferred its token by less than NEAR_TIE_P


@dataclass(frozen=True)
class Fidelity:
    """Teacher-forced agreement of a variant with the baseline over the baseline's answer."""

    baseline: str
    kl_divergence: float  # mean KL(baseline || variant) per answer position, nats
    top1_agreement: float  # share in [0, 1]; 1.0 exactly when first_top1_disagreement is None
    first_top1_disagreement: int | None
    margin_at_disagreement: Margin | None
    scored_tokens: int

    def as_dict(self) -> dict:
        return asdict(self)


def of_baseline(baseline_id: str, scored_tokens: int) -> Fidelity:
    """The baseline against itself."""
    return Fidelity(baseline_id, 0.0, 1.0, None, None, scored_tokens)


def answer_log_probs(loaded: LoadedVariant, prompt: str, answer_ids: list[int]) -> torch.Tensor:
    """[len(answer), vocab] float32 log-probabilities of each answer position, teacher-forced."""
    ids = prompt_ids(loaded.tokenizer, prompt)
    logits = loaded.logits(ids + list(answer_ids))  # row i predicts token i + 1
    start = len(ids) - 1
    return metrics.log_probs(logits[start:start + len(answer_ids)])


def compare(baseline_id: str, baseline_lp: torch.Tensor, variant_lp: torch.Tensor,
            token_text: Callable[[list[int]], str]) -> Fidelity:
    """Teacher-forced agreement from both models' [positions, vocab] log-probabilities over the same answer.

    token_text decodes a list of token ids (a tokenizer's decode), for the margin's tokens.
    """
    positions = baseline_lp.shape[0]
    baseline_top, variant_top = baseline_lp.argmax(-1), variant_lp.argmax(-1)
    agree = baseline_top == variant_top  # one comparison feeds both the share and the first miss
    matches = int(agree.sum())
    first = None if matches == positions else int((~agree).nonzero()[0, 0])
    margin = None if first is None else _margin(first, baseline_lp, variant_lp, int(baseline_top[first]),
                                                int(variant_top[first]), token_text)
    kl = max(0.0, metrics.kl_divergence(baseline_lp, variant_lp))
    return Fidelity(baseline_id, round(kl, 6), _share(matches, positions), first, margin, positions)


def _share(matches: int, positions: int) -> float:
    """matches / positions to 4 decimals, never rounded up to 1.0 (or down to 0.0) when it is not."""
    share = round(matches / positions, 4)
    if matches < positions:
        share = min(share, 0.9999)
    if matches > 0:
        share = max(share, 0.0001)
    return share


def _margin(position: int, baseline_lp: torch.Tensor, variant_lp: torch.Tensor, baseline_token: int,
            variant_token: int, token_text: Callable[[list[int]], str]) -> Margin:
    def p(lp: torch.Tensor, token: int) -> float:
        return round(float(lp[position, token].exp()), 4)

    gap = float(variant_lp[position, variant_token].exp() - variant_lp[position, baseline_token].exp())
    return Margin(position, token_text([baseline_token]), baseline_token, p(baseline_lp, baseline_token),
                  p(variant_lp, baseline_token), token_text([variant_token]), variant_token,
                  p(baseline_lp, variant_token), p(variant_lp, variant_token), gap < NEAR_TIE_P)


def first_difference(tokens: list[int], reference: list[int]) -> int | None:
    """Index of the first token where two generated sequences differ, or the shorter length when one is
    a strict prefix of the other; None when they are identical."""
    for i, (a, b) in enumerate(zip(tokens, reference)):
        if a != b:
            return i
    return None if len(tokens) == len(reference) else min(len(tokens), len(reference))


def departure_char(decode: Callable[[list[int]], str], tokens: list[int], reference: list[int]) -> int | None:
    """Character offset in decode(tokens) where it departs from decode(reference); None when the tokens match.

    The offset is the decoded length of the tokens before the first differing one, but never past the
    texts' common prefix: a token boundary inside a multi-byte character decodes to "\ufffd", which is
    not in the full text.
    """
    cut = first_difference(tokens, reference)
    if cut is None:
        return None
    text, other = decode(tokens), decode(reference)
    common = next((i for i, (a, b) in enumerate(zip(text, other)) if a != b), min(len(text), len(other)))
    return min(len(decode(tokens[:cut])), common)
