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
(3) Per token (`per_token`): at each answer position the answer token, the KL there and both models' top-1
    tokens with their probabilities under each model, so where a variant strays can be seen and checked.
    A position whose KL is NaN or infinite (a broken kernel, a token the variant gives probability 0) is
    counted in `nonfinite_positions` and left out of the mean, never read as 0; when every position is
    non-finite there is no mean (None) and `unavailable` says why.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Callable

import torch

from demo.measuring import kl_stats, metrics, noise_floor
from demo.measuring.fidelity_topk import TopLogProbs, Unavailable, position_kl, top1_matches
from demo.settings import prompt_ids

if TYPE_CHECKING:  # a loaded variant is passed in; measuring imports nothing above it
    from demo.backends import LoadedVariant

# Under the variant, its top-1 token beats the baseline's top-1 token by less than this probability:
# the disagreement is a near tie, a rounding-sized difference can flip it either way.
NEAR_TIE_P = 0.1
# Rows of [positions, vocab] taken at once for the per-position KL: bounds the temporaries (64 x 49,152 float32
# is 12 MiB each) whatever the answer's length.


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
class TokenKL:
    """One teacher-forced answer position: the answer token, the KL there, and each model's top-1 token with its
    probability under both models. From a remote engine's top k (Fidelity.kl_lower_bound_top_k set) the KL is
    that bound and a probability outside an engine's top k is None."""

    position: int  # 0-based answer token
    token: str  # the answer token (the baseline's), decoded on its own
    token_id: int
    kl_nats: float | None  # KL(baseline || variant) at this position; None exactly when kl_nonfinite is set
    kl_nonfinite: str | None  # "nan", "inf": the KL here is not a number, left out of the mean
    baseline_top_token: str | None
    baseline_top_token_id: int | None  # None: an engine's text that several token ids read as
    baseline_top_p_baseline: float | None
    baseline_top_p_variant: float | None
    variant_top_token: str | None
    variant_top_token_id: int | None
    variant_top_p_baseline: float | None
    variant_top_p_variant: float | None


@dataclass(frozen=True)
class Fidelity:
    """Teacher-forced agreement of a variant with the baseline over the baseline's answer."""

    baseline: str
    # mean KL(baseline || variant) over the answer positions with a finite KL, nats; None when there is none
    kl_divergence: float | None
    top1_agreement: float  # share in [0, 1]; 1.0 exactly when first_top1_disagreement is None
    first_top1_disagreement: int | None
    margin_at_disagreement: Margin | None
    scored_tokens: int
    kl_lower_bound_top_k: int | None = None  # set: kl_divergence is a lower bound from the top k only
    # set: why a figure is null (the engine gives no teacher-forced log-probabilities; no position has a finite KL)
    unavailable: str | None = None
    nonfinite_positions: int = 0  # positions whose KL is NaN or infinite, left out of kl_divergence
    per_token: tuple[TokenKL, ...] = ()  # one per scored position; empty for the baseline itself
    # The baseline's noise floor on this answer (answer_noise_floor), set once scored: the same for every variant
    noise_floor: dict | None = None
    # The distribution over the answer's positions as llama.cpp reports it (demo.measuring.kl_stats.KlStatistics,
    # without kl_per_position: per_token has each value): KL points, Δp of the baseline's answer token, same top ±
    statistics: dict | None = None

    def as_dict(self) -> dict:
        fields = asdict(self)
        fields["per_token"] = list(fields["per_token"])  # a list in JSON and in the record alike
        return fields


def of_baseline(baseline_id: str, scored_tokens: int) -> Fidelity:
    """The baseline against itself (no per-token figures: its KL is 0 at every position)."""
    return Fidelity(baseline_id, 0.0, 1.0, None, None, scored_tokens)


AnswerLogProbs = torch.Tensor | TopLogProbs | Unavailable


def answer_log_probs(loaded: LoadedVariant, prompt: str, answer_ids: list[int]) -> AnswerLogProbs:
    """[len(answer), vocab] float32 log-probabilities of each answer position, teacher-forced; from a
    runtime without full distributions (remote), its top-k per position or the reason it has none."""
    ids = prompt_ids(loaded.tokenizer, prompt)
    if not loaded.full_distributions:
        return loaded.top_log_probs(ids + list(answer_ids), len(ids))
    logits = loaded.logits(ids + list(answer_ids), len(ids))  # row i predicts token i + 1
    start = len(ids) - 1
    return metrics.log_probs(logits[start:start + len(answer_ids)])


