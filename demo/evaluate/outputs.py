"""The evaluation's files: results.json, results.csv, results.md (the table, the conditions, each baseline's noise
floor and each variant's statistics as llama.cpp prints them) and the charts."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

from demo.evaluate.plan import TRACE_ANSWER_TOKENS, Protocol
from demo.evaluate.records import CSV_EXTRA, FIELDS, VariantEvaluation
from demo.evaluate.speed import SPEED_PROMPT
from demo.measuring.protocols import STRIDE, WINDOW
from demo.reports import kl_report, report
from demo.running.runner import Arena


def noise_floors(rows: list[dict]) -> dict[str, dict]:
    """Each baseline's noise floor, by baseline id, as the rows carry it."""
    return {r["baseline"]: r["noise_floor"] for r in rows if r.get("baseline") and r.get("noise_floor")}


def write_outputs(results: list[VariantEvaluation], arena: Arena, out: Path, conditions: dict,
                  order: list[str] | None = None) -> dict[str, Path]:
    """results.json, results.csv, results.md and the charts; returns their paths by name. `order` fixes each
    variant's colour in the charts (every variant id in the models file's order)."""
    from demo.reports import charts

    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    paths = {"json": out / "results.json", "csv": out / "results.csv", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps({"environment": arena.environment(), "conditions": conditions,
                                         "variants": rows}, indent=2, allow_nan=False))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*FIELDS, *CSV_EXTRA], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(csv_row(row) for row in rows)
    paths["markdown"].write_text(markdown_table(rows, arena.environment(), conditions))
    floors = list(noise_floors(rows).values())  # a chart draws one line: the floor of a single base model
    paths.update(charts.write_charts(rows, out, order, noise_floor=floors[0] if len(floors) == 1 else None))
    return paths


def csv_row(row: dict) -> dict:
    """A results.json row with its nested statistics' headline figures as flat columns (CSV_EXTRA)."""
    kl, ratio = row.get("kl") or {}, row.get("ln_ppl_ratio") or {}
    return {**row, "kernel": (row.get("kernel") or {}).get("kind"),
            "kl_divergence_uncertainty": kl.get("mean_uncertainty"), "kl_p99_9": kl.get("p99_9"),
            "kl_max": kl.get("max"), "ln_ppl_ratio": ratio.get("value"),
            "ln_ppl_ratio_uncertainty": ratio.get("uncertainty")}


