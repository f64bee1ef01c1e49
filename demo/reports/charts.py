"""Variant colours and names shared by every chart and table, and the evaluation's PNG charts."""

from __future__ import annotations

from pathlib import Path

# Okabe-Ito without its yellow (too faint on white): told apart with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#555555")


def variant_colours(variant_ids: list[str]) -> dict[str, str]:
    """One colour per variant by its place in the models file, so a variant looks the same everywhere."""
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variant_ids)}


def short_names(variant_ids: list[str]) -> dict[str, str]:
    """'smollm2/bnb-nf4' -> 'bnb-nf4' where that stays unambiguous: axis labels fit six variants on a phone."""
    tails = [v.split("/")[-1] for v in variant_ids]
    return {v: t if tails.count(t) == 1 else v for v, t in zip(variant_ids, tails)}


def _scatter(rows: list[dict], y_key: str, y_label: str, title: str, path: Path, colours: dict[str, str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    points = [r for r in rows if r.get(y_key) is not None and r.get("weights_mib") is not None]
    missing = [r["variant"] for r in rows if r.get(y_key) is None and not r.get("error")]
    names = short_names([r["variant"] for r in rows])
    fig, ax = plt.subplots(figsize=(5.6, 4.4), dpi=110)
    for r in points:
        ax.scatter(r["weights_mib"], r[y_key], s=70, color=colours.get(r["variant"], PALETTE[-1]),
                   label=names[r["variant"]], edgecolors="white", linewidths=0.8, zorder=3)
    ax.set_xlabel("weights footprint (MiB)", fontsize=11)
    ax.set_ylabel(y_label, fontsize=11)
    ax.set_title(title, fontsize=12)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if points:  # a legend below the axes: six labels never overlap the points or each other
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=10, frameon=False)
    if missing:
        fig.text(0.01, 0.01, f"not shown (no value): {', '.join(names[v] for v in missing)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_charts(rows: list[dict], out: Path, order: list[str] | None = None) -> dict[str, Path]:
    """Quality (KL divergence where a baseline exists, else perplexity) and decode speed, each against weights.

    `order` is every variant id in the models file's order, which fixes each variant's colour; without it,
    the rows' own order does."""
    colours = variant_colours(order or [r["variant"] for r in rows])
    has_kl = any(r.get("kl_divergence") is not None for r in rows)
    quality_key = "kl_divergence" if has_kl else "perplexity"
    quality_label = "KL divergence vs baseline (nats, lower is closer)" if has_kl else "perplexity (lower is better)"
    return {
        "quality_chart": _scatter(rows, quality_key, quality_label, "Quality against memory",
                                  out / "quality_vs_memory.png", colours),
        "speed_chart": _scatter(rows, "decode_tokens_per_s_p50", "decode tokens/s (p50, higher is faster)",
                                "Speed against memory", out / "speed_vs_memory.png", colours),
    }
