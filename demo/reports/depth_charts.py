"""The depth sweep's charts: KL against depth and decode tokens/s against depth, one line per variant (its colour
and marker as in every other chart), depth on a log2 axis. A missing value is never drawn at 0: the line skips it
and the chart lists it as not shown."""

from __future__ import annotations

from pathlib import Path

from demo.reports import drawing
from demo.reports.charts import (MARKERS, PALETTE, _legend_below, _new_figure, _not_shown, _save, _set_headroom,
                                 finite, short_names, variant_colours, variant_marks)


def depth_figure(rows: list[dict], key: str, label: str, title: str, colours: dict[str, str], log: bool = False):
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    names, marks = short_names(variants), variant_marks(list(colours))
    depths = sorted({r["depth"] for r in rows})
    fig, ax = _new_figure(6.0, 4.6)
    missing, drawn = [], []
    for variant in variants:
        points = [(r["depth"], finite(r.get(key))) for r in rows if r["variant"] == variant]
        shown = [(d, v) for d, v in points if v is not None and (v > 0 or not log)]
        missing += [f"{names[variant]} at {d:,}" for d, v in points if (d, v) not in shown]
        if not shown:
            continue
        marker, style = marks.get(variant, (MARKERS[0], "-"))
        ax.plot([d for d, _ in shown], [v for _, v in shown], color=colours.get(variant, PALETTE[-1]), marker=marker,
                linestyle=style, linewidth=1.6, markersize=6, label=names[variant], clip_on=False, zorder=3)
        drawn += [v for _, v in shown]
    ax.set_xscale("log", base=2)
    ax.set_xticks(depths, [f"{d:,}" for d in depths])
    ax.set_xlabel("depth (tokens of context at the answer's end)", fontsize=10)
    ax.set_ylabel(label, fontsize=10)
    ax.set_title(title, fontsize=12)
    if log and drawn:
        ax.set_yscale("log")
        _set_headroom(ax, max(drawn), log=True, smallest=min(drawn))
    elif drawn:
        _set_headroom(ax, max(drawn))
    ax.grid(alpha=0.3)
    _legend_below(ax)
    _not_shown(fig, missing)
    return fig


def write_depth_charts(rows: list[dict], out: Path, order: list[str] | None = None) -> dict[str, Path]:
    """kl_vs_depth.png (variants with a baseline, the baseline itself left out: its KL is 0) and
    decode_vs_depth.png (every variant)."""
    colours = variant_colours(order or list(dict.fromkeys(r["variant"] for r in rows)))
    paths = {}
    with drawing.LOCK:
        kl_rows = [r for r in rows if not _is_baseline(r, rows)]
        if any(finite(r.get("kl_mean")) is not None for r in kl_rows):
            paths["kl_chart"] = _save(depth_figure(kl_rows, "kl_mean", "mean KL vs baseline (nats, log)",
                                                   "Quality against depth", colours, log=True),
                                      out / "kl_vs_depth.png")
        paths["decode_chart"] = _save(depth_figure(rows, "decode_tokens_per_s", "decode tokens/s (median)",
                                                   "Decode speed against depth", colours), out / "decode_vs_depth.png")
    return paths


def _is_baseline(row: dict, rows: list[dict]) -> bool:
    """A row whose KL is exactly 0 at every depth is the baseline's own."""
    own = [r.get("kl_mean") for r in rows if r["variant"] == row["variant"]]
    return bool(own) and all(v == 0 for v in own)
