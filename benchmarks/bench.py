"""make bench: the app's own generation path against a bare model.generate, start-to-ready and cold loads.

First, in a separate process (python -m demo.quantize --variant ID, one process a variant), any GPTQ, AWQ or
GGUF file the variants need and the cache lacks: quantizing inside the measuring process left it slower for
every later row, bare loops included. Then the harness's own cost per token (benchmarks/harness_cost.py: a
stand-in runtime through Arena.compare).

For each variant: one cold load through the ModelManager, one uncounted warm-up of each path, then
interleaved pairs on the same loaded model and settings (app path and bare back to back, alternating which
goes first) until the app/bare ratio's interval lies within ±RESOLVE of it (at least --min-pairs, at most
--max-pairs). The app path is Arena.compare: streaming, tracking, decoding and snapshots included. "Bare" is
model.generate with a streamer that only appends a perf_counter timestamp per token (needed to separate the
first token from the decode phase), run on the same device thread as the app's generation (see
demo.running.device for why that matters on CPU).

The ratio is the median of the per-pair app/bare ratios with its sign-test interval (95%,
demo.measuring.paired_ratio): the two runs of a pair see the same machine, so load that comes and goes cancels
in their ratio; a pair hit by a burst of other work moves the median and its order-statistic interval by one
rank, not by its size; the interval's coverage holds for any distribution of pair ratios. Pairs stop on the
interval's width alone, never on where it lies against the target, so stopping does not steer the verdict.
The target check
says "met" (the whole interval at or above TARGET_RATIO), "not met" (wholly below) or "can't tell".

Then a long-prompt row: time to first token for a prompt of about LONG_PROMPT_TOKENS tokens with the same
weights under eager and sdpa attention (--attention-only runs just that row). Writes results/bench.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import harness_cost  # noqa: E402
from demo.artifacts import sources  # noqa: E402
from demo.config import load_config  # noqa: E402
from demo.measuring.paired_ratio import PairedRatio, paired_ratio  # noqa: E402
from demo.settings import prompt_ids  # noqa: E402
from demo.running.runner import Arena  # noqa: E402

PROMPT = "Write a long story about a dragon who learns to cook."
LONG_PROMPT_TOKENS = 1500  # prompt ids, chat template included
ATTENTION = ("eager", "sdpa")
TARGET_RATIO = 0.95
RESOLVE = 0.02  # pairs are added until the ratio's interval lies within ±2 % of it (or --max-pairs is reached)
HARNESS_TOKENS = 512  # the longest answer a request may ask for (models.yaml limits)
BARE = {"transformers": "model.generate with a streamer that only timestamps tokens",
        "llama.cpp": "llama-cpp-python's Llama.generate loop that only timestamps tokens"}


def bare_decode_tokens_per_s(loaded, settings) -> tuple[float, int]:
    """The runtime's own loop on the same loaded variant (LoadedVariant.bare_token_times)."""
    t = loaded.bare_token_times(prompt_ids(loaded.tokenizer, PROMPT), settings)
    return (len(t) - 1) / (t[-1] - t[0]), len(t)


def app_decode_tokens_per_s(arena: Arena, variant_id: str, settings) -> tuple[float, int]:
    [record] = arena.compare_records(PROMPT, [variant_id], settings)
    if record["error"]:
        raise RuntimeError(f"{variant_id}: {record['error']}")
    return record["decode_tokens_per_s"], record["new_tokens"]


def needs_a_made_file(variant) -> bool:
    """A GPTQ, AWQ or GGUF variant that loads a file demo.quantize makes into the cache."""
    return variant.method in ("gptq", "awq", "gguf") and variant.checkpoint is None


def made_file_present(config, variant) -> bool:
    """Whether demo.quantize has finished the variant's file (the load checks it is undamaged)."""
    base = config.bases[variant.base]
    if variant.method == "gguf":
        folder = sources.quantized_dir(base, "gguf", variant.file_settings)
        return (folder / sources.METADATA_FILE).is_file() and (folder / "model.gguf").is_file()
    return sources.is_complete_checkpoint(sources.quantized_dir(base, variant.method, variant.settings))


