"""The Compare tab: one prompt to the chosen variants, their columns streaming side by side, then the summary;
Stop, Quantize now, and the /compare endpoint over the same Arena."""

from __future__ import annotations

import threading
from contextlib import aclosing
import time
from typing import Any, AsyncIterator, NamedTuple

import gradio as gr

from demo.artifacts.quantize import quantize_variant
from demo.errors import ArenaError
from demo.reports import card, report, scratch
from demo.running.runner import Arena, VariantResult
from demo.ui import summary as summary_view
from demo.ui import offpool, zerogpu_view
from demo.ui.clients import client_of
from demo.ui.columns import ColumnsView, divergence_html, wants_quantize
from demo.ui.stops import Stops

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
- **Noise floor**: the floor of a bf16-rounding-scale perturbation: the baseline rerun with every layer's output
  multiplied by 1 + ε·z (z random normal, ε = 2⁻⁹: about the size of one bf16 rounding), scored the same way.
  A variant whose KL is at or under it is no further from the baseline than that perturbation.
- **Where it strays**: under each column, the baseline's answer token by token, shaded by the KL at each
  token, with the five worst positions listed.

These figures come from one short answer. Figures on a longer text, with their tails and uncertainties, are in
the Evaluate tab; only its llama.cpp protocol may be set beside llama.cpp's published KL tables.
"""
QUANTIZE_NOTE = ("**Quantize now** makes this variant's quantized checkpoint from the base model's weights "
                 "(GPTQ and AWQ: calibrated on a short text shipped with the app, then saved to the cache). It takes "
                 "about 1.5 minutes (GPTQ) or up to about 20 minutes (AWQ) on a 2-core CPU and runs once; press Run "
                 "again afterwards to compare it.")
QUANTIZE_NOTE_GGUF = ("**Quantize now** makes this variant's GGUF file with llama.cpp's own quantizer from the base "
                      "model's weights and caches it. It takes seconds for this model and runs once; press Run again "
                      "afterwards to compare it.")
QUANTIZE_OFF_NOTE = ("**Quantize now is off on this Space**: quantizing holds the only device for minutes (AWQ on a "
                     "CPU: 20 or more), so a Space offers it only where its models file sets `quantize_now_on_space: "
                     "true`. The Space's owner can turn it on, make the file once and turn it off again, or name a "
                     "pre-made checkpoint in the models file.")
STREAM_S = 0.1  # how often a comparison's handler reads its latest snapshot
# The live count, in the browser: no server round trip per keystroke. Counts code points, as the server does.
COUNT_JS = """
(text) => {
  const n = [...(text || '')].length, limit = %d;
  const count = `${n.toLocaleString('en-US')} / ${limit.toLocaleString('en-US')} characters`;
  return n > limit ? `**${count}: over the limit, shorten the prompt to run it**` : count;
}
"""


class Slot(NamedTuple):
    """One variant's column: its components, shown or hidden as the chosen variants change."""

    column: gr.Column
    head: gr.Markdown
    text: gr.Textbox
    figures: gr.Markdown
    quantize_now: gr.Button
    quantize_note: gr.Markdown
    diverged: gr.HTML


def build_tab(arena: Arena, choices: list[tuple[str, str]]) -> None:
    """The tab's components and events (inside a gr.Tab), and the /compare endpoint."""
    tab = CompareTab(arena, choices)
    tab.wire()


