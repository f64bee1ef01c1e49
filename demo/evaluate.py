"""python -m demo.evaluate: quality, speed and memory of variants on the same text and settings.

Quality, under one of three protocols (demo.measuring.protocols), named on every figure:
- sliding (default): token-level perplexity over a held-out text with a sliding window (WINDOW tokens,
  moved by STRIDE; every scored token after the first window sees at least WINDOW - STRIDE tokens of context);
- llamacpp: llama.cpp's `perplexity --kl-divergence` protocol (chunks of --ctx tokens, BOS first, the second
  half scored): the only figures that may be set beside llama.cpp's published tables;
- trace: the baseline's own greedy answers to a prompt file, each variant teacher-forced on prompt + answer
  and scored on the answer tokens only (an in-domain trace).
Against the baseline of the same base model, at the same positions, the distribution of KL(baseline ||
variant) in nats, of Δp and of top-1 agreement, as llama.cpp reports them (demo.measuring.kl_stats).
Speed and memory: through the app's own path (Arena.compare), one warm-up run then RUNS runs.
Writes results.json, results.csv, results.md and PNG charts to results/<timestamp>/ or --out.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from demo.artifacts import sources
from demo.measuring import kl_stats, metrics, noise_floor, protocols
from demo.measuring.protocols import STRIDE, WINDOW, windows
from demo.reports import kl_report
from demo.settings import prompt_ids
from demo.config import REPO_ROOT, load_config
from demo.errors import ArenaError, InvalidRequest
from demo.backends import LoadedVariant
from demo.running.runner import Arena
from demo.running.variant_run import describe_failure, is_oom

log = logging.getLogger(__name__)
EVALUATION_FILE = REPO_ROOT / "assets" / "evaluation.txt"
SPEED_PROMPT = "Write a short story about a lighthouse keeper."
PROMPTS_FILE = REPO_ROOT / "assets" / "blind_prompts.json"  # the blind test's prompts: trace's default
PROTOCOLS = ("sliding", "llamacpp", "trace")
TRACE_ANSWER_TOKENS = 64
FIELDS = ["variant", "baseline", "perplexity", "kl_divergence", "top1_agreement", "ttft_ms_p50",
          "decode_tokens_per_s_p50", "decode_tokens_per_s_p90", "runs", "weights_mib", "peak_memory_mib", "disk_mib"]
# The CSV's columns after FIELDS: one figure each; the nested statistics and kl_per_position stay in results.json.
CSV_EXTRA = ["scored_tokens", "error", "kl_lower_bound_top_k", "quality_note", "protocol", "kl_divergence_uncertainty",
             "kl_p99_9", "kl_max", "top1_agreement_uncertainty", "ln_ppl_ratio", "ln_ppl_ratio_uncertainty",
             "nonfinite_positions"]

Progress = Callable[[float, str], None]


@dataclass
class VariantEvaluation:
    variant: str
    baseline: str | None
    perplexity: float | None = None
    kl_divergence: float | None = None
    top1_agreement: float | None = None
    ttft_ms_p50: float | None = None
    decode_tokens_per_s_p50: float | None = None
    decode_tokens_per_s_p90: float | None = None
    runs: int = 0
    weights_mib: float | None = None
    peak_memory_mib: float | None = None
    disk_mib: float | None = None
    scored_tokens: int = 0
    error: str | None = None
    kl_lower_bound_top_k: int | None = None  # remote: KL from the engine's top k only, a lower bound
    quality_note: str | None = None  # why perplexity / KL are missing (an engine without prompt log-probabilities)
    protocol: str = "sliding"  # which tokens were fed and scored: sliding | llamacpp | trace
    protocol_note: str | None = None  # what the protocol did with this tokenizer (llamacpp: which BOS)
    # The distribution statistics against the baseline (demo.measuring.kl_stats.KlStatistics), None without one.
    # perplexity, kl_divergence and top1_agreement above are their headline values, over the same positions.
    perplexity_uncertainty: float | None = None  # PPL × standard error of the mean negative log-likelihood
    ppl_baseline: dict | None = None  # {value, uncertainty}: the baseline's perplexity on the same positions
    ln_ppl_ratio: dict | None = None  # {value, uncertainty}: ln(PPL(Q) / PPL(base))
    ppl_ratio: dict | None = None  # {value, uncertainty}
    ppl_difference: dict | None = None  # {value, uncertainty}: PPL(Q) - PPL(base)
    log_prob_correlation: float | None = None  # correlation of the two models' per-token log-probabilities
    kl: dict | None = None  # nats: mean, mean_uncertainty, max, p99_9, p99, p95, p90, median, p10, p5, p1, p0_1, min
    delta_p: dict | None = None  # p_variant - p_base of the text's next token: mean ± , percentiles, rms ±
    top1_agreement_uncertainty: float | None = None  # binomial sqrt(p (1 - p) / (n - 1))
    kl_buckets: list | None = None  # [{range, positions, kl_mean}] by the baseline's top-token probability
    nonfinite_positions: int | None = None  # positions left out of every figure: NaN or infinite KL / log p
    kl_per_position: list | None = None  # finite KL per scored position, nats (results.json only: a histogram)
    # The baseline's noise floor on the same positions (demo.measuring.noise_floor): KL(baseline || baseline with
    # ε = 2^-9 multiplicative noise after every decoder layer), or {"unavailable": reason}; None without a baseline.
    noise_floor: dict | None = None


@dataclass(frozen=True)
class Protocol:
    """Which protocol scores quality, with its settings."""

    name: str = "sliding"  # one of PROTOCOLS
    ctx: int = protocols.LLAMACPP_CTX  # llamacpp: tokens per chunk (llama.cpp's n_ctx)
    prompts_file: Path = PROMPTS_FILE  # trace: {"prompts": [...]} JSON, or a text file with one prompt a line

    def check(self) -> None:
        if self.name not in PROTOCOLS:
            raise InvalidRequest(f"unknown protocol '{self.name}': choose one of {', '.join(PROTOCOLS)}")
        if self.name == "trace" and not self.prompts_file.is_file():
            raise InvalidRequest(f"prompt file '{self.prompts_file.name}' not found")

    def prompts(self) -> list[str]:
        raw = self.prompts_file.read_text(encoding="utf-8")
        found = json.loads(raw)["prompts"] if self.prompts_file.suffix == ".json" else raw.splitlines()
        found = [p.strip() for p in found if p.strip()]
        if not found:
            raise InvalidRequest(f"prompt file '{self.prompts_file.name}' holds no prompt")
        return found


class Plan:
    """One evaluation's protocol applied to its text or prompts: the pieces each model of a base is fed.

    Under trace, the baseline's answers are generated once per baseline (prepare), through the app's own path,
    before any scoring: generating takes the device's turn itself."""

    def __init__(self, protocol: Protocol, text: str):
        self.protocol, self.text = protocol, text
        self.answers: dict[str, list[tuple[str, str]]] = {}  # baseline id -> [(prompt, its greedy answer)]

    def prepare(self, arena: Arena, baseline_id: str | None) -> None:
        if self.protocol.name != "trace" or baseline_id is None or baseline_id in self.answers:
            return
        settings = arena.settings(max_new_tokens=TRACE_ANSWER_TOKENS)  # greedy: the models file's default
        answers = []
        for prompt in self.protocol.prompts():
            [record] = arena.compare_records(prompt, [baseline_id], settings)
            if record["error"]:
                raise ArenaError(f"the baseline's trace answer failed: {record['error']}")
            answers.append((prompt, record["text"]))
        self.answers[baseline_id] = answers

    def pieces(self, tokenizer, baseline_id: str | None) -> list[protocols.Piece]:
        if self.protocol.name == "llamacpp":
            return protocols.llamacpp(_ids(tokenizer, self.text), self.protocol.ctx, tokenizer.bos_token_id)
        if self.protocol.name == "trace":
            if baseline_id is None:
                raise InvalidRequest("the trace protocol scores the baseline's answers; this variant has no baseline")
            return [protocols.answer(prompt_ids(tokenizer, prompt), _answer_ids(tokenizer, answer))
                    for prompt, answer in self.answers[baseline_id] if answer]
        return protocols.sliding(_ids(tokenizer, self.text))

    def note(self, tokenizer, pieces: list[protocols.Piece]) -> str | None:
        if self.protocol.name == "llamacpp":
            return (f"{len(pieces)} chunks of {self.protocol.ctx} tokens, each starting with BOS = the tokenizer's "
                    f"bos_token {tokenizer.bos_token!r} (id {tokenizer.bos_token_id})")
        if self.protocol.name == "trace":
            return f"{len(pieces)} baseline answers of at most {TRACE_ANSWER_TOKENS} tokens"
        return None


