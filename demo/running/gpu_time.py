"""How much GPU time a request asks ZeroGPU for: computed from the request (variants × new tokens at each variant's
rates, plus the fidelity scoring), with a margin, capped. A request over the cap is refused before anything runs.

The rates are measured when the app starts where the serving process can run the model (the emulation, on the
CPU the worker uses too); on ZeroGPU the serving process cannot (CUDA is emulated there), so they start from
ASSUMED and each finished run, measured in the worker, replaces its variant's assumption.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

from demo.errors import GpuTimeTooLong
from demo.settings import GenerationSettings, prompt_ids

RATE_PROMPT = "Write one sentence about the sea."
RATE_TOKENS = 12  # tokens generated per variant at start-up to measure its rates
PASS_TOKENS = 128  # tokens of the teacher-forced pass timed at start-up
MARGIN = 1.5  # asked = estimate × MARGIN + OVERHEAD_S + the move: a run cut at its duration loses everything
OVERHEAD_S = 5.0  # a worker's start-up (fork, CUDA context), pickling, the records' environment
# A request may land on a fresh worker: `spaces` forks one whenever the device API does not hand back the previous
# worker's GPU idle, and that worker first moves every placed weight to the GPU (from the packed files on disk)
# inside the requested duration. Assumed rate for that move, on the safe side of a disk read and a host-to-GPU copy.
MOVE_MIB_PER_S = 1000.0
CHARS_PER_TOKEN = 3.0  # a text's tokens, estimated on the safe side (English runs about 4 characters a token)
PROMPT_TOKENS = 64  # a chat prompt's tokens where the page does not know the prompt yet (template included)
SLIDING_OVERLAP = 2.0  # the sliding protocol feeds each token about WINDOW / STRIDE times


@dataclass(frozen=True)
class Rates:
    """One variant's speed: decode tokens/s, the time to a first token of a short prompt, and a teacher-forced
    pass's seconds per token."""

    decode_tokens_per_s: float
    first_token_s: float
    pass_s_per_token: float
    how: str  # "measured at start-up" | "measured in the worker" | "assumed"


ASSUMED = Rates(decode_tokens_per_s=20.0, first_token_s=1.0, pass_s_per_token=0.01, how="assumed")


