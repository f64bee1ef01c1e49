"""The Evaluate tab: `python -m demo.evaluate` on chosen variants, with its table, charts and a Stop."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from demo import evaluate
from demo.reports import charts
from demo.errors import ArenaError
from demo.running.runner import Arena

# evaluate.FIELDS in words, with units; the files keep the field names.
HEADERS = {
    "variant": "variant",
    "baseline": "compared with",
    "perplexity": "perplexity (lower is better)",
    "kl_divergence": "KL divergence from the baseline (nats, lower is closer)",
    "top1_agreement": "top-1 agreement with the baseline (%)",
    "ttft_ms_p50": "time to first token, median (ms)",
    "decode_tokens_per_s_p50": "decode, median (tokens/s)",
    "decode_tokens_per_s_p90": "decode, 90th percentile (tokens/s)",
    "runs": "timed runs",
    "weights_mib": "weights (MiB)",
    "peak_memory_mib": "peak memory (MiB)",
    "disk_mib": "checkpoint on disk (MiB)",
}
DIGITS = {"perplexity": 2, "kl_divergence": 4, "ttft_ms_p50": 0, "decode_tokens_per_s_p50": 1,
          "decode_tokens_per_s_p90": 1, "weights_mib": 0, "peak_memory_mib": 0, "disk_mib": 0}
TABLE_NOTE = ("*Checkpoint on disk* is filled only for variants whose quantized checkpoint is made once and saved "
              "(GPTQ); the others are quantized from the base weights each time they load, so they add nothing on "
              "disk (–). *Compared with* is the baseline the KL divergence and top-1 agreement are measured against; "
              "the baseline itself shows 0 and 100%.")


def table_rows(results: list[evaluate.VariantEvaluation]) -> list[list[str]]:
    """Display rows in HEADERS order: numbers with their precision, agreement as a percentage, gaps explained."""
    rows = []
    for result in results:
        row = []
        for field in HEADERS:
            value = getattr(result, field)
            if field == "disk_mib" and value is None and not result.error:
                row.append("– (quantized at load)")
            elif value is None:
                row.append(result.error if field == "perplexity" and result.error else "–")
            elif field == "top1_agreement":
                row.append(f"{100 * value:.1f}%")
            elif field in DIGITS:
                row.append(f"{value:,.{DIGITS[field]}f}")
            else:
                row.append(str(value))
        rows.append(row)
    return rows


def build_tab(arena: Arena, choices: list[tuple[str, str]], queue: str) -> None:
    """The tab's components and events; model-running events share the page's device queue."""
    config = arena.config
    stops: dict[Any, threading.Event] = {}
    gr.Markdown("Perplexity on a held-out text, KL divergence and top-1 agreement against the base model's "
                "baseline, decode speed and memory: the same measurement as `python -m demo.evaluate`. "
                "About a minute per variant on a 2-core CPU.")
    baselines = {b.baseline for b in config.bases.values()}
    picked = [c[1] for c in choices if c[1] in baselines] + [c[1] for c in choices if "nf4" in c[1]][:1]
    with gr.Row():
        ids = gr.CheckboxGroup(choices, value=picked, label="Variants to evaluate", scale=3)
        with gr.Column(scale=1):
            runs = gr.Slider(1, 10, value=3, step=1, label="Timed runs per variant (after one warm-up)")
            new_tokens = gr.Slider(8, 128, value=32, step=8, label="New tokens per timed run")
    with gr.Row():
        start = gr.Button("Evaluate", variant="primary", elem_id="evaluate")
        stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="evaluate-stop")
    status = gr.Markdown(elem_id="evaluate-status")
    table = gr.Dataframe(headers=list(HEADERS.values()), interactive=False, wrap=True, elem_id="evaluate-table")
    gr.Markdown(TABLE_NOTE, elem_classes=["small-print"])
    with gr.Row():
        quality_chart = gr.Image(label="Quality against memory", type="filepath", interactive=False)
        speed_chart = gr.Image(label="Speed against memory", type="filepath", interactive=False)
    files = gr.File(label="results.json, results.csv, results.md", file_count="multiple", interactive=False)

    def on_evaluate(variant_ids, run_count, max_new_tokens, request: gr.Request, progress=gr.Progress()):
        key = request.session_hash if request else None
        stops[key] = stop_event = threading.Event()
        order = [v for v in config.variants if v in (variant_ids or [])]  # rows in the models file's order
        text = evaluate.EVALUATION_FILE.read_text(encoding="utf-8")
        try:
            results = evaluate.evaluate(arena, order or list(variant_ids or []), text, int(run_count),
                                        int(max_new_tokens), progress=lambda f, m: progress(f, desc=m),
                                        stop=stop_event)
        except ArenaError as exc:
            raise gr.Error(str(exc)) from None
        finally:
            stops.pop(key, None)
        if not results:
            return {status: "**Stopped** before the first variant finished."}
        out = Path(tempfile.mkdtemp(prefix="evaluate-"))
        paths = evaluate.write_outputs(results, arena, out, evaluate.conditions(evaluate.EVALUATION_FILE,
                                                                                 int(run_count), int(max_new_tokens)))
        paths.update(charts.write_charts([vars(r) for r in results], out, order=list(config.variants)))
        note = paths["markdown"].read_text().split("\n\n", 1)[-1].strip()
        head = (f"**Stopped** after {len(results)} of {len(order)} variants." if stop_event.is_set()
                and len(results) < len(order) else "**Done.**")
        return {status: f"{head} {note}", table: pd.DataFrame(table_rows(results), columns=list(HEADERS.values())),
                quality_chart: str(paths["quality_chart"]), speed_chart: str(paths["speed_chart"]),
                files: [str(paths[k]) for k in ("json", "csv", "markdown")]}

    def on_stop(request: gr.Request):
        event = stops.get(request.session_hash if request else None)
        if event is not None:
            event.set()
        return gr.update(interactive=False, value="Stopping after this variant…")

    running = {start: gr.update(interactive=False), stop: gr.update(interactive=True, value="Stop")}
    idle = {start: gr.update(interactive=True), stop: gr.update(interactive=False, value="Stop")}
    # One progress bar, on the status line: Gradio otherwise draws one over every output.
    start.click(lambda: running, None, [start, stop], queue=False, api_visibility="undocumented").then(
        on_evaluate, [ids, runs, new_tokens], [status, table, quality_chart, speed_chart, files],
        concurrency_id=queue, concurrency_limit=None, api_visibility="undocumented", show_progress_on=[status],
    ).then(lambda: idle, None, [start, stop], queue=False, api_visibility="undocumented")
    stop.click(on_stop, None, stop, queue=False, api_visibility="undocumented")
