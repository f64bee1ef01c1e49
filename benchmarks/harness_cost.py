"""The arena's own cost per token: a stand-in runtime that hands over precomputed tokens as fast as it can,
run through exactly the path a real variant takes (Arena.compare: admission and turns, the ModelManager,
VariantRunner on the device thread, StreamingGeneration's queue, the latency and memory trackers, the
periodic decode of the answer and the snapshots), so that whatever time passes per token is the harness's.

It runs twice, in microseconds per token (medians over runs):
- free: tokens handed over as fast as Python can. `through_us_per_token` runs from the first token handed over
  to the final record, so it counts everything the path does per token and at the run's end (the last
  decode, the memory sampler's stop, the snapshots), however far the reader lags behind; `recorded_us_per_token`
  is 1e6 / the record's decode_tokens_per_s, the time the harness adds between a free runtime's tokens.
- paced: a token every PACE_S (1.7 ms: llama.cpp's pace for the bundled model on an H100), the stand-in
  sleeping in between with the interpreter lock released, as a C runtime computes. Free-running tokens arrive
  in bursts the reader takes in one wake-up; paced, the reader wakes once a token, as it does for a real
  runtime. `added_us_per_token` is the record's time per token minus the stand-in's own bare loop at the same
  pace: what the harness adds to a reported GPU-speed token. `cpu_us_per_token` is the process's CPU time per
  token beyond the bare loop's (thread wake-ups, the memory sampler, the periodic decode): on a CPU this is
  taken from the cores the runtime decodes on.
`harness_us_per_token` is the larger of free through and paced added, held against the goal (GOAL_US):
at 1.7 ms a token, 100 us would hide 6 % of the decode rate.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from demo.backends.base import LoadedVariant
from demo.config import load_config
from demo.running.manager import ModelManager
from demo.running.runner import Arena

GOAL_US = 100.0
PACE_S = 0.0017  # llama.cpp's time per token for the bundled model on an H100
VARIANT_ID = "stand-in"
CONFIG = """
bases:
  stand-in: {{source: {{kind: local, path: .}}}}
variants:
  - {{id: {variant}, base: stand-in, method: fp32}}
limits:
  max_new_tokens: {tokens}
"""


class StandIn(LoadedVariant):
    """A runtime that costs nothing: generate() hands over `tokens` (cycled) as fast as Python can call on_token."""

    runtime = "stand-in"

    def __init__(self, variant, tokenizer, tokens: list[int], pace_s: float = 0.0):
        super().__init__(variant, tokenizer, "cpu", 0, frozenset(), None)
        self.tokens = tokens
        self.pace_s = pace_s  # > 0: sleep this long before each token (the GIL released, as a C runtime does)
        self.first_s: float | None = None  # when the last generate() handed over its first token

    def generate(self, prompt_ids, settings, stop: threading.Event, on_token) -> None:
        clock = time.perf_counter
        self.first_s = None
        for token_id in itertools.islice(itertools.cycle(self.tokens), settings.max_new_tokens):
            if stop.is_set():
                return
            if self.pace_s:
                time.sleep(self.pace_s)
            at_s = clock()
            if self.first_s is None:
                self.first_s = at_s
            on_token(token_id, at_s)

    def bare_token_times(self, prompt_ids, settings) -> list[float]:
        clock, times = time.perf_counter, []
        for _ in itertools.islice(itertools.cycle(self.tokens), settings.max_new_tokens):
            if self.pace_s:
                time.sleep(self.pace_s)
            times.append(clock())
        return times

    def logits(self, ids, prompt_tokens=None):
        raise NotImplementedError("the stand-in runtime has no model")

    def free(self) -> None:
        self.tokens = []


def stand_in_arena(tokenizer, tokens: list[int], max_new_tokens: int,
                   runtime_class: type[StandIn] = StandIn) -> tuple[Arena, StandIn]:
    """An Arena over one stand-in variant (its base has no baseline: no scoring after the run), on the
    process's shared device thread like every real variant."""
    with tempfile.TemporaryDirectory(prefix="stand-in-") as folder:
        path = Path(folder) / "models.yaml"
        path.write_text(CONFIG.format(variant=VARIANT_ID, tokens=max(max_new_tokens, 512)))
        config = load_config(path)
    runtime: list[StandIn] = []

    def loader(variant, base) -> StandIn:
        runtime.append(runtime_class(variant, tokenizer, tokens))
        return runtime[-1]

    arena = Arena(config, ModelManager(config, loader, estimator=lambda variant, base: None))
    arena.device.call(arena.manager.get, VARIANT_ID)
    return arena, runtime[0]


def one_run(arena: Arena, stand_in: StandIn, prompt: str, max_new_tokens: int) -> dict[str, float]:
    """One comparison of the stand-in alone, and the stand-in's bare loop right after it (same pace); figures
    in microseconds per token."""
    settings = arena.settings(max_new_tokens=max_new_tokens)
    final, cpu_s = None, time.process_time()
    for final in arena.compare(prompt, [VARIANT_ID], settings):
        pass
    done_s, cpu_s = time.perf_counter(), time.process_time() - cpu_s
    [record] = [r.to_record() for r in final]
    if record["error"] or record["new_tokens"] != max_new_tokens:
        raise RuntimeError(f"the stand-in run went wrong: {record['error'] or record['new_tokens']} tokens")
    bare_cpu_s = time.process_time()
    bare = arena.device.call(stand_in.bare_token_times, [], settings)
    bare_cpu_s = time.process_time() - bare_cpu_s
    per_token = 1e6 / (max_new_tokens - 1)
    return {"recorded_us_per_token": 1e6 / record["decode_tokens_per_s"],
            "through_us_per_token": (done_s - stand_in.first_s) * per_token,
            "bare_us_per_token": (bare[-1] - bare[0]) * per_token,
            "cpu_us_per_token": (cpu_s - bare_cpu_s) * 1e6 / max_new_tokens}


def measure(tokenizer, tokens: list[int], prompt: str, max_new_tokens: int, runs: int,
            pace_s: float = PACE_S) -> dict[str, Any]:
    """The harness's cost per token, free-running and paced: medians over `runs` comparisons each, after one
    uncounted warm-up."""
    arena, stand_in = stand_in_arena(tokenizer, tokens, max_new_tokens)
    result: dict[str, Any] = {"new_tokens": max_new_tokens, "runs": runs, "statistic": "median",
                              "goal_us_per_token": GOAL_US}
    for name, pace in (("free", 0.0), ("paced", pace_s)):
        stand_in.pace_s = pace
        one_run(arena, stand_in, prompt, max_new_tokens)
        figures = [one_run(arena, stand_in, prompt, max_new_tokens) for _ in range(runs)]
        median = {key: statistics.median(f[key] for f in figures) for key in figures[0]}
        added = statistics.median(f["recorded_us_per_token"] - f["bare_us_per_token"] for f in figures)
        result[name] = {"pace_us": round(pace * 1e6, 1), **{k: round(v, 2) for k, v in median.items()},
                        "added_us_per_token": round(added, 2)}
    result["harness_us_per_token"] = max(result["free"]["through_us_per_token"],
                                         result["paced"]["added_us_per_token"])
    result["meets_goal"] = result["harness_us_per_token"] < GOAL_US
    return result
