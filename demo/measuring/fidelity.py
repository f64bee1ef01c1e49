"""Fidelity to the baseline on one prompt, as two separate figures.

(1) Own-answer departure: the first answer token where the variant's own generated answer differs
    from the baseline's generated answer (`first_difference`, `departure_char`).
(2) Teacher-forced agreement: the baseline's answer a_1..a_n fed through both models in one forward
    pass each; at every answer position the two next-token distributions are compared: mean
    KL(baseline || variant) in nats, top-1 agreement (share of positions where the variant's most
    likely token equals the baseline's most likely token, never the sampled answer token), the first
    position where those two differ (0-based; None exactly when agreement is 100%), and the margin
    there: both tokens with their probabilities under both models, so a near tie reads as one.
    A remote engine gives at most its top-k log-probabilities (demo.measuring.fidelity_topk): then top-1 figures
    stay exact, the KL is a lower bound (kl_lower_bound_top_k names k), and an engine that gives none
    leaves the figures null with the reason in `unavailable`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

import torch

from demo.measuring import metrics
from demo.measuring.fidelity_topk import TopLogProbs, Unavailable, position_kl, top1_matches
from demo.settings import prompt_ids

if TYPE_CHECKING:  # a loaded variant is passed in; measuring imports nothing above it
    from demo.backends import LoadedVariant

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
    kl_lower_bound_top_k: int | None = None  # set: kl_divergence is a lower bound from the top k only
    unavailable: str | None = None  # set: the engine gives no teacher-forced log-probabilities (figures null)

    def as_dict(self) -> dict:
        return asdict(self)


def of_baseline(baseline_id: str, scored_tokens: int) -> Fidelity:
    """The baseline against itself."""
    return Fidelity(baseline_id, 0.0, 1.0, None, None, scored_tokens)


AnswerLogProbs = torch.Tensor | TopLogProbs | Unavailable


def answer_log_probs(loaded: LoadedVariant, prompt: str, answer_ids: list[int]) -> AnswerLogProbs:
    """[len(answer), vocab] float32 log-probabilities of each answer position, teacher-forced; from a
    runtime without full distributions (remote), its top-k per position or the reason it has none."""
    ids = prompt_ids(loaded.tokenizer, prompt)
    if not loaded.full_distributions:
        return loaded.top_log_probs(ids + list(answer_ids), len(ids))
    logits = loaded.logits(ids + list(answer_ids))  # row i predicts token i + 1
    start = len(ids) - 1
    return metrics.log_probs(logits[start:start + len(answer_ids)])


def compare(baseline_id: str, baseline_lp: AnswerLogProbs, variant_lp: AnswerLogProbs,
            token_text: Callable[[list[int]], str]) -> Fidelity:
    """Teacher-forced agreement from both models' [positions, vocab] log-probabilities over the same answer.

    token_text decodes a list of token ids (a tokenizer's decode), for the margin's tokens.
    """
    for side in (variant_lp, baseline_lp):
        if isinstance(side, Unavailable):
            return Fidelity(baseline_id, None, None, None, None, 0, unavailable=side.reason)
    if isinstance(baseline_lp, TopLogProbs) or isinstance(variant_lp, TopLogProbs):
        return _compare_top_k(baseline_id, baseline_lp, variant_lp)
    positions = baseline_lp.shape[0]
    baseline_top, variant_top = baseline_lp.argmax(-1), variant_lp.argmax(-1)
    agree = baseline_top == variant_top  # one comparison feeds both the share and the first miss
    matches = int(agree.sum())
    first = None if matches == positions else int((~agree).nonzero()[0, 0])
    margin = None if first is None else _margin(first, baseline_lp, variant_lp, int(baseline_top[first]),
                                                int(variant_top[first]), token_text)
    kl = max(0.0, metrics.kl_divergence(baseline_lp, variant_lp))
    return Fidelity(baseline_id, round(kl, 6), _share(matches, positions), first, margin, positions)


def _compare_top_k(baseline_id: str, baseline_lp: torch.Tensor | TopLogProbs,
                   variant_lp: torch.Tensor | TopLogProbs) -> Fidelity:
    """Exact top-1 agreement and first disagreement, and the KL's lower bound over the top k (no margin:
    a token outside the top k has no probability to show)."""
    positions = len(baseline_lp.known) if isinstance(baseline_lp, TopLogProbs) else baseline_lp.shape[0]
    positions = min(positions, len(variant_lp.known) if isinstance(variant_lp, TopLogProbs) else variant_lp.shape[0])
    matches, first, kl_sum = 0, None, 0.0
    for i in range(positions):
        agree = _top1_agree(baseline_lp, variant_lp, i)
        matches += agree
        if not agree and first is None:
            first = i
        if isinstance(variant_lp, TopLogProbs):
            kl_sum += position_kl(baseline_lp.known[i] if isinstance(baseline_lp, TopLogProbs) else baseline_lp[i],
                                  variant_lp.known[i])
        else:  # a remote baseline against a full variant: the same buckets, the baseline's top k known
            kl_sum += position_kl_reversed(baseline_lp.known[i], variant_lp[i])
    k = min(side.k for side in (baseline_lp, variant_lp) if isinstance(side, TopLogProbs))
    kl = round(kl_sum / positions, 6) if positions else 0.0
    return Fidelity(baseline_id, kl, _share(matches, positions) if positions else 1.0, first, None, positions,
                    kl_lower_bound_top_k=k)


def _top1_agree(baseline_lp, variant_lp, i: int) -> bool:
    if isinstance(variant_lp, TopLogProbs) and not isinstance(baseline_lp, TopLogProbs):
        return top1_matches(int(baseline_lp[i].argmax()), variant_lp, i)
    if isinstance(baseline_lp, TopLogProbs) and not isinstance(variant_lp, TopLogProbs):
        return top1_matches(int(variant_lp[i].argmax()), baseline_lp, i)
    if baseline_lp.top1_id[i] is not None and variant_lp.top1_id[i] is not None:
        return baseline_lp.top1_id[i] == variant_lp.top1_id[i]
    return baseline_lp.top1_text[i] == variant_lp.top1_text[i]


def position_kl_reversed(baseline: dict[int, float], variant_row: torch.Tensor) -> float:
    """KL(baseline || variant) bound where the baseline gives its top k and the variant its full row."""
    from demo.measuring.fidelity_topk import bucket_kl

    shared = [t for t in baseline if t < variant_row.shape[0]]
    return bucket_kl(torch.tensor([baseline[t] for t in shared], dtype=torch.float64), variant_row[shared].double())


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
