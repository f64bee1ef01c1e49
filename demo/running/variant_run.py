"""One variant's turn in a comparison: load it, stream its answer off the device thread, and fill its record
(VariantResult) with the answer, latency and memory as they come."""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

from demo.backends import LoadedVariant
from demo.errors import ArenaError, InvalidRequest, RuntimeCrashed
from demo.measuring import bandwidth
from demo.measuring.energy import joules_per_token
from demo.measuring.trackers import LatencyTracker
from demo.running.device import DeviceThread
from demo.running.manager import ModelManager
from demo.running.streaming import StreamingGeneration
from demo.settings import GenerationSettings, decode_whole, prompt_ids

log = logging.getLogger(__name__)

# Columns refresh at most this often while tokens stream; the generation thread never waits for them.
STREAM_INTERVAL_S = 0.1
STOP_POLL_S = 0.1  # how often a column waiting on its own cold load checks for Stop
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
    # queued | waiting (another request holds the device) | loading | reading (prompt, no token yet)
    # | generating | scoring (fidelity, after every variant's answer) | done | stopped | error
    status: str = "queued"
    queue_ahead: int | None = None  # while waiting: requests ahead of this one, in the turn order (the running one included)
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
    # Achieved bandwidth: the bytes a decode step reads (weights, less an untied input table, plus the KV cache at
    # the run's mean context: bytes_read_per_step) x decode tokens/s, in 1e9 bytes/s (demo.measuring.bandwidth), and
    # its fraction of the bandwidth this process measured on the same device; None where either is unknown.
    bytes_read_per_step: dict[str, Any] | None = None
    # How its matmuls ran (demo.backends.kernels): {"kind": "native" | "emulated" | "unknown", "reason", "found_by"}
    kernel: dict[str, str] | None = None
    achieved_bandwidth_gb_s: float | None = None
    measured_bandwidth_gb_s: float | None = None  # the machine's figure the share is taken against
    bandwidth_share: float | None = None
    # Energy from the device's own counter over the whole generation (prompt included), device- or package-wide,
    # divided by the new tokens (demo.measuring.energy); None where not exposed, and energy_source says why.
    energy_joules: float | None = None
    energy_joules_per_token: float | None = None
    energy_source: str | None = None
    stored: dict[str, Any] | None = None  # facts read back from the loaded weights (runtime, types, bits/weight)
    # A base with random weights (a named shape): {"note": "random weights: speed and memory only", "shape",
    # "shape_label", "seed", "parameters", "checkpoint_dtype", "tokenizer", "quality": why fidelity and perplexity
    # are not computed}; None for a real model. Its answers run to exactly max_new_tokens.
    random_weights: dict[str, Any] | None = None
    error: str | None = None
    # the variant's runtime process died or hung and was ended (demo.running.runtime_process): `error` says how
    crashed: bool = False
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


def snapshot(results: list[VariantResult]) -> list[VariantResult]:
    """Copies of the records as they are now: what a comparison yields, so later changes never leak into it."""
    return [replace(r) for r in results]


