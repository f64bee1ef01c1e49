"""The Compare tab's summary, once every column has finished: the table, the bar charts and the conditions."""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import gradio as gr
import pandas as pd

from demo.reports import charts, report
from demo.running.runner import Arena
from demo.ui.columns import status_text

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


KL_CHART_ID = "chart-kl-weights"
KL_CHART_FILE = "kl_vs_weights.png"
KL_CHART_TITLE = "KL against weights (lower left is better)"
# (no word of another control's label in it: Playwright and screen readers find a control by a part of its name)
KL_CHART_NAME = ("Scatter chart: each variant's KL divergence from the baseline in this comparison against its weights "
                 "footprint; hollow points ran on an emulated kernel; the same figures are in the summary table")
ALWAYS_SHOWN = ("variant", "method", "status")  # the table's columns kept even where every row is empty


def build_plots() -> list[gr.BarPlot]:
    return [gr.BarPlot(x="variant", y=y, title=title, label=title, show_label=False, elem_id=eid, **PLOT_STYLE)
            for eid, y, title, _ in CHARTS]


def build_kl_plot() -> gr.Image:
    """The size/quality picture: one point per variant, its KL against its weights (emulated kernels hollow), as
    the PNG demo.reports.charts draws for results too."""
    return gr.Image(label=KL_CHART_TITLE, show_label=False, elem_id=KL_CHART_ID, visible=False, height=420,
                    type="filepath", interactive=False, buttons=["download"])