def piece_log_probs(loaded: LoadedVariant, pieces: list[protocols.Piece]) -> list[torch.Tensor]:
    """Per piece: the scored rows' log-probabilities [scored, vocab], float32."""
    return [metrics.log_probs(loaded.logits(piece.ids)[piece.rows]) for piece in pieces]


def evaluate(arena: Arena, variant_ids: list[str], text: str, runs: int = 5, max_new_tokens: int = 64,
             progress: Progress | None = None, stop: threading.Event | None = None,
             protocol: Protocol | None = None) -> list[VariantEvaluation]:
    """Evaluate each variant; a variant that fails gets its error and the others go on.

    Once `stop` is set, the variants not yet started are left out: the result holds those finished."""
    _check_variants(arena, variant_ids)
    protocol = protocol or Protocol()
    protocol.check()
    if runs < 1:
        raise InvalidRequest(f"runs must be at least 1, got {runs}")
    if protocol.name != "trace" and not text.strip():
        raise InvalidRequest("the evaluation text is empty")
    settings = arena.settings(max_new_tokens=max_new_tokens)
    report = progress or (lambda fraction, message: None)
    plan, baselines = Plan(protocol, text), {}  # baseline variant id -> its reference (see _reference)
    results = []
    bar = tqdm(variant_ids, desc="Evaluating variants", unit="variant")
    for index, variant_id in enumerate(bar):
        if stop is not None and stop.is_set():
            break
        bar.set_postfix_str(variant_id)
        result = VariantEvaluation(variant_id, arena.config.base_of(variant_id).baseline, protocol=protocol.name)
        try:
            report(index / len(variant_ids), f"{variant_id}: quality ({protocol.name})")
            _quality(arena, result, plan, baselines)
            report((index + 0.5) / len(variant_ids), f"{variant_id}: speed")
            _speed(arena, result, settings, runs)
            result.disk_mib = _disk_mib(arena, variant_id)
        except ArenaError as exc:
            result.error = str(exc)
        except Exception as exc:  # out of memory, a kernel error: this variant's row says so, the others stand
            log.exception("evaluating %s failed", variant_id)
            result.error = describe_failure("evaluating", exc)
            if is_oom(exc):
                arena.device.call(arena.manager.evict, variant_id)
        results.append(result)
    report(1.0, "done")
    return results