class VariantRunner:
    """Runs one variant at a time on the device thread; a failure belongs to that variant alone."""

    def __init__(self, device: DeviceThread, manager: ModelManager):
        self.device, self.manager = device, manager

    def run(self, result: VariantResult, prompt: str, settings: GenerationSettings,
            stop: threading.Event, generated: dict[str, list[int]]) -> Iterator[None]:
        result.status = "loading"
        yield
        try:
            acquired = yield from self._acquire(result, stop)
        except RuntimeCrashed as exc:  # its process died while loading
            if result.status != "stopped":
                result.status, result.error, result.crashed = "error", str(exc), True
            return
        except ArenaError as exc:
            if result.status != "stopped":
                result.status, result.error = "error", str(exc)
            return
        except Exception as exc:  # anything else from a loader belongs to this variant alone
            log.exception("loading %s failed", result.variant)
            if result.status != "stopped":
                result.status, result.error = "error", describe_failure("loading", exc)
            self.device.call(self.manager.evict, result.variant)
            return
        if result.status == "stopped":
            return
        loaded = acquired.loaded
        result.load_ms, result.cache_hit, result.device = acquired.load_ms, acquired.cache_hit, loaded.device
        result.weights_mib, result.stored = loaded.weights_bytes / 2**20, loaded.details()
        result.kernel = result.stored.get("kernel")
        try:
            yield from self._generate(result, loaded, prompt, settings, stop, generated)
        except RuntimeCrashed as exc:  # its process is gone: free its place in the cache now, not at the next request
            result.status, result.error, result.crashed = "error", str(exc), True
            self.device.call(self.manager.evict, result.variant)
        except ArenaError as exc:
            result.status, result.error = "error", str(exc)
        except Exception as exc:
            log.exception("generating with %s failed", result.variant)
            result.status, result.error = "error", describe_failure("generating", exc)
            if is_oom(exc):
                self.device.call(self.manager.evict, result.variant)

    def _acquire(self, result: VariantResult, stop: threading.Event) -> Iterator[None]:
        """The variant from the cache, loading it on the device thread if need be (returned from the generator).

        Stop is checked every STOP_POLL_S while the load is under way (seconds to minutes): a load not started yet
        is cancelled; one under way is not cut short (no loader offers a safe point to abandon it), but the
        column says "stopped" at once (a snapshot is yielded) while the comparison keeps its turn and its place
        until the load it started has ended, so stopping never lets one client queue loads past its share; the
        variant then stays cached."""
        future = self.device.submit(self.manager.get, result.variant)
        while True:
            try:
                return future.result(timeout=STOP_POLL_S)
            except FutureTimeout:
                if stop.is_set() and result.status != "stopped":
                    result.status = "stopped"
                    if future.cancel():
                        return None
                    yield

    def _generate(self, result: VariantResult, loaded: LoadedVariant, prompt: str, settings: GenerationSettings,
                  stop: threading.Event, generated: dict[str, list[int]]) -> Iterator[None]:
        ids = self.device.call(prompt_ids, loaded.tokenizer, prompt)
        result.prompt_tokens = len(ids)
        context = loaded.context_tokens
        if context and result.prompt_tokens + settings.max_new_tokens > context:
            raise InvalidRequest(f"the prompt is {result.prompt_tokens:,} tokens; with {settings.max_new_tokens} new "
                                 f"tokens that exceeds this variant's context of {context:,} tokens: shorten it")
        token_ids: list[int] = []
        generation = StreamingGeneration(self.device, loaded, ids, settings, stop)
        try:
            result.status = "reading"
            yield  # a consumer that goes away here still reaches close() below
            last_yield = 0.0
            for event in generation:
                token_ids.append(event.token_id)
                if time.perf_counter() - last_yield >= STREAM_INTERVAL_S:
                    result.status = "generating"
                    _fill_latency(result, generation.tracker, loaded.tokenizer, token_ids)
                    last_yield = time.perf_counter()
                    yield
        except BaseException:
            # Never waits for the device: a consumer that goes away is closed on Gradio's event loop, which
            # every session's stream shares. The runtime stops at its next check; the device runs the next
            # job once this one has ended.
            generation.close()
            if generation.finished:  # a failed run keeps its partial text
                _fill_latency(result, generation.tracker, loaded.tokenizer, token_ids)
            raise
        _fill_latency(result, generation.tracker, loaded.tokenizer, token_ids)
        if generation.memory is not None:  # None: stopped while a remote engine's round trip was cut
            _fill_memory(result, generation.memory)
        generated[result.variant] = token_ids
        result.truncated = len(token_ids) >= settings.max_new_tokens and token_ids[-1] not in loaded.stop_token_ids
        _fill_run_facts(result, loaded.run_facts())
        _fill_bandwidth(result)
        if generation.energy is not None:
            _fill_energy(result, generation.energy)
        result.status = "stopped" if stop.is_set() else "done"


def _fill_latency(result: VariantResult, tracker: LatencyTracker, tokenizer, token_ids: list[int]) -> None:
    result.text = decode_whole(tokenizer, token_ids)
    if tracker.start_s is None:  # the run failed before its clock started (a remote engine's round trip)
        return
    latency = tracker.result()
    result.new_tokens, result.ttft_ms = latency.new_tokens, latency.ttft_ms
    result.decode_tokens_per_s, result.total_ms = latency.decode_tokens_per_s, latency.total_ms


def _fill_memory(result: VariantResult, memory) -> None:
    result.memory_kind, result.weights_mib = memory.memory_kind, memory.weights_mib
    result.peak_memory_mib, result.run_peak_mib = memory.peak_memory_mib, memory.run_peak_mib
    result.peak_reserved_mib, result.process_rss_mib = memory.peak_reserved_mib, memory.process_rss_mib


def _fill_bandwidth(result: VariantResult) -> None:
    """Only for weights in this machine's memory: a remote engine's rate is timed at the client, over a network."""
    if result.device not in ("cpu", "cuda") or result.weights_mib is None:
        return
    step = _step_bytes(result)
    result.bytes_read_per_step = step.as_dict() if step is not None else None
    result.achieved_bandwidth_gb_s = bandwidth.achieved_gb_s_of(step, result.decode_tokens_per_s)
    result.measured_bandwidth_gb_s = bandwidth.measured_gb_s(result.environment, result.device)
    result.bandwidth_share = bandwidth.share(result.achieved_bandwidth_gb_s, result.measured_bandwidth_gb_s)


def _step_bytes(result: VariantResult) -> bandwidth.StepBytes | None:
    """What a decode step reads; None where a fact is missing (no figure rather than a wrong one)."""
    stored = result.stored or {}
    per_token = (stored.get("kv_cache") or {}).get("bytes_per_token")
    context = bandwidth.mean_context_tokens(result.prompt_tokens, result.new_tokens)
    table, tied = stored.get("embedding_table_bytes"), stored.get("tied_embeddings")
    if per_token is None or context is None or table is None or tied is None:
        return None
    return bandwidth.step_bytes(round(result.weights_mib * 2**20), table, tied, per_token, context)


def _fill_energy(result: VariantResult, energy) -> None:
    result.energy_joules, result.energy_source = energy.energy_joules, energy.source
    result.energy_joules_per_token = joules_per_token(energy, result.new_tokens)


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


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (MemoryError, torch.OutOfMemoryError))


def describe_failure(stage: str, exc: BaseException) -> str:
    """A one-line message for the variant's column or row: no trace, no local paths (the log has those)."""
    if is_oom(exc):
        return f"out of memory while {stage}; this variant was unloaded, the others are unaffected"
    lines = str(exc).strip().splitlines()
    detail = _PATH.sub("<path>", lines[0])[:200] if lines else ""
    return f"failed while {stage}: {exc.__class__.__name__}" + (f": {detail}" if detail else "")
