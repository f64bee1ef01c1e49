"""The Gradio page: thin handlers over Arena; the only module besides app.py that imports gradio."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import gradio as gr
import pandas as pd

from demo import card, evaluate, report, system
from demo.errors import ArenaError
from demo.quantize import quantize_variant
from demo.runner import Arena, VariantResult

DEVICE_QUEUE = "device"  # every model-running event shares this queue: runs never overlap on a device
SYSTEM_REFRESH_S = 2.0

STATUS_TEXT = {
    "queued": "queued",
    "loading": "loading weights…",
    "generating": "generating…",
    "done": "done",
    "stopped": "stopped",
    "error": "not available",
}
# Bars start at zero: a truncated axis would exaggerate the differences between variants.
PLOT_STYLE = {"y_lim": [0, None], "x_label_angle": -20, "min_width": 280}

HOW_TO_READ = """
**How to read the figures.** Variants run one after another under one device lock, with the same
settings (greedy unless you ask to sample with a seed) and the chat template applied.
*Time to first token* runs from the call to `generate` to the first new token; *decode* is
(new tokens − 1) / (last token time − first token time). *Load* is shown cold (first load, including a
2-token warm-up) or cached. *Weights* is `get_memory_footprint()`. *Peak memory* is weights plus the
growth during the run: on CUDA from `max_memory_allocated`, on CPU from process RSS sampled every 5 ms,
which is approximate (mmap and allocator caching).
**Slower but smaller is expected:** bitsandbytes dequantizes on the fly, so at batch 1 its int8 and 4-bit
variants are often slower than fp16 while holding a fraction of the memory. On a CPU, timings are for
smoke tests, not verdicts.
"""

CSS = """
.variant-col {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px;}
.variant-col table {font-size: 0.85em;}
.variant-divergence mark {background: #fde68a; padding: 0 1px;}
"""


def queue_max_size(arena: Arena) -> int:
    """Gradio's own queue limit: a backstop behind the arena's admission limit."""
    return 2 * arena.config.limits.max_pending


class _Slot(NamedTuple):
    """One variant's column: its components, shown or hidden as the chosen variants change."""

    column: gr.Column
    head: gr.Markdown
    text: gr.Textbox
    figures: gr.Markdown
    quantize_now: gr.Button
    diverged: gr.Markdown


def launch_kwargs() -> dict[str, Any]:
    """Theme and CSS go to launch() in Gradio 6."""
    return {"theme": gr.themes.Soft(), "css": CSS, "footer_links": ["api", "gradio"]}


def build_demo(arena: Arena) -> gr.Blocks:
    """The whole page; handlers translate ArenaError into gr.Error and nothing else."""
    config = arena.config
    stops: dict[str, threading.Event] = {}  # session -> stop event of its running comparison
    stops_lock = threading.Lock()
    choices = [(f"{v.id} — {v.label}" if v.label else v.id, v.id) for v in config.variants.values()]
    defaults = config.generation

    with gr.Blocks(title="Quantization Arena") as demo:
        gr.Markdown("# Quantization Arena\nOne prompt, several quantized variants of the same model, side by side: "
                    "their answers, latency and memory.")
        notes = [f"**{b.label}.** {b.note}" for b in config.bases.values() if b.note]
        if notes:
            gr.Markdown("\n\n".join(notes))
        with gr.Tab("Compare", id="compare"):
            with gr.Row():
                with gr.Column(scale=3):
                    prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Ask something…",
                                        max_length=config.limits.max_prompt_chars)
                    if config.examples:
                        gr.Examples([[e] for e in config.examples], inputs=[prompt], label="Examples")
                with gr.Column(scale=2):
                    variants = gr.CheckboxGroup(choices, value=[c[1] for c in choices[:3]], label="Variants to compare",
                                                info=f"up to {config.limits.max_variants}")
                    with gr.Accordion("Generation settings", open=False):
                        max_new = gr.Slider(1, config.limits.max_new_tokens, value=defaults.max_new_tokens, step=1,
                                            label="Max new tokens")
                        do_sample = gr.Checkbox(False, label="Sample (default: greedy)")
                        temperature = gr.Slider(0.05, 2.0, value=defaults.temperature, step=0.05, label="Temperature")
                        top_p = gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label="Top-p")
                        seed = gr.Number(0, precision=0, minimum=0, label="Seed (used when sampling)")
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id="run")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
            slots = []
            with gr.Row(equal_height=False):
                for i in range(config.limits.max_variants):
                    with gr.Column(visible=False, min_width=280, elem_classes=["variant-col"],
                                   elem_id=f"variant-{i}") as col:
                        head = gr.Markdown()
                        text = gr.Textbox(show_label=False, lines=8, max_lines=20, interactive=False,
                                          elem_classes=["variant-text"])
                        diverged = gr.Markdown(elem_classes=["variant-divergence"])
                        figs = gr.Markdown(elem_classes=["variant-figures"])
                        quantize_now = gr.Button("Quantize now", visible=False, size="sm", elem_classes=["quantize"])
                    slots.append(_Slot(col, head, text, figs, quantize_now, diverged))
            with gr.Column(visible=False, elem_id="summary") as summary:
                gr.Markdown("## Summary")
                table = gr.Dataframe(headers=report.SUMMARY_HEADERS, interactive=False, wrap=True, elem_id="summary-table")
                with gr.Row():
                    tps_plot = gr.BarPlot(x="variant", y="decode (tok/s)", title="Decode speed (tokens/s, higher is "
                                          "faster)", sort="-y", **PLOT_STYLE)
                    ttft_plot = gr.BarPlot(x="variant", y="TTFT (ms)", title="Time to first token (ms, lower is "
                                           "faster)", sort="y", **PLOT_STYLE)
                    mem_plot = gr.BarPlot(x="variant", y="weights (MiB)", title="Weights footprint (MiB)", sort="y",
                                          **PLOT_STYLE)
                conditions = gr.Markdown()
                downloads = gr.File(label="Download this comparison: JSON, CSV, Markdown card",
                                    file_count="multiple", interactive=False, elem_id="downloads")
        with gr.Tab("Evaluate", id="evaluate"):
            _evaluate_tab(arena, choices)
        with gr.Accordion("System", open=True):
            system_md = gr.Markdown(elem_id="system")
        gr.Markdown(HOW_TO_READ)
        timer = gr.Timer(SYSTEM_REFRESH_S)

        shown = gr.State([])  # variant ids in column order, for the Quantize now buttons
        slot_outputs = [c for slot in slots for c in slot]
        outputs = [*slot_outputs, summary, table, tps_plot, ttft_plot, mem_plot, conditions, downloads, run, shown]

        def render(results: list[VariantResult], final: bool) -> dict:
            records = [r.to_record() for r in results]
            updates: dict = {run: gr.update(interactive=final), shown: [r["variant"] for r in records]}
            for i, (col, head, text, figs, quantize_now, diverged) in enumerate(slots):
                if i >= len(records):
                    updates[col] = gr.update(visible=False)
                    continue
                rec = records[i]
                updates[col] = gr.update(visible=True)
                updates[head] = _head_markdown(arena, rec)
                updates[text] = rec["error"] and f"Not available — {rec['error']}" or rec["text"]
                updates[figs] = report.figures_markdown(rec)
                updates[diverged] = _divergence_note(arena, rec) if final else ""
                updates[quantize_now] = gr.update(visible=final and (rec["error"] or "").startswith("not quantized"))
            updates[summary] = gr.update(visible=final)
            if final:
                frame = pd.DataFrame(report.summary_rows(records), columns=report.SUMMARY_HEADERS)
                done = frame[frame["status"].isin(["done", "stopped"])]
                paths = card.write(records, Path(tempfile.mkdtemp(prefix="comparison-")))
                updates.update({table: frame, tps_plot: done, ttft_plot: done, mem_plot: done,
                                conditions: _conditions_markdown(records),
                                downloads: [str(paths[k]) for k in ("json", "csv", "markdown")]})
            return updates

        def on_run(prompt_text, variant_ids, max_new_tokens, sample, temp, p, seed_value, request: gr.Request):
            try:
                settings = arena.settings(_whole(max_new_tokens), bool(sample), temp, p,
                                          _whole(seed_value) if sample else None)
                arena.validate(prompt_text, list(variant_ids or []))
            except ArenaError as exc:
                raise gr.Error(str(exc)) from None
            stop_event = threading.Event()
            key = request.session_hash if request else None
            with stops_lock:
                stops[key] = stop_event
            try:
                results: list[VariantResult] = []
                for results in arena.compare(prompt_text, list(variant_ids), settings, stop_event):
                    yield render(results, final=False)
                yield render(results, final=True)
            finally:
                stop_event.set()  # a closed stream (client gone) also ends the generation
                with stops_lock:
                    if stops.get(key) is stop_event:
                        del stops[key]

        def on_quantize(index: int, ids: list[str], progress=gr.Progress(track_tqdm=True)):
            variant_id = ids[index] if index < len(ids) else None
            if variant_id is None:
                raise gr.Error("run a comparison first")
            progress(0, desc=f"Quantizing {variant_id} (minutes on a CPU)…")
            started = time.perf_counter()
            try:
                arena.device.call(quantize_variant, config, variant_id)
            except ArenaError as exc:
                raise gr.Error(str(exc)) from None
            done = f"Quantized in {time.perf_counter() - started:.0f} s: press Run again to compare it."
            return {slots[index].text: done, slots[index].quantize_now: gr.update(visible=False)}

        def on_stop(request: gr.Request):
            with stops_lock:
                event = stops.get(request.session_hash if request else None)
            if event is not None:
                event.set()

        def compare(prompt: str, variants: list[str], max_new_tokens: int = defaults.max_new_tokens,
                    do_sample: bool = False, temperature: float = defaults.temperature, top_p: float = defaults.top_p,
                    seed: int | None = None) -> Iterator[list[dict]]:
            """Run one prompt on the given variant ids, one after another; the last output is one record per
            variant. It streams every snapshot: Gradio can only close a generator between yields, and closing
            it is what stops the generation when a client cancels or goes away."""
            try:
                settings = arena.settings(max_new_tokens, do_sample, temperature, top_p, seed)
                for results in arena.compare(prompt, variants, settings):
                    yield [r.to_record() for r in results]
            except ArenaError as exc:
                raise gr.Error(str(exc)) from None

        def on_tick() -> str:
            return _system_markdown(arena)

        # The arena admits limits.max_pending comparisons and runs them on one device thread, so Gradio
        # need not hold them back; a full arena answers "busy, try again" instead of a silent wait.
        run.click(on_run, [prompt, variants, max_new, do_sample, temperature, top_p, seed], outputs,
                  concurrency_id=DEVICE_QUEUE, concurrency_limit=None, api_visibility="undocumented")
        stop.click(on_stop, None, None, queue=False, api_visibility="undocumented")
        for index, slot in enumerate(slots):
            slot.quantize_now.click(on_quantize, [gr.State(index), shown], [slot.text, slot.quantize_now],
                                    concurrency_id=DEVICE_QUEUE, concurrency_limit=None,
                                    api_visibility="undocumented")
        gr.api(compare, api_name="compare", concurrency_id=DEVICE_QUEUE, concurrency_limit=None)
        timer.tick(on_tick, None, system_md, queue=False, api_visibility="undocumented", show_progress="hidden")
        demo.load(on_tick, None, system_md, queue=False, api_visibility="undocumented")
    return demo


