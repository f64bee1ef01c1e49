"""The blind test's chart: per quantized variant, how its votes split against the baseline, as a PNG."""

from __future__ import annotations

from pathlib import Path

from demo.reports import drawing

# Outcome colours (Okabe-Ito): told apart with the common colour-vision deficiencies, and never the
# variant colours of the other charts, since here a colour means an outcome, not a variant.
SEGMENTS = (("preferred", "quantized answer preferred", "#009E73"),
            ("tied", "tie or both bad", "#BBBBBB"),
            ("baseline_preferred", "baseline preferred", "#D55E00"))


def write_chart(summary: dict, path: Path) -> Path | None:
    """Stacked bars (shares of votes) with the 95% interval of the indistinguishable rate; None without votes."""
    rows = [r for r in summary["variants"] if r["role"] == "quantized"]
    if not rows:
        return None
    with drawing.LOCK:
        return _draw(rows, path)


def _draw(rows: list[dict], path: Path) -> Path:
    from matplotlib.figure import Figure

    names = [f"{r['label'] or r['variant']}\n{r['votes']} vote{'s' if r['votes'] != 1 else ''}" for r in rows]
    fig = Figure(figsize=(7.0, 1.9 + 0.6 * len(rows)), dpi=110, layout="constrained")  # no pyplot state
    ax = fig.subplots()
    left = [0.0] * len(rows)
    for key, label, colour in SEGMENTS:
        widths = [100 * r["rates"][key] for r in rows]
        ax.barh(names, widths, left=left, color=colour, label=label, edgecolor="white", height=0.6)
        left = [a + b for a, b in zip(left, widths)]
    shown = [100 * r["rates"]["indistinguishable"] for r in rows]
    low = [s - 100 * r["intervals"]["indistinguishable"][0] for s, r in zip(shown, rows)]
    high = [100 * r["intervals"]["indistinguishable"][1] - s for s, r in zip(shown, rows)]
    ax.errorbar(shown, range(len(rows)), xerr=[low, high], fmt="none", ecolor="#1f2937", capsize=4, lw=1.5,
                label="95% interval, indistinguishable")
    ax.set_xlim(0, 100)
    ax.invert_yaxis()  # the summary's order, top to bottom
    ax.set_xlabel("share of votes against the baseline (%)")
    ax.set_title("Could people tell it from the baseline?")
    fig.legend(loc="outside lower center", ncol=2, fontsize=9, frameon=False)  # below the axis: never over a bar
    fig.savefig(path)  # Agg, the default canvas of a bare Figure: files only, no display
    return path