class CompareTab:
    """The Compare tab's components and its handlers. A comparison is three events, as the page runs them:
    set the columns up, stream the columns (only their headings, answers and figures: every output of a
    streaming event is sent or rebuilt on each snapshot, so it carries nothing else), then the summary, once."""

    def __init__(self, arena: Arena, choices: list[tuple[str, str]]):
        self.arena, self.config = arena, arena.config
        self.stops = Stops()  # each session's running comparisons
        self._build_inputs(choices)
        with gr.Row():
            self.run = gr.Button("Run", variant="primary", elem_id="run")
            self.stop = gr.Button("Stop", variant="stop", elem_id="stop")
        zerogpu_view.gpu_time_line(arena, self.variants, self.max_new)
        self.slots = self._build_columns()
        self.fidelity_help = gr.Markdown(report.FIDELITY_HELP, visible=False, elem_classes=["small-print"],
                                         elem_id="fidelity-help")
        with gr.Accordion("What the fidelity figures mean", open=False, elem_id="fidelity-guide"):
            gr.Markdown(FIDELITY_GUIDE)
        self._build_summary()
        self.shown = gr.State([])  # variant ids in column order, for the Quantize now buttons
        self.records = gr.State([])  # the finished comparison's records, from the streaming event to the summary

    def _build_inputs(self, choices: list[tuple[str, str]]) -> None:
        limits, defaults = self.config.limits, self.config.generation
        with gr.Row():
            with gr.Column(scale=3):
                self.prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Ask something…", elem_id="prompt",
                                         info=f"Up to {limits.max_prompt_chars:,} characters · Ctrl+Enter runs")
                self.prompt_count = gr.Markdown(f"0 / {limits.max_prompt_chars:,} characters",
                                                elem_id="prompt-count", elem_classes=["small-print"])
                if self.config.examples:
                    gr.Examples([[e] for e in self.config.examples], inputs=[self.prompt], label="Examples")
            with gr.Column(scale=2):
                self.variants = gr.CheckboxGroup(choices, value=[c[1] for c in choices[:3]],
                                                 label="Variants to compare", info=f"up to {limits.max_variants}")
                with gr.Accordion("Generation settings", open=False):
                    self.max_new = gr.Slider(1, limits.max_new_tokens, value=defaults.max_new_tokens, step=1,
                                             label="Max new tokens")
                    self.do_sample = gr.Checkbox(False, label="Sample (default: greedy)",
                                                 info="Greedy always picks the most likely token; sampling draws "
                                                      "with the seed below, the same for every variant")
                    self.temperature = gr.Slider(0.05, 2.0, value=defaults.temperature, step=0.05,
                                                 label="Temperature", interactive=False)
                    self.top_p = gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label="Top-p",
                                           interactive=False)
                    self.seed = gr.Number(0, precision=0, minimum=0, label="Seed", interactive=False)

    def _build_columns(self) -> list[Slot]:
        slots = []
        with gr.Row(equal_height=False):
            for i in range(self.config.limits.max_variants):
                with gr.Column(visible=False, min_width=280, elem_classes=["variant-col"],
                               elem_id=f"variant-{i}") as col:
                    head = gr.Markdown(elem_classes=["variant-head"])
                    # The label is the answer box's accessible name; screen readers read it, the page hides it.
                    text = gr.Textbox(label=f"Answer {i + 1}", show_label=False, lines=8, max_lines=20,
                                      interactive=False, elem_classes=["variant-text"])
                    diverged = gr.HTML(elem_classes=["variant-divergence"])
                    figures = gr.Markdown(elem_classes=["variant-figures"])
                    quantize_now = gr.Button("Quantize now", visible=False, size="sm", elem_classes=["quantize"])
                    quantize_note = gr.Markdown(visible=False, elem_classes=["small-print", "quantize-note"])
                slots.append(Slot(col, head, text, figures, quantize_now, quantize_note, diverged))
        return slots

    def _build_summary(self) -> None:
        with gr.Column(visible=False, elem_id="summary") as self.summary:
            gr.Markdown("## Summary")
            self.table = gr.Dataframe(headers=report.SUMMARY_HEADERS, interactive=False, wrap=True,
                                      elem_id="summary-table")
            with gr.Row():
                self.plots = summary_view.build_plots()
            with gr.Row():  # a row of its own: a fourth chart beside the bars would clip their titles at 1440 px
                self.kl_plot = summary_view.build_kl_plot()
            self.chart_note = gr.Markdown(elem_classes=["small-print"], elem_id="chart-note")
            self.conditions = gr.Markdown()
            self.downloads = gr.File(label="Download this comparison: JSON, CSV, Markdown card",
                                     file_count="multiple", interactive=False, elem_id="downloads")

    def wire(self) -> None:
        """The events. The arena admits limits.max_pending requests (limits.max_pending_per_client from one
        client) and its turns run them one at a time on the device thread, round-robin across clients, so Gradio
        holds no model-running event back (concurrency_limit=None); a full arena answers "busy, try again"
        instead of a silent wait, and a waiting request returns to Gradio with its place in line."""
        slots = self.slots
        run_inputs = [self.prompt, self.variants, self.max_new, self.do_sample, self.temperature, self.top_p,
                      self.seed]
        start_outputs = [*(c for s in slots for c in (s.column, s.text, s.figures, s.diverged, s.quantize_now,
                                                      s.quantize_note)), self.fidelity_help, self.summary, self.run,
                         self.shown]
        stream_outputs = [*(c for s in slots for c in (s.head, s.text, s.figures)), self.records]
        final_outputs = [*(c for s in slots for c in (s.diverged, s.quantize_now, s.quantize_note)),
                         self.fidelity_help, self.summary, self.table, *self.plots, self.kl_plot, self.chart_note,
                         self.conditions,
                         self.downloads, self.run]
        started = self.run.click(self.on_start, run_inputs, start_outputs, concurrency_limit=None,
                                 api_name="run_start", api_visibility="undocumented", show_progress="hidden")
        streamed = started.success(self.on_run, run_inputs, stream_outputs, concurrency_limit=None, api_name="run",
                                   api_visibility="undocumented")
        streamed.success(self.on_summary, [self.records], final_outputs, api_name="run_summary",
                         api_visibility="undocumented")
        streamed.failure(lambda: gr.update(interactive=True), None, self.run, queue=False,
                         api_visibility="undocumented")  # busy or refused: Run works again
        self.stop.click(self.on_stop, None, None, queue=False, api_visibility="undocumented")
        self.prompt.change(None, [self.prompt], [self.prompt_count],
                           js=COUNT_JS % self.config.limits.max_prompt_chars)
        self.do_sample.change(self.on_sample, [self.do_sample], [self.temperature, self.top_p, self.seed],
                              queue=False, api_visibility="undocumented", show_progress="hidden")
        for index, slot in enumerate(slots):
            slot.quantize_now.click(self.on_quantize, [gr.State(index), self.shown],
                                    [slot.quantize_note, slot.quantize_now], concurrency_limit=None,
                                    api_visibility="undocumented")
        gr.api(compare_endpoint(self.arena), api_name="compare", concurrency_limit=None)

    def checked(self, prompt_text, variant_ids, max_new_tokens, sample, temp, p, seed_value):
        """The request's settings, once the request is known to be runnable; gr.Error says why not."""
        try:
            settings = self.arena.settings(_whole(max_new_tokens), bool(sample), temp, p,
                                           _whole(seed_value) if sample else None)
            self.arena.validate(prompt_text, list(variant_ids or []), settings)
        except ArenaError as exc:
            raise gr.Error(str(exc)) from None
        return settings

    def on_start(self, prompt_text, variant_ids, max_new_tokens, sample, temp, p, seed_value):
        self.checked(prompt_text, variant_ids, max_new_tokens, sample, temp, p, seed_value)
        ids = list(variant_ids)
        updates: dict = {self.summary: gr.update(visible=False), self.fidelity_help: gr.update(visible=False),
                         self.run: gr.update(interactive=False), self.shown: ids}
        for i, slot in enumerate(self.slots):
            variant = self.config.variants[ids[i]] if i < len(ids) else None
            updates[slot.column] = gr.update(visible=variant is not None)
            if variant is not None:
                updates.update({slot.text: gr.update(value="", label=f"Answer from {variant.label or variant.id}"),
                                slot.figures: "", slot.diverged: "", slot.quantize_now: gr.update(visible=False),
                                slot.quantize_note: gr.update(visible=False)})
        return updates

    async def on_run(self, prompt_text, variant_ids, max_new_tokens, sample, temp, p, seed_value,
                     request: gr.Request):
        """The comparison runs on a thread of its own, awaited here on the event loop (demo.ui.offpool): this
        handler holds none of Gradio's shared threads while it waits for its turn or streams. The page gets the
        latest snapshot every STREAM_S (the columns show text at most every TEXT_INTERVAL_S anyway)."""
        settings = self.checked(prompt_text, variant_ids, max_new_tokens, sample, temp, p, seed_value)
        view = ColumnsView(self.arena, len(self.slots))
        with self.stops.running(request.session_hash if request else None) as stop_event:
            async with aclosing(self._run(prompt_text, variant_ids, settings, view, stop_event, request)) as stream:
                async for values in stream:  # closed with this handler: its finally ends the generation
                    yield values

    async def _run(self, prompt_text, variant_ids, settings, view, stop_event: threading.Event,
                   request: gr.Request):
        """on_run's stream, with this run's own stop event (set by the session's Stop, or when the page goes)."""
        arena = self.arena.for_client(client_of(request, self.arena.config.proxies))

        def run(work: offpool.Work) -> None:
            for results in arena.compare(prompt_text, list(variant_ids), settings, stop_event):
                work.report(results)

        work, pace = offpool.Work(run, name="compare"), offpool.Pace()
        try:
            results: list[VariantResult] | None = None
            async for changed, results in work.updates(STREAM_S):
                values = None
                if changed:
                    values = view.step(results, time.perf_counter()) if view.started else view.start(results)
                if values is not None:
                    pace.sent()
                    yield [*values, []]
                elif pace.due():  # nothing new to show: a message now and then, so a gone client is noticed
                    yield gr.skip()
            await work.outcome()
            final = [r.to_record() for r in results or []]
            yield [*view.final(final), final]
        except ArenaError as exc:  # busy, or refused after validation: the same words as the API
            raise gr.Error(str(exc)) from None
        finally:
            stop_event.set()  # a closed stream (client gone) also ends the generation

    def on_summary(self, final: list[dict]):
        updates: dict = {self.run: gr.update(interactive=True)}
        if not final:
            return updates
        baseline_texts = {r["variant"]: r["text"] for r in final}
        for slot, rec in zip(self.slots, final):
            baseline = self.config.base_of(rec["variant"]).baseline
            updates[slot.diverged] = divergence_html(self.arena, rec, baseline_texts.get(baseline))
            offered = self.config.quantize_now_offered()
            updates[slot.quantize_now] = gr.update(visible=wants_quantize(rec) and offered)
            updates[slot.quantize_note] = gr.update(value=quantize_note(rec, offered), visible=wants_quantize(rec))
        updates[self.fidelity_help] = gr.update(visible=any(r.get("fidelity") for r in final))
        folder = scratch.folder("comparison-")
        updates.update(summary_view.summary_updates(self.arena, final, self.table, self.plots, self.chart_note,
                                                    self.kl_plot, folder))
        paths = card.write(final, folder)
        updates.update({self.summary: gr.update(visible=True),
                        self.conditions: summary_view.conditions_markdown(
                            final, summary_view.empty_columns(summary_view.summary_frame(final))),
                        self.downloads: [str(paths[k]) for k in ("json", "csv", "markdown")]})
        return updates

    async def on_quantize(self, index: int, ids: list[str], request: gr.Request = None):
        """Admitted and given its turn like a comparison; while it waits, the note says its place in line. The
        wait and the quantizing run on a thread of their own, awaited here (demo.ui.offpool)."""
        variant_id = ids[index] if index < len(ids) else None
        if variant_id is None:
            raise gr.Error("run a comparison first")
        if not self.config.quantize_now_offered():  # the button is hidden; a direct call is refused the same way
            raise gr.Error("Quantize now is off on this Space (the models file's quantize_now_on_space turns it on)")
        note, button = self.slots[index].quantize_note, self.slots[index].quantize_now
        gguf = self.config.variants[variant_id].method == "gguf"
        arena = self.arena.for_client(client_of(request, self.arena.config.proxies))

        def run(work: offpool.Work) -> float:
            with arena.device_turn(work.stop) as wait:
                for ahead in wait:
                    work.report(ahead)
                work.report(None)  # its turn: quantizing (None too before the first report: not in line yet)
                started = time.perf_counter()
                self.arena.device.call(quantize_variant, self.config, variant_id)
                return time.perf_counter() - started

        work, began = offpool.Work(run, name="quantize"), None
        try:
            async for _, ahead in work.updates():  # every half second: so that Gradio notices a page gone
                if ahead is None:  # its turn (or not yet in line): how long it has been quantizing
                    began = began or time.perf_counter()
                    said = (f"**Quantizing {variant_id}…** {time.perf_counter() - began:.0f} s so far "
                            f"({'seconds' if gguf else 'about 1.5 minutes on a CPU'} in all).")
                else:
                    said = f"**Waiting for the device:** {ahead} ahead of this…"
                yield {note: gr.update(value=said, visible=True)}
            seconds = await work.outcome()
        except ArenaError as exc:
            raise gr.Error(str(exc)) from None
        finally:
            work.stop.set()  # a page gone while it waits takes it out of the line
        done = f"**Quantized in {seconds:.0f} s:** press Run again to compare it."
        yield {note: gr.update(value=done, visible=True), button: gr.update(visible=False)}

    def on_stop(self, request: gr.Request):
        self.stops.stop(request.session_hash if request else None)

    @staticmethod
    def on_sample(sample: bool):
        return [gr.update(interactive=bool(sample))] * 3


