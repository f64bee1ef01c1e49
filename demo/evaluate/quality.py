"""Quality against the baseline: each variant's per-position figures under the plan's protocol, their distribution
statistics (demo.measuring.kl_stats) and the baseline's noise floor; a remote variant's sums from its top k."""

from __future__ import annotations

import numpy as np
import torch

from demo.backends import LoadedVariant
from demo.errors import InvalidRequest
from demo.evaluate.plan import Plan, ids_of, piece_log_probs
from demo.evaluate.records import VariantEvaluation
from demo.measuring import kl_stats, metrics, noise_floor, protocols
from demo.measuring.protocols import windows
from demo.measuring.shapes import QUALITY_NOT_COMPUTED
from demo.running.runner import Arena


def measure(arena: Arena, result: VariantEvaluation, plan: Plan, baselines: dict) -> None:
    if arena.config.base_of(result.variant).random_weights:  # speed and memory only: the row says why
        result.quality_note = f"perplexity and KL {QUALITY_NOT_COMPUTED}"
        return
    # All model work runs as one job on the device thread, in the arena's turn: torch ops on a second
    # thread start a second OpenMP team (see demo.running.device), and acquiring each variant inside the job
    # means an eviction in between (the baseline pushing the variant out of the budget) cannot leave
    # this code holding a freed model.
    plan.prepare(arena, result.baseline)  # trace: the baseline's answers, generated in their own turns

    def job():
        if result.baseline is not None and result.baseline not in baselines:
            baselines[result.baseline] = _reference(arena.manager.get(result.baseline).loaded, plan, result.baseline)
        loaded = arena.manager.get(result.variant).loaded
        reference = baselines.get(result.baseline) if result.baseline else None
        result.noise_floor = reference[2] if reference else None
        if not loaded.full_distributions:
            if plan.protocol.name != "sliding":
                raise InvalidRequest(f"{result.variant} runs on a remote engine, which gives top-k log-probabilities "
                                     "only: it is evaluated under the sliding protocol alone")
            return _top_k_totals(loaded, ids_of(loaded.tokenizer, plan.text), reference and reference[0], result)
        pieces = plan.pieces(loaded.tokenizer, result.baseline)
        result.protocol_note = plan.note(loaded.tokenizer, pieces)
        return _positions(loaded, pieces, reference)

    with arena.exclusive():
        found = arena.device.call(job)
    if found is None:  # the engine gives no prompt log-probabilities: quality_note says so
        return
    if isinstance(found, metrics.QualityTotals):
        _fill_totals(result, found)
    else:
        _fill_statistics(result, *found)


def _reference(loaded: LoadedVariant, plan: Plan, baseline_id: str) -> tuple[list[torch.Tensor], kl_stats.Positions,
                                                                          dict]:
    """The baseline's scored log-probabilities per piece (float32, so its own KL is exactly 0), its figures, and
    its noise floor over the same pieces (the line under which a variant's KL is noise)."""
    pieces = plan.pieces(loaded.tokenizer, baseline_id)
    log_probs = piece_log_probs(loaded, pieces)
    figures = kl_stats.Positions.concat(
        [metrics.position_figures(lp, torch.tensor(p.targets)) for lp, p in zip(log_probs, pieces)])
    floor = noise_floor.noise_floor(loaded, [(p.ids, p.rows) for p in pieces], clean_log_probs=log_probs)
    return log_probs, figures, floor.as_dict()


def _positions(loaded: LoadedVariant, pieces: list[protocols.Piece], reference: tuple | None):
    """(the baseline's figures or None, this variant's figures with its KL against the baseline)."""
    if reference is not None and [lp.shape[0] for lp in reference[0]] != [len(p.targets) for p in pieces]:
        raise InvalidRequest("this variant's tokenizer cuts the text differently from its baseline's: "
                             "their positions cannot be compared")
    figures = [metrics.position_figures(lp, torch.tensor(piece.targets), reference[0][i] if reference else None)
               for i, (lp, piece) in enumerate(zip(piece_log_probs(loaded, pieces), pieces))]
    return (reference[1] if reference else None), kl_stats.Positions.concat(figures)


def _fill_statistics(result: VariantEvaluation, base: kl_stats.Positions | None, own: kl_stats.Positions) -> None:
    """The row's statistics against the baseline; its headline figures are their values, over the same positions."""
    if base is None:  # no baseline: the perplexity alone, over the finite positions
        nll = -own.target_logprob_nats[np.isfinite(own.target_logprob_nats)]
        ppl = kl_stats.perplexity(nll)
        result.perplexity, result.perplexity_uncertainty = _rounded(ppl["value"], 4), ppl["uncertainty"]
        result.scored_tokens, result.nonfinite_positions = len(nll), len(own) - len(nll)
        return
    stats = kl_stats.compare(base, own)
    for name in ("ppl_baseline", "ln_ppl_ratio", "ppl_ratio", "ppl_difference", "log_prob_correlation", "kl",
                 "delta_p", "top1_agreement_uncertainty", "kl_buckets", "nonfinite_positions", "kl_per_position"):
        setattr(result, name, getattr(stats, name))
    result.scored_tokens = stats.positions
    result.perplexity, result.perplexity_uncertainty = _rounded(stats.ppl["value"], 4), stats.ppl["uncertainty"]
    result.kl_divergence = _rounded(stats.kl["mean"], 6)
    result.top1_agreement = _rounded(stats.top1_agreement, 4)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _fill_totals(result: VariantEvaluation, totals: metrics.QualityTotals) -> None:
    """A remote variant's sums: the headline figures only."""
    result.perplexity, result.scored_tokens = round(totals.perplexity, 4), totals.positions
    if result.quality_note:  # a remote engine that left some targets' log-probabilities out
        result.perplexity = None
    if result.baseline is not None:
        result.kl_divergence = round(totals.kl_divergence, 6)
        result.top1_agreement = round(totals.top1_agreement, 4)


def _top_k_totals(loaded: LoadedVariant, ids: list[int], reference: list[torch.Tensor] | None,
                  result: VariantEvaluation) -> metrics.QualityTotals | None:
    """A remote variant's windows from its engine's prompt log-probabilities: exact perplexity and top-1, the
    KL's lower bound over the top k (demo.measuring.fidelity_topk); None, with the reason noted, where it has none."""
    from demo.measuring.fidelity_topk import Unavailable, position_kl, top1_matches

    totals = metrics.QualityTotals()
    for i, (begin, end, first) in enumerate(windows(len(ids))):
        # Echo answers null their first entry (OpenAI's convention): without a leading BOS that is the
        # prediction of the text's second token, so a remote variant scores from the third (one fewer).
        skip = 1 if first - begin == 1 else 0
        top = loaded.top_log_probs(ids[begin:end], first - begin + skip)
        if isinstance(top, Unavailable):
            result.quality_note = top.reason
            return None
        if any(lp is None for lp in top.forced):
            # llama-cpp-python without a leading BOS: its rows sit one token late, so a target's own
            # log-probability is known only when it is in the top k; KL and top-1 stand, perplexity does not.
            result.quality_note = "perplexity not available: the engine gave no log-probability for some scored tokens"
        kl = matches = 0
        if reference:
            rows = reference[i][skip:]
            kl = sum(position_kl(rows[j], known) for j, known in enumerate(top.known))
            matches = sum(top1_matches(int(rows[j].argmax()), top, j) for j in range(len(top.known)))
        totals += metrics.QualityTotals(len(top.forced), -sum(lp or 0.0 for lp in top.forced), kl, matches)
        result.kl_lower_bound_top_k = top.k if reference else None
    return totals