def measure(loaded) -> Rates:
    """A variant's rates from RATE_TOKENS greedy tokens (the better of two answers: the first pays one-off costs) and
    one teacher-forced pass over PASS_TOKENS tokens (start-up only: it runs in the calling thread)."""
    ids = prompt_ids(loaded.tokenizer, RATE_PROMPT)
    tries = [_generation(loaded, ids) for _ in range(2)]
    first, decode = min(t[0] for t in tries), max(t[1] for t in tries)
    per_token = ASSUMED.pass_s_per_token
    if loaded.full_distributions:
        fed = (ids * (PASS_TOKENS // len(ids) + 1))[:PASS_TOKENS]
        started = time.perf_counter()
        loaded.logits(fed)
        per_token = (time.perf_counter() - started) / PASS_TOKENS
    return Rates(decode, first, per_token, "measured at start-up")


def _generation(loaded, ids: list[int]) -> tuple[float, float]:
    """(seconds to the first token, decode tokens/s) of one greedy RATE_TOKENS-token answer."""
    times: list[float] = []
    started = time.perf_counter()
    loaded.generate(ids, GenerationSettings(max_new_tokens=RATE_TOKENS), threading.Event(),
                    lambda token_id, at_s: times.append(at_s))
    first = (times[0] - started) if times else ASSUMED.first_token_s
    decode = ((len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0]
              else ASSUMED.decode_tokens_per_s)
    return first, decode


class GpuTime:
    """The GPU seconds each kind of request asks for, from per-variant rates; check() refuses one over the cap.

    What a request asks `spaces.GPU` for (its duration callable) is not what ZeroGPU holds against the visitor's quota
    and its maximum: `spaces` multiplies the duration by the GPU's duration factor (1.5 on its RTX Pro 6000 Blackwell
    configuration, 1.0 on H200), and on an `xlarge` GPU (a Space whose packed weights pass the configuration's
    threshold, about 42 GiB) uses no factor but counts the quota twice. charged_s() is that figure: the one the cap,
    the page and a refusal speak of."""

    def __init__(self, config, rates: dict[str, Rates], cap_s: float, duration_factor: float = 1.0,
                 placed_mib: float = 0.0, xlarge: bool | Callable[[], bool] = False):
        self.config, self.cap_s = config, cap_s
        self.duration_factor, self._xlarge = duration_factor, xlarge
        self.move_s = placed_mib / MOVE_MIB_PER_S
        self._rates = dict(rates)
        self._lock = threading.Lock()

    @property
    def xlarge(self) -> bool:
        """Whether the Space runs on a whole card: a fixed answer, or asked each time (on ZeroGPU `spaces` decides it
        at launch(), from what it packed)."""
        return self._xlarge() if callable(self._xlarge) else self._xlarge

    def charged_s(self, asked_s: float) -> float:
        """The quota seconds a request that asks for asked_s is charged: × 2 on xlarge, else × the duration factor."""
        return float(math.ceil(asked_s * (2.0 if self.xlarge else self.duration_factor)))

    def rates(self, variant_id: str) -> Rates:
        with self._lock:
            return self._rates.get(variant_id, ASSUMED)

    def observe(self, records: list[dict]) -> None:
        """Finished runs measured in the worker replace their variants' assumed rates."""
        with self._lock:
            for record in records:
                rates = self._rates.get(record["variant"], ASSUMED)
                decode, ttft = record.get("decode_tokens_per_s"), record.get("ttft_ms")
                if rates.how == "measured at start-up" or record.get("status") != "done" or not decode or not ttft:
                    continue
                self._rates[record["variant"]] = replace(rates, decode_tokens_per_s=decode, first_token_s=ttft / 1e3,
                                                         how="measured in the worker")

    def generation_s(self, variant_id: str, prompt_tokens: float, new_tokens: int) -> float:
        """An answer: the prompt read (past a short one's first token) and new_tokens decoded."""
        rates = self.rates(variant_id)
        extra_prompt = max(0.0, prompt_tokens - PROMPT_TOKENS) * rates.pass_s_per_token
        return rates.first_token_s + extra_prompt + new_tokens / rates.decode_tokens_per_s

    def compare_s(self, variant_ids: list[str], settings: GenerationSettings, prompt: str | None = None) -> float:
        """A comparison: each variant's answer, then per base with its baseline in the request, two teacher-forced
        passes of the baseline (its answer, its noise floor) and one through each other variant."""
        prompt_tokens = PROMPT_TOKENS if prompt is None else max(PROMPT_TOKENS, len(prompt) / CHARS_PER_TOKEN)
        fed = prompt_tokens + settings.max_new_tokens
        seconds = sum(self.generation_s(v, prompt_tokens, settings.max_new_tokens) for v in variant_ids)
        for base in {self.config.variants[v].base for v in variant_ids}:
            baseline = self.config.bases[base].baseline
            group = [v for v in variant_ids if self.config.variants[v].base == base]
            if baseline in group and len(group) > 1:
                seconds += fed * (2 * self.rates(baseline).pass_s_per_token
                                  + sum(self.rates(v).pass_s_per_token for v in group if v != baseline))
        return self._asked(seconds)

    def evaluation_s(self, variant_ids: list[str], runs: int, max_new_tokens: int, text_chars: int) -> float:
        """An evaluation: each variant's passes over the text (its baseline's reference and noise floor once more),
        then runs + 1 answers of max_new_tokens to a short prompt."""
        fed = SLIDING_OVERLAP * max(text_chars / CHARS_PER_TOKEN, PROMPT_TOKENS)
        baselines = {self.config.base_of(v).baseline for v in variant_ids} - {None}
        seconds = sum(fed * self.rates(v).pass_s_per_token
                      + (runs + 1) * self.generation_s(v, PROMPT_TOKENS, max_new_tokens) for v in variant_ids)
        seconds += sum(2 * fed * self.rates(b).pass_s_per_token for b in baselines)
        return self._asked(seconds)

    def minimum_s(self) -> float:
        """What any request asks for at least: a worker's start-up and a fresh worker's move of the weights."""
        return self._asked(0.0)

    def _asked(self, estimate_s: float) -> float:
        return float(math.ceil(estimate_s * MARGIN + OVERHEAD_S + self.move_s))

    def check(self, asked_s: float, what: str = "run") -> None:
        """Refuse a request whose charged seconds (see charged_s) pass the cap."""
        charged = self.charged_s(asked_s)
        if charged > self.cap_s:
            how = (f" ({asked_s:.0f} s asked for, counted twice on an xlarge GPU)" if self.xlarge else
                   f" ({asked_s:.0f} s asked for × this GPU's duration factor {self.duration_factor:g})"
                   if self.duration_factor != 1.0 else "")
            raise GpuTimeTooLong(f"this {what} would take about {charged:.0f} s of GPU quota{how}; the limit here is "
                                 f"{self.cap_s:.0f} s: choose fewer variants or fewer new tokens")
