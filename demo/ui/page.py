"""The Gradio page: thin handlers over Arena; with demo.ui.evaluate, the only modules besides app.py that
import gradio."""

from __future__ import annotations

import html
import numbers
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import gradio as gr
import pandas as pd

from demo.measuring import system
from demo.reports import card, charts, report
from demo.ui import blind as ui_blind, evaluate as ui_evaluate
from demo.errors import ArenaError
from demo.artifacts.quantize import quantize_variant
from demo.running.runner import Arena, VariantResult

DEVICE_QUEUE = "device"  # every model-running event shares this queue: runs never overlap on a device
SYSTEM_REFRESH_S = 2.0
# The streaming column's text reaches the page at most this often. Each page update costs server CPU that
# a CPU generation shares; every 0.1 s it cost ~20% of decode speed on 2 cores, every 0.4 s under 2%.
TEXT_INTERVAL_S = 0.4

# The same words in a variant's column and in the summary table.
STATUS_TEXT = {
    "queued": "queued",
    "waiting": "waiting for the device: another comparison is running",
    "loading": "loading weights…",
    "reading": "reading the prompt…",
    "generating": "generating…",
    "scoring": "scoring fidelity…",
    "done": "done",
    "stopped": "stopped",
    "error": "not available",
}
FINISHED = ("done", "stopped", "error")

# Bars start at zero: a truncated axis would exaggerate the differences between variants.
PLOT_STYLE = {"y_lim": [0, None], "x_label_angle": -40, "min_width": 260, "color": "variant",
              "colors_in_legend": [], "height": 260}
CHARTS = (  # (elem_id, y column, title, accessible name)
    ("chart-decode", "decode (tokens/s)", "Decode speed (tokens/s, higher is faster)",
     "Bar chart: decode speed of each variant in tokens per second; the same figures are in the summary table"),
    ("chart-ttft", "time to first token (ms)", "Time to first token (ms, lower is faster)",
     "Bar chart: time to first token of each variant in milliseconds; the same figures are in the summary table"),
    ("chart-weights", "weights (MiB)", "Weights footprint (MiB, lower is smaller)",
     "Bar chart: weights footprint of each variant in MiB; the same figures are in the summary table"),
)
SUMMARY_COLUMN = {"decode (tok/s)": "decode (tokens/s)", "TTFT (ms)": "time to first token (ms)"}

HOW_TO_READ = """
**How to read the figures.** Variants run one after another under one device lock, with the same
settings (greedy unless you ask to sample with a seed) and the chat template applied.
*Time to first token* runs from the call to `generate` to the first new token; *decode* is
(new tokens − 1) / (last token time − first token time), so an answer of 1 token has no decode rate.
*Load* is shown cold (first load, including a 2-token warm-up) or cached. *Weights* is
`get_memory_footprint()`. *Peak memory* is weights plus the growth during the run: on CUDA from
`max_memory_allocated`, on CPU from process RSS sampled every 5 ms, which is approximate (mmap and
allocator caching).
**Slower but smaller is expected:** bitsandbytes dequantizes on the fly, so at batch 1 its int8 and 4-bit
variants are often slower than fp16 while holding a fraction of the memory. On a CPU, timings are for
smoke tests, not verdicts.
"""

FIDELITY_GUIDE = """
**How close is a variant to the baseline?** Both figures compare what the variant and the baseline predict
at each position of the baseline's own answer.

- **KL divergence (nats)**: how far the variant's next-token probabilities are from the baseline's,
  averaged over the answer. 0 means identical; lower is closer.
- **Top-1 agreement**: the share of positions where both pick the same most likely next token.
  100% means the variant would choose exactly what the baseline chooses.
- **Departs from the baseline**: where the variant's own answer first differs from the baseline's answer.
  After one different token the two answers go separate ways, so a late departure matters little and an
  early one can change the whole answer.

For scale, llama.cpp's quantizations of Llama-3-8B against FP16 (wikitext-2):
Q8_0 KL 0.0014, top-1 97.7% (hard to tell apart) · Q4_K_M KL 0.031, top-1 91.9% (small, noticeable drift) ·
Q2_K KL 0.445, top-1 71.1% (clearly degraded). Small models such as this one usually drift more than
an 8B model at the same number of bits.
"""

