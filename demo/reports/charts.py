"""Variant colours and names shared by every chart and table, and the evaluation's PNG charts.

Charts are drawn on plain matplotlib Figures (no pyplot state: an evaluation may finish on any thread) and
written as files only. A value that is missing or not finite is never drawn at 0: the chart lists it as not
shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from demo.reports import drawing

if TYPE_CHECKING:  # matplotlib is imported where a chart is drawn: the page starts without it
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Okabe-Ito without its yellow (too faint on white): told apart with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#555555")
NOISE_COLOUR = "#555555"
LOG_SPAN_DECADES = 2  # a log axis once the values span more than this many decades
HEADROOM = 1.08  # the top of an axis sits above its largest value by at least this factor
HISTOGRAM_BINS = 40


def variant_colours(variant_ids: list[str]) -> dict[str, str]:
    """One colour per variant by its place in the models file, so a variant looks the same everywhere."""
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variant_ids)}


# Past seven variants the colours come round again: the second round gets other markers and line styles
# ("--" stays the noise floor's).
MARKERS = ("o", "s", "D", "v")
LINE_STYLES = ("-", "-.", ":", (0, (5, 1, 1, 1, 1, 1)))


def variant_marks(variant_ids: list[str]) -> dict[str, tuple[str, object]]:
    """(marker, line style) per variant, by its place as for its colour: the same colour never looks the same."""
    return {v: (MARKERS[(i // len(PALETTE)) % len(MARKERS)], LINE_STYLES[(i // len(PALETTE)) % len(LINE_STYLES)])
            for i, v in enumerate(variant_ids)}


def short_names(variant_ids: list[str]) -> dict[str, str]:
    """'smollm2/bnb-nf4' -> 'bnb-nf4' where that stays unambiguous: axis labels fit six variants on a phone."""
    tails = [v.split("/")[-1] for v in variant_ids]
    return {v: t if tails.count(t) == 1 else v for v, t in zip(variant_ids, tails)}


def finite(value) -> float | None:
    """value as a float where it is a finite number; None (not shown) for None, NaN, ±inf or a non-number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return None
    return float(value) if math.isfinite(value) else None


def epsilon_text(epsilon: float) -> str:
    """2^-9 as 2⁻⁹ (a power of two reads as one), anything else in plain digits."""
    exponent = math.log2(epsilon) if epsilon > 0 else float("nan")
    if math.isfinite(exponent) and exponent == round(exponent):
        digits = str(int(exponent)).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
        return f"2{digits}"
    return f"{epsilon:g}"


def noise_floor_label(noise_floor: dict) -> str:
    return f"noise floor (ε = {epsilon_text(noise_floor['epsilon'])})"


# --- headroom: no point or bar touches the top of its plot, and a tick stands above the largest ----------------

def linear_ticks(largest: float, integer: bool = False) -> list[float]:
    """Ticks of a linear axis from 0 whose last one is at or above largest * HEADROOM: that last tick is the top
    of the axis, so the largest value has room above it and a labelled tick over it."""
    from matplotlib.ticker import MaxNLocator

    if largest <= 0:
        return [0.0, 1.0]
    locator = MaxNLocator(nbins=6, steps=[1, 2, 5, 10] if integer else [1, 2, 2.5, 5, 10], integer=integer)
    ticks = locator.tick_values(0, largest * HEADROOM)
    top = ticks[ticks >= largest * HEADROOM][0]
    return [float(t) for t in ticks if 0 <= t <= top]


def log_ticks(smallest: float, largest: float) -> list[float]:
    """Decade ticks of a log axis from the decade at or below smallest to the first at or above
    largest * HEADROOM (the top of the axis); every decade, or every few when they are many."""
    low, high = math.floor(math.log10(smallest / HEADROOM)), math.ceil(math.log10(largest * HEADROOM))
    stride = max(1, math.ceil((high - low) / 8))
    high = low + stride * math.ceil((high - low) / stride)  # the top stays a tick
    return [10.0 ** e for e in range(low, high + 1, stride)]


