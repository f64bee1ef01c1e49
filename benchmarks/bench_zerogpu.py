"""make bench, ZeroGPU part: the emulated ZeroGPU path's decode rate against the normal path's, on the same variants.

The normal path is Arena.compare on this process's device thread; the emulated path is the same comparison through
ZeroGpuArena (ARENA_ZEROGPU_EMULATE's process model): the whole run in a worker forked from this process, its
snapshots pickled back every STREAM_INTERVAL_S. RUNS interleaved pairs per variant, alternating which path goes
first. The ratio is make bench's paired statistic (benchmarks/bench_page.paired_verdict over
demo.measuring.paired_ratio): the median of the per-pair emulated/normal decode-rate ratios with its 95% sign-test
interval; the target (at least TARGET_RATIO: pickling the snapshots must not slow the work) is "met" only where
the whole interval is at or above it, "not met" where it is wholly below, else "can't tell". The ratio of the
two paths' medians is kept beside it (ratio_of_medians). Exits 1 where a variant's target is "not met".
Writes results/bench_zerogpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the emulation is a CPU one: both paths run on the CPU

from benchmarks.bench_page import RUNS, STATISTIC, interval_text, paired_verdict  # noqa: E402
from demo.config import load_config  # noqa: E402
from demo.measuring.paired_ratio import MIN_PAIRS  # noqa: E402
from demo.running import zerogpu  # noqa: E402
from demo.running.runner import Arena  # noqa: E402

PROMPT = "Write a long story about a dragon who learns to cook."
TARGET_RATIO = 0.95
DEFAULT_VARIANTS = "smollm2/bf16,smollm2/fp32"


def decode_rate(arena: Arena, variant_id: str, settings) -> float:
    [record] = arena.compare_records(PROMPT, [variant_id], settings)
    if record["error"] or not record["decode_tokens_per_s"]:
        raise RuntimeError(f"{variant_id}: {record['error'] or 'no decode rate'}")
    return record["decode_tokens_per_s"]


def profile_of(models: str | None, variant_ids: list[str], folder: Path) -> Path:
    """The models file cut to the benchmarked variants: ZeroGPU mode places every variant of its profile."""
    raw = yaml.safe_load(Path(models or REPO / "models.yaml").read_text())
    baselines = {base.get("baseline") for base in raw["bases"].values()}  # a profile keeps its baselines
    raw["variants"] = [v for v in raw["variants"] if v["id"] in variant_ids or v["id"] in baselines]
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="models file (default: models.yaml)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated ids")
    parser.add_argument("--runs", type=int, default=RUNS, help="interleaved normal/emulated pairs per variant (at "
                        f"least {MIN_PAIRS} for a 95%% interval; fewer always say can't tell)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", default=str(REPO / "results" / "bench_zerogpu.json"))
    args = parser.parse_args()
    variant_ids = args.variants.split(",")
    with tempfile.TemporaryDirectory() as folder:
        config = load_config(profile_of(args.models, variant_ids, Path(folder)))
    emulated = zerogpu.ZeroGpuArena.start(config, "emulated", cap_s=float("inf"))
    normal = Arena(config)
    settings = normal.settings(max_new_tokens=args.max_new_tokens)
    rows = []
    for variant_id in variant_ids:
        decode_rate(normal, variant_id, settings)  # the normal path's cold load, and the worker's start, untimed
        decode_rate(emulated, variant_id, settings)
        rates: dict[str, list[float]] = {"normal": [], "emulated": []}
        for run in range(args.runs):
            for path in (("normal", "emulated") if run % 2 == 0 else ("emulated", "normal")):
                rates[path].append(decode_rate(normal if path == "normal" else emulated, variant_id, settings))
        ratio = statistics.median(rates["emulated"]) / statistics.median(rates["normal"])
        verdict = paired_verdict(rates["emulated"], rates["normal"], TARGET_RATIO)
        rows.append({"variant": variant_id, "normal_decode_tokens_per_s": rates["normal"],
                     "emulated_decode_tokens_per_s": rates["emulated"], "ratio_of_medians": round(ratio, 3),
                     **verdict,  # ratio (median of the pair ratios), its interval, pairs, target
                     "meets_target": verdict["target"] == "met"})
        print(f"{variant_id}: emulated ZeroGPU / normal decode = {interval_text(verdict)} (target >= "
              f"{TARGET_RATIO}; ratio of medians {ratio:.3f}; runs of {args.max_new_tokens} new tokens)")
    emulated._gpu.shutdown()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"prompt": PROMPT, "max_new_tokens": args.max_new_tokens, "runs": args.runs,
                               "statistic": STATISTIC, "target_ratio": TARGET_RATIO, "variants": rows,
                               "environment": normal.environment()}, indent=2))
    print(f"wrote {out}")
    # a failure only where the pairs show the target missed; "can't tell" is reported, and make bench goes on
    return 1 if any(r["target"] == "not met" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