def _evaluate_tab(arena: Arena, choices: list[tuple[str, str]]) -> None:
    """The same evaluation as `python -m demo.evaluate`, on chosen variants, with its table and charts."""
    gr.Markdown("Perplexity on a held-out text, KL divergence and top-1 agreement against the base model's "
                "baseline, decode speed and memory: the same measurement as `python -m demo.evaluate`. "
                "A few minutes on a CPU.")
    baselines = {b.baseline for b in arena.config.bases.values()}
    picked = [c[1] for c in choices if c[1] in baselines] + [c[1] for c in choices if "nf4" in c[1]][:1]
    with gr.Row():
        ids = gr.CheckboxGroup(choices, value=picked, label="Variants to evaluate", scale=3)
        with gr.Column(scale=1):
            runs = gr.Slider(1, 10, value=3, step=1, label="Timed runs per variant (after one warm-up)")
            new_tokens = gr.Slider(8, 128, value=32, step=8, label="New tokens per timed run")
    start = gr.Button("Evaluate", variant="primary", elem_id="evaluate")
    status = gr.Markdown(elem_id="evaluate-status")
    table = gr.Dataframe(headers=evaluate.FIELDS, interactive=False, wrap=True, elem_id="evaluate-table")
    with gr.Row():
        quality_chart = gr.Image(label="Quality against memory", type="filepath", interactive=False)
        speed_chart = gr.Image(label="Speed against memory", type="filepath", interactive=False)
    files = gr.File(label="results.json, results.csv, results.md", file_count="multiple", interactive=False)

    def on_evaluate(variant_ids, run_count, max_new_tokens, progress=gr.Progress()):
        text = evaluate.EVALUATION_FILE.read_text(encoding="utf-8")
        try:
            results = evaluate.evaluate(arena, list(variant_ids or []), text, int(run_count), int(max_new_tokens),
                                        progress=lambda fraction, message: progress(fraction, desc=message))
        except ArenaError as exc:
            raise gr.Error(str(exc)) from None
        out = Path(tempfile.mkdtemp(prefix="evaluate-"))
        paths = evaluate.write_outputs(results, arena, out, evaluate.conditions(evaluate.EVALUATION_FILE,
                                                                                 int(run_count), int(max_new_tokens)))
        rows = [[getattr(r, f) for f in evaluate.FIELDS] for r in results]
        errors = [f"{r.variant}: {r.error}" for r in results if r.error]
        note = paths["markdown"].read_text().split("\n\n", 1)[-1].strip()
        return {status: ("**Done.** " + note + ("  \n" + "  \n".join(errors) if errors else "")),
                table: pd.DataFrame(rows, columns=evaluate.FIELDS), quality_chart: str(paths["quality_chart"]),
                speed_chart: str(paths["speed_chart"]),
                files: [str(paths[k]) for k in ("json", "csv", "markdown")]}

    start.click(on_evaluate, [ids, runs, new_tokens], [status, table, quality_chart, speed_chart, files],
                concurrency_id=DEVICE_QUEUE, concurrency_limit=None, api_visibility="undocumented")


