"""A comparison to share: JSON, CSV and a Markdown card (model, date, machine, prompt, answers, figures).

The JSON keeps each record whole, its fidelity's per-token figures (KL and both top tokens at each position of the
baseline's answer) included, so anyone can check where a variant strays; the CSV and the card keep the summaries."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from demo.reports import report
from demo.reports.escaping import fenced, markdown_inline as inline

CSV_FIELDS = ["model", "base", "created_utc", "variant", "method", "bits", "device", "status", "prompt_tokens",
              "new_tokens", "ttft_ms", "decode_tokens_per_s", "total_ms", "load_ms", "cache_hit", "weights_mib",
              "peak_memory_mib", "memory_kind", "achieved_bandwidth_gb_s", "measured_bandwidth_gb_s", "bandwidth_share",
              "energy_joules_per_token", "energy_source", "kl_divergence", "nonfinite_positions", "top1_agreement",
              "first_top1_disagreement", "scored_tokens", "margin_at_disagreement", "answer_departs_at_token",
              "answer_departs_at_char", "quantization", "random_weights", "text", "error"]

# Shared by every variant: written once at the top of the JSON document, not in each variant.
_SHARED = ("prompt", "settings", "environment", "created_utc")

# How each method reads in a sentence, picked by the record's own `method` (never guessed from its id).
METHOD_NAMES = {
    "fp32": "fp32, no quantization",
    "fp16": "fp16, no quantization",
    "bf16": "bf16, no quantization",
    "bnb-int8": "bitsandbytes LLM.int8",
    "bnb-4bit": "bitsandbytes 4-bit",
    "gptq": "GPTQ",
    "gguf": "llama.cpp GGUF",
    "torchao": "torchao",
    "awq": "AWQ",
    "hqq": "HQQ",
    "autoround": "AutoRound",
    "compressed-tensors": "compressed-tensors (llm-compressor)",
}

# Settings (transformers' argument names, as in models.yaml) in words; any other setting reads "name=value".
_SETTING_WORDS = {
    "bnb_4bit_quant_type": str,
    "bnb_4bit_use_double_quant": lambda v: "double quant" if v else "no double quant",
    "bnb_4bit_compute_dtype": lambda v: f"compute {v}",
    "bnb_4bit_quant_storage": lambda v: f"stored as {v}",
    "llm_int8_threshold": lambda v: f"outlier threshold {v}",
    "llm_int8_skip_modules": lambda v: f"not quantized: {', '.join(map(str, v))}",
    "llm_int8_has_fp16_weight": lambda v: "fp16 master weights" if v else "int8 weights",
    "bits": lambda v: f"{v}-bit",
    "group_size": lambda v: f"group size {v}",
    "desc_act": lambda v: "act-order" if v else "no act-order",
    "sym": lambda v: "symmetric" if v else "asymmetric",
    "damp_percent": lambda v: f"dampening {v}",
    "type": lambda v: f"type {v}",
    "n_ctx": lambda v: f"context {v} tokens",
    "use_mmap": lambda v: "memory-mapped" if v else "loaded into RAM",
    "n_gpu_layers": lambda v: f"{v} layers on the GPU",
    "cache_type_k": lambda v: f"KV cache K {v}",
    "cache_type_v": lambda v: f"KV cache V {v}",
    "cache_config": lambda v: f"KV cache {_cache_type(v)}" + (
        f", last {v['residual_length']} tokens unquantized" if "residual_length" in v else ""),
    "scheme": lambda v: {"int8_dynamic": "int8 dynamic activations + int8 weights"}.get(v, v.replace("_", " ")),
    "int4_choose_qparams_algorithm": lambda v: "HQQ scales and zero points" if v == "hqq" else f"{v} scales",
    "zero_point": lambda v: "zero point" if v else "no zero point",
}

REPLACEMENT_CHAR = "\ufffd"


def _cache_type(cache_config: dict) -> str:
    """A transformers quantized cache in the words its record uses (demo.measuring.kv_cache.quantized_cache_type:
    reports read records, never the measuring code)."""
    if cache_config.get("backend") == "fp8":
        return "fp8_e4m3"
    return f"{cache_config.get('backend')} int{cache_config.get('nbits', 4)} g{cache_config.get('q_group_size', 64)}"


def utc_now() -> str:
    """The date and time a comparison is written, ISO 8601 in UTC to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def comparison(records: list[dict[str, Any]], created_utc: str | None = None) -> dict[str, Any]:
    """One document: the model, date and shared conditions once, then every variant's record."""
    first = records[0]
    variants = [{k: v for k, v in r.items() if k not in _SHARED} for r in records]
    return {"model": model_label(records), "base": _joined(records, "base"),
            "created_utc": created_utc or first.get("created_utc") or utc_now(), "prompt": first["prompt"],
            "settings": first["settings"], "environment": first["environment"], "variants": variants}


