"""Teacher-forced fidelity where one side gives only its top-k log-probabilities (a remote engine).

Top-1 agreement and the first disagreement are exact: the top-1 token is always among the top k. The KL
divergence is a lower bound: the vocabulary is grouped into the tokens known under both distributions
plus one bucket for the rest (1 - sum p, 1 - sum q); by the log-sum inequality the KL over these buckets
never exceeds the true KL. Renormalizing over the top k would give neither bound, so it is never done.

Engines key their top-k by token *text*, and texts collide: special tokens are all written as "", and
byte-level tokens that end inside a UTF-8 character lose their broken bytes. Such a table holds one value
per text (whichever colliding token was written last), so a text several ids read as is no single
token's log-probability: `known_by_id` leaves every such text out, which puts the colliding tokens' mass
into the rest bucket on both sides. That bucket merges them; the partition stays exact and the KL stays a
lower bound. Crediting the text to one of its ids, or to each of them, would not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class TopLogProbs:
    """Per teacher-forced position: the engine's top-k log-probabilities, by base-tokenizer id where the
    token text maps to exactly one id (text shared by several ids stays only in top1_text)."""

    known: list[dict[int, float]]  # position -> {token id: log-probability}
    top1_text: list[str]  # the engine's most likely token, as the engine wrote it
    top1_id: list[int | None]  # ... and its id, None when its text names several ids
    forced: list[float | None]  # log-probability of the actual next token (perplexity), None if not sent
    k: int
    text_of: Callable[[int], str]  # a token id written the way the engine writes token texts


@dataclass(frozen=True)
class Unavailable:
    """The engine cannot give teacher-forced log-probabilities; the reason is shown instead of a number."""

    reason: str


def known_by_id(table: dict[str, float], ids_by_text: dict[str, int | None]) -> dict[int, float]:
    """An engine's {token text: log-probability} as {token id: log-probability}, for texts exactly one id
    reads as (`ids_by_text` maps a text several ids share to None); the others fall into the rest bucket."""
    known = {}
    for text, logprob in table.items():
        token_id = ids_by_text.get(text)
        if token_id is not None:
            known[token_id] = logprob
    return known


def bucket_kl(p_known: torch.Tensor, q_known: torch.Tensor) -> float:
    """KL(P || Q) over the known tokens plus one rest bucket, in nats: a lower bound of the true KL (NaN where an
    engine sent a log-probability that is not a number).

    p_known, q_known: log-probabilities of the same tokens under P and Q ([known])."""
    p, q = p_known.double().exp(), q_known.double().exp()
    kl = float((p * (p_known.double() - q_known.double())).sum())
    p_rest, q_rest = max(0.0, 1.0 - float(p.sum())), max(0.0, 1.0 - float(q.sum()))
    if p_rest > 1e-12:
        kl += p_rest * (math.log(p_rest) - math.log(max(q_rest, 1e-12)))
    return kl if math.isnan(kl) else max(0.0, kl)  # max(0.0, nan) is 0.0: a NaN must stay one


def position_kl(baseline: torch.Tensor | dict[int, float], variant: dict[int, float]) -> float:
    """The bucket bound at one position: a full baseline row [vocab] or another top-k dict against a top-k dict."""
    if isinstance(baseline, dict):
        shared = [t for t in variant if t in baseline]
        p = torch.tensor([baseline[t] for t in shared], dtype=torch.float64)
    else:
        shared = [t for t in variant if t < baseline.shape[0]]
        p = baseline[shared].double()
    return bucket_kl(p, torch.tensor([variant[t] for t in shared], dtype=torch.float64))


def top1_matches(baseline_top_id: int, variant: TopLogProbs, position: int) -> bool:
    """Whether the variant's most likely token is the baseline's: by id, or by text where the engine's
    text names several ids (then ids that read the same cannot be told apart, and count as agreeing)."""
    if variant.top1_id[position] is not None:
        return variant.top1_id[position] == baseline_top_id
    return variant.top1_text[position] == variant.text_of(baseline_top_id)