def summary_frame(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(report.summary_rows(records), columns=report.SUMMARY_HEADERS)
    frame["status"] = [status_text(r) for r in records]
    return frame


def empty_columns(frame: pd.DataFrame) -> list[str]:
    """Columns with no value in any row (energy on a CPU, bandwidth where nothing was timed): folded into the
    conditions line rather than shown as a column of dashes."""
    return [c for c in frame.columns if c not in ALWAYS_SHOWN and frame[c].isna().all()]


def table_style(frame: pd.DataFrame, colours: dict[str, str]):
    """The summary table as shown: each variant's colour, numbers with units' precision, and every missing value
    (numeric, or a text such as an unloaded variant's load) as "–", never "nan" or "None"."""
    numeric = list(frame.select_dtypes("number").columns)
    styled = frame.style.apply(lambda column: [f"border-left: 6px solid {colours[v]}" for v in column],
                               subset=["variant"]).format(number_text, na_rep="–", subset=numeric)
    return styled.format(na_rep="–", subset=[c for c in frame.columns if c not in numeric])


def summary_updates(arena: Arena, records: list[dict], table, plots, chart_note, kl_plot=None,
                    folder: Path | None = None) -> dict:
    """The table and the charts: the columns' order, one colour per variant, gaps said in words; the KL chart is
    written into `folder` (this comparison's scratch folder)."""
    colours = charts.variant_colours(list(arena.config.variants))
    names = charts.short_names([r["variant"] for r in records])
    frame = summary_frame(records)
    styled = table_style(frame.drop(columns=empty_columns(frame)), colours)
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
        updates[plot] = gr.update(value=data, sort=order, color_map=colour_map, visible=not data.empty,
                                  y_lim=y_limits(data[y]))
    updates[chart_note] = chart_note_text(records, names)
    if kl_plot is not None and folder is not None:
        path = charts.write_frontier(kl_rows(records), colours, folder / KL_CHART_FILE, title=KL_CHART_TITLE,
                                     width_in=7.0, height_in=4.6)
        updates[kl_plot] = gr.update(value=str(path), visible=True) if path else gr.update(value=None, visible=False)
    return updates


def kl_rows(records: list[dict]) -> list[dict]:
    """Each finished variant's mean KL on this prompt (nats; None without a baseline) with its weights and kernel,
    in the rows the KL chart draws."""
    rows = []
    for r in records:
        if r["status"] not in ("done", "stopped") or r.get("random_weights"):
            continue
        fidelity = r.get("fidelity") or {}
        kl = None if fidelity.get("unavailable") or fidelity.get("kl_lower_bound_top_k") else \
            fidelity.get("kl_divergence")
        rows.append({"variant": r["variant"], "kl": {"mean": kl}, "weights_mib": r.get("weights_mib"),
                     "kernel": r.get("kernel")})
    return rows


# The y axis ends on a tick above the tallest bar. Vega picks its ticks as d3's ticks(0, top, count) with a
# count set by the plot's height (about one per 40 px: 3 to 6 here); these leading digits make `top` itself a
# tick for every such count (2.5, 5 and 1.5 do not: 250 at 3 ticks is 0, 100, 200).
AXIS_TOPS = (1, 2, 3, 4, 6, 8)
AXIS_TICK_COUNTS = range(3, 7)
AXIS_HEADROOM = 1.05  # the tallest bar stops at least 5% under the top


def axis_top(largest: float) -> float | None:
    """The smallest round number over 105% of the largest bar that Vega draws a tick at; None (Vega's own
    domain) where there is nothing finite and positive to fit."""
    if not math.isfinite(largest) or largest <= 0:
        return None
    wanted = largest * AXIS_HEADROOM
    power = math.floor(math.log10(wanted))
    for scale in (10.0 ** power, 10.0 ** (power + 1)):
        for digit in AXIS_TOPS:
            top = float(f"{digit * scale:.12g}")  # 0.3, not 0.30000000000000004
            if top >= wanted:
                return top
    raise AssertionError("unreachable: 10 ** (power + 1) exceeds wanted")


def y_limits(values) -> list[float | None]:
    """The y_lim of a bar chart of these values: from zero to axis_top of the finite ones."""
    finite = [float(v) for v in values if isinstance(v, numbers.Real) and math.isfinite(v)]
    return [0, axis_top(max(finite)) if finite else None]


def number_text(value) -> str:
    """A table number as people read it: whole numbers plain, others with one decimal, and a fraction (a KL
    divergence of 0.001 nats, say) to three significant digits rather than rounded to 0.0."""
    if isinstance(value, numbers.Integral) or abs(value) >= 100:
        return f"{value:,.0f}"
    if 0 < abs(value) < 1:
        return f"{value:.3g}"
    return f"{value:,.1f}"


def chart_note_text(records: list[dict], names: dict[str, str]) -> str:
    one_token = [names[r["variant"]] for r in records if r["status"] in ("done", "stopped")
                 and r.get("decode_tokens_per_s") is None]
    if not one_token:
        return ""
    return (f"No decode rate for {', '.join(one_token)}: an answer of one token has no decode phase to time "
            "(decode counts the tokens after the first), so it is left out of the decode chart.")


def conditions_markdown(records: list[dict], folded: list[str] = ()) -> str:
    """The run's conditions under the table; `folded`: the table's columns left out as empty in every row."""
    env, settings = records[0]["environment"], records[0]["settings"]
    kinds = sorted({r["memory_kind"] for r in records if r.get("memory_kind")})
    features = f" ({', '.join(env['cpu_features'])})" if env.get("cpu_features") else ""
    lines = [f"**Conditions.** {env.get('device_name')}{features} · torch {env.get('torch')} · transformers "
             f"{env.get('transformers')} · bitsandbytes {env.get('bitsandbytes')} · gradio {env.get('gradio')}",
             f"Settings: {', '.join(f'{k}={v}' for k, v in settings.items())}; same prompt for every variant."]
    lines += [f"Peak memory = {report.MEMORY_KINDS[k]}." for k in kinds]
    lines += [f"{note}." for note in report.machine_notes(env, records)]
    if folded:
        lines.append(f"Not in the table, no variant has a value: {', '.join(folded)}.")
    lines += report.random_weights_lines(records)
    lines += [f"KL against `{r['variant']}`{report.noise_floor_text(r['fidelity'])}." for r in records
              if r.get("fidelity") and r["fidelity"]["baseline"] == r["variant"] and r["fidelity"].get("noise_floor")]
    return "  \n".join(lines)