def _set_headroom(ax: Axes, largest: float | None, log: bool = False, smallest: float | None = None,
                  integer: bool = False) -> None:
    if largest is None:
        return
    ticks = log_ticks(smallest or largest, largest) if log else linear_ticks(largest, integer)
    ax.set_yticks(ticks)
    ax.set_ylim(ticks[0], ticks[-1])


def _legend_below(ax: Axes) -> None:
    """A legend below the axes: six labels never overlap the points or each other."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=9, frameon=False)


def _not_shown(fig: Figure, notes: list[str]) -> None:
    if notes:
        fig.text(0.01, 0.01, "not shown: " + "; ".join(notes), fontsize=8, wrap=True)


def _new_figure(width_in: float, height_in: float) -> tuple[Figure, Axes]:
    """A Figure of its own, outside pyplot's global state (drawn with Agg when saved)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=110)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    return path


# --- a figure against weights size -------------------------------------------------------------------------

def scatter_figure(rows: list[dict], y_key: str, y_label: str, title: str, colours: dict[str, str]) -> Figure:
    """One point per variant: y_key against weights MiB."""
    points = [r for r in rows if finite(r.get(y_key)) is not None and finite(r.get("weights_mib")) is not None]
    missing = [r["variant"] for r in rows if r not in points and not r.get("error")]
    names = short_names([r["variant"] for r in rows])
    marks = variant_marks(list(colours))
    fig, ax = _new_figure(5.6, 4.4)
    for r in points:
        ax.scatter(r["weights_mib"], r[y_key], s=70, color=colours.get(r["variant"], PALETTE[-1]),
                   marker=marks.get(r["variant"], MARKERS[:1])[0], label=names[r["variant"]], edgecolors="white",
                   linewidths=0.8, zorder=3, clip_on=False)
    ax.set_xlabel("weights footprint (MiB)", fontsize=11)
    ax.set_ylabel(y_label, fontsize=10)
    ax.set_title(title, fontsize=12)
    ax.set_xlim(left=0)
    _set_headroom(ax, max((r[y_key] for r in points), default=None))
    ax.grid(alpha=0.3)
    _legend_below(ax)
    _not_shown(fig, [f"{names[v]} (no value)" for v in missing])
    return fig


# --- KL against weights size, with the noise floor ---------------------------------------------------------

@dataclass(frozen=True)
class KlPoint:
    variant: str
    x: float
    mean: float  # nats
    p99_9: float | None  # nats; None where the row has no finite 99.9 % point
    emulated: bool = False  # its matmuls ran dequantized in a float type: drawn hollow (its size is the format's,
    # its speed is not)


@dataclass
class KlPlot:
    """What the KL chart draws, computed apart from drawing it."""

    points: list[KlPoint]
    x_label: str
    log_y: bool
    noise_floor: float | None  # the noise floor's mean KL, nats; None: not drawn
    noise_floor_p99_9: float | None
    not_shown: list[str] = field(default_factory=list)  # "name (why)", for the note under the chart


def _kl_of(row: dict) -> tuple[float | None, float | None]:
    kl = row.get("kl") if isinstance(row.get("kl"), dict) else {}
    return finite(kl.get("mean")), finite(kl.get("p99_9"))


def _x_axis(rows: list[dict]) -> tuple[str, str]:
    """Bits per weight where every row has it (it compares formats directly), else the weights footprint."""
    if rows and all(finite(r.get("weights_bits_per_weight")) is not None for r in rows):
        return "weights_bits_per_weight", "bits per weight"
    return "weights_mib", "weights footprint (MiB)"


