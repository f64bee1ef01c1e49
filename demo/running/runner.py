"""compare(prompt, variants, settings) -> a stream of per-variant results, one variant at a time."""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

from demo.measuring import fidelity
from demo.backends import LoadedVariant
from demo.config import ArenaConfig
from demo.running.device import DeviceThread, Turns, shared_device
from demo.errors import ArenaError, Busy, InvalidRequest
from demo.running.streaming import StreamingGeneration
from demo.settings import GenerationSettings, decode_whole, prompt_ids
from demo.running.manager import ModelManager
from demo.measuring.system import environment
from demo.measuring.trackers import LatencyTracker

log = logging.getLogger(__name__)

# Columns refresh at most this often while tokens stream; the generation thread never waits for them.
STREAM_INTERVAL_S = 0.1
WAIT_POLL_S = 0.5  # how often a comparison waiting for its turn reports its place in line

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls and DEL, but tab, LF and CR
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # how undecodable bytes reach a str (surrogateescape, JSON)
_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\][^\s'\"]*[/\\][^\s'\"]*")  # local paths never reach a user


@dataclass
class VariantResult:
    """One variant's record: the CLI's --json output and the /compare API return these (as dicts)."""

    variant: str
    method: str
    bits: int | None
    quantization: dict[str, Any]
    base: str = ""  # base model id
    model: str = ""  # base model label, e.g. SmolLM2-135M-Instruct
    runtime: str = ""  # transformers | llama.cpp
    # queued | waiting (another comparison holds the device) | loading | reading (prompt, no token yet)
    # | generating | scoring (fidelity, after every variant's answer) | done | stopped | error
    status: str = "queued"
    queue_ahead: int | None = None  # while waiting: comparisons ahead of this one (the running one included)
    device: str | None = None
    text: str = ""
    prompt_tokens: int | None = None
    new_tokens: int = 0
    truncated: bool = False  # the answer was cut at max_new_tokens, not ended by the model
    ttft_ms: float | None = None
    decode_tokens_per_s: float | None = None
    total_ms: float | None = None
    load_ms: float | None = None
    cache_hit: bool | None = None
    weights_mib: float | None = None
    peak_memory_mib: float | None = None
    run_peak_mib: float | None = None
    peak_reserved_mib: float | None = None
    process_rss_mib: float | None = None
    memory_kind: str | None = None
    stored: dict[str, Any] | None = None  # facts read back from the loaded weights (runtime, types, bits/weight)
    error: str | None = None
    fidelity: dict[str, Any] | None = None  # vs the base model's baseline on this prompt; None without one
    # Where this variant's own answer departs from the baseline's own answer (see demo.measuring.fidelity): the first
    # differing token (the shorter length when one is a prefix of the other) and that point's character
    # offset in `text`; None when the answers are identical or there is no baseline (then fidelity is None).
    answer_departs_at_token: int | None = None
    answer_departs_at_char: int | None = None
    prompt: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "stopped", "error")

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


