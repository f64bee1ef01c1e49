"""The Evaluate tab: `python -m demo.evaluate` on chosen variants, with its table, charts and a Stop."""

from __future__ import annotations

import threading
import time
from contextlib import aclosing
from pathlib import Path

import gradio as gr
import pandas as pd

from demo import evaluate
from demo.errors import ArenaError
from demo.reports import scratch
from demo.running.runner import Arena
from demo.evaluate import depth
from demo.evaluate import serving
from demo.evaluate.depth_outputs import depth_conditions, write_depth_outputs
from demo.evaluate.serving_outputs import serving_conditions, write_serving_outputs
from demo.ui import depth_view, offpool, serving_view
from demo.ui.clients import client_of
from demo.ui.stops import Stops

# evaluate.FIELDS in words, with units; the files keep the field names.
HEADERS = {
    "variant": "variant",
    "baseline": "compared with",
    "perplexity": "perplexity (lower is better)",
    "protocol": "protocol (what is scored)",
    "kl_divergence": "mean KL divergence from the baseline ± standard error (nats, lower is closer)",
    "kl_p99_9": "KL 99.9 % point (nats)",
    "kl_max": "KL max (nats)",
    "top1_agreement": "top-1 agreement with the baseline ± standard error (%)",
    "ttft_ms_p50": "time to first token, median (ms)",
    "decode_tokens_per_s_p50": "decode, median (tokens/s)",
    "decode_tokens_per_s_p90": "decode, 90th percentile (tokens/s)",
    "runs": "timed runs",
    "weights_mib": "weights (MiB)",
    "peak_memory_mib": "peak memory (MiB)",
    "disk_mib": "checkpoint on disk (MiB)",
    "achieved_bandwidth_gb_s_p50": "achieved bandwidth, median (GB/s: bytes a step reads × decode rate)",
    "bandwidth_share_p50": "share of the measured memory bandwidth, median (%)",
    "energy_joules_per_token_p50": "energy, median (J/token)",
}
DIGITS = {"perplexity": 2, "kl_divergence": 4, "kl_p99_9": 4, "kl_max": 4, "ttft_ms_p50": 0, "decode_tokens_per_s_p50": 1,
          "decode_tokens_per_s_p90": 1, "weights_mib": 0, "peak_memory_mib": 0, "disk_mib": 0,
          "achieved_bandwidth_gb_s_p50": 2}
TABLE_NOTE = ("*Checkpoint on disk* is filled only for variants whose quantized checkpoint is made once and saved "
              "(GPTQ); the others are quantized from the base weights each time they load, so they add nothing on "
              "disk (–). *Compared with* is the baseline the KL divergence and top-1 agreement are measured against; "
              "the baseline itself shows 0 and 100%. The KL tail (99.9 % point, max) and the full statistics per variant, "
              "as llama.cpp's `perplexity --kl-divergence` prints them, are under *Statistics against the baseline* "
              "below and in the files.")
PROTOCOL_CHOICES = [("sliding window over the held-out text", "sliding"),
                    ("llama.cpp's protocol (512-token chunks, BOS first, second half scored)", "llamacpp"),
                    ("in-domain trace: the baseline's answers to the blind-test prompts", "trace"),
                    depth_view.PROTOCOL_CHOICE, serving_view.PROTOCOL_CHOICE]


def _value(result: evaluate.VariantEvaluation, field: str):
    """A field of the row, the KL tail's points read from its statistics."""
    if field in ("kl_p99_9", "kl_max"):
        return (result.kl or {}).get(field.removeprefix("kl_"))
    return getattr(result, field)


def _cell(result: evaluate.VariantEvaluation, field: str) -> str:
    value = _value(result, field)
    if field == "disk_mib" and value is None and not result.error:
        return "– (quantized at load)"
    if value is None:  # never 0: a figure that could not be computed
        return result.error if field == "perplexity" and result.error else "–"
    if field == "top1_agreement":
        spread = result.top1_agreement_uncertainty
        return f"{100 * value:.1f}%" + ("" if spread is None else f" ± {100 * spread:.1f}")
    if field == "bandwidth_share_p50":
        return f"{100 * value:.0f}%"
    if field == "energy_joules_per_token_p50":  # significant figures: a small figure must not read as 0
        return f"{value:.3g}"
    if field == "kl_divergence":
        spread = (result.kl or {}).get("mean_uncertainty")
        text = f"{value:,.4f}" + ("" if spread is None else f" ± {spread:.4f}")
        return f"≥ {text} (top-{result.kl_lower_bound_top_k})" if result.kl_lower_bound_top_k else text
    if field in DIGITS:
        return f"{value:,.{DIGITS[field]}f}"
    return str(value)