def _check_variants(arena: Arena, variant_ids: list[str]) -> None:
    """Known ids, each once. Each variant runs in a comparison of its own, so a comparison's limit on how many
    variants it holds does not apply: every default variant can be evaluated in one go."""
    arena.validate(SPEED_PROMPT, list(variant_ids[:1]))  # an empty choice is refused with its usual line
    if len(set(variant_ids)) != len(variant_ids):
        raise InvalidRequest("the same variant is listed twice; list each variant once")
    for variant_id in variant_ids:
        arena.validate(SPEED_PROMPT, [variant_id])


def _quality(arena: Arena, result: VariantEvaluation, plan: Plan, baselines: dict) -> None:
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
            return _top_k_totals(loaded, _ids(loaded.tokenizer, plan.text), reference and reference[0], result)
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


def _ids(tokenizer, text: str) -> list[int]:
    return [int(i) for i in tokenizer(text)["input_ids"]]


def _answer_ids(tokenizer, answer: str) -> list[int]:
    """An answer's text as tokens, as they follow the chat prompt: no special token added."""
    return [int(i) for i in tokenizer(answer, add_special_tokens=False)["input_ids"]]


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


def _speed(arena: Arena, result: VariantEvaluation, settings, runs: int) -> None:
    records = []
    for run in range(runs + 1):  # run 0 is the warm-up and is not counted
        [record] = arena.compare_records(SPEED_PROMPT, [result.variant], settings)
        if record["error"]:
            raise ArenaError(record["error"])
        if run:
            records.append(record)
    ttft = [r["ttft_ms"] for r in records if r["ttft_ms"] is not None]
    decode = [r["decode_tokens_per_s"] for r in records if r["decode_tokens_per_s"] is not None]
    result.runs = len(records)
    result.ttft_ms_p50 = round(metrics.percentile(ttft, 50), 1) if ttft else None
    result.decode_tokens_per_s_p50 = round(metrics.percentile(decode, 50), 2) if decode else None
    result.decode_tokens_per_s_p90 = round(metrics.percentile(decode, 90), 2) if decode else None
    weights, peaks = records[-1]["weights_mib"], [r["peak_memory_mib"] for r in records if r["peak_memory_mib"] is not None]
    result.weights_mib = None if weights is None else round(weights, 1)  # remote: what the engine reports, or none
    result.peak_memory_mib = round(max(peaks), 1) if peaks else None


