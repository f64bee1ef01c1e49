"""The interface every runtime implements: what the rest of the arena may do with a loaded variant.

Nothing outside demo/backends/ touches a model object; runner, fidelity, evaluate, manager, bench and
the UI hold a LoadedVariant and call these methods. Every method that computes runs on the device
thread (demo.running.device): the caller is responsible for that, the backend never starts threads of its own.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from demo.config import Variant
from demo.settings import GenerationSettings
from demo.measuring.trackers import MemoryTracker, track_memory

OnToken = Callable[[int, float], None]  # (token id, perf_counter seconds when the runtime handed it over)


class LoadedVariant(ABC):
    """One variant, loaded and warmed up, ready to generate and score."""

    runtime: str = ""  # "transformers", "llama.cpp", "remote"
    # logits() gives every position's full distribution; False (remote engines): top_log_probs() instead
    full_distributions: bool = True
    # A base with random weights (a named shape): every generation runs to exactly max_new_tokens, its stop
    # tokens banned until then, so that runs are comparable for speed, which is all such a base measures.
    random_weights: bool = False

    def __init__(self, variant: Variant, tokenizer: Any, device: str, weights_bytes: int,
                 stop_token_ids: frozenset[int], context_tokens: int | None):
        self.variant = variant
        self.tokenizer = tokenizer  # the base model's own tokenizer: every runtime gets the same prompt ids
        self.device = device  # "cpu" or "cuda"
        self.weights_bytes = weights_bytes  # the weights as stored by this runtime, in bytes
        self.stop_token_ids = stop_token_ids  # generation ends after one of these (it is counted and emitted)
        self.context_tokens = context_tokens  # prompt + new tokens must fit; None: unknown

    @abstractmethod
    def generate(self, prompt_ids: list[int], settings: GenerationSettings, stop: threading.Event,
                 on_token: OnToken) -> None:
        """Generate up to settings.max_new_tokens after prompt_ids, calling on_token for each new token
        (the stop token included) as soon as the runtime hands it over; return early once stop is set."""

    def generate_batch(self, prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
        """Serve len(prompts) requests at once the way this runtime batches them (the serving sweep,
        demo.evaluate.serving): greedy, each answer exactly new_tokens long (stop tokens banned until then, as
        serving benchmarks' ignore_eos). Returns plain data: {"started_s": perf_counter when the batch was handed to
        the runtime, "requests": [{"tokens": [...], "stamps": [perf_counter seconds per token]}, ...]} in the
        prompts' order. A runtime that serves through an engine of its own (llama.cpp's server, a remote engine) is
        swept there instead, and this raises NotImplementedError."""
        raise NotImplementedError(f"the {self.runtime} runtime is not batched in this process")

    def cancel(self) -> None:
        """Called from another thread once stop is set (again while the run has not ended): end a wait the
        runtime is blocked in, where one can be ended from outside (a remote engine's connection is shut
        down). Local runtimes read stop themselves between steps (see docs/runtimes.md, Stop): nothing here."""

    @abstractmethod
    def logits(self, ids: list[int], prompt_tokens: int | None = None, first_row: int = 0) -> torch.Tensor:
        """Next-token logits for the positions of ids from first_row on: float32 [len(ids) - first_row, vocab] on the
        CPU, row i predicting token first_row + i + 1 (teacher forcing); the rows before first_row are not computed
        (a long context's whole vocabulary at every position would be gigabytes). The first prompt_tokens ids
        (default: all) are read as generation reads a prompt, the rest as it reads its own tokens; only a
        quantized KV cache makes the two differ."""

    def read_and_ask(self, context_ids: list[int], scored: int, questions: list[list[int]],
                     max_new_tokens: int) -> dict[str, Any]:
        """The depth sweep's work (demo.evaluate.depth) in one reading of a long context: the logits predicting its
        last `scored` tokens (float32 [scored, vocab]; None from a runtime without full distributions), then each
        question's greedy answer after context + question. Returns plain data: {"read_s": seconds reading the
        context, "scored_logits", "answers": [{"tokens", "ttft_s" (from the question's start), "stamps"}]}.

        This default reads the whole context again for every question (read_s is then 0 and each ttft_s the whole
        prompt's); a runtime that can keep its cache reads it once."""
        answers = []
        for question in questions:
            stamps: list[float] = []
            tokens: list[int] = []
            started = time.perf_counter()
            self.generate(context_ids + question, GenerationSettings(max_new_tokens=max_new_tokens),
                          threading.Event(), lambda token, at_s: (tokens.append(token), stamps.append(at_s)))
            answers.append({"tokens": tokens, "ttft_s": stamps[0] - started if stamps else None, "stamps": stamps})
        first = len(context_ids) - scored
        logits = self.logits(context_ids, first, first - 1)[:scored] if self.full_distributions else None
        return {"read_s": 0.0, "scored_logits": logits, "answers": answers}

    def top_log_probs(self, ids: list[int], first: int):
        """Teacher forcing without full distributions: the engine's top-k log-probabilities at positions
        first..len(ids)-1 (each given ids[:position]), a demo.measuring.fidelity_topk.TopLogProbs, or an Unavailable
        saying why it has none. Only runtimes with full_distributions False implement it."""
        raise NotImplementedError(f"the {self.runtime} runtime gives full distributions: use logits()")

    def run_here(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(the runtime's own loaded variant, *args) where the runtime runs (in its own process, when it has one):
        for what needs the runtime's objects (a transformers model's layers). fn is a module-level function; its
        arguments and result are plain data."""
        return fn(self, *args)

    def run_facts(self) -> dict[str, Any]:
        """What only the runtime knows about the last generate() (a remote engine's own token count and
        finish reason, the network round trip), merged into the record; {} where on_token tells it all."""
        return {}

    @abstractmethod
    def bare_token_times(self, prompt_ids: list[int], settings: GenerationSettings) -> list[float]:
        """The runtime's own generation loop with nothing of the arena around it, timestamping each new
        token (perf_counter seconds): the reference the benchmark holds the arena's path against."""

    def alive(self) -> bool:
        """False once the runtime can no longer answer (its own process died): the cache then loads it afresh."""
        return True

    @abstractmethod
    def free(self) -> None:
        """Drop every reference to the runtime's objects so their memory can be returned."""

    def details(self) -> dict[str, Any]:
        """Facts read back from the loaded weights and runtime, recorded with each result."""
        return {"runtime": self.runtime}

    def sync(self) -> None:
        """Wait for queued device work, so clocks read after it (CUDA); a no-op on the CPU."""

    def memory_kind(self) -> str | None:
        """The MemoryTracker kind that sees this runtime's allocations; None: the device's default."""
        return None

    @contextmanager
    def track_memory(self) -> Iterator[MemoryTracker]:
        """Measure one run's peak memory the way that fits this runtime; read tracker.result after."""
        with track_memory(self.device, self.weights_bytes, self.memory_kind()) as tracker:
            yield tracker