def quantize_note(rec: dict, offered: bool) -> str:
    """What the note under a not-yet-quantized column says: what Quantize now does, or why it is off here."""
    if not offered:
        return QUANTIZE_OFF_NOTE
    return QUANTIZE_NOTE_GGUF if rec["method"] == "gguf" else QUANTIZE_NOTE


def compare_endpoint(arena: Arena):
    """The /compare API function: gradio reads its name, signature and docstring, so it stays a plain function."""
    defaults = arena.config.generation

    async def compare(prompt: str, variants: list[str], max_new_tokens: int = defaults.max_new_tokens,
                      do_sample: bool = False, temperature: float = defaults.temperature, top_p: float = defaults.top_p,
                      seed: int | None = None, request: gr.Request = None) -> AsyncIterator[list[dict]]:
        """Run one prompt on the given variant ids, one after another; the last output is one record per
        variant. It streams the records as they change (the latest every 0.1 s); a client that cancels or goes
        away stops the generation."""
        try:
            settings = arena.settings(max_new_tokens, do_sample, temperature, top_p, seed)
            bound = arena.for_client(client_of(request, arena.config.proxies))

            def run(work: offpool.Work) -> None:
                for results in bound.compare(prompt, variants, settings, work.stop):
                    work.report(results)

            work, pace = offpool.Work(run, name="compare"), offpool.Pace()
            try:
                async for changed, results in work.updates(STREAM_S):
                    if results is not None and (changed or pace.due()):  # now and then: a gone client is noticed
                        pace.sent()
                        yield [r.to_record() for r in results]
                await work.outcome()
            finally:
                work.stop.set()  # a closed stream (client gone) ends the generation; after the end, nothing
        except ArenaError as exc:
            raise gr.Error(str(exc)) from None

    return compare


def _whole(value: Any) -> Any:
    """Gradio Number/Slider may send 64.0 for 64; anything else is left for validation to reject."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