def progress_line(fraction: float, message: str) -> str:
    """Where an evaluation stands, for the status line: what it is doing and how far along the whole it is."""
    return f"**Evaluating… {100 * min(max(fraction, 0.0), 1.0):.0f}%** · {message}"


def _path(paths: dict[str, Path], name: str) -> str | None:
    return str(paths[name]) if name in paths else None


def table_rows(results: list[evaluate.VariantEvaluation]) -> list[list[str]]:
    """Display rows in HEADERS order: numbers with their precision, ± their standard error, gaps explained; then
    each baseline's noise floor, the KL of a bf16-rounding-scale perturbation of that baseline."""
    rows = [[_cell(result, field) for field in HEADERS] for result in results]
    floors = evaluate.noise_floors([vars(r) for r in results])
    return rows + [_noise_floor_row(baseline, floor) for baseline, floor in floors.items()]


def _noise_floor_row(baseline: str, floor: dict) -> list[str]:
    cells = {"variant": f"noise floor (ε = 2⁻⁹) of {baseline}", "baseline": baseline}
    if "unavailable" in floor:
        cells["kl_divergence"] = floor["unavailable"]
    else:
        cells.update(kl_divergence=f"{floor['kl_mean']:,.4f}", kl_p99_9=f"{floor['kl_p99_9']:,.4f}",
                     kl_max=f"{floor['kl_max']:,.4f}")
    return [cells.get(field, "") for field in HEADERS]


def build_tab(arena: Arena, choices: list[tuple[str, str]]) -> None:
    """The tab's components and events (inside a gr.Tab)."""
    tab = EvaluateTab(arena, choices)
    tab.wire()


