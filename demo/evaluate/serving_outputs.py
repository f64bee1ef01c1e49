"""The serving sweep's files: results.json (one row per variant and concurrency, the conditions, the machine and
the users-per-machine figure), results.csv, results.md (both tables and what they were measured under) and the
chart of per-user against total tokens/s."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from demo.evaluate.serving import ServingPlan, ServingRow, users_per_machine
from demo.reports.serving_charts import write_serving_chart

CSV_FIELDS = ("variant", "concurrency", "served_by", "rounds", "total_tokens_per_s", "per_request_tokens_per_s",
              "ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "itl_p95_ms", "total_vs_lowest", "total_vs_lowest_low",
              "total_vs_lowest_high", "error")


def serving_conditions(plan: ServingPlan, seconds: float | None = None) -> dict:
    return {"protocol": "serving", **plan.describe(),
            **({"sweep_seconds": round(seconds, 1)} if seconds is not None else {})}


def write_serving_outputs(rows: list[ServingRow], plan: ServingPlan, environment: dict, out: Path, conditions: dict,
                          order: list[str] | None = None) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = [r.as_dict() for r in rows]
    users = users_per_machine(rows, plan)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps({"environment": environment, "conditions": conditions,
                                         "users_per_machine": users, "rows": data}, indent=2, allow_nan=False))
    with paths["csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in data:
            ratio = row.get("total_vs_lowest") or {}
            writer.writerow({**row, "total_vs_lowest": ratio.get("ratio"), "total_vs_lowest_low": ratio.get("low"),
                             "total_vs_lowest_high": ratio.get("high")})
    paths["markdown"].write_text(serving_markdown(data, users, environment, conditions))
    paths.update(write_serving_chart(data, out, order, plan.min_user_tokens_per_s))
    return paths


def serving_markdown(rows: list[dict], users: dict, environment: dict, conditions: dict) -> str:
    lowest = conditions["concurrency"][0]
    head = (f"| variant | at once | served by | total (tok/s) | × vs {lowest} at once (95 % interval) "
            "| per user (tok/s) | TTFT p50 (ms) | TTFT p95 (ms) | ITL p50 (ms) | ITL p95 (ms) |\n"
            "|---|---:|---|---:|---|---:|---:|---:|---:|---:|")
    lines = [head, *(_row(r) for r in rows)]
    cpu = environment.get("device_name") or environment.get("cpu") or "this machine"
    lines += ["", f"Measured on {cpu}. {conditions['rounds']} round(s), each level once per round, levels interleaved; "
              f"{conditions['new_tokens']} new tokens per request ({conditions['decoding']}); prompts: "
              f"{conditions['prompts']} (request i gets prompt i). Total: a round's tokens over its wall time, the "
              "median round; per user: a request's tokens after its first over the time since its first, the median "
              "request; TTFT and ITL over every request and gap of every round."]
    if conditions.get("sweep_seconds") is not None:
        lines.append(f"The sweep took {conditions['sweep_seconds']:,} s.")
    lines += ["", f"**Users per machine** (the most requests at once with the median user at "
              f"{conditions['min_user_tokens_per_s']:g} tokens/s or faster and p95 time to first token within "
              f"{conditions['max_ttft_p95_ms']:,.0f} ms):", "", "| variant | users |", "|---|---:|"]
    lines += [f"| {variant} | {'none of the levels' if n is None else n} |" for variant, n in users.items()]
    return "\n".join(lines) + "\n"


def _row(r: dict) -> str:
    if r.get("error"):
        return f"| {r['variant']} | {r['concurrency']} | {r.get('served_by') or '–'} | {r['error']} |" + " |" * 6
    ratio = r.get("total_vs_lowest") or {}
    shown = "–" if not ratio else (f"{ratio['ratio']:.2f} [{ratio['low']:.2f}, {ratio['high']:.2f}]"
                                   if ratio.get("low") is not None else f"{ratio['ratio']:.2f} (too few rounds for "
                                                                         "an interval)")
    return (f"| {r['variant']} | {r['concurrency']} | {r.get('served_by') or '–'} | {_num(r.get('total_tokens_per_s'), 1)} "
            f"| {shown} | {_num(r.get('per_request_tokens_per_s'), 1)} | {_num(r.get('ttft_p50_ms'), 0)} "
            f"| {_num(r.get('ttft_p95_ms'), 0)} | {_num(r.get('itl_p50_ms'), 1)} | {_num(r.get('itl_p95_ms'), 1)} |")


def _num(value, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"