class Arena:
    """Runs comparisons: validates requests, then each variant in turn under one device lock."""

    def __init__(self, config: ArenaConfig, manager: ModelManager | None = None, device: DeviceThread | None = None):
        self.config = config
        self.manager = manager or ModelManager(config)
        self.device = device or shared_device()  # every torch call runs there (see demo.running.device)
        # Held for a comparison's whole load + run + scoring, first come first served (see Turns).
        self.turns = Turns()
        self._admission = threading.BoundedSemaphore(config.limits.max_pending)
        self._environment: dict[str, Any] | None = None

    def environment(self) -> dict[str, Any]:
        if self._environment is None:
            self._environment = environment()
        return self._environment

    def settings(self, max_new_tokens: int | None = None, do_sample: bool = False, temperature: float | None = None,
                 top_p: float | None = None, seed: int | None = None) -> GenerationSettings:
        """Settings with models.yaml defaults filled in, validated against its limits."""
        defaults, limit = self.config.generation, self.config.limits.max_new_tokens
        max_new_tokens = defaults.max_new_tokens if max_new_tokens is None else max_new_tokens
        temperature = defaults.temperature if temperature is None else temperature
        top_p = defaults.top_p if top_p is None else top_p
        if not isinstance(do_sample, bool):
            raise InvalidRequest(f"do_sample must be true or false, got {_short(do_sample)}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise InvalidRequest(f"max_new_tokens must be a whole number from 1 to {limit}, got {_short(max_new_tokens)}")
        if not 1 <= max_new_tokens <= limit:
            raise InvalidRequest(f"max_new_tokens must be a whole number from 1 to {limit}, got {max_new_tokens}")
        if not _number_in(temperature, 0.0, 2.0, low_open=True):
            raise InvalidRequest(f"temperature must be a number in (0, 2], got {_short(temperature)}")
        if not _number_in(top_p, 0.0, 1.0, low_open=True):
            raise InvalidRequest(f"top_p must be a number in (0, 1], got {_short(top_p)}")
        # 2**32 - 1 is llama.cpp's "pick a random seed": the highest seed every runtime honours is one less
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32 - 1):
            raise InvalidRequest(f"seed must be a whole number from 0 to {2**32 - 2}, got {_short(seed)}")
        if do_sample and seed is None:
            raise InvalidRequest("sampling needs an explicit seed, so that every variant draws the same way")
        return GenerationSettings(max_new_tokens, do_sample, float(temperature), float(top_p), seed)

    def validate(self, prompt: str, variant_ids: list[str]) -> None:
        """Reject a request that is not runnable, with a message that says what is allowed."""
        validate_prompt(prompt, self.config.limits.max_prompt_chars)
        if not isinstance(variant_ids, (list, tuple)) or not all(isinstance(v, str) for v in variant_ids):
            raise InvalidRequest(f"variants must be a list of variant ids, got {_short(variant_ids)}")
        if not variant_ids:
            raise InvalidRequest("no variant chosen: tick at least one")
        unknown = [v for v in variant_ids if v not in self.config.variants]
        if unknown:
            raise InvalidRequest(f"unknown variant id(s): {', '.join(_short(v) for v in unknown)}; "
                                 f"known: {', '.join(self.config.variants)}")
        if len(set(variant_ids)) != len(variant_ids):
            raise InvalidRequest("the same variant is listed twice; list each variant once")
        if len(variant_ids) > self.config.limits.max_variants:
            raise InvalidRequest(f"{len(variant_ids)} variants chosen; the limit is {self.config.limits.max_variants}")

    def compare(self, prompt: str, variant_ids: list[str], settings: GenerationSettings,
                stop: threading.Event | None = None) -> Iterator[list[VariantResult]]:
        """Yield snapshots of every variant's result as they change; the last snapshot is final."""
        self.validate(prompt, variant_ids)
        if not self._admission.acquire(blocking=False):
            raise Busy(f"busy: {self.config.limits.max_pending} comparisons are already running or waiting; "
                       "try again in a minute")
        try:
            yield from self._compare(prompt, variant_ids, settings, stop or threading.Event())
        finally:
            self._admission.release()

    def _compare(self, prompt: str, variant_ids: list[str], settings: GenerationSettings,
                 stop: threading.Event) -> Iterator[list[VariantResult]]:
        env, config = self.environment(), settings.describe()
        variants = [self.config.variants[i] for i in variant_ids]
        results = [VariantResult(v.id, v.method, v.bits, dict(v.settings), v.base, self.config.bases[v.base].label,
                                 v.runtime, prompt=prompt, settings=config, environment=env) for v in variants]
        yield _copy(results)
        ticket = self.turns.join()
        try:
            while not self.turns.wait(ticket, WAIT_POLL_S):
                if stop.is_set():
                    break
                for result in results:
                    result.status, result.queue_ahead = "waiting", self.turns.ahead(ticket)
                yield _copy(results)
            for result in results:
                result.status, result.queue_ahead = "queued", None
            generated: dict[str, list[int]] = {}  # variant id -> its new token ids
            for result in results:
                if stop.is_set():
                    result.status = "stopped"
                    continue
                for _ in self._run_one(result, prompt, settings, stop, generated):
                    yield _copy(results)
            if not stop.is_set():
                yield from self._add_fidelity(results, prompt, generated, stop)
        finally:
            self.turns.leave(ticket)
        yield _copy(results)

    def _add_fidelity(self, results: list[VariantResult], prompt: str, generated: dict[str, list[int]],
                      stop: threading.Event) -> Iterator[list[VariantResult]]:
        """Per base model: where each variant's own answer departs from the baseline's, then the baseline's
        answer teacher-forced through each variant (see demo.measuring.fidelity)."""
        bases = {base.id: base for base in (self.config.base_of(r.variant) for r in results)}
        for base in bases.values():
            group = [r for r in results if self.config.variants[r.variant].base == base.id]
            reference = next((r for r in group if r.variant == base.baseline and r.status == "done"), None)
            answer = generated.get(base.baseline or "")
            if reference is None or not answer:
                continue
            reference.fidelity = fidelity.of_baseline(base.baseline, len(answer)).as_dict()
            scored = [r for r in group if r is not reference and r.status == "done"]
            for result in scored:
                result.status = "scoring"
            yield _copy(results)
            try:
                baseline_lp = self.device.call(self._answer_log_probs, base.baseline, prompt, answer)
                for result in scored:
                    if stop.is_set():
                        break
                    result.fidelity, result.answer_departs_at_char = self.device.call(
                        self._score, result.variant, base.baseline, baseline_lp, prompt, answer,
                        generated[result.variant])
                    result.answer_departs_at_token = fidelity.first_difference(generated[result.variant], answer)
            except Exception:  # fidelity is extra information: a failure leaves it null, the run stands
                log.exception("fidelity against %s failed", base.baseline)
            finally:
                for result in scored:
                    result.status = "done"

    def _answer_log_probs(self, variant_id: str, prompt: str, answer: list[int]):
        return fidelity.answer_log_probs(self.manager.get(variant_id).loaded, prompt, answer)

    def _score(self, variant_id: str, baseline_id: str, baseline_lp, prompt: str, answer: list[int],
               tokens: list[int]) -> tuple[dict, int | None]:
        """One variant's teacher-forced figures and its own answer's departure (character): one device job,
        so the variant is acquired (and, if it was evicted meanwhile, loaded) on the device thread."""
        loaded = self.manager.get(variant_id).loaded
        variant_lp = fidelity.answer_log_probs(loaded, prompt, answer)
        scored = fidelity.compare(baseline_id, baseline_lp, variant_lp, loaded.tokenizer.decode).as_dict()
        departs = fidelity.departure_char(lambda ids: decode_whole(loaded.tokenizer, ids), tokens, answer)
        return scored, departs

    @contextmanager
    def exclusive(self, stop: threading.Event | None = None) -> Iterator[None]:
        """Hold the device's turn for model work that is not a comparison (quantizing, evaluation scoring),
        so it never lands inside a comparison's measurement window."""
        ticket = self.turns.join()
        try:
            while not self.turns.wait(ticket, WAIT_POLL_S):
                if stop is not None and stop.is_set():
                    raise Busy("stopped while waiting for the device")
            yield
        finally:
            self.turns.leave(ticket)

    def compare_records(self, prompt: str, variant_ids: list[str], settings: GenerationSettings) -> list[dict]:
        """The final records of a comparison, as the CLI and the /compare endpoint return them."""
        final: list[VariantResult] = []
        for final in self.compare(prompt, variant_ids, settings):
            pass
        return [r.to_record() for r in final]

    def _run_one(self, result: VariantResult, prompt: str, settings: GenerationSettings,
                 stop: threading.Event, generated: dict[str, list[int]]) -> Iterator[None]:
        result.status = "loading"
        yield
        try:
            acquired = self.device.call(self.manager.get, result.variant)
        except ArenaError as exc:
            result.status, result.error = "error", str(exc)
            return
        except Exception as exc:  # anything else from a loader belongs to this variant alone
            log.exception("loading %s failed", result.variant)
            result.status, result.error = "error", _describe_failure("loading", exc)
            self.device.call(self.manager.evict, result.variant)
            return
        loaded = acquired.loaded
        result.load_ms, result.cache_hit, result.device = acquired.load_ms, acquired.cache_hit, loaded.device
        result.weights_mib, result.stored = loaded.weights_bytes / 2**20, loaded.details()
        try:
            yield from self._generate(result, loaded, prompt, settings, stop, generated)
        except ArenaError as exc:
            result.status, result.error = "error", str(exc)
        except Exception as exc:
            log.exception("generating with %s failed", result.variant)
            result.status, result.error = "error", _describe_failure("generating", exc)
            if _is_oom(exc):
                self.device.call(self.manager.evict, result.variant)

    def _generate(self, result: VariantResult, loaded: LoadedVariant, prompt: str, settings: GenerationSettings,
                  stop: threading.Event, generated: dict[str, list[int]]) -> Iterator[None]:
        ids = self.device.call(prompt_ids, loaded.tokenizer, prompt)
        result.prompt_tokens = len(ids)
        context = loaded.context_tokens
        if context and result.prompt_tokens + settings.max_new_tokens > context:
            raise InvalidRequest(f"the prompt is {result.prompt_tokens:,} tokens; with {settings.max_new_tokens} new "
                                 f"tokens that exceeds this variant's context of {context:,} tokens: shorten it")
        token_ids: list[int] = []
        with loaded.track_memory() as memory:
            tracker = LatencyTracker(loaded.sync)
            generation = StreamingGeneration(self.device, loaded, ids, settings)
            tracker.start(generation.started_s)
            try:
                result.status = "reading"
                yield  # a consumer that goes away here still reaches close() below
                last_yield = 0.0
                for event in generation:
                    tracker.token(event.at_s)
                    token_ids.append(event.token_id)
                    if stop.is_set():
                        generation.stop.set()
                    if time.perf_counter() - last_yield >= STREAM_INTERVAL_S:
                        result.status = "generating"
                        _fill_latency(result, tracker, loaded.tokenizer, token_ids)
                        last_yield = time.perf_counter()
                        yield
                tracker.finish()
            finally:
                generation.close()  # reached also when the consumer goes away: the generation stops
                _fill_latency(result, tracker, loaded.tokenizer, token_ids)  # a failed run keeps its partial text
        _fill_memory(result, memory.result)
        generated[result.variant] = token_ids
        result.truncated = len(token_ids) >= settings.max_new_tokens and token_ids[-1] not in loaded.stop_token_ids
        _fill_run_facts(result, loaded.run_facts())
        result.status = "stopped" if stop.is_set() else "done"