def _disk_mib(arena: Arena, variant_id: str) -> float | None:
    """Size of the variant's own file(s) on disk (GPTQ, AWQ, GGUF), None where it is quantized at load time."""
    variant = arena.config.variants[variant_id]
    if variant.method not in ("gptq", "gguf", "awq"):
        return None
    from demo.artifacts.quantize import folder_mib

    if variant.checkpoint is not None:
        path = variant.checkpoint.path
        if path is not None and path.is_dir():  # a pre-made checkpoint folder (GPTQ, AWQ)
            return round(folder_mib(path), 1)
        return round(path.stat().st_size / 2**20, 1) if path is not None and path.is_file() else None
    folder = sources.quantized_dir(arena.config.bases[variant.base], variant.method, variant.file_settings)
    return round(folder_mib(folder), 1) if folder.is_dir() else None


def noise_floors(rows: list[dict]) -> dict[str, dict]:
    """Each baseline's noise floor, by baseline id, as the rows carry it."""
    return {r["baseline"]: r["noise_floor"] for r in rows if r.get("baseline") and r.get("noise_floor")}


def write_outputs(results: list[VariantEvaluation], arena: Arena, out: Path, conditions: dict,
                  order: list[str] | None = None) -> dict[str, Path]:
    """results.json, results.csv, results.md and the charts; returns their paths by name. `order` fixes each
    variant's colour in the charts (every variant id in the models file's order)."""
    from demo.reports import charts

    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    paths = {"json": out / "results.json", "csv": out / "results.csv", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps({"environment": arena.environment(), "conditions": conditions,
                                         "variants": rows}, indent=2, allow_nan=False))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*FIELDS, *CSV_EXTRA], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(csv_row(row) for row in rows)
    paths["markdown"].write_text(markdown_table(rows, arena.environment(), conditions))
    floors = list(noise_floors(rows).values())  # a chart draws one line: the floor of a single base model
    paths.update(charts.write_charts(rows, out, order, noise_floor=floors[0] if len(floors) == 1 else None))
    return paths