def answer_noise_floor(loaded: LoadedVariant, prompt: str, answer_ids: list[int],
                       baseline_lp: AnswerLogProbs) -> dict:
    """The baseline's noise floor over its own answer (demo.measuring.noise_floor): the KL of a bf16-rounding-scale
    perturbation of the baseline, on the same positions as every variant's KL; as a dict, or
    {"unavailable": reason} for a baseline that is not a transformers model."""
    ids = prompt_ids(loaded.tokenizer, prompt)
    rows = slice(len(ids) - 1, len(ids) - 1 + len(answer_ids))
    clean = [baseline_lp] if isinstance(baseline_lp, torch.Tensor) else None
    return noise_floor.noise_floor(loaded, [(ids + list(answer_ids), rows)], clean_log_probs=clean).as_dict()


def compare(baseline_id: str, baseline_lp: AnswerLogProbs, variant_lp: AnswerLogProbs, answer: list[int],
            token_text: Callable[[list[int]], str]) -> Fidelity:
    """Teacher-forced agreement from both models' [positions, vocab] log-probabilities over the same answer.

    answer: the baseline's answer token ids the positions predict; token_text decodes a list of token ids (a
    tokenizer's decode), for the answer's and the top-1 tokens.
    """
    for side in (variant_lp, baseline_lp):
        if isinstance(side, Unavailable):
            return Fidelity(baseline_id, None, None, None, None, 0, unavailable=side.reason)
    if isinstance(baseline_lp, TopLogProbs) or isinstance(variant_lp, TopLogProbs):
        return _compare_top_k(baseline_id, baseline_lp, variant_lp, answer, _one_token_text(token_text))
    positions = baseline_lp.shape[0]
    baseline_top, variant_top = baseline_lp.argmax(-1), variant_lp.argmax(-1)
    agree = baseline_top == variant_top  # one comparison feeds both the share and the first miss
    matches = int(agree.sum())
    first = None if matches == positions else int((~agree).nonzero()[0, 0])
    margin = None if first is None else _margin(first, baseline_lp, variant_lp, int(baseline_top[first]),
                                                int(variant_top[first]), token_text)
    targets = torch.tensor(list(answer), dtype=torch.long)
    base_figures = metrics.position_figures(baseline_lp, targets)
    figures = metrics.position_figures(variant_lp, targets, baseline_lp)  # its KL per position, computed once
    kls = figures.kl_nats.tolist()
    per_token = _per_token_full(baseline_lp, variant_lp, kls, answer, _one_token_text(token_text))
    return _with_kl(Fidelity(baseline_id, None, _share(matches, positions), first, margin, positions,
                             per_token=per_token, statistics=answer_statistics(base_figures, figures)), kls)


def answer_statistics(baseline: kl_stats.Positions, variant: kl_stats.Positions) -> dict:
    """The Evaluate tab's statistics over one answer's positions, the answer's own tokens as the targets (without
    kl_per_position: per_token has each value)."""
    stats = kl_stats.compare(baseline, variant).as_dict()
    stats.pop("kl_per_position")
    return stats


def _one_token_text(token_text: Callable[[list[int]], str]) -> Callable[[int], str]:
    """One token id's text, each distinct id decoded once (an answer repeats its tokens; tops repeat more)."""
    return functools.cache(lambda token: token_text([token]))


def _with_kl(fid: Fidelity, kls: list[float]) -> Fidelity:
    """fid with its mean KL over the finite positions and the count of the others."""
    finite = [kl for kl in kls if math.isfinite(kl)]
    nonfinite = len(kls) - len(finite)
    if finite:
        mean = round(sum(finite) / len(finite), 6)
        return replace(fid, kl_divergence=mean, nonfinite_positions=nonfinite)
    if nonfinite:
        reason = (f"KL not a number at every one of the {nonfinite} answer positions (NaN or infinite): "
                  "no mean to give")
        return replace(fid, kl_divergence=None, nonfinite_positions=nonfinite, unavailable=reason)
    return replace(fid, kl_divergence=0.0)  # no positions at all


def _per_token_full(baseline_lp: torch.Tensor, variant_lp: torch.Tensor, kls: list[float], answer: list[int],
                    text_of: Callable[[int], str]) -> tuple[TokenKL, ...]:
    """Per position from full distributions: both top-1 tokens with their probabilities under both models."""
    tops = [baseline_lp.argmax(-1), variant_lp.argmax(-1)]
    # [positions] probability of each top token under each model: p[top side][model side]
    p = [[lp.gather(-1, top.unsqueeze(-1)).squeeze(-1).exp().tolist() for lp in (baseline_lp, variant_lp)]
         for top in tops]
    b_top, v_top = tops[0].tolist(), tops[1].tolist()
    return tuple(_token(i, answer[i], kls[i], text_of, (b_top[i], p[0][0][i], p[0][1][i]),
                        (v_top[i], p[1][0][i], p[1][1][i])) for i in range(len(kls)))