def _fill_latency(result: VariantResult, tracker: LatencyTracker, tokenizer, token_ids: list[int]) -> None:
    latency = tracker.result()
    result.text = decode_whole(tokenizer, token_ids)
    result.new_tokens, result.ttft_ms = latency.new_tokens, latency.ttft_ms
    result.decode_tokens_per_s, result.total_ms = latency.decode_tokens_per_s, latency.total_ms


def _fill_memory(result: VariantResult, memory) -> None:
    result.memory_kind, result.weights_mib = memory.memory_kind, memory.weights_mib
    result.peak_memory_mib, result.run_peak_mib = memory.peak_memory_mib, memory.run_peak_mib
    result.peak_reserved_mib, result.process_rss_mib = memory.peak_reserved_mib, memory.process_rss_mib


def _fill_run_facts(result: VariantResult, facts: dict[str, Any]) -> None:
    """What the runtime alone knows about the run (a remote engine's own token count, its finish reason, the
    network round trip) goes into `stored`; the engine's count replaces the client's where it gave one."""
    if not facts:
        return
    result.stored = {**(result.stored or {}), **facts}
    if facts.get("new_tokens") is not None:
        result.new_tokens, result.decode_tokens_per_s = facts["new_tokens"], facts["decode_tokens_per_s"]
    if facts.get("truncated") is not None:
        result.truncated = facts["truncated"]


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (MemoryError, torch.OutOfMemoryError))