def make_missing_files(config, models: str | None, variant_ids: list[str]) -> dict[str, str]:
    """Make every missing quantized file in its own `python -m demo.quantize` process, before anything is
    measured; returns {variant id: why it could not be made} for those that failed."""
    failed = {}
    for variant_id in variant_ids:
        variant = config.variants[variant_id]
        if not needs_a_made_file(variant) or made_file_present(config, variant):
            continue
        print(f"{variant_id}: making its {variant.method.upper()} file first, in its own process", flush=True)
        cmd = [sys.executable, "-m", "demo.quantize", "--variant", variant_id] + (["--models", models] if models else [])
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            failed[variant_id] = lines[-1] if lines else f"demo.quantize exited {done.returncode}"
            print(f"{variant_id}: not made ({failed[variant_id]}); left out", flush=True)
    return failed


def measure_pairs(app, bare, min_pairs: int, max_pairs: int,
                  resolve: float = RESOLVE) -> tuple[list[float], list[float], set[int], PairedRatio]:
    """Interleaved app/bare pairs (alternating which goes first) until the ratio's interval lies within ±resolve
    of it, or max_pairs; app() and bare() each return (decode tokens/s, new tokens)."""
    app_rates, bare_rates, tokens = [], [], set()
    while True:
        pair = [(app, app_rates), (bare, bare_rates)]
        for measure, rates in pair if len(app_rates) % 2 == 0 else reversed(pair):
            rate, n = measure()
            rates.append(rate)
            tokens.add(n)
        if len(app_rates) >= min_pairs:
            ratio = paired_ratio(app_rates, bare_rates)
            if ratio.resolves(resolve) or len(app_rates) >= max_pairs:
                return app_rates, bare_rates, tokens, ratio


def variant_row(arena: Arena, variant_id: str, settings, min_pairs: int, max_pairs: int) -> dict:
    variant = arena.config.variants[variant_id]
    acquired = arena.device.call(arena.manager.get, variant_id)

    def app():
        return app_decode_tokens_per_s(arena, variant_id, settings)

    def bare():
        return arena.device.call(bare_decode_tokens_per_s, acquired.loaded, settings)

    app(), bare()  # warm-up, not counted
    app_rates, bare_rates, tokens, ratio = measure_pairs(app, bare, min_pairs, max_pairs)
    return {
        "variant": variant_id,
        "runtime": variant.runtime,
        "bare": BARE[variant.runtime],
        "app_decode_tokens_per_s": round(statistics.median(app_rates), 2),
        "bare_decode_tokens_per_s": round(statistics.median(bare_rates), 2),
        "ratio": round(ratio.ratio, 4),  # median of the per-pair app/bare ratios
        "ratio_low": round(ratio.low, 4),  # its sign-test interval
        "ratio_high": round(ratio.high, 4),
        "ratio_confidence": round(ratio.confidence, 4),  # the interval's exact coverage (at least 0.95)
        "pairs": ratio.pairs,
        "resolves_2_percent": ratio.resolves(RESOLVE),
        "target": ratio.verdict(TARGET_RATIO),  # met | not met | can't tell
        "cold_load_ms": round(acquired.load_ms, 1),
        "new_tokens": sorted(tokens),
        "app_runs_tokens_per_s": [round(x, 2) for x in app_rates],
        "bare_runs_tokens_per_s": [round(x, 2) for x in bare_rates],
    }


