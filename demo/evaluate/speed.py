"""Speed and memory through the app's own path (Arena.compare): one warm-up, then the timed runs; and the size
of a variant's own files on disk."""

from __future__ import annotations

from demo.artifacts import sources
from demo.config import CHECKPOINT_METHODS
from demo.errors import ArenaError
from demo.evaluate.records import VariantEvaluation
from demo.measuring import metrics
from demo.running.runner import Arena

SPEED_PROMPT = "Write a short story about a lighthouse keeper."


def measure(arena: Arena, result: VariantEvaluation, settings, runs: int) -> None:
    records = []
    for run in range(runs + 1):  # run 0 is the warm-up and is not counted
        [record] = arena.compare_records(SPEED_PROMPT, [result.variant], settings)
        if record["error"]:
            raise ArenaError(record["error"])
        if run:
            records.append(record)
    ttft = [r["ttft_ms"] for r in records if r["ttft_ms"] is not None]
    decode = [r["decode_tokens_per_s"] for r in records if r["decode_tokens_per_s"] is not None]
    result.runs = len(records)
    result.ttft_ms_p50 = round(metrics.percentile(ttft, 50), 1) if ttft else None
    result.decode_tokens_per_s_p50 = round(metrics.percentile(decode, 50), 2) if decode else None
    result.decode_tokens_per_s_p90 = round(metrics.percentile(decode, 90), 2) if decode else None
    weights, peaks = records[-1]["weights_mib"], [r["peak_memory_mib"] for r in records if r["peak_memory_mib"] is not None]
    result.weights_mib = None if weights is None else round(weights, 1)  # remote: what the engine reports, or none
    result.peak_memory_mib = round(max(peaks), 1) if peaks else None
    result.achieved_bandwidth_gb_s_p50 = _median(records, "achieved_bandwidth_gb_s", 3)
    result.bandwidth_share_p50 = _median(records, "bandwidth_share", 4)
    result.energy_joules_per_token_p50 = _median(records, "energy_joules_per_token", 6)
    result.energy_source = records[-1].get("energy_source")
    result.kernel = records[-1].get("kernel")


def _median(records: list[dict], field: str, digits: int) -> float | None:
    """The median of a figure over the runs that have it; None when none has (never 0 for unknown)."""
    values = [r[field] for r in records if r.get(field) is not None]
    return round(metrics.percentile(values, 50), digits) if values else None


def disk_mib(arena: Arena, variant_id: str) -> float | None:
    """Size of the variant's own file(s) on disk (GPTQ, AWQ, AutoRound, GGUF), None where it is quantized at load time."""
    variant = arena.config.variants[variant_id]
    if variant.method not in (*CHECKPOINT_METHODS, "gguf"):
        return None
    from demo.artifacts.quantize import folder_mib

    if variant.checkpoint is not None:
        path = variant.checkpoint.path
        if path is not None and path.is_dir():  # a pre-made checkpoint folder (GPTQ, AWQ)
            return round(folder_mib(path), 1)
        return round(path.stat().st_size / 2**20, 1) if path is not None and path.is_file() else None
    folder = sources.quantized_dir(arena.config.bases[variant.base], variant.method, variant.file_settings)
    return round(folder_mib(folder), 1) if folder.is_dir() else None
