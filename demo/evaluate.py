"""python -m demo.evaluate: quality, speed and memory of variants on the same text and settings.

Quality: token-level perplexity over a held-out text with a sliding window (WINDOW tokens, moved by
STRIDE; each window scores only the tokens not scored before, so every scored token after the first
window sees at least WINDOW - STRIDE tokens of context). Against the baseline of the same base model,
at the same positions: mean KL(baseline || variant) of the next-token distributions, in nats, and the
share of positions where both pick the same most likely token (top-1 agreement).
Speed and memory: through the app's own path (Arena.compare), one warm-up run then RUNS runs.
Writes results.json, results.csv, results.md and PNG charts to results/<timestamp>/ or --out.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from demo.artifacts import sources
from demo.measuring import metrics
from demo.config import REPO_ROOT, load_config
from demo.errors import ArenaError, InvalidRequest
from demo.backends import LoadedVariant
from demo.running.runner import Arena
from demo.running.variant_run import describe_failure, is_oom

log = logging.getLogger(__name__)
EVALUATION_FILE = REPO_ROOT / "assets" / "evaluation.txt"
SPEED_PROMPT = "Write a short story about a lighthouse keeper."
WINDOW, STRIDE = 512, 256
FIELDS = ["variant", "baseline", "perplexity", "kl_divergence", "top1_agreement", "ttft_ms_p50",
          "decode_tokens_per_s_p50", "decode_tokens_per_s_p90", "runs", "weights_mib", "peak_memory_mib", "disk_mib"]

Progress = Callable[[float, str], None]


@dataclass
class VariantEvaluation:
    variant: str
    baseline: str | None
    perplexity: float | None = None
    kl_divergence: float | None = None
    top1_agreement: float | None = None
    ttft_ms_p50: float | None = None
    decode_tokens_per_s_p50: float | None = None
    decode_tokens_per_s_p90: float | None = None
    runs: int = 0
    weights_mib: float | None = None
    peak_memory_mib: float | None = None
    disk_mib: float | None = None
    scored_tokens: int = 0
    error: str | None = None
    kl_lower_bound_top_k: int | None = None  # remote: KL from the engine's top k only, a lower bound
    quality_note: str | None = None  # why perplexity / KL are missing (an engine without prompt log-probabilities)


def windows(n_tokens: int, window: int = WINDOW, stride: int = STRIDE):
    """(begin, end, first_scored) per window; tokens first_scored..end-1 are scored in it."""
    previous_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        yield begin, end, max(previous_end, begin + 1)  # token 0 has no prediction
        previous_end = end
        if end == n_tokens:
            return


def scored_log_probs(loaded: LoadedVariant, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per window: (log-probabilities [scored, vocab] float32, targets [scored]) for the scored tokens."""
    out = []
    for begin, end, first in windows(ids.numel()):
        logits = loaded.logits(ids[begin:end].tolist())  # [end - begin, vocab]; row i predicts token begin + i + 1
        rows = slice(first - 1 - begin, end - 1 - begin)
        out.append((metrics.log_probs(logits[rows]), ids[first:end]))
    return out


def evaluate(arena: Arena, variant_ids: list[str], text: str, runs: int = 5, max_new_tokens: int = 64,
             progress: Progress | None = None, stop: threading.Event | None = None) -> list[VariantEvaluation]:
    """Evaluate each variant; a variant that fails gets its error and the others go on.

    Once `stop` is set, the variants not yet started are left out: the result holds those finished."""
    arena.validate(SPEED_PROMPT, variant_ids)
    if runs < 1:
        raise InvalidRequest(f"runs must be at least 1, got {runs}")
    if not text.strip():
        raise InvalidRequest("the evaluation text is empty")
    settings = arena.settings(max_new_tokens=max_new_tokens)
    report = progress or (lambda fraction, message: None)
    baselines: dict[str, list] = {}  # baseline variant id -> its scored windows, float32 so self-KL is exactly 0
    results = []
    bar = tqdm(variant_ids, desc="Evaluating variants", unit="variant")
    for index, variant_id in enumerate(bar):
        if stop is not None and stop.is_set():
            break
        bar.set_postfix_str(variant_id)
        base = arena.config.base_of(variant_id)
        result = VariantEvaluation(variant_id, base.baseline)
        try:
            report(index / len(variant_ids), f"{variant_id}: quality")
            _quality(arena, result, text, baselines)
            report((index + 0.5) / len(variant_ids), f"{variant_id}: speed")
            _speed(arena, result, settings, runs)
            result.disk_mib = _disk_mib(arena, variant_id)
        except ArenaError as exc:
            result.error = str(exc)
        except Exception as exc:  # out of memory, a kernel error: this variant's row says so, the others stand
            log.exception("evaluating %s failed", variant_id)
            result.error = describe_failure("evaluating", exc)
            if is_oom(exc):
                arena.device.call(arena.manager.evict, variant_id)
        results.append(result)
    report(1.0, "done")
    return results


