"""The Evaluate tab's depth sweep: its choices and its rows in words, one per variant and depth."""

from __future__ import annotations

from demo.evaluate import depth

PROTOCOL_CHOICE = ("depth sweep: long context, the KV cache and a planted fact (slow: minutes per variant)", "depth")
HEADERS = {
    "variant": "variant",
    "depth": "depth (tokens)",
    "kv_cache": "KV cache",
    "kl_mean": "mean KL vs the baseline at that depth (nats)",
    "kl_p99_9": "KL 99.9 % point (nats)",
    "top1": "top-1 agreement (%)",
    "needle": "planted fact found (95 % interval)",
    "ttft_ms": "time to first token, median (ms)",
    "decode_tokens_per_s": "decode, median (tokens/s)",
    "kv_cache_bytes": "KV cache at that depth (MiB)",
    "bytes_read_per_step": "a decode step reads: weights + KV (MB)",
    "achieved_gb_s": "achieved bandwidth (GB/s)",
    "peak_mib": "peak memory (MiB)",
}
NOTE = (f"At depth *d* the prompt is *d* − {depth.NEW_TOKENS} tokens of {depth.LONG_TEXT.name} (public-domain Alice) with "
        "a pass code planted between its lines and asked for at its end; the answer's tokens end at *d*. KL and top-1 "
        f"are over the prompt's last {depth.SCORED_POSITIONS} positions against the baseline at the same depth, read "
        "as generation reads its own tokens (a quantized KV cache is met as in generation). The fact is planted at "
        "several places, one run each: found/total is exact match of the code at the answer's start, with its "
        "Wilson interval, and what the variant lost or gained against the baseline on the same prompts. A GGUF "
        "variant whose context (settings.n_ctx) is shorter than a depth says so in its row; "
        "`python -m demo.evaluate --protocol depth` raises it for the sweep.")


def parse_depths(text: str) -> tuple[int, ...]:
    """'512, 2048' -> (512, 2048); anything else is refused with the form it takes."""
    try:
        return tuple(int(part) for part in (text or "").replace(" ", "").split(",") if part)
    except ValueError:
        from demo.errors import InvalidRequest

        raise InvalidRequest(f"depths are whole numbers separated by commas, e.g. 512,2048,8192; got {text!r}") from None


def table_rows(rows: list[depth.DepthRow]) -> list[list[str]]:
    return [[_cell(row, field) for field in HEADERS] for row in rows]


def _cell(row: depth.DepthRow, field: str) -> str:
    value = getattr(row, field)
    if row.error and field == "kl_mean":
        return row.error
    if value is None:  # never 0: a figure that was not computed
        return (row.quality_note or "–") if field == "kl_mean" else "–"
    if field == "depth":
        return f"{value:,}"
    if field == "top1":
        return f"{100 * value:.1f}%"
    if field == "needle":
        text = f"{value['found']}/{value['total']} ({value['interval'][0]:.2f}–{value['interval'][1]:.2f})"
        if value.get("lost") or value.get("gained"):
            text += f"; lost {value['lost']}, gained {value['gained']} vs the baseline"
        return text
    if field == "kv_cache_bytes":
        return f"{value / 2**20:,.1f}"
    if field == "bytes_read_per_step":
        return f"{value['weights'] / 1e6:,.1f} + {value['kv'] / 1e6:,.1f}"
    digits = {"kl_mean": 5, "kl_p99_9": 4, "ttft_ms": 0, "decode_tokens_per_s": 1, "achieved_gb_s": 2, "peak_mib": 0}
    return f"{value:,.{digits.get(field, 2)}f}" if isinstance(value, float) else str(value)
