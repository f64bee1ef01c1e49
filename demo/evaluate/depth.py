"""The depth protocol: how quality, speed, memory and retrieval change with the context's length.

At depth d a context is read (the start of a long public-domain text, assets/long_context.txt, with `needles`
facts planted between its lines: the pass codes of differently coloured gates), then for each fact a question
about it and new_tokens generated greedily, so every run ends at or before position d and fits a model whose
context is d. For each variant and depth, from ONE reading of the context (LoadedVariant.read_and_ask: the
questions are answered from copies of its cache, so only they are read again):

- quality: the context's last SCORED_POSITIONS positions teacher-forced against the baseline at the same depth
  (KL mean and 99.9 % point, top-1 agreement), read as generation reads its own tokens, so a quantized KV cache is
  met as it is in generation;
- retrieval (the needle): each fact asked for at the end, scored by exact match of its code at the start of the
  greedy answer, as found/total with a Wilson interval and flips against the baseline's own answers;
- speed: time to first token for the whole prompt (the context read, then the first question read and its first
  token) and decode tokens/s after it, the median over the answers;
- memory: the KV cache's bytes at that depth (its bytes per token from the model's shape, checked against the
  runtimes' own in tests/test_kv_cache.py), the run's peak, and the bytes a decode step reads there.

The baseline's teacher-forced log-probabilities and answers are computed once per depth and shared by every
variant.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from demo.backends import LoadedVariant
from demo.config import REPO_ROOT, ArenaConfig
from demo.errors import ArenaError, InvalidRequest
from demo.measuring import bandwidth, flips, kl_stats, metrics
from demo.running.runner import Arena
from demo.running.variant_run import describe_failure

log = logging.getLogger(__name__)
LONG_TEXT = REPO_ROOT / "assets" / "long_context.txt"
DEFAULT_DEPTHS = (512, 2048, 8192)
SCORED_POSITIONS = 256
NEW_TOKENS = 16
MAX_NEEDLES = 8
# The planted facts and their questions: codes no text around them suggests, so only the context can give them.
NEEDLE = "\nRemember this: the pass code for the {colour} gate is {code}.\n"
QUESTION = "\n\nWhat is the pass code for the {colour} gate? The pass code for the {colour} gate is"
CODES = ("7402", "3185", "9267", "5531", "8046", "2719", "6384", "4953")
COLOURS = ("blue", "red", "green", "white", "black", "grey", "purple", "orange")


@dataclass(frozen=True)
class DepthPlan:
    """Which depths, how many needle places, how many new tokens, over which text."""

    depths: tuple[int, ...] = DEFAULT_DEPTHS
    needles: int = 3
    new_tokens: int = NEW_TOKENS
    text_file: Path = LONG_TEXT

    def check(self) -> None:
        if not self.depths:
            raise InvalidRequest("give at least one depth, e.g. --depths 512,2048,8192")
        if list(self.depths) != sorted(set(self.depths)):
            raise InvalidRequest("list each depth once, smallest first")
        if self.depths[0] < self.smallest_depth:
            raise InvalidRequest(f"a depth must be at least {self.smallest_depth} tokens (the {SCORED_POSITIONS} "
                                 f"scored positions, the needle, the question and {self.new_tokens} new tokens)")
        if not 1 <= self.needles <= MAX_NEEDLES:
            raise InvalidRequest(f"needles must be from 1 to {MAX_NEEDLES}, got {self.needles}")
        if not 2 <= self.new_tokens <= 256:
            raise InvalidRequest(f"new tokens must be from 2 to 256 (a decode rate needs two), got {self.new_tokens}")
        if not self.text_file.is_file():
            raise InvalidRequest(f"text file '{self.text_file.name}' not found")

    @property
    def smallest_depth(self) -> int:
        return SCORED_POSITIONS + 64 + self.new_tokens

    def probe(self, tokenizer, depth: int) -> "Probe":
        """This depth's context (the facts planted at the middles of `needles` equal parts, between lines) and its
        questions; the longest question and new_tokens after the context end exactly at the depth."""
        text_ids = [int(i) for i in tokenizer(self.text_file.read_text(encoding="utf-8"))["input_ids"]]
        questions = [_ids(tokenizer, QUESTION.format(colour=COLOURS[i])) for i in range(self.needles)]
        needles = [_ids(tokenizer, NEEDLE.format(colour=COLOURS[i], code=CODES[i])) for i in range(self.needles)]
        context = depth - self.new_tokens - max(len(q) for q in questions)
        hay = context - sum(len(n) for n in needles)
        if hay > len(text_ids):
            raise InvalidRequest(f"the text is {len(text_ids):,} tokens, too short for depth {depth:,}: give a "
                                 "longer one")
        places = [_line_end(tokenizer, text_ids, round(hay * (i + 0.5) / self.needles), hay)
                  for i in range(self.needles)]
        ids, at, last = [], [], 0
        for place, needle in zip(places, needles):
            ids += text_ids[last:place]
            at.append(len(ids))
            ids += needle
            last = place
        ids += text_ids[last:hay]
        return Probe(ids, questions, list(CODES[:self.needles]), at)


@dataclass(frozen=True)
class Probe:
    context: list[int]
    questions: list[list[int]]
    codes: list[str]  # the planted codes, in the questions' order
    needles_at: list[int]  # the token position each fact starts at


@dataclass
class DepthRow:
    """One variant at one depth: what results.json holds per row."""

    variant: str
    depth: int
    prompt_tokens: int | None = None
    kl_mean: float | None = None
    kl_p99_9: float | None = None
    top1: float | None = None
    ttft_ms: float | None = None
    decode_tokens_per_s: float | None = None
    kv_cache_bytes: int | None = None
    kv_cache: str | None = None  # its element types, e.g. "K q8_0 · V q8_0"
    peak_mib: float | None = None
    needle: dict | None = None  # found, total, interval, and lost/gained against the baseline
    bytes_read_per_step: dict | None = None  # weights, kv, total at this depth (demo.measuring.bandwidth)
    achieved_gb_s: float | None = None
    quality_note: str | None = None
    error: str | None = None
    answers: list[str] = field(default_factory=list)  # the greedy answers, one per needle place

    def as_dict(self) -> dict:
        return asdict(self)


def config_for_depths(config: ArenaConfig, depths: tuple[int, ...],
                      swept: list[str] | None = None) -> tuple[ArenaConfig, list[str]]:
    """The config with every GGUF variant's context (n_ctx) at least the deepest depth, and a note per change to
    a swept variant (all of them by default): llama.cpp allocates its cache for n_ctx, so a variant made for
    short prompts cannot hold a long one."""
    deepest, notes, variants = max(depths), [], dict(config.variants)
    for vid, variant in config.variants.items():
        n_ctx = variant.settings.get("n_ctx")
        if variant.method == "gguf" and n_ctx is not None and n_ctx < deepest:
            variants[vid] = replace(variant, settings={**variant.settings, "n_ctx": deepest})
            if swept is None or vid in swept:
                notes.append(f"{vid}: n_ctx raised from {n_ctx} to {deepest} for the sweep")
    return replace(config, variants=variants), notes


def depth_steps(arena: Arena, variant_ids: list[str], plan: DepthPlan) -> Iterator[tuple[float, str] | DepthRow]:
    """The sweep's model work, variant after variant (the baseline's reference first, once per depth): yields
    (fraction, message) progress and each finished row."""
    references: dict[tuple[str, int], _Reference] = {}
    total = len(variant_ids) * len(plan.depths)
    bar = tqdm(total=total, desc="Depth sweep", unit="row")
    for v_index, variant_id in enumerate(variant_ids):
        base = arena.config.base_of(variant_id)
        for d_index, depth in enumerate(plan.depths):
            bar.set_postfix_str(f"{variant_id} at {depth:,}")
            yield (v_index * len(plan.depths) + d_index) / total, f"{variant_id} at depth {depth:,}"
            row = DepthRow(variant_id, depth)
            try:
                with arena.exclusive():
                    arena.device.call(_measure, arena, row, plan, base.baseline, base.random_weights, references)
            except ArenaError as exc:
                row.error = str(exc)
            except Exception as exc:  # out of memory, a kernel error: this row says so, the others stand
                log.exception("depth %s of %s failed", depth, variant_id)
                row.error = describe_failure("the depth sweep", exc)
            bar.update()
            yield row
    bar.close()


@dataclass
class _Reference:
    """The baseline at one depth: its log-probabilities over the scored positions, and its needle results."""

    log_probs: torch.Tensor | None
    found: list[bool]


def _measure(arena: Arena, row: DepthRow, plan: DepthPlan, baseline_id: str | None, random_weights: bool,
             references: dict) -> None:
    loaded = arena.manager.get(row.variant).loaded
    probe = plan.probe(loaded.tokenizer, row.depth)
    row.prompt_tokens = len(probe.context) + len(probe.questions[0])
    context = loaded.context_tokens
    if context is not None and row.depth > context:
        hint = " (settings.n_ctx)" if loaded.runtime == "llama.cpp" else ""
        raise InvalidRequest(f"depth {row.depth:,} is past this variant's context of {context:,} tokens{hint}")
    run = loaded.run_here(read_and_ask_here, probe.context, SCORED_POSITIONS, probe.questions, plan.new_tokens)
    answers = [loaded.tokenizer.decode(a["tokens"], skip_special_tokens=True) for a in run["answers"]]
    row.answers = answers
    found = [_found(answer, code) for answer, code in zip(answers, probe.codes)]
    first = run["answers"][0]["ttft_s"]
    row.ttft_ms = None if first is None else round((run["read_s"] + first) * 1e3, 1)
    row.decode_tokens_per_s = _median([_rate(a["stamps"]) for a in run["answers"]], 2)
    peak = getattr(run["memory"], "peak_memory_mib", None)
    row.peak_mib = None if peak is None else round(peak, 1)
    _fill_memory(row, loaded, plan.new_tokens)
    if random_weights:
        row.quality_note = "random weights: speed and memory only"
        return
    own = None if run["scored_logits"] is None else metrics.log_probs(run["scored_logits"])
    if baseline_id is None:
        row.quality_note = "no baseline to compare with"
        row.needle = _needle(found, None)
        return
    key = (baseline_id, row.depth)
    if key not in references:
        if baseline_id == row.variant:
            references[key] = _Reference(own, found)
        else:
            base = arena.manager.get(baseline_id).loaded
            ran = base.run_here(read_and_ask_here, probe.context, SCORED_POSITIONS, probe.questions, plan.new_tokens)
            base_found = [_found(base.tokenizer.decode(a["tokens"], skip_special_tokens=True), code)
                          for a, code in zip(ran["answers"], probe.codes)]
            base_lp = None if ran["scored_logits"] is None else metrics.log_probs(ran["scored_logits"])
            references[key] = _Reference(base_lp, base_found)
    reference = references[key]
    row.needle = _needle(found, reference.found)
    if own is None or reference.log_probs is None:
        row.quality_note = "KL not measured: this runtime gives no full distributions"
        return
    targets = torch.tensor(probe.context[-SCORED_POSITIONS:])
    base_figures = metrics.position_figures(reference.log_probs, targets)
    figures = metrics.position_figures(own, targets, reference.log_probs)
    stats = kl_stats.compare(base_figures, figures)
    row.kl_mean = _rounded(stats.kl["mean"], 6)
    row.kl_p99_9 = _rounded(stats.kl["p99_9"], 6)
    row.top1 = _rounded(stats.top1_agreement, 4)


def read_and_ask_here(loaded: LoadedVariant, context: list[int], scored: int, questions: list[list[int]],
                      new_tokens: int) -> dict:
    """LoadedVariant.read_and_ask where the runtime runs (its own process, when it has one), with the memory it
    took: the whole reading and every answer, in one tracked run."""
    with loaded.track_memory() as memory:
        result = loaded.read_and_ask(context, scored, questions, new_tokens)
        loaded.sync()
    return {**result, "memory": memory.result}


def _rate(stamps: list[float]) -> float | None:
    """Decode tokens/s after the first token: the tokens after it over the time they took."""
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else None


def _fill_memory(row: DepthRow, loaded: LoadedVariant, new_tokens: int) -> None:
    """The KV cache's bytes at the prompt's end, and what a decode step reads at this depth."""
    facts = loaded.details()
    kv = facts.get("kv_cache") or {}
    per_token = kv.get("bytes_per_token")
    row.kv_cache = kv.get("label")
    if per_token is None:
        return
    row.kv_cache_bytes = round(per_token * row.prompt_tokens)
    table, tied = facts.get("embedding_table_bytes"), facts.get("tied_embeddings")
    if table is None or tied is None:
        return
    context = bandwidth.mean_context_tokens(row.prompt_tokens, new_tokens)
    step = bandwidth.step_bytes(int(loaded.weights_bytes), table, tied, per_token, context)
    row.bytes_read_per_step = step.as_dict()
    achieved = bandwidth.achieved_gb_s_of(step, row.decode_tokens_per_s)
    row.achieved_gb_s = None if achieved is None else round(achieved, 3)


def _needle(found: list[bool], baseline: list[bool] | None) -> dict:
    low, high = flips.wilson(sum(found), len(found))
    result = {"found": sum(found), "total": len(found), "interval": [round(low, 3), round(high, 3)],
              "method": f"exact match of the planted code; {flips.method()}"}
    if baseline is not None:
        result["baseline_found"] = sum(baseline)
        result["lost"] = sum(b and not f for f, b in zip(found, baseline))  # the baseline found it, this did not
        result["gained"] = sum(f and not b for f, b in zip(found, baseline))
    return result


def _found(answer: str, code: str) -> bool:
    """Exact match: the answer starts with the planted code (spaces, a colon or quotes before it allowed)."""
    return re.match(rf"[\s:\"'`*]*{re.escape(code)}(?!\d)", answer) is not None


def _line_end(tokenizer, ids: list[int], near: int, limit: int) -> int:
    """The first position at or after `near` that follows a line break (the fact goes between lines), or `near`."""
    for position in range(max(near, 1), min(limit, near + 200)):
        if "\n" in tokenizer.decode([ids[position - 1]]):
            return position
    return near


def _ids(tokenizer, text: str) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def _median(values: list[float | None], digits: int) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.median(kept)), digits) if kept else None


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def sweep(arena: Arena, variant_ids: list[str], plan: DepthPlan, progress=None, stop=None) -> list[DepthRow]:
    """The depth sweep over the chosen variants (each baseline first, so its reference is its own row's work);
    once `stop` is set, the rows not yet started are left out."""
    from demo.evaluate.run import check_variants, sweep_rows

    check_variants(arena, variant_ids)
    plan.check()
    baselines = {arena.config.base_of(v).baseline for v in variant_ids}
    ordered = sorted(variant_ids, key=lambda v: v not in baselines)
    steps = arena.run_job(depth_steps, ordered, plan, gpu_seconds=None)
    return sweep_rows(steps, DepthRow, progress, lambda row: stop is not None and stop.is_set())