def _quality(arena: Arena, result: VariantEvaluation, text: str, baselines: dict) -> None:
    # All model work runs as one job on the device thread, in the arena's turn: torch ops on a second
    # thread start a second OpenMP team (see demo.running.device), and acquiring each variant inside the job
    # means an eviction in between (the baseline pushing the variant out of the budget) cannot leave
    # this code holding a freed model.
    def job() -> metrics.QualityTotals:
        if result.baseline is not None and result.baseline not in baselines:
            base_loaded = arena.manager.get(result.baseline).loaded
            baselines[result.baseline] = scored_log_probs(base_loaded, _ids(base_loaded, text))
        loaded = arena.manager.get(result.variant).loaded
        reference = baselines.get(result.baseline) if result.baseline else None
        if not loaded.full_distributions:
            return _top_k_totals(loaded, _ids(loaded, text), reference, result)
        return _totals(loaded, _ids(loaded, text), reference)

    with arena.exclusive():
        totals = arena.device.call(job)
    if totals is None:  # the engine gives no prompt log-probabilities: quality_note says so
        return
    reference = result.baseline is not None
    result.perplexity, result.scored_tokens = round(totals.perplexity, 4), totals.positions
    if result.quality_note:  # a remote engine that left some targets' log-probabilities out
        result.perplexity = None
    if reference:
        result.kl_divergence = round(totals.kl_divergence, 6)
        result.top1_agreement = round(totals.top1_agreement, 4)


def _ids(loaded: LoadedVariant, text: str) -> torch.Tensor:
    return loaded.tokenizer(text, return_tensors="pt")["input_ids"][0]


def _totals(loaded: LoadedVariant, ids: torch.Tensor, reference: list | None) -> metrics.QualityTotals:
    totals = metrics.QualityTotals()
    for i, (lp, targets) in enumerate(scored_log_probs(loaded, ids)):
        totals += metrics.window_totals(lp, targets, reference[i][0] if reference else None)
    return totals


def _top_k_totals(loaded: LoadedVariant, ids: torch.Tensor, reference: list | None,
                  result: VariantEvaluation) -> metrics.QualityTotals | None:
    """A remote variant's windows from its engine's prompt log-probabilities: exact perplexity and top-1, the
    KL's lower bound over the top k (demo.measuring.fidelity_topk); None, with the reason noted, where it has none."""
    from demo.measuring.fidelity_topk import Unavailable, position_kl, top1_matches

    totals = metrics.QualityTotals()
    for i, (begin, end, first) in enumerate(windows(len(ids))):
        # Echo answers null their first entry (OpenAI's convention): without a leading BOS that is the
        # prediction of the text's second token, so a remote variant scores from the third (one fewer).
        skip = 1 if first - begin == 1 else 0
        top = loaded.top_log_probs(ids[begin:end].tolist(), first - begin + skip)
        if isinstance(top, Unavailable):
            result.quality_note = top.reason
            return None
        if any(lp is None for lp in top.forced):
            # llama-cpp-python without a leading BOS: its rows sit one token late, so a target's own
            # log-probability is known only when it is in the top k; KL and top-1 stand, perplexity does not.
            result.quality_note = "perplexity not available: the engine gave no log-probability for some scored tokens"
        kl = matches = 0
        if reference:
            rows = reference[i][0][skip:]
            kl = sum(position_kl(rows[j], known) for j, known in enumerate(top.known))
            matches = sum(top1_matches(int(rows[j].argmax()), top, j) for j in range(len(top.known)))
        totals += metrics.QualityTotals(len(top.forced), -sum(lp or 0.0 for lp in top.forced), kl, matches)
        result.kl_lower_bound_top_k = top.k if reference else None
    return totals


def _speed(arena: Arena, result: VariantEvaluation, settings, runs: int) -> None:
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