def kl_plot(rows: list[dict], noise_floor: dict | None = None) -> KlPlot:
    """Each variant's mean KL and 99.9 % point against its size; a log y axis once the positive values span more
    than LOG_SPAN_DECADES decades, and then a KL of 0 (the baseline against itself) is left out and said so."""
    names = short_names([r["variant"] for r in rows])
    notes = []
    with_kl = []
    for r in rows:
        mean, _ = _kl_of(r)
        if mean is None:
            notes.append(f"{names[r['variant']]} ({'failed' if r.get('error') else 'no KL'})")
        else:
            with_kl.append(r)
    x_key, x_label = _x_axis(with_kl)
    floor = finite((noise_floor or {}).get("kl_mean"))
    floor_p99_9 = finite((noise_floor or {}).get("kl_p99_9"))
    if noise_floor and floor is None:
        notes.append(f"noise floor ({noise_floor.get('unavailable') or 'no value'})")
    points = []
    for r in with_kl:
        if finite(r.get(x_key)) is None:
            notes.append(f"{names[r['variant']]} (no size)")
        else:
            mean, p99_9 = _kl_of(r)
            points.append(KlPoint(r["variant"], float(r[x_key]), mean, p99_9, is_emulated(r)))
    plot = KlPlot(points, x_label, False, floor, floor_p99_9, notes)
    positive = [v for p in points for v in (p.mean, p.p99_9)] + [floor, floor_p99_9]
    positive = [v for v in positive if v is not None and v > 0]
    if positive and max(positive) / min(positive) > 10 ** LOG_SPAN_DECADES:
        return _on_log_axis(plot, names)
    return plot


def _on_log_axis(plot: KlPlot, names: dict[str, str]) -> KlPlot:
    """The plot on a log y axis: a KL of 0 has no place there, so it is left out and said so."""
    def positive(value: float | None) -> float | None:
        return value if value is not None and value > 0 else None

    zero = [f"{names[p.variant]} (KL 0: no place on a log axis)" for p in plot.points if p.mean <= 0]
    points = [KlPoint(p.variant, p.x, p.mean, positive(p.p99_9), p.emulated) for p in plot.points if p.mean > 0]
    return KlPlot(points, plot.x_label, True, positive(plot.noise_floor), positive(plot.noise_floor_p99_9),
                  plot.not_shown + zero)


def is_emulated(row: dict) -> bool:
    return ((row.get("kernel") or {}).get("kind")) == "emulated"


def kl_figure(rows: list[dict], colours: dict[str, str], noise_floor: dict | None = None) -> Figure:
    """Mean KL (a filled marker; hollow where the variant's kernel was emulated) and its 99.9 % point (a thin bar up
    to an open triangle) against weights size, with the noise floor as a dashed line."""
    plot = kl_plot(rows, noise_floor)
    names = short_names([r["variant"] for r in rows])
    marks = variant_marks(list(colours))
    fig, ax = _new_figure(6.0, 4.8)
    for p in plot.points:
        colour = colours.get(p.variant, PALETTE[-1])
        label = names[p.variant] + (" (emulated)" if p.emulated else "")
        fill = {"facecolors": "white", "edgecolors": colour, "linewidths": 1.6} if p.emulated else \
            {"color": colour, "edgecolors": "white", "linewidths": 0.8}
        ax.scatter(p.x, p.mean, s=70, marker=marks.get(p.variant, MARKERS[:1])[0], label=label, zorder=3,
                   clip_on=False, **fill)  # the baseline's 0 sits on the axis line, drawn whole
        if p.p99_9 is not None:
            ax.plot([p.x, p.x], [p.mean, p.p99_9], color=colour, lw=1.2, zorder=2)
            ax.scatter(p.x, p.p99_9, s=34, marker="^", facecolors="white", edgecolors=colour, linewidths=1.2,
                       zorder=3)
    if plot.noise_floor is not None:
        ax.axhline(plot.noise_floor, color=NOISE_COLOUR, ls="--", lw=1.2, label=noise_floor_label(noise_floor),
                   zorder=1)
    if plot.noise_floor_p99_9 is not None:
        ax.axhline(plot.noise_floor_p99_9, color=NOISE_COLOUR, ls=":", lw=1.0, label="noise floor, 99.9 %",
                   zorder=1)
    values = [v for p in plot.points for v in (p.mean, p.p99_9) if v is not None]
    values += [v for v in (plot.noise_floor, plot.noise_floor_p99_9) if v is not None]
    if plot.log_y:
        ax.set_yscale("log")
    _set_headroom(ax, max(values, default=None), plot.log_y, min(values, default=None))
    ax.set_xlim(left=0)
    ax.set_xlabel(plot.x_label, fontsize=11)
    has_tail = any(p.p99_9 is not None for p in plot.points)
    ax.set_ylabel("KL vs baseline (nats): ● mean, △ 99.9 %" if has_tail else "KL vs baseline (nats), mean",
                  fontsize=10)
    hollow = "\n(hollow: emulated kernel, dequantized to a float matmul)" if any(p.emulated for p in plot.points) else ""
    ax.set_title("KL divergence against size" + hollow, fontsize=12)
    ax.grid(alpha=0.3, which="both" if plot.log_y else "major")
    _legend_below(ax)
    _not_shown(fig, plot.not_shown)
    return fig