QUANTIZE_NOTE = ("**Quantize now** makes this variant's quantized checkpoint from the base model's weights "
                 "(GPTQ and AWQ: calibrated on a short text shipped with the app, then saved to the cache). It takes "
                 "about 1.5 minutes (GPTQ) or up to about 20 minutes (AWQ) on a 2-core CPU and runs once; press Run "
                 "again afterwards to compare it.")
QUANTIZE_NOTE_GGUF = ("**Quantize now** makes this variant's GGUF file with llama.cpp's own quantizer from the base "
                      "model's weights and caches it. It takes seconds for this model and runs once; press Run again "
                      "afterwards to compare it.")
# How the variant picker groups variants: by family, the baseline first (models.yaml order within a family).
FAMILIES = {"fp32": "transformers", "fp16": "transformers", "bf16": "transformers", "bnb-int8": "bitsandbytes",
            "bnb-4bit": "bitsandbytes", "gptq": "GPTQ", "awq": "AWQ", "torchao": "torchao", "gguf": "llama.cpp",
            "remote": "remote"}


def variant_choices(config) -> list[tuple[str, str]]:
    """(label, id) for the picker: baselines first, then grouped by family, each label led by its family."""
    order = list(dict.fromkeys(FAMILIES.values()))
    baselines = {b.baseline for b in config.bases.values()}

    def key(item):
        index, variant = item
        family = FAMILIES.get(variant.method, variant.method)
        return (variant.id not in baselines, order.index(family) if family in order else len(order), index)

    def label(variant) -> str:
        family, text = FAMILIES.get(variant.method, variant.method), variant.label or variant.id
        return f"{text if text.lower().startswith(family.lower()) else f'{family} · {text}'} ({variant.id})"

    return [(label(v), v.id) for _, v in sorted(enumerate(config.variants.values()), key=key)]

CSS = """
.variant-col {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px;}
.variant-col table {font-size: 0.85em;}
.variant-divergence mark {background: #fde68a; color: #1f2937; padding: 0 1px;}
.variant-divergence pre {white-space: pre-wrap; word-break: break-word; max-height: 16em; overflow-y: auto;}
.small-print, .small-print p {font-size: 0.85em;}
input[type=checkbox]:focus-visible, input[type=checkbox]:checked:focus-visible {
  outline: 3px solid #1e1b4b; outline-offset: 2px;}
"""

# Runs once in the browser: Ctrl+Enter in the prompt runs, and charts get accessible names (Gradio
# offers no aria attributes; the observer re-applies them when a chart is drawn again).
PAGE_JS = """
() => {
  const names = %s;
  const apply = () => {
    for (const [id, name] of Object.entries(names)) {
      const el = document.getElementById(id);
      if (el && el.getAttribute('aria-label') !== name) {
        el.setAttribute('role', 'img');
        el.setAttribute('aria-label', name);
      }
    }
  };
  new MutationObserver(apply).observe(document.body, {childList: true, subtree: true});
  apply();
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey) && event.target.closest('#prompt')) {
      event.preventDefault();
      document.getElementById('run')?.click();
    }
  }, true);
}
""" % {chart[0]: chart[3] for chart in CHARTS}

# The live count, in the browser: no server round trip per keystroke. Counts code points, as the server does.
COUNT_JS = """
(text) => {
  const n = [...(text || '')].length, limit = %d;
  const count = `${n.toLocaleString('en-US')} / ${limit.toLocaleString('en-US')} characters`;
  return n > limit ? `**${count}: over the limit, shorten the prompt to run it**` : count;
}
"""


def queue_max_size(arena: Arena) -> int:
    """Gradio's own queue limit: a backstop behind the arena's admission limit."""
    return 2 * arena.config.limits.max_pending


def theme() -> gr.themes.Base:
    """Soft, darkened where its text fell under WCAG's 4.5:1 contrast (white on primary_500 is 4.47:1)."""
    return gr.themes.Soft().set(
        button_primary_background_fill="*primary_600", button_primary_background_fill_hover="*primary_700",
        checkbox_label_background_fill_selected="*primary_600", block_label_text_color="*primary_700",
        block_title_text_color="*neutral_800", block_info_text_color="*neutral_600",
        body_text_color_subdued="*neutral_600", checkbox_border_color_focus="*primary_800",
    )


