"""The Evaluate tab's serving sweep: its choice, its levels and its rows in words, one per variant and level."""

from __future__ import annotations

from demo.errors import InvalidRequest
from demo.evaluate import serving

PROTOCOL_CHOICE = ("serving sweep: requests at once, batched as each runtime serves them (minutes per variant)",
                   "serving")
HEADERS = {
    "variant": "variant",
    "concurrency": "requests at once",
    "served_by": "served by",
    "total_tokens_per_s": "total output (tokens/s)",
    "total_vs_lowest": "total vs the fewest at once (95 % interval)",
    "per_request_tokens_per_s": "per user, median request (tokens/s)",
    "ttft_p50_ms": "time to first token p50 (ms)",
    "ttft_p95_ms": "time to first token p95 (ms)",
    "itl_p50_ms": "between tokens p50 (ms)",
    "itl_p95_ms": "between tokens p95 (ms)",
}
NOTE = ("Each level sends that many requests at once (request *i* gets prompt *i* of "
        f"{serving.PROMPTS_FILE.name}, prompts of mixed lengths), greedy, every answer the set number of tokens long; "
        "transformers variants answer them in one batched generate(), GGUF variants on llama.cpp's own server "
        "(llama-server, parallel slots, continuous batching), remote ones with that many streams. Levels are "
        "interleaved within each timed run; the ratio against the fewest at once is paired by run and needs six "
        "runs for its interval. *Users per machine* below: the most at once with the median user at "
        f"{serving.MIN_USER_TOKENS_PER_S:g} tokens/s or faster and p95 first token within "
        f"{serving.MAX_TTFT_P95_MS:,.0f} ms.")


def parse_levels(text: str) -> tuple[int, ...]:
    """'1, 2, 4' -> (1, 2, 4); anything else is refused with the form it takes."""
    try:
        return tuple(int(part) for part in (text or "").replace(" ", "").split(",") if part)
    except ValueError:
        raise InvalidRequest(f"requests at once are whole numbers separated by commas, e.g. 1,2,4,8; got {text!r}") \
            from None


def table_rows(rows: list[serving.ServingRow]) -> list[list[str]]:
    return [[_cell(row, field) for field in HEADERS] for row in rows]


def users_line(rows: list[serving.ServingRow], plan: serving.ServingPlan) -> str:
    users = serving.users_per_machine(rows, plan)
    return "**Users per machine:** " + "; ".join(
        f"{variant} {'none of the levels' if n is None else n}" for variant, n in users.items()) + "."


def _cell(row: serving.ServingRow, field: str) -> str:
    value = getattr(row, field)
    if row.error and field == "total_tokens_per_s":
        return row.error
    if value is None:
        return "–"
    if field == "total_vs_lowest":
        if value.get("low") is None:
            return f"{value['ratio']:.2f} (no interval under six runs)"
        return f"{value['ratio']:.2f} [{value['low']:.2f}, {value['high']:.2f}]"
    digits = {"total_tokens_per_s": 1, "per_request_tokens_per_s": 1, "ttft_p50_ms": 0, "ttft_p95_ms": 0,
              "itl_p50_ms": 1, "itl_p95_ms": 1}
    return f"{value:,.{digits[field]}f}" if field in digits else str(value)