# --- the size/quality frontier ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrontierPoint:
    variant: str
    weights_mib: float
    kl_mean: float  # nats, > 0
    emulated: bool
    on_frontier: bool  # no other variant is both smaller (or as small) and closer to the baseline


def frontier_points(rows: list[dict]) -> tuple[list[FrontierPoint], list[str]]:
    """Each variant's mean KL against its weights, the Pareto-optimal ones marked; and what is not drawn, said why
    (both axes are logarithmic, so a KL of 0, the baseline against itself, has no place)."""
    names = short_names([r["variant"] for r in rows])
    drawn, notes = [], []  # (row, mean KL) of the points drawn
    for r in rows:
        mean, _ = _kl_of(r)
        mib = finite(r.get("weights_mib"))
        if mean is None or mib is None or mib <= 0:
            notes.append(f"{names[r['variant']]} ({'failed' if r.get('error') else 'no KL' if mean is None else 'no size'})")
        elif mean <= 0:
            notes.append(f"{names[r['variant']]} (KL 0: the baseline itself)")
        else:
            drawn.append((r, mean))
    best = math.inf
    frontier = set()
    for r, mean in sorted(drawn, key=lambda item: (item[0]["weights_mib"], item[1])):
        if mean < best:
            best = mean
            frontier.add(r["variant"])
    points = [FrontierPoint(r["variant"], float(r["weights_mib"]), mean, is_emulated(r), r["variant"] in frontier)
              for r, mean in drawn]
    return points, notes


def frontier_figure(rows: list[dict], colours: dict[str, str], title: str = "Size against closeness to the baseline",
                    width_in: float = 7.0, height_in: float = 5.0) -> Figure:
    """Mean KL against weights, both on log axes, each point named beside it (filled: a kernel made for the format;
    hollow: emulated), and the frontier (the variants nothing beats on both) as a dashed step line."""
    points, notes = frontier_points(rows)
    names = short_names([r["variant"] for r in rows])
    marks = variant_marks(list(colours))
    fig, ax = _new_figure(width_in, height_in)
    steps = sorted((p for p in points if p.on_frontier), key=lambda p: p.weights_mib)
    if len(steps) > 1:
        ax.step([p.weights_mib for p in steps], [p.kl_mean for p in steps], where="post", color=NOISE_COLOUR,
                ls="--", lw=1.0, zorder=1, label="frontier: nothing smaller is closer")
    for p in points:
        colour = colours.get(p.variant, PALETTE[-1])
        fill = {"facecolors": "white", "edgecolors": colour, "linewidths": 1.6} if p.emulated else \
            {"color": colour, "edgecolors": "white", "linewidths": 0.8}
        ax.scatter(p.weights_mib, p.kl_mean, s=60, marker=marks.get(p.variant, MARKERS[:1])[0], zorder=3, **fill)
    if points:
        ax.set_xscale("log")
        ax.set_yscale("log")
        values = [p.kl_mean for p in points]
        _set_headroom(ax, max(values), True, min(values))
        sizes = [p.weights_mib for p in points]
        ax.set_xlim(min(sizes) / 1.25, max(sizes) * 1.6)  # room for the names beside the points
        ticks = [t for t in SIZE_TICKS_MIB if min(sizes) / 1.25 <= t <= max(sizes) * 1.6]
        from matplotlib.ticker import NullLocator

        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        _name_points(fig, ax, [(p.weights_mib, p.kl_mean, names[p.variant] + (" (emulated)" if p.emulated else ""),
                                p.on_frontier) for p in points])
    ax.set_xlabel("weights footprint (MiB, log scale)", fontsize=11)
    ax.set_ylabel("mean KL vs baseline (nats, log scale)", fontsize=10)
    hollow = "\n(hollow: emulated kernel, its speed says nothing about the format)" if any(p.emulated for p in points) else ""
    ax.set_title(title + hollow, fontsize=11)
    ax.grid(alpha=0.3)
    if len(steps) > 1:
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    _not_shown(fig, notes)
    return fig