class EvaluateTab:
    """The Evaluate tab's components and its handlers: Evaluate runs the chosen variants one after another,
    Stop asks the session's run to end after the variant it is on."""

    def __init__(self, arena: Arena, choices: list[tuple[str, str]]):
        self.arena, self.config = arena, arena.config
        self.stops = Stops()  # each session's running evaluations
        gr.Markdown("Perplexity on a held-out text, KL divergence and top-1 agreement against the base model's "
                    "baseline, decode speed and memory: the same measurement as `python -m demo.evaluate`. "
                    "About a minute per variant on a 2-core CPU.")
        self._build_inputs(choices)
        self._build_outputs()

    def _build_inputs(self, choices: list[tuple[str, str]]) -> None:
        """The variants (the baselines and the first NF4 variant ticked), the run settings and the buttons."""
        baselines = {b.baseline for b in self.config.bases.values()}
        picked = [c[1] for c in choices if c[1] in baselines] + [c[1] for c in choices if "nf4" in c[1]][:1]
        with gr.Row():
            self.ids = gr.CheckboxGroup(choices, value=picked, label="Variants to evaluate", scale=3)
            with gr.Column(scale=1):
                self.runs = gr.Slider(1, 10, value=3, step=1, label="Timed runs per variant (after one warm-up)")
                self.new_tokens = gr.Slider(8, 128, value=32, step=8, label="New tokens per timed run")
                self.protocol = gr.Radio(PROTOCOL_CHOICES, value="sliding", label="Quality protocol",
                                         elem_id="evaluate-protocol")
                self.depths = gr.Textbox(",".join(map(str, depth.DEFAULT_DEPTHS)), label="Depths (depth sweep only)",
                                         elem_id="evaluate-depths", max_lines=1)
                self.levels = gr.Textbox(",".join(map(str, serving.DEFAULT_CONCURRENCY)),
                                         label="Requests at once (serving sweep only)", elem_id="evaluate-levels",
                                         max_lines=1)
        with gr.Row():
            self.start = gr.Button("Evaluate", variant="primary", elem_id="evaluate")
            self.stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="evaluate-stop")

    def _build_outputs(self) -> None:
        """The status line, the table and its note, the charts and the result files."""
        self.status = gr.Markdown(elem_id="evaluate-status")
        self.table = gr.Dataframe(headers=list(HEADERS.values()), interactive=False, wrap=True,
                                  elem_id="evaluate-table")
        self.table_note = gr.Markdown(TABLE_NOTE, elem_classes=["small-print"])  # the sweeps' rows need none
        with gr.Row():
            self.quality_chart = gr.Image(label="Quality against memory", type="filepath", interactive=False)
            self.speed_chart = gr.Image(label="Speed against memory", type="filepath", interactive=False)
        with gr.Row():  # drawn where the rows have a baseline: the KL tail against size, and per token
            # Their titles are in the images: a Gradio label would sit over them.
            self.kl_chart = gr.Image(label="KL against size, with the noise floor", show_label=False,
                                     type="filepath", interactive=False, visible=False)
            self.kl_histogram = gr.Image(label="KL per token", show_label=False, type="filepath", interactive=False,
                                         visible=False)
        with gr.Accordion("Statistics against the baseline (as llama.cpp prints them)", open=False):
            self.statistics = gr.Markdown(elem_id="evaluate-statistics")
        self.files = gr.File(label="results.json, results.csv, results.md", file_count="multiple",
                             interactive=False)

    def wire(self) -> None:
        """The events. The evaluation is not held back by Gradio (concurrency_limit=None): the arena admits
        and orders the model runs. One progress bar, on the status line: Gradio otherwise draws one over
        every output."""
        start, stop = self.start, self.stop
        running = {start: gr.update(interactive=False), stop: gr.update(interactive=True, value="Stop")}
        idle = {start: gr.update(interactive=True), stop: gr.update(interactive=False, value="Stop")}
        start.click(lambda: running, None, [start, stop], queue=False, api_visibility="undocumented").then(
            self.on_evaluate, [self.ids, self.runs, self.new_tokens, self.protocol, self.depths, self.levels],
            [self.status, self.table, self.table_note, self.quality_chart, self.speed_chart, self.kl_chart,
             self.kl_histogram, self.statistics, self.files],
            concurrency_limit=None, api_visibility="undocumented", show_progress_on=[self.status],
        ).then(lambda: idle, None, [start, stop], queue=False, api_visibility="undocumented")
        stop.click(self.on_stop, None, stop, queue=False, api_visibility="undocumented")

    async def on_evaluate(self, variant_ids, run_count, max_new_tokens, protocol_name=None,
                          request: gr.Request = None, depths_text=None, levels_text=None):
        """Evaluate the ticked variants (in the models file's order) until done or stopped, and show the results.
        The whole evaluation holds one of the arena's places, in this client's share: its model runs take their
        turns among everyone's, and a client with its share in use is refused at once. It runs on a thread of its
        own, awaited here on the event loop (demo.ui.offpool), which also writes its files and charts; a page that
        goes away stops it after the variant it is on."""
        with self.stops.running(request.session_hash if request else None) as stop_event:
            async with aclosing(self._evaluate(variant_ids, run_count, max_new_tokens, protocol_name, stop_event,
                                               request, depths_text, levels_text)) as updates:  # closed with this handler: its finally runs
                async for update in updates:
                    yield update

    async def _evaluate(self, variant_ids, run_count, max_new_tokens, protocol_name, stop_event: threading.Event,
                        request: gr.Request, depths_text: str | None = None, levels_text: str | None = None):
        """on_evaluate's updates, with this evaluation's own stop event."""
        order = [v for v in self.config.variants if v in (variant_ids or [])]  # rows in the models file's order
        text = evaluate.EVALUATION_FILE.read_text(encoding="utf-8")
        arena = self.arena.for_client(client_of(request, self.arena.config.proxies))
        if protocol_name == "depth":
            run = self._depth_run(arena, order or list(variant_ids or []), depths_text, stop_event)
        elif protocol_name == "serving":
            run = self._serving_run(arena, order or list(variant_ids or []), levels_text, int(run_count),
                                    int(max_new_tokens), stop_event)
        else:
            run = self._evaluation_run(arena, order or list(variant_ids or []), text, run_count, max_new_tokens,
                                       evaluate.Protocol(protocol_name or "sliding"), stop_event)
        work = offpool.Work(run, name="evaluate")
        try:
            async for _, latest in work.updates():  # every half second: so that Gradio notices a page gone
                # as the status line's text: once a handler has yielded, Gradio no longer draws its progress bar
                yield {self.status: progress_line(*latest) if latest else "**Evaluating…**"}
            yield await work.outcome()
        except ArenaError as exc:
            raise gr.Error(str(exc)) from None
        finally:
            if not work.done():  # the page went away: the evaluation stops after the variant it is on
                stop_event.set()

    def _depth_run(self, arena: Arena, order: list[str], depths_text: str | None, stop_event: threading.Event):
        """The depth sweep as the tab's work: its rows, charts and files."""
        def run(work: offpool.Work) -> dict:
            plan = depth.DepthPlan(depth_view.parse_depths(depths_text or ""))
            with arena.admitted() as admitted:
                started = time.perf_counter()
                rows = depth.sweep(admitted, order, plan, progress=lambda f, m: work.report((f, m)), stop=stop_event)
            if not rows:
                return {self.status: "**Stopped** before the first depth finished."}
            out = scratch.folder("evaluate-")
            paths = write_depth_outputs(rows, self.arena.environment(), out,
                                        depth_conditions(plan, [], time.perf_counter() - started),
                                        order=list(self.config.variants))
            head = "**Stopped.**" if stop_event.is_set() else "**Done.**"
            return {self.status: f"{head} {depth_view.NOTE}", self.statistics: "",
                    self.table: pd.DataFrame(depth_view.table_rows(rows), columns=list(depth_view.HEADERS.values())),
                    self.table_note: "",
                    self.quality_chart: gr.update(value=_path(paths, "kl_chart"), label="Quality against depth"),
                    self.speed_chart: gr.update(value=str(paths["decode_chart"]), label="Speed against depth",
                                                visible=True),
                    self.kl_chart: gr.update(value=None, visible=False),
                    self.kl_histogram: gr.update(value=None, visible=False),
                    self.files: [str(paths[k]) for k in ("json", "markdown")]}
        return run

    def _serving_run(self, arena: Arena, order: list[str], levels_text: str | None, rounds: int, new_tokens: int,
                     stop_event: threading.Event):
        """The serving sweep as the tab's work (the timed runs are its rounds): its rows, its chart and files."""
        def run(work: offpool.Work) -> dict:
            plan = serving.ServingPlan(serving_view.parse_levels(levels_text or ""), new_tokens, rounds)
            with arena.admitted() as admitted:
                started = time.perf_counter()
                rows = serving.sweep(admitted, order, plan, progress=lambda f, m: work.report((f, m)),
                                     stop=stop_event)
            if not rows:
                return {self.status: "**Stopped** before the first variant finished."}
            out = scratch.folder("evaluate-")
            paths = write_serving_outputs(rows, plan, self.arena.environment(), out,
                                          serving_conditions(plan, time.perf_counter() - started),
                                          order=list(self.config.variants))
            head = "**Stopped.**" if stop_event.is_set() else "**Done.**"
            return {self.status: f"{head} {serving_view.users_line(rows, plan)} {serving_view.NOTE}",
                    self.statistics: "",
                    self.table: pd.DataFrame(serving_view.table_rows(rows),
                                             columns=list(serving_view.HEADERS.values())),
                    self.quality_chart: gr.update(value=_path(paths, "serving_chart"),
                                                  label="Per user against in total"),
                    self.table_note: "",
                    self.speed_chart: gr.update(value=None, visible=False),  # the one chart says it all
                    self.kl_chart: gr.update(value=None, visible=False),
                    self.kl_histogram: gr.update(value=None, visible=False),
                    self.files: [str(paths[k]) for k in ("json", "csv", "markdown")]}
        return run

    def _evaluation_run(self, arena: Arena, order: list[str], text: str, run_count, max_new_tokens,
                        protocol: evaluate.Protocol, stop_event: threading.Event):
        def run(work: offpool.Work) -> dict:
            with arena.admitted() as admitted:
                results = evaluate.evaluate(admitted, order, text, int(run_count),
                                            int(max_new_tokens), progress=lambda f, m: work.report((f, m)),
                                            stop=stop_event, protocol=protocol)
            if not results:
                return {self.status: "**Stopped** before the first variant finished."}
            head = (f"**Stopped** after {len(results)} of {len(order)} variants." if stop_event.is_set()
                    and len(results) < len(order) else "**Done.**")
            return self._results(results, head, int(run_count), int(max_new_tokens), protocol)
        return run

    def _results(self, results: list[evaluate.VariantEvaluation], head: str, run_count: int,
                 max_new_tokens: int, protocol: evaluate.Protocol) -> dict:
        """Write the result files and charts to a fresh folder, and the updates that show them."""
        out = scratch.folder("evaluate-")
        paths = evaluate.write_outputs(results, self.arena, out, evaluate.conditions(
            evaluate.EVALUATION_FILE, run_count, max_new_tokens, protocol), order=list(self.config.variants))
        after_table = paths["markdown"].read_text().split("\n\n", 1)[-1]
        note, _, statistics = after_table.partition("\n## ")
        return {self.status: f"{head} {note.strip()}",
                self.statistics: f"## {statistics}" if statistics else "No statistics: no variant has a baseline.",
                self.table: pd.DataFrame(table_rows(results), columns=list(HEADERS.values())),
                self.table_note: TABLE_NOTE,
                self.quality_chart: gr.update(value=str(paths["quality_chart"]), label="Quality against memory"),
                self.speed_chart: gr.update(value=str(paths["speed_chart"]), label="Speed against memory",
                                            visible=True),
                self.kl_chart: gr.update(value=_path(paths, "kl_chart"), visible="kl_chart" in paths),
                self.kl_histogram: gr.update(value=_path(paths, "kl_histogram"), visible="kl_histogram" in paths),
                self.files: [str(paths[k]) for k in ("json", "csv", "markdown")]}

    def on_stop(self, request: gr.Request):
        """Ask this session's evaluation to stop after the variant it is on."""
        self.stops.stop(request.session_hash if request else None)
        return gr.update(interactive=False, value="Stopping after this variant…")