def harness_row(config, runs: int = 5) -> dict:
    """The arena's own cost per token (benchmarks/harness_cost.py) with the first base model's tokenizer and
    token ids of real text, so the answer's periodic decode costs what it costs for a real answer."""
    from transformers import AutoTokenizer

    base = next(iter(config.bases.values()))
    tokenizer = AutoTokenizer.from_pretrained(sources.resolve(base).location)
    text = (REPO / "assets" / "evaluation.txt").read_text(encoding="utf-8")
    tokens = tokenizer(text)["input_ids"]
    return harness_cost.measure(tokenizer, tokens, PROMPT, HARNESS_TOKENS, runs)


def long_prompt(tokenizer, tokens: int = LONG_PROMPT_TOKENS) -> str:
    """A request to summarize evaluation text cut so that the templated prompt is about `tokens` long."""
    text = (REPO / "assets" / "evaluation.txt").read_text(encoding="utf-8")
    words = text.split() * 2  # the shipped text alone is about 1,000 tokens
    head = "Summarize this text in one sentence.\n\n"
    low, high = 1, len(words)
    while low < high:  # the most words that keep the templated prompt within `tokens`
        mid = (low + high + 1) // 2
        if len(prompt_ids(tokenizer, head + " ".join(words[:mid]))) <= tokens:
            low = mid
        else:
            high = mid - 1
    return head + " ".join(words[:low])


def attention_rows(config, variant_id: str, runs: int) -> list[dict]:
    """Time to first token on a long prompt for the same weights under each attention implementation,
    interleaved (eager, sdpa, sdpa, eager, ...), each variant loaded once through the app's own path."""
    base = config.variants[variant_id]
    ids = {name: f"{variant_id}@{name}" for name in ATTENTION}
    extra = {ids[name]: dataclasses.replace(base, id=ids[name], attn_implementation=name) for name in ATTENTION}
    arena = Arena(dataclasses.replace(config, variants={**config.variants, **extra}))
    settings = arena.settings(max_new_tokens=2)
    loaded = arena.device.call(arena.manager.get, ids[ATTENTION[0]]).loaded
    prompt = long_prompt(loaded.tokenizer)
    ttft: dict[str, list[float]] = {name: [] for name in ATTENTION}
    used, prompt_tokens = {}, None
    for run in range(runs + 1):  # the first round warms each variant up and is not counted
        for name in ATTENTION if run % 2 == 0 else reversed(ATTENTION):
            [record] = arena.compare_records(prompt, [ids[name]], settings)
            if record["error"]:
                raise RuntimeError(f"{ids[name]}: {record['error']}")
            used[name], prompt_tokens = record["stored"]["attn_implementation"], record["prompt_tokens"]
            if run:
                ttft[name].append(record["ttft_ms"])
    return [{"variant": variant_id, "attn_implementation": used[name], "prompt_tokens": prompt_tokens,
             "ttft_ms_p50": round(statistics.median(ttft[name]), 1), "runs": runs,
             "ttft_ms_runs": [round(x, 1) for x in ttft[name]]} for name in ATTENTION]


def free_port() -> int:
    """A loopback port nobody is listening on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app_server(models: str | None, timeout_s: float = 120):
    """`python app.py` on a free loopback port, as deployed, until the block ends; yields its URL and the
    seconds it took from launch to answering (no model loaded yet)."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "app.py"] + (["--models", models] if models else [])
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("app.py exited before it was ready")
                if time.perf_counter() - start > timeout_s:
                    raise RuntimeError(f"app.py was not ready within {timeout_s:.0f} s")
                time.sleep(0.05)
        yield url, time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def start_to_ready_s(models: str | None) -> float:
    """Seconds from `python app.py` to the page answering, with no model loaded yet."""
    with app_server(models) as (_, ready_s):
        return ready_s