def _describe_failure(stage: str, exc: BaseException) -> str:
    """A one-line message for the variant's column: no trace, no local paths (the log has those)."""
    if _is_oom(exc):
        return f"out of memory while {stage}; this variant was unloaded, the others are unaffected"
    lines = str(exc).strip().splitlines()
    detail = _PATH.sub("<path>", lines[0])[:200] if lines else ""
    return f"failed while {stage}: {exc.__class__.__name__}" + (f": {detail}" if detail else "")


def validate_prompt(prompt: Any, max_chars: int) -> None:
    if not isinstance(prompt, str):
        raise InvalidRequest(f"the prompt must be text, got {type(prompt).__name__}")
    if len(prompt) > max_chars:  # first: a several-MB prompt is rejected before any scan of it
        raise InvalidRequest(f"the prompt has {len(prompt):,} characters; the limit is {max_chars:,}")
    if not prompt.strip():
        raise InvalidRequest("the prompt is empty: type a question or pick an example")
    if _SURROGATE.search(prompt):
        raise InvalidRequest("the prompt is not valid UTF-8 text (it contains undecodable bytes)")
    if match := _CONTROL.search(prompt):
        raise InvalidRequest(f"the prompt contains a control character (U+{ord(match.group()):04X}); "
                             "only printable text, tabs and line breaks are allowed")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "…"


def _copy(results: list[VariantResult]) -> list[VariantResult]:
    return [replace(r) for r in results]


def _number_in(value: Any, low: float, high: float, low_open: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (low < value if low_open else low <= value) and value <= high