class _Slot(NamedTuple):
    """One variant's column: its components, shown or hidden as the chosen variants change."""

    column: gr.Column
    head: gr.Markdown
    text: gr.Textbox
    figures: gr.Markdown
    quantize_now: gr.Button
    quantize_note: gr.Markdown
    diverged: gr.HTML


def launch_kwargs() -> dict[str, Any]:
    """Theme, CSS and JS go to launch() in Gradio 6."""
    return {"theme": theme(), "css": CSS, "js": PAGE_JS, "footer_links": ["api", "gradio"]}


def status_text(rec: dict) -> str:
    """A record's status in words, as its column and the summary show it."""
    status = rec.get("status")
    words = STATUS_TEXT.get(status, str(status))
    if status == "waiting" and rec.get("queue_ahead"):
        ahead = rec["queue_ahead"]
        words += f" ({ahead} comparison{'s' if ahead != 1 else ''} ahead of this one)"
    elif status == "reading" and rec.get("prompt_tokens"):
        words = f"reading the prompt ({rec['prompt_tokens']:,} tokens)…"
    if rec.get("truncated") and status in ("done", "stopped"):
        words += f" · cut at {rec['new_tokens']} tokens"
    return words


def build_demo(arena: Arena) -> gr.Blocks:
    """The whole page; handlers translate ArenaError into gr.Error and nothing else."""
    config = arena.config
    stops: dict[str, threading.Event] = {}  # session -> stop event of its running comparison
    stops_lock = threading.Lock()
    choices = variant_choices(config)
    defaults, limits = config.generation, config.limits

    with gr.Blocks(title="Quantization Arena") as demo:
        gr.Markdown("# Quantization Arena\nOne prompt, several quantized variants of the same model, side by side: "
                    "their answers, latency and memory, and how far each strays from the full-precision baseline.")
        notes = [f"**{b.label}.** {b.note}" for b in config.bases.values() if b.note]
        if notes:  # closed by default: the controls stay at the top of the page
            with gr.Accordion("About the model", open=False):
                gr.Markdown("\n\n".join(notes), elem_classes=["small-print"])
        with gr.Tab("Compare", id="compare"):
            with gr.Row():
                with gr.Column(scale=3):
                    prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Ask something…", elem_id="prompt",
                                        info=f"Up to {limits.max_prompt_chars:,} characters · Ctrl+Enter runs")
                    prompt_count = gr.Markdown(f"0 / {limits.max_prompt_chars:,} characters", elem_id="prompt-count",
                                               elem_classes=["small-print"])
                    if config.examples:
                        gr.Examples([[e] for e in config.examples], inputs=[prompt], label="Examples")
                with gr.Column(scale=2):
                    variants = gr.CheckboxGroup(choices, value=[c[1] for c in choices[:3]], label="Variants to compare",
                                                info=f"up to {limits.max_variants}")
                    with gr.Accordion("Generation settings", open=False):
                        max_new = gr.Slider(1, limits.max_new_tokens, value=defaults.max_new_tokens, step=1,
                                            label="Max new tokens")
                        do_sample = gr.Checkbox(False, label="Sample (default: greedy)",
                                                info="Greedy always picks the most likely token; sampling draws "
                                                     "with the seed below, the same for every variant")
                        temperature = gr.Slider(0.05, 2.0, value=defaults.temperature, step=0.05, label="Temperature",
                                                interactive=False)
                        top_p = gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label="Top-p",
                                          interactive=False)
                        seed = gr.Number(0, precision=0, minimum=0, label="Seed", interactive=False)
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id="run")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
            slots = []
            with gr.Row(equal_height=False):
                for i in range(limits.max_variants):
                    with gr.Column(visible=False, min_width=280, elem_classes=["variant-col"],
                                   elem_id=f"variant-{i}") as col:
                        head = gr.Markdown(elem_classes=["variant-head"])
                        # The label is the answer box's accessible name; screen readers read it, the page hides it.
                        text = gr.Textbox(label=f"Answer {i + 1}", show_label=False, lines=8, max_lines=20,
                                          interactive=False, elem_classes=["variant-text"])
                        diverged = gr.HTML(elem_classes=["variant-divergence"])
                        figs = gr.Markdown(elem_classes=["variant-figures"])
                        quantize_now = gr.Button("Quantize now", visible=False, size="sm", elem_classes=["quantize"])
                        quantize_note = gr.Markdown(visible=False, elem_classes=["small-print", "quantize-note"])
                    slots.append(_Slot(col, head, text, figs, quantize_now, quantize_note, diverged))
            fidelity_help = gr.Markdown(getattr(report, "FIDELITY_HELP", ""), visible=False,
                                        elem_classes=["small-print"], elem_id="fidelity-help")
            with gr.Accordion("What the fidelity figures mean", open=False, elem_id="fidelity-guide"):
                gr.Markdown(FIDELITY_GUIDE)
            with gr.Column(visible=False, elem_id="summary") as summary:
                gr.Markdown("## Summary")
                table = gr.Dataframe(headers=report.SUMMARY_HEADERS, interactive=False, wrap=True,
                                     elem_id="summary-table")
                with gr.Row():
                    plots = [gr.BarPlot(x="variant", y=y, title=title, label=title, show_label=False, elem_id=eid,
                                        **PLOT_STYLE) for eid, y, title, _ in CHARTS]
                chart_note = gr.Markdown(elem_classes=["small-print"], elem_id="chart-note")
                conditions = gr.Markdown()
                downloads = gr.File(label="Download this comparison: JSON, CSV, Markdown card",
                                    file_count="multiple", interactive=False, elem_id="downloads")
        with gr.Tab("Evaluate", id="evaluate"):
            ui_evaluate.build_tab(arena, choices, DEVICE_QUEUE)
        with gr.Tab("Blind test", id="blind", elem_id="blind"):
            ui_blind.build_tab(arena, DEVICE_QUEUE)
        with gr.Accordion("System", open=True):
            system_md = gr.Markdown(elem_id="system")
        gr.Markdown(HOW_TO_READ)
        timer = gr.Timer(SYSTEM_REFRESH_S)

        shown = gr.State([])  # variant ids in column order, for the Quantize now buttons
        records = gr.State([])  # the finished comparison's records, from the streaming event to the summary
        # A comparison is three events, as the page runs them: set the columns up, stream the columns
        # (only their headings, answers and figures: every output of a streaming event is sent or rebuilt
        # on each snapshot, so it carries nothing else), then the summary, once.
        start_outputs = [*(c for slot in slots for c in (slot.column, slot.text, slot.figures, slot.diverged,
                                                         slot.quantize_now, slot.quantize_note)),
                         fidelity_help, summary, run, shown]
        stream_outputs = [*(c for slot in slots for c in (slot.head, slot.text, slot.figures)), records]
        final_outputs = [*(c for slot in slots for c in (slot.diverged, slot.quantize_now, slot.quantize_note)),
                         fidelity_help, summary, table, *plots, chart_note, conditions, downloads, run]

        def checked(prompt_text, variant_ids, max_new_tokens, sample, temp, p, seed_value):
            try:
                settings = arena.settings(_whole(max_new_tokens), bool(sample), temp, p,
                                          _whole(seed_value) if sample else None)
                arena.validate(prompt_text, list(variant_ids or []))
            except ArenaError as exc:
                raise gr.Error(str(exc)) from None
            return settings

        def on_start(prompt_text, variant_ids, max_new_tokens, sample, temp, p, seed_value):
            checked(prompt_text, variant_ids, max_new_tokens, sample, temp, p, seed_value)
            ids = list(variant_ids)
            updates: dict = {summary: gr.update(visible=False), fidelity_help: gr.update(visible=False),
                             run: gr.update(interactive=False), shown: ids}
            for i, slot in enumerate(slots):
                variant = config.variants[ids[i]] if i < len(ids) else None
                updates[slot.column] = gr.update(visible=variant is not None)
                if variant is not None:
                    updates.update({slot.text: gr.update(value="", label=f"Answer from {variant.label or variant.id}"),
                                    slot.figures: "", slot.diverged: "", slot.quantize_now: gr.update(visible=False),
                                    slot.quantize_note: gr.update(visible=False)})
            return updates

        def on_run(prompt_text, variant_ids, max_new_tokens, sample, temp, p, seed_value, request: gr.Request):
            settings = checked(prompt_text, variant_ids, max_new_tokens, sample, temp, p, seed_value)
            stop_event, view = threading.Event(), _PageView(arena, len(slots))
            key = request.session_hash if request else None
            with stops_lock:
                stops[key] = stop_event
            try:
                results: list[VariantResult] = []
                for index, results in enumerate(arena.compare(prompt_text, list(variant_ids), settings, stop_event)):
                    values = view.start(results) if index == 0 else view.step(results, time.perf_counter())
                    if values is not None:  # nothing changed that the page shows: no update at all
                        yield [*values, []]
                final = [r.to_record() for r in results]
                yield [*view.final(final), final]
            except ArenaError as exc:  # busy, or refused after validation: the same words as the API
                raise gr.Error(str(exc)) from None
            finally:
                stop_event.set()  # a closed stream (client gone) also ends the generation
                with stops_lock:
                    if stops.get(key) is stop_event:
                        del stops[key]

        def on_summary(final: list[dict]):
            updates: dict = {run: gr.update(interactive=True)}
            if not final:
                return updates
            baseline_texts = {r["variant"]: r["text"] for r in final}
            for slot, rec in zip(slots, final):
                baseline = config.base_of(rec["variant"]).baseline
                updates[slot.diverged] = _divergence_html(arena, rec, baseline_texts.get(baseline))
                updates[slot.quantize_now] = gr.update(visible=_offers_quantize(rec))
                updates[slot.quantize_note] = gr.update(
                    value=QUANTIZE_NOTE_GGUF if rec["method"] == "gguf" else QUANTIZE_NOTE,
                    visible=_offers_quantize(rec))
            updates[fidelity_help] = gr.update(visible=bool(getattr(report, "FIDELITY_HELP", ""))
                                               and any(r.get("fidelity") for r in final))
            updates.update(_summary_updates(arena, final, table, plots, chart_note))
            paths = card.write(final, Path(tempfile.mkdtemp(prefix="comparison-")))
            updates.update({summary: gr.update(visible=True), conditions: _conditions_markdown(final),
                            downloads: [str(paths[k]) for k in ("json", "csv", "markdown")]})
            return updates

        def on_quantize(index: int, ids: list[str], progress=gr.Progress(track_tqdm=True)):
            variant_id = ids[index] if index < len(ids) else None
            if variant_id is None:
                raise gr.Error("run a comparison first")
            gguf = config.variants[variant_id].method == "gguf"
            progress(0, desc=f"Quantizing {variant_id} ({'seconds' if gguf else 'about 1.5 minutes on a CPU'})…")
            started = time.perf_counter()
            try:
                with arena.exclusive():
                    arena.device.call(quantize_variant, config, variant_id)
            except ArenaError as exc:
                raise gr.Error(str(exc)) from None
            done = f"**Quantized in {time.perf_counter() - started:.0f} s:** press Run again to compare it."
            return {slots[index].quantize_note: gr.update(value=done, visible=True),
                    slots[index].quantize_now: gr.update(visible=False)}

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

        def on_sample(sample: bool):
            return [gr.update(interactive=bool(sample))] * 3

        # The arena admits limits.max_pending comparisons and runs them on one device thread, so Gradio
        # need not hold them back; a full arena answers "busy, try again" instead of a silent wait.
        run_inputs = [prompt, variants, max_new, do_sample, temperature, top_p, seed]
        started = run.click(on_start, run_inputs, start_outputs, concurrency_limit=None, api_name="run_start",
                            api_visibility="undocumented", show_progress="hidden")
        streamed = started.success(on_run, run_inputs, stream_outputs, concurrency_id=DEVICE_QUEUE,
                                   concurrency_limit=None, api_name="run", api_visibility="undocumented")
        streamed.success(on_summary, [records], final_outputs, api_name="run_summary", api_visibility="undocumented")
        streamed.failure(lambda: gr.update(interactive=True), None, run, queue=False,
                         api_visibility="undocumented")  # busy or refused: Run works again
        stop.click(on_stop, None, None, queue=False, api_visibility="undocumented")
        prompt.change(None, [prompt], [prompt_count], js=COUNT_JS % limits.max_prompt_chars)
        do_sample.change(on_sample, [do_sample], [temperature, top_p, seed], queue=False,
                         api_visibility="undocumented", show_progress="hidden")
        for index, slot in enumerate(slots):
            slot.quantize_now.click(on_quantize, [gr.State(index), shown], [slot.quantize_note, slot.quantize_now],
                                    concurrency_id=DEVICE_QUEUE, concurrency_limit=None,
                                    api_visibility="undocumented")
        gr.api(compare, api_name="compare", concurrency_id=DEVICE_QUEUE, concurrency_limit=None)
        timer.tick(on_tick, None, system_md, queue=False, api_visibility="undocumented", show_progress="hidden")
        demo.load(on_tick, None, system_md, queue=False, api_visibility="undocumented")
    return demo


