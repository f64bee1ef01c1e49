"""The Compare tab's summary, once every column has finished: the table, the bar charts and the conditions."""

from __future__ import annotations

import numbers

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


def build_plots() -> list[gr.BarPlot]:
    return [gr.BarPlot(x="variant", y=y, title=title, label=title, show_label=False, elem_id=eid, **PLOT_STYLE)
            for eid, y, title, _ in CHARTS]


def summary_updates(arena: Arena, records: list[dict], table, plots, chart_note) -> dict:
    """The table and the charts: the columns' order, one colour per variant, gaps said in words."""
    colours = charts.variant_colours(list(arena.config.variants))
    names = charts.short_names([r["variant"] for r in records])
    frame = pd.DataFrame(report.summary_rows(records), columns=report.SUMMARY_HEADERS)
    frame["status"] = [status_text(r) for r in records]
    styled = frame.style.apply(lambda column: [f"border-left: 6px solid {colours[v]}" for v in column],
                               subset=["variant"]).format(number_text, na_rep="–",
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
    updates[chart_note] = chart_note_text(records, names)
    return updates


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


def conditions_markdown(records: list[dict]) -> str:
    env, settings = records[0]["environment"], records[0]["settings"]
    kinds = sorted({r["memory_kind"] for r in records if r.get("memory_kind")})
    lines = [f"**Conditions.** {env.get('device_name')} · torch {env.get('torch')} · transformers "
             f"{env.get('transformers')} · bitsandbytes {env.get('bitsandbytes')} · gradio {env.get('gradio')}",
             f"Settings: {', '.join(f'{k}={v}' for k, v in settings.items())}; same prompt for every variant."]
    lines += [f"Peak memory = {report.MEMORY_KINDS[k]}." for k in kinds]
    return "  \n".join(lines)
