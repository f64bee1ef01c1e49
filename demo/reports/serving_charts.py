"""The serving sweep's chart, the picture people size a deployment with: per-user decode tokens/s against total
tokens/s, one line per variant (its colour and marker as in every other chart), each point marked with its
concurrency, the per-user rate the sweep holds each level to drawn across. Up and to the right is better; a line
that runs right while staying high is a variant batching gains for."""

from __future__ import annotations

from pathlib import Path

from demo.reports import drawing
from demo.reports.charts import (MARKERS, PALETTE, _legend_below, _new_figure, _not_shown, _save, _set_headroom,
                                 finite, short_names, variant_colours, variant_marks)


def serving_figure(rows: list[dict], colours: dict[str, str], min_user_tokens_per_s: float | None = None):
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    names, marks = short_names(variants), variant_marks(list(colours))
    fig, ax = _new_figure(6.4, 4.8)
    missing, xs, ys = [], [], []
    for variant in variants:
        points = [(r["concurrency"], finite(r.get("total_tokens_per_s")), finite(r.get("per_request_tokens_per_s")))
                  for r in rows if r["variant"] == variant]
        shown = [(c, x, y) for c, x, y in points if x is not None and y is not None]
        missing += [f"{names[variant]} at {c}" for c, x, y in points if (c, x, y) not in shown]
        if not shown:
            continue
        colour = colours.get(variant, PALETTE[-1])
        marker, style = marks.get(variant, (MARKERS[0], "-"))
        ax.plot([x for _, x, _ in shown], [y for _, _, y in shown], color=colour, marker=marker, linestyle=style,
                linewidth=1.6, markersize=6, label=names[variant], clip_on=False, zorder=3)
        for c, x, y in shown:
            ax.annotate(f"{c}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8, color=colour)
        xs += [x for _, x, _ in shown]
        ys += [y for _, _, y in shown]
    if min_user_tokens_per_s:
        ax.axhline(min_user_tokens_per_s, color="#888888", linestyle=":", linewidth=1)
        ax.annotate(f"{min_user_tokens_per_s:g} tokens/s per user", (0.99, min_user_tokens_per_s),
                    xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=8, color="#666666")
        ys.append(min_user_tokens_per_s)
    ax.set_xlabel("total output tokens/s (all requests in flight; numbers: requests at once)", fontsize=9)
    ax.set_ylabel("per-user decode tokens/s (median request)", fontsize=10)
    ax.set_title("Per user against in total", fontsize=12)
    if xs:
        ax.set_xlim(0, max(xs) * 1.12)
        _set_headroom(ax, max(ys))
    ax.grid(alpha=0.3)
    _legend_below(ax)
    _not_shown(fig, missing)
    return fig


def write_serving_chart(rows: list[dict], out: Path, order: list[str] | None = None,
                        min_user_tokens_per_s: float | None = None) -> dict[str, Path]:
    """serving_per_user_vs_total.png, where any row has figures."""
    colours = variant_colours(order or list(dict.fromkeys(r["variant"] for r in rows)))
    if not any(finite(r.get("total_tokens_per_s")) is not None for r in rows):
        return {}
    with drawing.LOCK:
        return {"serving_chart": _save(serving_figure(rows, colours, min_user_tokens_per_s),
                                       out / "serving_per_user_vs_total.png")}
