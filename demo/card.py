"""A comparison to share: JSON, CSV and a Markdown card (prompt, settings, answers, figures, environment)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from demo import report

CSV_FIELDS = ["variant", "method", "bits", "device", "status", "prompt_tokens", "new_tokens", "ttft_ms",
              "decode_tokens_per_s", "total_ms", "load_ms", "cache_hit", "weights_mib", "peak_memory_mib",
              "memory_kind", "kl_divergence", "top1_agreement", "first_top1_disagreement", "scored_tokens",
              "margin_at_disagreement", "answer_departs_at_token", "answer_departs_at_char", "quantization",
              "text", "error"]


def comparison(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One document: the shared conditions once, then every variant's record."""
    first = records[0]
    variants = [{k: v for k, v in r.items() if k not in ("prompt", "settings", "environment")} for r in records]
    return {"prompt": first["prompt"], "settings": first["settings"], "environment": first["environment"],
            "variants": variants}


def csv_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        fid = r.get("fidelity") or {}
        row = {k: r.get(k) for k in CSV_FIELDS}
        row.update({k: fid.get(k) for k in ("kl_divergence", "top1_agreement", "first_top1_disagreement",
                                            "scored_tokens")})
        margin = fid.get("margin_at_disagreement")
        row["margin_at_disagreement"] = json.dumps(margin, ensure_ascii=False) if margin else None
        row["quantization"] = json.dumps(r["quantization"], sort_keys=True)
        rows.append(row)
    return rows


def markdown_card(records: list[dict[str, Any]]) -> str:
    """Reads well pasted into an issue or a slide: table first, then each answer, then the conditions."""
    first = records[0]
    env, settings = first["environment"], first["settings"]
    prompt = "\n".join(f"> {line}" for line in first["prompt"].splitlines() or [""])
    lines = ["## Quantization Arena comparison", "", "**Prompt**", "", prompt, "",
             "| variant | bits | TTFT (ms) | decode (tok/s) | weights (MiB) | peak (MiB) | vs baseline |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in records:
        lines.append(f"| `{r['variant']}` | {r['bits']} | {_n(r['ttft_ms'])} | {_n(r['decode_tokens_per_s'], 1)} | "
                     f"{_n(r['weights_mib'])} | {_n(r['peak_memory_mib'])} | "
                     f"{r['error'] or report.fidelity_text(r)} |")
    lines += ["", "**Answers**", ""]
    for r in records:
        quant = ", ".join(f"{k}={v}" for k, v in r["quantization"].items()) or "none"
        answer = (r["text"] or r["error"] or "").strip().replace("\n", " ")
        lines += [f"- `{r['variant']}` ({r['method']}, {quant}; {r['new_tokens']} new tokens, {r['status']}): "
                  f"{answer}"]
    kinds = sorted({r["memory_kind"] for r in records if r.get("memory_kind")})
    lines += ["", f"**Conditions.** {env.get('device_name')}"
              + (f", driver {env['driver']}" if env.get("driver") else "")
              + f"; torch {env.get('torch')}, transformers {env.get('transformers')}, bitsandbytes "
              f"{env.get('bitsandbytes')}, gradio {env.get('gradio')}. Settings: "
              + ", ".join(f"{k}={v}" for k, v in settings.items())
              + "; the same prompt and settings for every variant, run one at a time."]
    lines += [f"Peak memory = {report.MEMORY_KINDS[k]}." for k in kinds]
    return "\n".join(lines) + "\n"


def write(records: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """comparison.json, comparison.csv and comparison.md in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "comparison.json", "csv": out / "comparison.csv", "markdown": out / "comparison.md"}
    paths["json"].write_text(json.dumps(comparison(records), indent=2, ensure_ascii=False))
    with paths["csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_rows(records))
    paths["markdown"].write_text(markdown_card(records), encoding="utf-8")
    return paths


def _n(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"