def csv_rows(records: list[dict[str, Any]], created_utc: str | None = None) -> list[dict[str, Any]]:
    created_utc = created_utc or records[0].get("created_utc") or utc_now()
    rows = []
    for r in records:
        fid = r.get("fidelity") or {}
        row = {k: r.get(k) for k in CSV_FIELDS}
        margin = fid.get("margin_at_disagreement")
        row.update(model=r.get("model") or r.get("base"), created_utc=created_utc,
                   kl_divergence=fid.get("kl_divergence"), nonfinite_positions=fid.get("nonfinite_positions"),
                   top1_agreement=fid.get("top1_agreement"),
                   first_top1_disagreement=fid.get("first_top1_disagreement"), scored_tokens=fid.get("scored_tokens"),
                   margin_at_disagreement=json.dumps(margin, ensure_ascii=False) if margin else None,
                   answer_departs_at_char=r.get("answer_departs_at_char"),
                   quantization=json.dumps(r["quantization"], sort_keys=True),
                   random_weights=report.random_weights_text(r["random_weights"]) if r.get("random_weights") else None)
        rows.append(row)
    return rows


def markdown_card(records: list[dict[str, Any]], created_utc: str | None = None) -> str:
    """Reads well pasted into an issue or a slide: who, when, where; the prompt; the table; each answer."""
    first = records[0]
    env, settings = first["environment"], first["settings"]
    created_utc = created_utc or first.get("created_utc") or utc_now()
    lines = ["## Quantization Arena comparison", "",
             f"**Model:** {inline(model_label(records))} · **Date:** {inline(created_utc)} (UTC) · "
             f"**Machine:** {inline(_machine(env))}", "", *_random_weights_lines(records),
             f"**Prompt** ({inline(settings_text(settings))}, the same for every variant, run one at a time)", "",
             fenced(first["prompt"]), "",
             "| variant | bits | TTFT (ms) | decode (tok/s) | weights (MiB) | peak (MiB) | bandwidth (GB/s, share) "
             "| energy (J/token) | vs baseline |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [_table_row(r) for r in records]
    lines += ["", "**Answers**", ""]
    for r in records:
        lines += [_answer_heading(r), ""] + _answer_blocks(r)
    kinds = sorted({r["memory_kind"] for r in records if r.get("memory_kind")})
    versions = ", ".join(f"{name} {env[name]}" for name in ("torch", "transformers", "bitsandbytes", "gradio")
                         if env.get(name))
    llama = {r["stored"].get("llama_cpp_python") for r in records if (r.get("stored") or {}).get("llama_cpp_python")}
    versions += "".join(f", llama-cpp-python {v}" for v in sorted(llama))
    lines += [f"**Conditions.** {inline(_machine(env))}" + (f"; {inline(versions)}." if versions else ".")]
    lines += [f"Peak memory = {inline(report.MEMORY_KINDS[k])}." for k in kinds]
    lines += [f"{inline(note)}." for note in report.machine_notes(env, records)]
    lines += _attention_lines(records)
    return "\n".join(lines) + "\n"


def _random_weights_lines(records: list[dict[str, Any]]) -> list[str]:
    """Above everything else: which variants have random weights, and that their figures are speed and memory only."""
    described: dict[str, list[str]] = {}
    for r in records:
        if r.get("random_weights"):
            described.setdefault(report.random_weights_text(r["random_weights"]), []).append(r["variant"])
    lines = []
    for text, ids in described.items():
        random = next(r["random_weights"] for r in records if r["variant"] == ids[0])
        lines += [f"**{inline(text[0].upper() + text[1:])}:** {inline(', '.join(ids))}. Tokenizer: "
                  f"{inline(random['tokenizer'])}; every answer runs to exactly the requested number of tokens. "
                  f"Fidelity and perplexity are {inline(random['quality'])}.", ""]
    return lines


def _attention_lines(records: list[dict[str, Any]]) -> list[str]:
    """The attention implementation each transformers variant really ran with (read back after loading)."""
    used: dict[str, list[str]] = {}
    for r in records:
        if name := (r.get("stored") or {}).get("attn_implementation"):
            used.setdefault(name, []).append(r["variant"])
    if not used:
        return []
    parts = "; ".join(f"{name}: {', '.join(ids)}" for name, ids in used.items())
    return [f"Attention implementation, as loaded: {inline(parts)}."]


def write(records: list[dict[str, Any]], out: Path, created_utc: str | None = None) -> dict[str, Path]:
    """comparison.json, comparison.csv and comparison.md in `out`, all stamped with one date."""
    created_utc = created_utc or records[0].get("created_utc") or utc_now()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "comparison.json", "csv": out / "comparison.csv", "markdown": out / "comparison.md"}
    paths["json"].write_text(json.dumps(comparison(records, created_utc), indent=2, ensure_ascii=False),
                             encoding="utf-8")
    with paths["csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_rows(records, created_utc))
    paths["markdown"].write_text(markdown_card(records, created_utc), encoding="utf-8")
    return paths


def model_label(records: list[dict[str, Any]]) -> str:
    """The base model's label (its id where a record has no label); several joined in run order."""
    return _joined(records, "model", "base") or "model not recorded"


def quantization_text(record: dict[str, Any]) -> str:
    """E.g. "fp32, no quantization" or "bitsandbytes 4-bit: nf4, double quant, compute bfloat16"."""
    method = record["method"]
    name = METHOD_NAMES.get(method, method)
    words = [_SETTING_WORDS.get(k, lambda v, k=k: f"{k}={v}")(v)
             for k, v in (record.get("quantization") or {}).items() if v is not None]
    stored = record.get("stored") or {}
    if stored.get("tensor_types"):  # a GGUF file: what it really stores, not only the type asked for
        words.append("stored " + report.stored_text(stored))
    return f"{name}: {', '.join(words)}" if words else name


def settings_text(settings: dict[str, Any]) -> str:
    """E.g. "greedy decoding, up to 64 new tokens" or "sampling (temperature 0.7, top-p 0.9, seed 1), ..."."""
    rest = {k: v for k, v in settings.items() if k not in ("decoding", "max_new_tokens")}
    parts = []
    if settings.get("decoding") == "greedy":
        parts.append("greedy decoding")
    elif settings.get("decoding") == "sample":
        named = {"top_p": "top-p"}
        parts.append("sampling (" + ", ".join(f"{named.get(k, k)} {v}" for k, v in rest.items()) + ")")
        rest = {}
    parts += [f"{k}={v}" for k, v in rest.items()]
    if settings.get("max_new_tokens") is not None:
        parts.append(f"up to {settings['max_new_tokens']} new tokens")
    return ", ".join(parts)


def _answer_heading(record: dict[str, Any]) -> str:
    limit = (record.get("settings") or {}).get("max_new_tokens")
    notes = f"{record['new_tokens']} new tokens" + (" (the limit)" if record["new_tokens"] == limit else "")
    notes += f", {record['status']}"
    if (record.get("text") or "").endswith(REPLACEMENT_CHAR):
        notes += " (cut mid-character)"
    if departs := _departure_text(record):
        notes += f", {departs}"
    if nonfinite := (record.get("fidelity") or {}).get("nonfinite_positions"):
        notes += f", KL non-finite (NaN or infinite) at {nonfinite} of {record['fidelity']['scored_tokens']} " \
                 "positions, left out of the mean"
    return f"**{inline(record['variant'])}** · {inline(quantization_text(record))} · {inline(notes)}"


def _departure_text(record: dict[str, Any]) -> str | None:
    """Whether and where this answer's text departs from the baseline's; None for the baseline or without one."""
    fid = record.get("fidelity")
    if not fid or fid.get("baseline") == record["variant"] or record.get("status") != "done":
        return None
    char, token = record.get("answer_departs_at_char"), record.get("answer_departs_at_token")
    if char is None:
        return "same answer as the baseline"
    return "departs from the baseline's answer at " + (f"token {token}, " if token is not None else "") + \
        f"character {char}"


def _answer_blocks(record: dict[str, Any]) -> list[str]:
    """The answer fenced (what a failed variant wrote before failing, if anything), then its error."""
    # A decoder fed part of a multi-byte character writes U+FFFD; the card drops it rather than show "�".
    text = (record.get("text") or "").rstrip(REPLACEMENT_CHAR)
    blocks = [fenced(text), ""] if text or not record.get("error") else []
    if record.get("error"):
        blocks += ["Error:", "", fenced(record["error"]), ""]
    return blocks


def _table_row(record: dict[str, Any]) -> str:
    error = record.get("error")
    first_line = next((line for line in (error or "").splitlines() if line.strip()), "")
    vs = f"failed: {first_line}" if error else report.fidelity_text(record)
    cells = [inline(record["variant"]), inline(str(record.get("bits") or "–")), _n(record.get("ttft_ms")),
             _n(record.get("decode_tokens_per_s"), 1), _n(record.get("weights_mib")),
             _n(record.get("peak_memory_mib")), _bandwidth_cell(record), _energy_cell(record), inline(vs)]
    return "| " + " | ".join(cells) + " |"


def _bandwidth_cell(record: dict[str, Any]) -> str:
    """"12.3 (27%)": achieved GB/s and its share of the measured bandwidth; "–" where unknown."""
    achieved, share = record.get("achieved_bandwidth_gb_s"), record.get("bandwidth_share")
    if achieved is None:
        return "–"
    return f"{achieved:.3g}" + ("" if share is None else f" ({100 * share:.0f}%)")


def _energy_cell(record: dict[str, Any]) -> str:
    value = record.get("energy_joules_per_token")
    return "–" if value is None else f"{value:.3g}"


def _machine(env: dict[str, Any]) -> str:
    name = env.get("device_name") or "unknown device"
    return f"{name}, driver {env['driver']}" if env.get("driver") else name


def _joined(records: list[dict[str, Any]], *keys: str) -> str | None:
    """The first present of `keys` in each record, distinct values in order, joined; None if none has one."""
    values = [next((r[k] for k in keys if r.get(k)), None) for r in records]
    distinct = list(dict.fromkeys(v for v in values if v))
    return ", ".join(distinct) or None


def _n(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"
