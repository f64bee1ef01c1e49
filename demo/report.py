"""Result records as text people read: every figure with its unit, the same in the CLI and the page."""

from __future__ import annotations

import html
from typing import Any

MEMORY_KINDS = {
    "cpu-rss": "weights + process RSS growth during the run (approximate: mmap and allocator caching)",
    "cuda-allocated": "weights + peak CUDA memory allocated during the run (torch.cuda.max_memory_allocated)",
}

SUMMARY_HEADERS = ["variant", "method", "bits", "status", "new tokens", "TTFT (ms)", "decode (tok/s)",
                   "total (ms)", "load (ms)", "weights (MiB)", "peak (MiB)"]


def _num(value: float | None, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{' ' + unit if unit else ''}"


def load_text(record: dict[str, Any]) -> str:
    if record.get("load_ms") is None:
        return "–"
    if record.get("cache_hit"):
        return f"cached ({record['load_ms']:.2f} ms)"
    return f"cold {record['load_ms'] / 1e3:,.1f} s"


def figures(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value with unit) pairs for one variant's record."""
    return [
        ("load", load_text(record)),
        ("time to first token", _num(record.get("ttft_ms"), 0, "ms")),
        ("decode", _num(record.get("decode_tokens_per_s"), 1, "tokens/s")),
        ("total", _num(record.get("total_ms"), 0, "ms")),
        ("tokens", f"{_num(record.get('prompt_tokens'))} prompt → {record.get('new_tokens', 0)} new"),
        ("weights", _num(record.get("weights_mib"), 0, "MiB")),
        ("peak memory", _num(record.get("peak_memory_mib"), 0, "MiB")
         + (" (approx.)" if record.get("memory_kind") == "cpu-rss" else "")),
        ("vs baseline", fidelity_text(record)),
    ]


def fidelity_text(record: dict[str, Any]) -> str:
    fid = record.get("fidelity")
    if not fid:
        return "–"
    if fid["baseline"] == record["variant"]:
        return "baseline"
    first = fid["first_divergence_token"]
    where = "never diverges" if first is None else f"first differs at answer token {first}"
    return f"KL {fid['kl_divergence']:.3f} nats · top-1 {100 * fid['top1_agreement']:.0f}% · {where}"


def divergence_markdown(record: dict[str, Any]) -> str:
    """The variant's text with the part after its first departure from the baseline's text marked."""
    cut, text = record.get("diverges_at_char"), record.get("text") or ""
    if cut is None:
        return ""
    return f"{html.escape(text[:cut])}<mark>{html.escape(text[cut:])}</mark>"


def figures_markdown(record: dict[str, Any]) -> str:
    rows = "\n".join(f"| {label} | {value} |" for label, value in figures(record))
    return f"| figure | value |\n|---|---|\n{rows}"


def summary_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows for the summary table, in SUMMARY_HEADERS order; numbers rounded, missing ones None."""
    def r(value, digits):
        return None if value is None else round(value, digits)

    return [[rec["variant"], rec["method"], rec["bits"], rec["status"], rec["new_tokens"], r(rec["ttft_ms"], 0),
             r(rec["decode_tokens_per_s"], 1), r(rec["total_ms"], 0), r(rec["load_ms"], 1),
             r(rec["weights_mib"], 0), r(rec["peak_memory_mib"], 0)] for rec in records]


def text_report(records: list[dict[str, Any]]) -> str:
    """The CLI's plain-text output: each variant's answer and figures, then the conditions."""
    blocks = []
    for rec in records:
        head = f"== {rec['variant']} ({rec['method']}, {rec['bits']}-bit, {rec.get('device') or '?'}) [{rec['status']}]"
        if rec.get("error"):
            blocks.append(f"{head}\n{rec['error']}")
            continue
        lines = "\n".join(f"  {label:<20} {value}" for label, value in figures(rec))
        blocks.append(f"{head}\n{rec['text'].strip()}\n{lines}")
    if records:
        env, settings = records[0]["environment"], records[0]["settings"]
        kinds = {rec["memory_kind"] for rec in records if rec.get("memory_kind")}
        notes = [f"device: {env.get('device_name')}; torch {env.get('torch')}, transformers {env.get('transformers')}, "
                 f"bitsandbytes {env.get('bitsandbytes')}",
                 f"settings: {settings}"]
        notes += [f"peak memory = {MEMORY_KINDS[k]}" for k in sorted(kinds)]
        blocks.append("\n".join(notes))
    return "\n\n".join(blocks)