# Round sizes for a log axis of MiB (powers of two and the round numbers between them).
SIZE_TICKS_MIB = (16, 32, 50, 64, 80, 100, 128, 160, 200, 256, 320, 400, 512, 640, 800, 1024, 1600, 2048, 4096,
                  8192, 16384)
# Where a point's name may go, in points from the point (its text's vertical centre): right, left, then higher
# and lower on either side.
LABEL_OFFSETS = ((7, 0, "left"), (-7, 0, "right"), (7, 9, "left"), (7, -9, "left"), (-7, 9, "right"),
                 (-7, -9, "right"), (10, 18, "left"), (10, -18, "left"), (-10, 18, "right"), (-10, -18, "right"))


def _name_points(fig: Figure, ax: Axes, labelled: list[tuple[float, float, str, bool]]) -> None:
    """Each point's name beside it, at the offset that overlaps the names already placed and the other points
    least (the first such offset on a tie), inside the axes: a crowd of 4-bit variants stays legible."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.tight_layout()
    frame = ax.get_window_extent(renderer)
    dots = [Bbox.from_bounds(dx - 4, dy - 4, 8, 8)
            for dx, dy in (ax.transData.transform((x, y)) for x, y, _, _ in labelled)]
    placed: list = []

    def overlap(a, b) -> float:
        width = min(a.x1, b.x1) - max(a.x0, b.x0)
        height = min(a.y1, b.y1) - max(a.y0, b.y0)
        return width * height if width > 0 and height > 0 else 0.0

    for x, y, text, bold in sorted(labelled, key=lambda item: (item[0], item[1])):
        style = {"textcoords": "offset points", "fontsize": 7.5, "color": "#1f2937",
                 "weight": "bold" if bold else "normal"}
        scores = []
        for dx, dy, align in LABEL_OFFSETS:
            label = ax.annotate(text, (x, y), xytext=(dx, dy), ha=align, va="center", **style)
            box = label.get_window_extent(renderer)
            label.remove()
            outside = box.width * box.height - overlap(box, frame)
            scores.append(10 * outside + sum(overlap(box, other) for other in placed + dots))
        dx, dy, align = LABEL_OFFSETS[scores.index(min(scores))]
        # a thin leader from the name to its point: in a crowd, which name is whose stays clear
        placed.append(ax.annotate(text, (x, y), xytext=(dx, dy), ha=align, va="center",
                                  arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "#6b7280", "shrinkB": 4},
                                  **style).get_window_extent(renderer))


def write_frontier(rows: list[dict], colours: dict[str, str], path: Path, **figure_kwargs) -> Path | None:
    """The frontier chart as a PNG, drawn under the drawing lock; None where no variant has a KL to draw."""
    if not frontier_points(rows)[0]:
        return None
    with drawing.LOCK:
        return _save(frontier_figure(rows, colours, **figure_kwargs), path)


# --- per-token KL histogram ----------------------------------------------------------------------------------

def kl_histogram_values(rows: list[dict]) -> tuple[dict[str, np.ndarray], np.ndarray | None, list[str]]:
    """Per variant its positive finite per-position KLs, the shared log-spaced bin edges (None: nothing to draw),
    and the notes for what is not shown (a KL of exactly 0 has no place on a log axis)."""
    names = short_names([r["variant"] for r in rows])
    values, notes = {}, []
    for r in rows:
        raw = r.get("kl_per_position")
        if raw is None:
            continue
        array = np.asarray([v if finite(v) is not None else np.nan for v in raw], dtype=float)
        array = array[np.isfinite(array)]
        positive = array[array > 0]
        if positive.size == 0:
            notes.append(f"{names[r['variant']]} ({'KL 0 at every position' if array.size else 'no positions'})")
            continue
        if positive.size < array.size:
            zeros = array.size - positive.size
            notes.append(f"{names[r['variant']]}: {zeros} position{'s' if zeros != 1 else ''} at KL 0")
        values[r["variant"]] = positive
    if not values:
        return values, None, notes
    low = min(float(v.min()) for v in values.values())
    high = max(float(v.max()) for v in values.values())
    edges = np.geomspace(low, high * 1.0001 if high > low else low * 10, HISTOGRAM_BINS + 1)
    return values, edges, notes


def kl_histogram_figure(rows: list[dict], colours: dict[str, str], noise_floor: dict | None = None) -> Figure:
    """How many positions fall at each KL, one step outline per variant, on log-spaced bins."""
    values, edges, notes = kl_histogram_values(rows)
    names = short_names([r["variant"] for r in rows])
    marks = variant_marks(list(colours))
    fig, ax = _new_figure(6.0, 4.6)
    tallest = 0
    for variant, kl in values.items():
        counts, _, _ = ax.hist(kl, bins=edges, histtype="step", lw=1.5, color=colours.get(variant, PALETTE[-1]),
                               ls=marks.get(variant, (None, "-"))[1], label=names[variant])
        tallest = max(tallest, int(counts.max()))
    floor = finite((noise_floor or {}).get("kl_mean"))
    if floor is not None and floor > 0:
        ax.axvline(floor, color=NOISE_COLOUR, ls="--", lw=1.2, label=noise_floor_label(noise_floor))
    ax.set_xscale("log")
    _set_headroom(ax, tallest or None, integer=True)
    ax.set_xlabel("KL vs baseline at one position (nats, log scale)", fontsize=11)
    ax.set_ylabel("positions", fontsize=11)
    ax.set_title("Per-token KL divergence", fontsize=12)
    ax.grid(alpha=0.3)
    _legend_below(ax)
    _not_shown(fig, notes)
    return fig


# --- the files -------------------------------------------------------------------------------------------------

def write_charts(rows: list[dict], out: Path, order: list[str] | None = None,
                 noise_floor: dict | None = None) -> dict[str, Path]:
    """Quality (KL divergence where a baseline exists, else perplexity) and decode speed, each against weights;
    where rows carry `kl` ({"mean", "p99_9", ...}) also KL against size with the noise floor, and where they carry
    `kl_per_position` the per-token KL histogram.

    `order` is every variant id in the models file's order, which fixes each variant's colour; without it,
    the rows' own order does. `noise_floor` is {"kl_mean", "kl_p99_9", "epsilon"} (or {"unavailable": why})."""
    colours = variant_colours(order or [r["variant"] for r in rows])
    has_kl = any(finite(r.get("kl_divergence")) is not None for r in rows)
    quality_key = "kl_divergence" if has_kl else "perplexity"
    quality_label = "KL divergence vs baseline (nats, lower is closer)" if has_kl else "perplexity (lower is better)"
    with drawing.LOCK:  # one chart drawn at a time in this process, whoever asks (the tab, the CLI)
        paths = {
            "quality_chart": _save(scatter_figure(rows, quality_key, quality_label, "Quality against memory",
                                                  colours), out / "quality_vs_memory.png"),
            "speed_chart": _save(scatter_figure(rows, "decode_tokens_per_s_p50",
                                                "decode tokens/s (p50, higher is faster)", "Speed against memory",
                                                colours), out / "speed_vs_memory.png"),
        }
        if any(isinstance(r.get("kl"), dict) for r in rows):
            paths["kl_chart"] = _save(kl_figure(rows, colours, noise_floor), out / "kl_vs_size.png")
        if frontier_points(rows)[0]:
            paths["frontier_chart"] = _save(frontier_figure(rows, colours), out / "kl_vs_weights_frontier.png")
        if any(r.get("kl_per_position") is not None for r in rows):
            paths["kl_histogram"] = _save(kl_histogram_figure(rows, colours, noise_floor), out / "kl_per_token.png")
    return paths