def csv_row(row: dict) -> dict:
    """A results.json row with its nested statistics' headline figures as flat columns (CSV_EXTRA)."""
    kl, ratio = row.get("kl") or {}, row.get("ln_ppl_ratio") or {}
    return {**row, "kl_divergence_uncertainty": kl.get("mean_uncertainty"), "kl_p99_9": kl.get("p99_9"),
            "kl_max": kl.get("max"), "ln_ppl_ratio": ratio.get("value"),
            "ln_ppl_ratio_uncertainty": ratio.get("uncertainty")}


def markdown_table(rows: list[dict], env: dict, conditions: dict) -> str:
    """The main table (one row per variant), the conditions, then each variant's llama.cpp-style statistics."""
    head = ("| variant | perplexity | mean KL vs baseline (nats) | KL 99.9 % (nats) | KL max (nats) | top-1 agreement "
            "| TTFT p50 (ms) | decode p50 / p90 (tok/s) | weights (MiB) | peak (MiB) | disk (MiB) |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head, *(_markdown_row(r) for r in rows)]
    features = f" ({', '.join(env['cpu_features'])})" if env.get("cpu_features") else ""
    notes = (f"\n\nConditions: {env.get('device_name')}{features}; torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"bitsandbytes {env.get('bitsandbytes')}. Quality on {conditions['text']} ({conditions['method']}). "
             f"Speed: {conditions['speed']}. Peak memory as in the app "
             f"({'approximate, process RSS' if 'CPU' in str(env.get('device_name')) else 'CUDA allocated'}).\n")
    floors = "".join(f"\n{noise_floor_line(baseline, floor)}" for baseline, floor in noise_floors(rows).items())
    sections = [kl_report.variant_section(r) for r in rows  # the baseline against itself says nothing
                if not r["error"] and r.get("kl") and r["variant"] != r["baseline"]]
    details = ("\n## Against the baseline, position by position\n\n" + "\n".join(sections)) if sections else ""
    return "\n".join(lines) + notes + floors + details


def noise_floor_line(baseline: str, floor: dict) -> str:
    """One baseline's noise floor in words: the KL under which a variant's difference is noise."""
    if "unavailable" in floor:
        return f"Noise floor of {baseline}: {floor['unavailable']}.\n"
    return (f"Noise floor of {baseline} (the baseline rerun with ×(1 + ε·z) after every decoder layer, ε = 2⁻⁹, seed "
            f"{floor['seed']}, on the same positions): mean KL {floor['kl_mean']:.6f} nats, median "
            f"{floor['kl_median']:.6f}, 99.9 % {floor['kl_p99_9']:.4f}, max {floor['kl_max']:.4f}. A variant whose KL "
            f"is at or under these figures differs from the baseline no more than a different kernel would.\n")


def _num(value, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _markdown_row(r: dict) -> str:
    if r["error"]:
        return f"| {r['variant']} | {r['error']} | | | | | | | | | |"
    kl = r.get("kl") or {}
    agreement = "–" if r["top1_agreement"] is None else f"{100 * r['top1_agreement']:.1f}%"
    if r.get("top1_agreement_uncertainty") is not None:
        agreement += f" ± {100 * r['top1_agreement_uncertainty']:.1f}"
    mean_kl = _num(r["kl_divergence"], 4)
    if kl.get("mean_uncertainty") is not None:
        mean_kl += f" ± {kl['mean_uncertainty']:.4f}"
    if r.get("kl_lower_bound_top_k") and r["kl_divergence"] is not None:
        mean_kl = f"≥ {mean_kl} (top-{r['kl_lower_bound_top_k']})"
    perplexity = r["quality_note"] if r.get("quality_note") and r["perplexity"] is None else _num(r["perplexity"], 2)
    return (f"| {r['variant']} | {perplexity} | {mean_kl} | {_num(kl.get('p99_9'), 4)} | {_num(kl.get('max'), 4)} | "
            f"{agreement} | {_num(r['ttft_ms_p50'], 0)} | {_num(r['decode_tokens_per_s_p50'], 1)} / "
            f"{_num(r['decode_tokens_per_s_p90'], 1)} | {_num(r['weights_mib'], 0)} | "
            f"{_num(r['peak_memory_mib'], 0)} | {_num(r['disk_mib'], 0)} |")


STATISTICS_NOTE = ("KL(baseline || variant) in nats per scored position: mean ± standard error, its percentiles "
                   "(linear interpolation) and max; Δp = p_variant - p_baseline of the text's actual next token; "
                   "top-1 agreement = share of positions with the same argmax ± binomial standard error; positions "
                   "with a NaN or infinite figure are left out of every statistic and counted")


def protocol_method(protocol: Protocol) -> str:
    """What the protocol feeds and scores, in words, for the conditions."""
    if protocol.name == "llamacpp":
        first = protocol.ctx // 2
        return (f"protocol llamacpp: llama.cpp's perplexity --kl-divergence protocol: the text tokenized once, "
                f"non-overlapping chunks of {protocol.ctx} tokens, the first token of each chunk set to BOS (the "
                f"tokenizer's bos_token), the last {protocol.ctx - 1 - first} predictions of each chunk scored; "
                f"only figures under this protocol may be set beside llama.cpp's published tables")
    if protocol.name == "trace":
        return (f"protocol trace: the baseline's own greedy answers (at most {TRACE_ANSWER_TOKENS} tokens, through "
                f"the app) to each prompt of {protocol.prompts_file.name}, every variant teacher-forced on the chat "
                f"prompt + answer and scored on the answer tokens only")
    return (f"protocol sliding: sliding window of {WINDOW} tokens, stride {STRIDE}, every token after the first "
            f"scored once")


def conditions(text_file: Path, runs: int, max_new_tokens: int, protocol: Protocol | None = None) -> dict:
    protocol = protocol or Protocol()
    return {"text": protocol.prompts_file.name if protocol.name == "trace" else text_file.name,
            "protocol": protocol.name,
            "method": f"{protocol_method(protocol)}; {STATISTICS_NOTE}",
            "speed": f"prompt {SPEED_PROMPT!r}, greedy, {max_new_tokens} new tokens, 1 warm-up + {runs} runs, "
                     "p50/p90 over runs"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="models file (default: $ARENA_MODELS, else models.yaml)")
    parser.add_argument("--variants", required=True, help="comma-separated variant ids")
    parser.add_argument("--text", type=Path, default=EVALUATION_FILE, help="held-out text (default: assets/evaluation.txt)")
    parser.add_argument("--out", type=Path, help="output folder (default: results/<timestamp>)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per variant after one warm-up")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="sliding",
                        help="which tokens are fed and scored (default: sliding; see above)")
    parser.add_argument("--ctx", type=int, default=protocols.LLAMACPP_CTX,
                        help=f"llamacpp: tokens per chunk (default {protocols.LLAMACPP_CTX}, as llama.cpp)")
    parser.add_argument("--prompts", type=Path, default=PROMPTS_FILE,
                        help="trace: prompt file, JSON {\"prompts\": [...]} or one a line (default: the blind test's)")
    args = parser.parse_args(argv)
    protocol = Protocol(args.protocol, args.ctx, args.prompts)
    try:
        arena = Arena(load_config(args.models))
        if not args.text.is_file():
            raise InvalidRequest(f"text file '{args.text}' not found")
        variant_ids = [v.strip() for v in args.variants.split(",") if v.strip()]
        results = evaluate(arena, variant_ids, args.text.read_text(encoding="utf-8"), args.runs, args.max_new_tokens,
                           protocol=protocol)
    except ArenaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = args.out or REPO_ROOT / "results" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    paths = write_outputs(results, arena, out, conditions(args.text, args.runs, args.max_new_tokens, protocol))
    print(paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