def markdown_table(rows: list[dict], env: dict, conditions: dict) -> str:
    """The main table (one row per variant), the conditions, then each variant's llama.cpp-style statistics."""
    head = ("| variant | perplexity | mean KL vs baseline (nats) | KL 99.9 % (nats) | KL max (nats) | top-1 agreement "
            "| TTFT p50 (ms) | decode p50 / p90 (tok/s) | weights (MiB) | peak (MiB) | disk (MiB) "
            "| bandwidth p50 (GB/s, share) | energy p50 (J/token) | kernel |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    lines = [head, *(_markdown_row(r) for r in rows)]
    features = f" ({', '.join(env['cpu_features'])})" if env.get("cpu_features") else ""
    notes = (f"\n\nConditions: {env.get('device_name')}{features}; torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"bitsandbytes {env.get('bitsandbytes')}. Quality on {conditions['text']} ({conditions['method']}). "
             f"Speed: {conditions['speed']}. Peak memory as in the app "
             f"({'approximate, process RSS' if 'CPU' in str(env.get('device_name')) else 'CUDA allocated'}).\n")
    notes += "".join(f"{note}.\n" for note in report.machine_notes(env, rows))
    floors = "".join(f"\n{noise_floor_line(baseline, floor)}" for baseline, floor in noise_floors(rows).items())
    sections = [kl_report.variant_section(r) for r in rows  # the baseline against itself says nothing
                if not r["error"] and r.get("kl") and r["variant"] != r["baseline"]]
    details = ("\n## Against the baseline, position by position\n\n" + "\n".join(sections)) if sections else ""
    return "\n".join(lines) + notes + floors + details


def noise_floor_line(baseline: str, floor: dict) -> str:
    """One baseline's noise floor in words: the KL under which a variant's difference is noise."""
    if "unavailable" in floor:
        return f"Noise floor of {baseline}: {floor['unavailable']}.\n"
    return (f"Noise floor of {baseline} (the baseline rerun with ×(1 + ε·z) after every decoder layer, ε = 2⁻⁹, seed "
            f"{floor['seed']}, on the same positions): mean KL {floor['kl_mean']:.6f} nats, median "
            f"{floor['kl_median']:.6f}, 99.9 % {floor['kl_p99_9']:.4f}, max {floor['kl_max']:.4f}. A variant whose KL "
            f"is at or under these figures differs from the baseline no more than a bf16-rounding-scale perturbation of it "
            f"does (relative standard deviation 2⁻⁹, half of bf16's unit roundoff).\n")


def _num(value, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _markdown_row(r: dict) -> str:
    if r["error"]:
        return f"| {r['variant']} | {r['error']} | | | | | | | | | | | | |"
    kl = r.get("kl") or {}
    agreement = "–" if r["top1_agreement"] is None else f"{100 * r['top1_agreement']:.1f}%"
    if r.get("top1_agreement_uncertainty") is not None:
        agreement += f" ± {100 * r['top1_agreement_uncertainty']:.1f}"
    mean_kl = _num(r["kl_divergence"], 4)
    if kl.get("mean_uncertainty") is not None:
        mean_kl += f" ± {kl['mean_uncertainty']:.4f}"
    if r.get("kl_lower_bound_top_k") and r["kl_divergence"] is not None:
        mean_kl = f"≥ {mean_kl} (top-{r['kl_lower_bound_top_k']})"
    perplexity = r["quality_note"] if r.get("quality_note") and r["perplexity"] is None else _num(r["perplexity"], 2)
    return (f"| {r['variant']} | {perplexity} | {mean_kl} | {_num(kl.get('p99_9'), 4)} | {_num(kl.get('max'), 4)} | "
            f"{agreement} | {_num(r['ttft_ms_p50'], 0)} | {_num(r['decode_tokens_per_s_p50'], 1)} / "
            f"{_num(r['decode_tokens_per_s_p90'], 1)} | {_num(r['weights_mib'], 0)} | "
            f"{_num(r['peak_memory_mib'], 0)} | {_num(r['disk_mib'], 0)} | {_bandwidth(r)} | "
            f"{_significant(r.get('energy_joules_per_token_p50'))} | {(r.get('kernel') or {}).get('kind', '–')} |")


def _significant(value) -> str:
    return "–" if value is None else f"{value:.3g}"


def _bandwidth(r: dict) -> str:
    achieved, share = r.get("achieved_bandwidth_gb_s_p50"), r.get("bandwidth_share_p50")
    if achieved is None:
        return "–"
    return f"{achieved:.3g}" + ("" if share is None else f" ({100 * share:.0f}%)")


STATISTICS_NOTE = ("KL(baseline || variant) in nats per scored position: mean ± standard error, its percentiles "
                   "(linear interpolation) and max; Δp = p_variant - p_baseline of the text's actual next token; "
                   "top-1 agreement = share of positions with the same argmax ± binomial standard error; positions "
                   "with a NaN or infinite figure are left out of every statistic and counted")


def protocol_method(protocol: Protocol) -> str:
    """What the protocol feeds and scores, in words, for the conditions."""
    if protocol.name == "llamacpp":
        first = protocol.ctx // 2
        return (f"protocol llamacpp: llama.cpp's perplexity --kl-divergence protocol: the text tokenized once, "
                f"non-overlapping chunks of {protocol.ctx} tokens, the first token of each chunk set to BOS (the "
                f"tokenizer's bos_token), the last {protocol.ctx - 1 - first} predictions of each chunk scored; "
                f"only figures under this protocol may be set beside llama.cpp's published tables")
    if protocol.name == "trace":
        return (f"protocol trace: the baseline's own greedy answers (at most {TRACE_ANSWER_TOKENS} tokens, through "
                f"the app) to each prompt of {protocol.prompts_file.name}, every variant teacher-forced on the chat "
                f"prompt + answer and scored on the answer tokens only")
    return (f"protocol sliding: sliding window of {WINDOW} tokens, stride {STRIDE}, every token after the first "
            f"scored once")


def conditions(text_file: Path, runs: int, max_new_tokens: int, protocol: Protocol | None = None) -> dict:
    protocol = protocol or Protocol()
    return {"text": protocol.prompts_file.name if protocol.name == "trace" else text_file.name,
            "protocol": protocol.name,
            "method": f"{protocol_method(protocol)}; {STATISTICS_NOTE}",
            "speed": f"prompt {SPEED_PROMPT!r}, greedy, {max_new_tokens} new tokens, 1 warm-up + {runs} runs, "
                     "p50/p90 over runs"}