def _token(position: int, token_id: int, kl: float, text_of: Callable[[int], str],
           baseline_top: tuple[int | None, float | None, float | None],
           variant_top: tuple[int | None, float | None, float | None],
           top_texts: tuple[str | None, str | None] = (None, None)) -> TokenKL:
    """One position's entry; each top is (token id, p under the baseline, p under the variant); top_texts give a
    top token's text where its id is not known (an engine's colliding text)."""
    def text(token: int | None, fallback: str | None) -> str | None:
        return text_of(token) if token is not None else fallback

    finite = math.isfinite(kl)
    return TokenKL(position, text_of(token_id), token_id, float(f"{kl:.6g}") if finite else None,
                   None if finite else ("nan" if math.isnan(kl) else "inf"),
                   text(baseline_top[0], top_texts[0]), baseline_top[0], _p(baseline_top[1]), _p(baseline_top[2]),
                   text(variant_top[0], top_texts[1]), variant_top[0], _p(variant_top[1]), _p(variant_top[2]))


def _p(value: float | None) -> float | None:
    """A probability to 4 significant figures (a small one must not read as 0); None when unknown or not a number."""
    return float(f"{value:.4g}") if value is not None and math.isfinite(value) else None


def _compare_top_k(baseline_id: str, baseline_lp: torch.Tensor | TopLogProbs, variant_lp: torch.Tensor | TopLogProbs,
                   answer: list[int], text_of: Callable[[int], str]) -> Fidelity:
    """Exact top-1 agreement and first disagreement, and the KL's lower bound over the top k (no margin:
    a token outside the top k has no probability to show); per token, the bound and what the top k tell."""
    positions = min(_positions(baseline_lp), _positions(variant_lp))
    matches, first, kls, per_token = 0, None, [], []
    for i in range(positions):
        agree = _top1_agree(baseline_lp, variant_lp, i)
        matches += agree
        if not agree and first is None:
            first = i
        if isinstance(variant_lp, TopLogProbs):
            kls.append(position_kl(baseline_lp.known[i] if isinstance(baseline_lp, TopLogProbs) else baseline_lp[i],
                                   variant_lp.known[i]))
        else:  # a remote baseline against a full variant: the same buckets, the baseline's top k known
            kls.append(position_kl_reversed(baseline_lp.known[i], variant_lp[i]))
        per_token.append(_token_top_k(i, answer[i], kls[-1], baseline_lp, variant_lp, text_of))
    k = min(side.k for side in (baseline_lp, variant_lp) if isinstance(side, TopLogProbs))
    fid = Fidelity(baseline_id, None, _share(matches, positions) if positions else 1.0, first, None, positions,
                   kl_lower_bound_top_k=k, per_token=tuple(per_token))
    return _with_kl(fid, kls)


def _positions(side: torch.Tensor | TopLogProbs) -> int:
    return len(side.known) if isinstance(side, TopLogProbs) else side.shape[0]


def _token_top_k(i: int, token_id: int, kl: float, baseline_lp, variant_lp,
                 text_of: Callable[[int], str]) -> TokenKL:
    """One position where a side gives only its top k: each side's top-1 (an engine's by its id, or by its text
    where several ids read as it) and each probability that side's distribution knows."""
    tops = [_top1(side, i) for side in (baseline_lp, variant_lp)]
    return _token(i, token_id, kl, text_of,
                  (tops[0][0], _side_p(baseline_lp, i, tops[0][0]), _side_p(variant_lp, i, tops[0][0])),
                  (tops[1][0], _side_p(baseline_lp, i, tops[1][0]), _side_p(variant_lp, i, tops[1][0])),
                  (tops[0][1], tops[1][1]))


def _top1(side: torch.Tensor | TopLogProbs, i: int) -> tuple[int | None, str | None]:
    """(token id, engine's text) of a side's most likely token at position i; a full row's text is left to decode."""
    if isinstance(side, TopLogProbs):
        return side.top1_id[i], side.top1_text[i]
    return int(side[i].argmax()), None


def _side_p(side: torch.Tensor | TopLogProbs, i: int, token_id: int | None) -> float | None:
    """A token's probability at position i under one side; None when that side's top k does not hold it."""
    if token_id is None:
        return None
    if isinstance(side, TopLogProbs):
        logprob = side.known[i].get(token_id)
        return None if logprob is None else math.exp(logprob)
    return float(side[i, token_id].exp()) if token_id < side.shape[-1] else None


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
            variant_token: int, token_text: Callable[[list[int]], str]) -> Margin | None:
    """The margin at the first disagreement; None where a probability there is not a number (a broken row has no
    margin to show, and NaN must not reach a page or a JSON document)."""
    def p(lp: torch.Tensor, token: int) -> float:
        return round(float(lp[position, token].exp()), 4)

    probabilities = torch.stack([baseline_lp[position], variant_lp[position]])[:, [baseline_token, variant_token]].exp()
    if not bool(probabilities.isfinite().all()):
        return None
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
