"""make bench, scaling part: how speed and memory grow with model size, against the machine's measured bandwidth.

For each size (the bundled 135M model, models.yaml; the Llama-3.2-1B shape with random weights,
models.synthetic.yaml; on a GPU, --models can add the 8B shape) and each family (fp32/bf16, bitsandbytes int8 and
NF4, torchao int8 and int4, GGUF Q8_0 and Q4_K_M), one row: decode tokens/s, time to first token, weights and peak
memory, and the achieved bandwidth (weights bytes x decode rate, gpt-fast's figure) as a share of the bandwidth this
process measured on its own device (demo.measuring.bandwidth). Random weights make no difference to speed or memory
(every answer runs to exactly the requested tokens), which is why LLM-Perf measures the same way.

Every file a variant needs (GGUF conversions, the random-weights checkpoint) is made first, in a separate process
(python -m demo.quantize), so nothing is quantized inside the measuring process. Each variant is then loaded once,
run once to warm up, and timed over RUNS comparisons through the app's own path (Arena.compare); the row reports
medians. Only one variant is resident at a time. Writes results/scaling.json and results/scaling.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from benchmarks.bench import make_missing_files, write_json  # noqa: E402
from demo.config import load_config  # noqa: E402
from demo.running.runner import Arena  # noqa: E402

PROMPT = "Write a long story about a dragon who learns to cook."
# (models file, variant ids): the families the scaling table follows, at each size this CPU can hold
SIZES = {
    "models.yaml": ["smollm2/fp32", "smollm2/bf16", "smollm2/bnb-int8", "smollm2/bnb-nf4", "smollm2/torchao-int8",
                    "smollm2/torchao-int4", "smollm2/gguf-q8_0", "smollm2/gguf-q4_k_m"],
    "models.synthetic.yaml": ["llama-1b-random/bf16", "llama-1b-random/bnb-nf4", "llama-1b-random/torchao-int8",
                              "llama-1b-random/torchao-int4", "llama-1b-random/gguf-q8_0",
                              "llama-1b-random/gguf-q4_k_m"],
}


def measure(arena: Arena, variant_id: str, settings, runs: int) -> dict:
    """Load once, warm up once, then the medians of `runs` comparisons through the app's path."""
    acquired = arena.device.call(arena.manager.get, variant_id)
    records = []
    for run in range(runs + 1):  # the first is a warm-up and is not counted
        [record] = arena.compare_records(PROMPT, [variant_id], settings)
        if record["error"]:
            raise RuntimeError(f"{variant_id}: {record['error']}")
        if run:
            records.append(record)
    arena.manager.evict(variant_id)

    def median(field: str) -> float | None:
        values = [r[field] for r in records if r[field] is not None]
        return statistics.median(values) if values else None

    last = records[-1]
    return {
        "variant": variant_id, "base": last["base"], "base_label": last["model"], "method": last["method"],
        "random_weights": bool(last.get("random_weights")), "device": last["device"],
        "new_tokens": sorted({r["new_tokens"] for r in records}),
        "decode_tokens_per_s": _round(median("decode_tokens_per_s"), 2),
        "ttft_ms": _round(median("ttft_ms"), 1),
        "weights_mib": _round(last["weights_mib"], 1),
        "peak_memory_mib": _round(median("peak_memory_mib"), 1),
        "achieved_bandwidth_gb_s": _round(median("achieved_bandwidth_gb_s"), 2),
        "measured_bandwidth_gb_s": _round(last["measured_bandwidth_gb_s"], 1),
        "bandwidth_share": _round(median("bandwidth_share"), 3),
        "cold_load_ms": round(acquired.load_ms, 1),
        "runs": runs,
        "decode_runs_tokens_per_s": [_round(r["decode_tokens_per_s"], 2) for r in records],
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def chart(rows: list[dict], bandwidth_gb_s: float | None, out: Path, machine: str = "") -> None:
    """Decode tokens/s against weights size (log-log), one colour per family and one marker per size, with the line
    a runtime reading its weights once per token at the measured bandwidth would follow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    rows = [r for r in rows if r.get("decode_tokens_per_s") is not None]  # not error rows
    markers = dict(zip(sorted({r["base_label"] for r in rows}), "osD^v"))
    families = list(dict.fromkeys(r["variant"].split("/", 1)[1] for r in rows))
    colours = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}
    for row in rows:
        x = row["weights_mib"] * 2**20 / 1e9
        ax.scatter(x, row["decode_tokens_per_s"], marker=markers[row["base_label"]], s=40,
                   color=colours[row["variant"].split("/", 1)[1]])
        ax.annotate(row["variant"].split("/", 1)[1], (x, row["decode_tokens_per_s"]), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")
    xs = [r["weights_mib"] * 2**20 / 1e9 for r in rows]
    if bandwidth_gb_s and xs:
        lo, hi = min(xs) / 1.5, max(xs) * 1.5
        ax.plot([lo, hi], [bandwidth_gb_s / lo, bandwidth_gb_s / hi], "k--", linewidth=1,
                label=f"measured bandwidth {bandwidth_gb_s:.1f} GB/s ÷ weights")
    for label, marker in markers.items():
        ax.scatter([], [], marker=marker, color="grey", label=label)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("weights (GB, as the runtime stores them)")
    ax.set_ylabel("decode tokens/s (batch 1)")
    ax.set_title("Decode speed against weights size" + (f"\n{machine}" if machine else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def machine_name(environment: dict | None) -> str:
    env = environment or {}
    features = ", ".join(f for f in env.get("cpu_features") or [] if f.startswith(("avx512f", "amx"))) or "no AVX-512"
    return f"{env.get('device_name', '')} ({features})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", action="append", help="models file(s) to take variants from (default: "
                        + ", ".join(SIZES) + ")")
    parser.add_argument("--variants", help="comma-separated ids (default: the families above)")
    parser.add_argument("--runs", type=int, default=3, help="timed comparisons per variant, after one warm-up")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default=str(REPO / "results" / "scaling.json"))
    parser.add_argument("--chart-only", action="store_true", help="redraw the chart from the JSON already written")
    args = parser.parse_args()
    if args.chart_only:
        done = json.loads(Path(args.out).read_text())
        bandwidth_gb_s = ((done["environment"] or {}).get("memory_bandwidth", {}).get("cpu") or {}).get("gb_s")
        chart(done["variants"], bandwidth_gb_s, Path(args.out).with_suffix(".png"), machine_name(done["environment"]))
        return 0

    wanted = set(args.variants.split(",")) if args.variants else None
    rows, environment = [], None
    for models in args.models or list(SIZES):
        config = load_config(REPO / models if not Path(models).is_absolute() else models)
        variant_ids = [v for v in (SIZES.get(models) or list(config.variants)) if wanted is None or v in wanted]
        if not variant_ids:
            continue
        start = time.perf_counter()
        failed = make_missing_files(config, models, variant_ids)  # each in its own process, before any timing
        print(f"{models}: files ready in {time.perf_counter() - start:.0f} s", flush=True)
        rows += [{"variant": v, "error": f"not measured: {why}"} for v, why in failed.items()]
        variant_ids = [v for v in variant_ids if v not in failed]
        arena = Arena(config)
        environment = arena.environment()  # measures the machine's bandwidth once, on the device thread
        settings = arena.settings(max_new_tokens=args.max_new_tokens)
        for variant_id in variant_ids:
            row = measure(arena, variant_id, settings, args.runs)
            rows.append(row)
            share = row["bandwidth_share"]
            print(f"{variant_id:<30} {row['decode_tokens_per_s'] or 0:8.2f} tok/s  ttft {row['ttft_ms']:8.1f} ms  "
                  f"weights {row['weights_mib']:8.1f} MiB  peak {row['peak_memory_mib'] or 0:8.1f} MiB  "
                  f"bandwidth {row['achieved_bandwidth_gb_s'] or 0:6.2f} GB/s "
                  f"({'-' if share is None else f'{share:.0%}'} of measured)", flush=True)
        arena.manager.clear()
    measured = (environment or {}).get("memory_bandwidth", {}).get("cpu", {}) or {}
    result = {
        "environment": environment,
        "conditions": {"prompt": PROMPT, "max_new_tokens": args.max_new_tokens, "runs": args.runs,
                       "statistic": "median of the timed runs after one warm-up",
                       "bandwidth": "achieved = weights bytes x decode tokens/s (1e9 bytes/s); share = achieved / "
                                    "the copy bandwidth this process measured on the same device"},
        "variants": rows,
    }
    out = Path(args.out)
    write_json(result, out)
    chart(rows, measured.get("gb_s"), out.with_suffix(".png"), machine_name(environment))
    return 0


if __name__ == "__main__":
    sys.exit(main())