class _PageView:
    """What the streaming columns show, as the streaming event's values: each slot's heading, answer and
    figures. A snapshot changes the streaming column's status and, at most every TEXT_INTERVAL_S, its text;
    a column's figures are set once, when it ends. Every update carries all the values as plain strings:
    Gradio sends the browser only what differs from the last update, whereas an "unchanged" marker would
    make it rebuild that component on every update (about 0.7 ms each, on the CPU the model runs on)."""

    def __init__(self, arena: Arena, n_slots: int):
        self.arena = arena
        self.values = [["", "", ""] for _ in range(n_slots)]  # per slot: heading, answer, figures
        self.text_at_s: dict[int, float] = {}  # when each column's text was last sent
        self.finished: set[int] = set()

    def start(self, results: list[VariantResult]) -> list[str]:
        """The first snapshot: the chosen columns' headings, empty answers."""
        for i, result in enumerate(results[:len(self.values)]):
            self.values[i] = [_head_markdown(self.arena, _status_fields(result)), "", ""]
        return self.flat()

    def step(self, results: list[VariantResult], now_s: float) -> list[str] | None:
        """The values after this snapshot, or None when the page would show nothing new."""
        changed = False
        for i, result in enumerate(results[:len(self.values)]):
            if i in self.finished:
                continue
            slot = self.values[i]
            if result.status in FINISHED:
                rec = result.to_record()
                self.finished.add(i)
                slot[1:] = [_answer_text(rec), report.figures_markdown(rec)]
                head, changed = _head_markdown(self.arena, rec), True
            else:
                if self._text_due(i, result, now_s):
                    slot[1], self.text_at_s[i], changed = result.text, now_s, True
                head = _head_markdown(self.arena, _status_fields(result))
            if head != slot[0]:
                slot[0], changed = head, True
        return self.flat() if changed else None

    def _text_due(self, i: int, result: VariantResult, now_s: float) -> bool:
        if result.text == self.values[i][1]:
            return False
        # the last tokens, and a column's first text, at once
        return result.status != "generating" or now_s - self.text_at_s.get(i, 0.0) >= TEXT_INTERVAL_S

    def final(self, records: list[dict]) -> list[str]:
        """Fidelity arrives after the last column: every column's heading and figures, once more."""
        for i, rec in enumerate(records[:len(self.values)]):
            self.values[i] = [_head_markdown(self.arena, rec), _answer_text(rec), report.figures_markdown(rec)]
        return self.flat()

    def flat(self) -> list[str]:
        return [value for slot in self.values for value in slot]