def _disk_mib(arena: Arena, variant_id: str) -> float | None:
    """Size of the variant's own file(s) on disk (GPTQ, AWQ, GGUF), None where it is quantized at load time."""
    variant = arena.config.variants[variant_id]
    if variant.method not in ("gptq", "gguf", "awq"):
        return None
    from demo.artifacts.quantize import folder_mib

    if variant.checkpoint is not None:
        path = variant.checkpoint.path
        if path is not None and path.is_dir():  # a pre-made checkpoint folder (GPTQ, AWQ)
            return round(folder_mib(path), 1)
        return round(path.stat().st_size / 2**20, 1) if path is not None and path.is_file() else None
    folder = sources.quantized_dir(arena.config.bases[variant.base], variant.method, variant.file_settings)
    return round(folder_mib(folder), 1) if folder.is_dir() else None


def write_outputs(results: list[VariantEvaluation], arena: Arena, out: Path, conditions: dict) -> dict[str, Path]:
    """results.json, results.csv, results.md and the charts; returns their paths by name."""
    from demo.reports import charts

    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    paths = {"json": out / "results.json", "csv": out / "results.csv", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps({"environment": arena.environment(), "conditions": conditions,
                                         "variants": rows}, indent=2))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*FIELDS, "scored_tokens", "error", "kl_lower_bound_top_k", "quality_note"])
        writer.writeheader()
        writer.writerows(rows)
    paths["markdown"].write_text(markdown_table(rows, arena.environment(), conditions))
    paths.update(charts.write_charts(rows, out))
    return paths


def markdown_table(rows: list[dict], env: dict, conditions: dict) -> str:
    head = ("| variant | perplexity | KL div. vs baseline (nats) | top-1 agreement | TTFT p50 (ms) | "
            "decode p50 / p90 (tok/s) | weights (MiB) | peak (MiB) | disk (MiB) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def num(value, digits):
        return "–" if value is None else f"{value:,.{digits}f}"

    lines = [head]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['variant']} | {r['error']} | | | | | | | |")
            continue
        agreement = "–" if r["top1_agreement"] is None else f"{100 * r['top1_agreement']:.1f}%"
        kl = num(r["kl_divergence"], 4)
        if r.get("kl_lower_bound_top_k") and r["kl_divergence"] is not None:
            kl = f"≥ {kl} (top-{r['kl_lower_bound_top_k']})"
        perplexity = r["quality_note"] if r.get("quality_note") and r["perplexity"] is None else num(r["perplexity"], 2)
        lines.append(f"| {r['variant']} | {perplexity} | {kl} | {agreement} | "
                     f"{num(r['ttft_ms_p50'], 0)} | {num(r['decode_tokens_per_s_p50'], 1)} / "
                     f"{num(r['decode_tokens_per_s_p90'], 1)} | {num(r['weights_mib'], 0)} | "
                     f"{num(r['peak_memory_mib'], 0)} | {num(r['disk_mib'], 0)} |")
    notes = (f"\n\nConditions: {env.get('device_name')}; torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"bitsandbytes {env.get('bitsandbytes')}. Quality on {conditions['text']} ({conditions['method']}). "
             f"Speed: {conditions['speed']}. Peak memory as in the app "
             f"({'approximate, process RSS' if 'CPU' in str(env.get('device_name')) else 'CUDA allocated'}).\n")
    return "\n".join(lines) + notes


def conditions(text_file: Path, runs: int, max_new_tokens: int) -> dict:
    return {"text": text_file.name,
            "method": f"sliding window of {WINDOW} tokens, stride {STRIDE}; KL(baseline || variant) in nats, mean "
                      "over scored tokens; top-1 agreement = share of positions with the same argmax",
            "speed": f"prompt {SPEED_PROMPT!r}, greedy, {max_new_tokens} new tokens, 1 warm-up + {runs} runs, "
                     "p50/p90 over runs"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="models file (default: $ARENA_MODELS, else models.yaml)")
    parser.add_argument("--variants", required=True, help="comma-separated variant ids")
    parser.add_argument("--text", type=Path, default=EVALUATION_FILE, help="held-out text (default: assets/evaluation.txt)")
    parser.add_argument("--out", type=Path, help="output folder (default: results/<timestamp>)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per variant after one warm-up")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        arena = Arena(load_config(args.models))
        if not args.text.is_file():
            raise InvalidRequest(f"text file '{args.text}' not found")
        variant_ids = [v.strip() for v in args.variants.split(",") if v.strip()]
        results = evaluate(arena, variant_ids, args.text.read_text(encoding="utf-8"), args.runs, args.max_new_tokens)
    except ArenaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = args.out or REPO_ROOT / "results" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    paths = write_outputs(results, arena, out, conditions(args.text, args.runs, args.max_new_tokens))
    print(paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