def _whole(value: Any) -> Any:
    """Gradio Number/Slider may send 64.0 for 64; anything else is left for validation to reject."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _head_markdown(arena: Arena, rec: dict) -> str:
    variant = arena.config.variants[rec["variant"]]
    label = variant.label or variant.id
    device = rec.get("device") or "…"
    return (f"### {label}\n`{rec['variant']}` · {rec['method']} · {rec['bits']}-bit · {device}  \n"
            f"**{STATUS_TEXT.get(rec['status'], rec['status'])}**")


def _divergence_note(arena: Arena, rec: dict) -> str:
    """Where this answer departs from the baseline's (marked), or why there is no comparison."""
    baseline = arena.config.base_of(rec["variant"]).baseline
    if rec["status"] != "done" or baseline is None or baseline == rec["variant"]:
        return ""
    if rec.get("fidelity") is None:
        return f"*Tick `{baseline}` too to see how far this answer strays from the baseline.*"
    marked = report.divergence_markdown(rec)
    return (f"**Departs from the baseline's answer here:** {marked}" if marked
            else "*Same answer as the baseline, token for token.*")


def _conditions_markdown(records: list[dict]) -> str:
    env, settings = records[0]["environment"], records[0]["settings"]
    kinds = sorted({r["memory_kind"] for r in records if r.get("memory_kind")})
    lines = [f"**Conditions.** {env.get('device_name')} · torch {env.get('torch')} · transformers "
             f"{env.get('transformers')} · bitsandbytes {env.get('bitsandbytes')} · gradio {env.get('gradio')}",
             f"Settings: {', '.join(f'{k}={v}' for k, v in settings.items())}; same prompt for every variant."]
    lines += [f"Peak memory = {report.MEMORY_KINDS[k]}." for k in kinds]
    return "  \n".join(lines)


def _system_markdown(arena: Arena) -> str:
    snap = system.snapshot(arena.environment()["device_name"])
    manager = arena.manager
    lines = [f"**Device:** {snap.device}",
             f"**Process RAM (RSS):** {snap.process_rss_mib:,.0f} MiB · **machine RAM used:** "
             f"{snap.ram_used_mib:,.0f} / {snap.ram_total_mib:,.0f} MiB"]
    if snap.gpu:
        lines.append(f"**VRAM used (device-wide, NVML):** {snap.gpu.used_mib:,.0f} / {snap.gpu.total_mib:,.0f} MiB "
                     f"· driver {snap.gpu.driver}")
    loaded = manager.loaded_ids()
    lines.append(f"**Loaded variants:** {', '.join(loaded) if loaded else 'none yet (loaded on first use)'} · "
                 f"{manager.resident_mib():,.0f} / {manager.budget_mib:,.0f} MiB budget")
    return "  \n".join(lines)
