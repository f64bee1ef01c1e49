"""The depth sweep's files: results.json (one row per variant and depth, with the conditions and the machine),
results.md (the table and what it was measured under) and the two charts."""

from __future__ import annotations

import json
from pathlib import Path

from demo.evaluate.depth import NEEDLE, QUESTION, SCORED_POSITIONS, DepthPlan, DepthRow
from demo.reports.depth_charts import write_depth_charts


def depth_conditions(plan: DepthPlan, notes: list[str], seconds: float | None = None) -> dict:
    return {"protocol": "depth", "depths": list(plan.depths), "needles": plan.needles, "new_tokens": plan.new_tokens,
            "text": plan.text_file.name, "scored_positions": SCORED_POSITIONS,
            "prompt_tokens": "depth - new_tokens (the answer ends at the depth)",
            "needle": NEEDLE.strip(), "question": QUESTION.strip(), "decoding": "greedy",
            "notes": notes, **({"sweep_seconds": round(seconds, 1)} if seconds is not None else {})}


def write_depth_outputs(rows: list[DepthRow], environment: dict, out: Path, conditions: dict,
                        order: list[str] | None = None) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = [r.as_dict() for r in rows]
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps({"environment": environment, "conditions": conditions, "rows": data},
                                        indent=2, allow_nan=False))
    paths["markdown"].write_text(depth_markdown(data, environment, conditions))
    paths.update(write_depth_charts(data, out, order))
    return paths


def depth_markdown(rows: list[dict], environment: dict, conditions: dict) -> str:
    head = ("| variant | depth | KV cache | mean KL (nats) | KL 99.9 % (nats) | top-1 | needle found (95 % interval) "
            "| TTFT (ms) | decode (tok/s) | KV bytes | a step reads (weights + KV, MB) | achieved (GB/s) "
            "| peak (MiB) |\n|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    lines = [head, *(_row(r) for r in rows)]
    cpu = environment.get("device_name") or environment.get("cpu") or "this machine"
    lines += ["", f"Measured on {cpu}. {conditions['needles']} needle place(s) per depth, {conditions['new_tokens']} "
              f"new tokens, greedy; KL over the prompt's last {conditions['scored_positions']} positions against the "
              f"baseline at the same depth; text: {conditions['text']}."]
    if conditions.get("sweep_seconds") is not None:
        lines.append(f"The sweep took {conditions['sweep_seconds']:,} s.")
    lines += [f"- {note}" for note in conditions.get("notes", [])]
    return "\n".join(lines) + "\n"


def _row(r: dict) -> str:
    if r.get("error"):
        return f"| {r['variant']} | {r['depth']:,} | {r.get('kv_cache') or '–'} | {r['error']} |" + " |" * 9
    needle = r.get("needle") or {}
    found = (f"{needle['found']}/{needle['total']} ({needle['interval'][0]:.2f}–{needle['interval'][1]:.2f})"
             if needle else "–")
    if needle.get("lost") or needle.get("gained"):
        found += f"; lost {needle['lost']}, gained {needle['gained']} vs baseline"
    step = r.get("bytes_read_per_step") or {}
    reads = f"{step['weights'] / 1e6:,.1f} + {step['kv'] / 1e6:,.1f}" if step else "–"
    return (f"| {r['variant']} | {r['depth']:,} | {r.get('kv_cache') or '–'} | {_num(r.get('kl_mean'), 5)} "
            f"| {_num(r.get('kl_p99_9'), 4)} | {_num(r.get('top1'), 3)} | {found} | {_num(r.get('ttft_ms'), 0)} "
            f"| {_num(r.get('decode_tokens_per_s'), 1)} | {_bytes(r.get('kv_cache_bytes'))} | {reads} "
            f"| {_num(r.get('achieved_gb_s'), 2)} | {_num(r.get('peak_mib'), 0)} |")


def _num(value, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _bytes(value) -> str:
    return "–" if value is None else f"{value / 2**20:,.1f} MiB"