def _status_fields(result: VariantResult) -> dict:
    """The few fields a column's heading reads, without copying the whole record on every snapshot."""
    return {"variant": result.variant, "method": result.method, "bits": result.bits, "device": result.device,
            "status": result.status, "prompt_tokens": result.prompt_tokens, "new_tokens": result.new_tokens,
            "queue_ahead": getattr(result, "queue_ahead", None), "truncated": getattr(result, "truncated", False)}


def _answer_text(rec: dict) -> str:
    return f"Not available — {rec['error']}" if rec.get("error") else rec["text"]


def _offers_quantize(rec: dict) -> bool:
    return (rec.get("error") or "").startswith("not quantized")


def _summary_updates(arena: Arena, records: list[dict], table, plots, chart_note) -> dict:
    """The table and the charts: the columns' order, one colour per variant, gaps said in words."""
    colours = charts.variant_colours(list(arena.config.variants))
    names = charts.short_names([r["variant"] for r in records])
    frame = pd.DataFrame(report.summary_rows(records), columns=report.SUMMARY_HEADERS)
    frame["status"] = [status_text(r) for r in records]
    styled = frame.style.apply(lambda column: [f"border-left: 6px solid {colours[v]}" for v in column],
                               subset=["variant"]).format(_cell, na_rep="–",
                                                          subset=list(frame.select_dtypes("number").columns))
    done = frame[[r["status"] in ("done", "stopped") for r in records]].rename(columns=SUMMARY_COLUMN)
    done = done.assign(variant=[names[v] for v in done["variant"]])
    order = [names[r["variant"]] for r in records]
    colour_map = {names[r["variant"]]: colours[r["variant"]] for r in records}
    updates: dict = {table: styled}
    for plot, (_, y, _, _) in zip(plots, CHARTS):
        if y not in done:  # a summary without this figure: no chart rather than a broken one
            updates[plot] = gr.update(visible=False)
            continue
        data = done[done[y].notna()][["variant", y]]
        updates[plot] = gr.update(value=data, sort=order, color_map=colour_map, visible=not data.empty)
    updates[chart_note] = _chart_note(records, names)
    return updates


