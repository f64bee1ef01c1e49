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

from demo.errors import GpuTimeTooLong
from demo.settings import GenerationSettings, prompt_ids

RATE_PROMPT = "Write one sentence about the sea."
RATE_TOKENS = 12  # tokens generated per variant at start-up to measure its rates
MARGIN = 1.5  # asked = estimate × MARGIN + OVERHEAD_S: a run cut at its duration loses everything
OVERHEAD_S = 5.0  # a cold worker's start-up, pickling, the records' environment
CHARS_PER_TOKEN = 3.0  # an evaluation text's tokens, estimated on the safe side (English runs ~4 chars a token)


@dataclass(frozen=True)
class Rates:
    """One variant's speed: decode tokens/s, the time to a first token, and one teacher-forced pass."""

    decode_tokens_per_s: float
    first_token_s: float
    scoring_pass_s: float
    how: str  # "measured at start-up" | "measured in the worker" | "assumed"


ASSUMED = Rates(decode_tokens_per_s=20.0, first_token_s=1.0, scoring_pass_s=1.0, how="assumed")


def measure(loaded) -> Rates:
    """A variant's rates from RATE_TOKENS greedy tokens and one teacher-forced pass over them (start-up only: it
    runs in the calling thread)."""
    from demo.measuring import fidelity

    ids = prompt_ids(loaded.tokenizer, RATE_PROMPT)
    tries = [_generation(loaded, ids) for _ in range(2)]  # the better of two: the first pays one-off costs
    first, decode, answer = min(t[0] for t in tries), max(t[1] for t in tries), tries[-1][2]
    scored = time.perf_counter()
    if answer and loaded.full_distributions:
        fidelity.answer_log_probs(loaded, RATE_PROMPT, answer)
    return Rates(decode, first, max(time.perf_counter() - scored, first), "measured at start-up")


def _generation(loaded, ids: list[int]) -> tuple[float, float, list[int]]:
    """(seconds to the first token, decode tokens/s, the answer) of one greedy RATE_TOKENS-token answer."""
    times: list[float] = []
    answer: list[int] = []

    def on_token(token_id: int, at_s: float) -> None:
        answer.append(token_id)
        times.append(at_s)

    started = time.perf_counter()
    loaded.generate(ids, GenerationSettings(max_new_tokens=RATE_TOKENS), threading.Event(), on_token)
    first = (times[0] - started) if times else ASSUMED.first_token_s
    decode = ((len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0]
              else ASSUMED.decode_tokens_per_s)
    return first, decode, answer


class GpuTime:
    """The GPU seconds each kind of request asks for, from per-variant rates; check() refuses one over the cap."""

    def __init__(self, config, rates: dict[str, Rates], cap_s: float):
        self.config, self.cap_s = config, cap_s
        self._rates = dict(rates)
        self._lock = threading.Lock()

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

    def generation_s(self, variant_id: str, new_tokens: int) -> float:
        rates = self.rates(variant_id)
        return rates.first_token_s + new_tokens / rates.decode_tokens_per_s

    def compare_s(self, variant_ids: list[str], settings: GenerationSettings) -> float:
        """A comparison: each variant's answer, then per base with its baseline in the request, the baseline's
        answer and noise floor (two passes) and one pass through each other variant, at max_new_tokens."""
        seconds = sum(self.generation_s(v, settings.max_new_tokens) for v in variant_ids)
        scale = max(1.0, settings.max_new_tokens / 12)  # a pass over 12 tokens was measured; longer costs more
        for base in {self.config.variants[v].base for v in variant_ids}:
            baseline = self.config.bases[base].baseline
            group = [v for v in variant_ids if self.config.variants[v].base == base]
            if baseline in group and len(group) > 1:
                seconds += scale * (2 * self.rates(baseline).scoring_pass_s
                                    + sum(self.rates(v).scoring_pass_s for v in group if v != baseline))
        return self._asked(seconds)

    def evaluation_s(self, variant_ids: list[str], runs: int, max_new_tokens: int, text_chars: int) -> float:
        """An evaluation: each variant's passes over the text (its baseline's reference and noise floor once), then
        runs + 1 answers of max_new_tokens."""
        passes = max(1.0, text_chars / CHARS_PER_TOKEN / 12)
        baselines = {self.config.base_of(v).baseline for v in variant_ids} - {None}
        seconds = sum(passes * self.rates(v).scoring_pass_s + (runs + 1) * self.generation_s(v, max_new_tokens)
                      for v in variant_ids)
        seconds += sum(2 * passes * self.rates(b).scoring_pass_s for b in baselines)
        return self._asked(seconds)

    def _asked(self, estimate_s: float) -> float:
        return float(math.ceil(estimate_s * MARGIN + OVERHEAD_S))

    def check(self, seconds: float, what: str = "run") -> None:
        if seconds > self.cap_s:
            raise GpuTimeTooLong(f"this {what} would ask for about {seconds:.0f} s of GPU time; the limit here is "
                                 f"{self.cap_s:.0f} s: choose fewer variants or fewer new tokens")