def write_json(result: dict, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="models file (default: $ARENA_MODELS, else models.yaml)")
    parser.add_argument("--variants", help="comma-separated ids (default: every variant in the file)")
    parser.add_argument("--min-pairs", type=int, default=10, help="interleaved app/bare pairs per variant, at least")
    parser.add_argument("--max-pairs", type=int, default=60, help="at most, if the ratio's interval is still "
                        f"wider than ±{RESOLVE:.0%}")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", default=str(REPO / "results" / "bench.json"))
    parser.add_argument("--attention-variant", help="weights for the long-prompt eager/sdpa row (default: the "
                        "first base model's baseline)")
    parser.add_argument("--attention-runs", type=int, default=3, help="interleaved runs per attention implementation")
    parser.add_argument("--attention-only", action="store_true", help="run only the long-prompt attention row")
    args = parser.parse_args()

    config = load_config(args.models)
    attention_variant = args.attention_variant or next(iter(config.bases.values())).baseline
    if args.attention_only:
        rows = attention_rows(config, attention_variant, args.attention_runs)
        _print_attention(rows)
        write_json({"long_prompt_attention": rows}, args.out)
        return 0
    variant_ids = args.variants.split(",") if args.variants else list(config.variants)
    not_made = make_missing_files(config, args.models, variant_ids)  # nothing is quantized in this process
    harness = harness_row(config)
    print(f"harness: {harness['harness_us_per_token']:.1f} us a token (goal under {harness['goal_us_per_token']:.0f}; "
          f"free-running {harness['free']['through_us_per_token']:.1f}, paced at "
          f"{harness['paced']['pace_us'] / 1e3:.1f} ms {harness['paced']['added_us_per_token']:.1f} added, "
          f"{harness['paced']['cpu_us_per_token']:.1f} of CPU)", flush=True)
    arena = Arena(config)
    settings = arena.settings(max_new_tokens=args.max_new_tokens)
    ready_s = start_to_ready_s(args.models)
    print(f"start to ready: {ready_s:.1f} s", flush=True)
    rows = []
    for variant_id in variant_ids:
        if variant_id in not_made:
            rows.append({"variant": variant_id, "error": f"not measured: its file could not be made "
                                                       f"({not_made[variant_id]})"})
            continue
        row = variant_row(arena, variant_id, settings, args.min_pairs, args.max_pairs)
        rows.append(row)
        print(f"{variant_id:<20} app {row['app_decode_tokens_per_s']:7.2f} tok/s  bare "
              f"{row['bare_decode_tokens_per_s']:7.2f} tok/s  app/bare {row['ratio']:.3f} "
              f"[{row['ratio_low']:.3f}, {row['ratio_high']:.3f}] over {row['pairs']} pairs: target "
              f"{TARGET_RATIO} {row['target']}  cold load {row['cold_load_ms'] / 1e3:.1f} s", flush=True)
        arena.manager.evict(variant_id)  # one variant resident at a time: no cross-talk
    attention = attention_rows(config, attention_variant, args.attention_runs)
    _print_attention(attention)
    result = {
        "environment": arena.environment(),
        "conditions": {"prompt": PROMPT, "settings": settings.describe(),
                       "statistic": "median of per-pair app/bare ratios, sign-test interval",
                       "pairs": f"interleaved, alternating which goes first; {args.min_pairs} to {args.max_pairs}, "
                                f"until the interval is within ±{RESOLVE:.0%} of the ratio",
                       "target_ratio": TARGET_RATIO,
                       "bare": "each runtime's own generation loop on the same loaded variant, timestamps only",
                       "quantized_files": "made beforehand, each in its own python -m demo.quantize process",
                       "load_average_1m": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count()},
        "harness": harness,
        "start_to_ready_s": round(ready_s, 2),
        "variants": rows,
        # every measured variant's app/bare interval at or above the target ("can't tell" counts as not shown)
        "meets_target": all(row.get("target") == "met" for row in rows),
        "long_prompt_attention": attention,
    }
    write_json(result, args.out)
    return 0


def _print_attention(rows: list[dict]) -> None:
    for row in rows:
        print(f"{row['variant']} attention {row['attn_implementation']:<6} {row['prompt_tokens']} prompt tokens: "
              f"time to first token {row['ttft_ms_p50']:8.1f} ms (median of {row['runs']})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
