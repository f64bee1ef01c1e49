"""make bench: the app's own generation path against a bare model.generate, start-to-ready and cold loads.

For each variant: one cold load through the ModelManager, then RUNS interleaved pairs on the same
loaded model and settings (app path, then bare, alternating which goes first). The app path is
Arena.compare: streaming, tracking, decoding and snapshots included. "Bare" is model.generate with
a streamer that only appends a perf_counter timestamp per token (needed to separate the first token
from the decode phase), run on the same device thread as the app's generation (see demo.running.device for
why that matters on CPU). Then a long-prompt row: time to first token for a prompt of about
LONG_PROMPT_TOKENS tokens with the same weights under eager and sdpa attention (--attention-only runs just
that row). Writes results/bench.json.
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

from demo.config import load_config  # noqa: E402
from demo.settings import prompt_ids  # noqa: E402
from demo.artifacts.quantize import quantize_variant  # noqa: E402
from demo.running.runner import Arena  # noqa: E402

PROMPT = "Write a long story about a dragon who learns to cook."
LONG_PROMPT_TOKENS = 1500  # prompt ids, chat template included
ATTENTION = ("eager", "sdpa")
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
    parser.add_argument("--runs", type=int, default=5, help="interleaved app/bare pairs per variant")
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
    arena = Arena(config)
    settings = arena.settings(max_new_tokens=args.max_new_tokens)
    ready_s = start_to_ready_s(args.models)
    print(f"start to ready: {ready_s:.1f} s", flush=True)
    variant_ids = args.variants.split(",") if args.variants else list(config.variants)
    rows = []
    for variant_id in variant_ids:
        variant = config.variants[variant_id]
        if variant.method in ("gptq", "awq", "gguf") and variant.checkpoint is None:
            print(f"{variant_id}: making its {variant.method.upper()} file first (once)", flush=True)
            arena.device.call(quantize_variant, config, variant_id)
        acquired = arena.device.call(arena.manager.get, variant_id)
        app, bare, tokens = [], [], set()
        for run in range(args.runs):
            pair = [("app", lambda: app_decode_tokens_per_s(arena, variant_id, settings)),
                    ("bare", lambda: arena.device.call(bare_decode_tokens_per_s, acquired.loaded, settings))]
            for name, measure in pair if run % 2 == 0 else reversed(pair):
                rate, n = measure()
                (app if name == "app" else bare).append(rate)
                tokens.add(n)
        row = {
            "variant": variant_id,
            "runtime": variant.runtime,
            "bare": BARE[variant.runtime],
            "app_decode_tokens_per_s": round(statistics.median(app), 2),
            "bare_decode_tokens_per_s": round(statistics.median(bare), 2),
            "ratio": round(statistics.median(app) / statistics.median(bare), 3),
            "cold_load_ms": round(acquired.load_ms, 1),
            "runs": args.runs,
            "new_tokens": sorted(tokens),
            "app_runs_tokens_per_s": [round(x, 2) for x in app],
            "bare_runs_tokens_per_s": [round(x, 2) for x in bare],
        }
        rows.append(row)
        print(f"{variant_id:<20} app {row['app_decode_tokens_per_s']:7.2f} tok/s  bare "
              f"{row['bare_decode_tokens_per_s']:7.2f} tok/s  ratio {row['ratio']:.3f}  cold load "
              f"{row['cold_load_ms'] / 1e3:.1f} s", flush=True)
        arena.manager.evict(variant_id)  # one variant resident at a time: no cross-talk
    attention = attention_rows(config, attention_variant, args.attention_runs)
    _print_attention(attention)
    result = {
        "environment": arena.environment(),
        "conditions": {"prompt": PROMPT, "settings": settings.describe(), "statistic": "median",
                       "bare": "each runtime's own generation loop on the same loaded variant, timestamps only"},
        "start_to_ready_s": round(ready_s, 2),
        "variants": rows,
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