def _cell(value) -> str:
    """A table number as people read it: whole numbers plain, small ones with one decimal."""
    if isinstance(value, numbers.Integral) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _chart_note(records: list[dict], names: dict[str, str]) -> str:
    one_token = [names[r["variant"]] for r in records if r["status"] in ("done", "stopped")
                 and r.get("decode_tokens_per_s") is None]
    if not one_token:
        return ""
    return (f"No decode rate for {', '.join(one_token)}: an answer of one token has no decode phase to time "
            "(decode counts the tokens after the first), so it is left out of the decode chart.")


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
            f"**{status_text(rec)}**")


def _divergence_html(arena: Arena, rec: dict, baseline_text: str | None) -> str:
    """Where this answer departs from the baseline's (marked, as literal text), or why there is no comparison."""
    baseline = arena.config.base_of(rec["variant"]).baseline
    if rec["status"] != "done" or baseline is None or baseline == rec["variant"]:
        return ""
    if rec.get("fidelity") is None:
        return f"<p><em>Tick <code>{html.escape(baseline)}</code> too to see how far this answer strays from " \
               "the baseline.</em></p>"
    return report.divergence_html(rec, baseline_text or "")


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
    process = (f"**This process:** {snap.process_uss_mib:,.0f} MiB of its own memory (USS) · "
               f"{snap.process_rss_mib:,.0f} MiB resident (RSS)" if snap.process_uss_mib is not None
               else f"**This process:** {snap.process_rss_mib:,.0f} MiB resident (RSS)")
    lines = [f"**Device:** {snap.device}",
             process,
             f"**Machine RAM in use:** {snap.ram_used_mib:,.0f} of {snap.ram_total_mib:,.0f} MiB"]
    if snap.gpu:
        lines.append(f"**VRAM used (device-wide, NVML):** {snap.gpu.used_mib:,.0f} / {snap.gpu.total_mib:,.0f} MiB "
                     f"· driver {snap.gpu.driver}")
    loaded = manager.loaded_ids()
    lines.append(f"**Loaded variants:** {', '.join(loaded) if loaded else 'none yet (loaded on first use)'} · "
                 f"weights {manager.resident_mib():,.0f} of a {manager.budget_mib:,.0f} MiB budget")
    lines.append("<small>USS counts the pages only this process holds (freed if it exits). RSS also counts "
                 "file-backed pages it has mapped, such as memory-mapped weights and libraries, which the "
                 "machine figure leaves out as reclaimable cache; so RSS can exceed the machine's RAM in use. "
                 "The budget is how much model weights the app keeps loaded between comparisons (least recently "
                 "used variants are unloaded past it), not a cap on the process's RAM.</small>")
    return "  \n".join(lines)
