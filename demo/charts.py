"""PNG charts of evaluation results: quality against memory, speed against memory."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def _scatter(rows: list[dict], y_key: str, y_label: str, title: str, path: Path) -> Path:
    points = [r for r in rows if r.get(y_key) is not None and r.get("weights_mib") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for r in points:
        ax.scatter(r["weights_mib"], r[y_key], s=40)
        ax.annotate(r["variant"].split("/")[-1], (r["weights_mib"], r[y_key]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xlabel("weights footprint (MiB)")
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_charts(rows: list[dict], out: Path) -> dict[str, Path]:
    """Quality (KL divergence where a baseline exists, else perplexity) and decode speed, each against weights."""
    has_kl = any(r.get("kl_divergence") is not None for r in rows)
    quality_key = "kl_divergence" if has_kl else "perplexity"
    quality_label = "KL divergence vs baseline (nats, lower is closer)" if has_kl else "perplexity (lower is better)"
    return {
        "quality_chart": _scatter(rows, quality_key, quality_label, "Quality against memory",
                                  out / "quality_vs_memory.png"),
        "speed_chart": _scatter(rows, "decode_tokens_per_s_p50", "decode tokens/s (p50, higher is faster)",
                                "Speed against memory", out / "speed_vs_memory.png"),
    }
