"""One variant's distribution statistics against its baseline as text: the block llama.cpp's
`perplexity --kl-divergence` prints (same labels, same order, same units: KLD in nats, Δp and
"Same top p" in percent) and exllamav3 qbench's KL-by-confidence table, both in Markdown.

Rows are results.json's variant rows (see demo.evaluate.VariantEvaluation and demo.measuring.kl_stats).
A figure that could not be computed shows as "–", never as 0.
"""

from __future__ import annotations

from demo.reports.escaping import markdown_inline

DASH = "–"
KL_LABELS = (("max", "Maximum"), ("p99_9", "99.9%  "), ("p99", "99.0%  "), ("p95", "95.0%  "), ("p90", "90.0%  "),
             ("median", "Median "), ("p10", "10.0%  "), ("p5", " 5.0%  "), ("p1", " 1.0%  "), ("p0_1", " 0.1%  "),
             ("min", "Minimum"))
DELTA_P_LABELS = KL_LABELS[:5] + (("p75", "75.0%  "),) + KL_LABELS[5:6] + (("p25", "25.0%  "),) + KL_LABELS[6:]


def num(value: float | None, width: int, digits: int, scale: float = 1.0) -> str:
    return f"{DASH:>{width}}" if value is None else f"{scale * value:{width}.{digits}f}"


def plus_minus(pair: dict | None, digits: int, scale: float = 1.0, width: int = 10) -> str:
    pair = pair or {}
    return f"{num(pair.get('value'), width, digits, scale)} ± {num(pair.get('uncertainty'), width, digits, scale)}"


def llamacpp_block(row: dict) -> str:
    """The three sections llama.cpp prints after a --kl-divergence run, from one row's statistics."""
    kl, dp = row["kl"], row["delta_p"]
    correlation = row.get("log_prob_correlation")
    ppl = {"value": row["perplexity"], "uncertainty": row.get("perplexity_uncertainty")}
    lines = ["====== Perplexity statistics ======",
             f"Mean PPL(Q)                   : {plus_minus(ppl, 6)}",
             f"Mean PPL(base)                : {plus_minus(row.get('ppl_baseline'), 6)}",
             f"Cor(ln(PPL(Q)), ln(PPL(base))): {num(correlation, 6, 2, 100)}%",
             f"Mean ln(PPL(Q)/PPL(base))     : {plus_minus(row.get('ln_ppl_ratio'), 6)}",
             f"Mean PPL(Q)/PPL(base)         : {plus_minus(row.get('ppl_ratio'), 6)}",
             f"Mean PPL(Q)-PPL(base)         : {plus_minus(row.get('ppl_difference'), 6)}",
             "", "====== KL divergence statistics ======",
             f"Mean    KLD: {plus_minus({'value': kl['mean'], 'uncertainty': kl['mean_uncertainty']}, 6)}"]
    lines += [f"{label} KLD: {num(kl[key], 10, 6)}" for key, label in KL_LABELS]
    lines += ["", "====== Token probability statistics ======",
              f"Mean    Δp: {num(dp['mean'], 6, 3, 100)} ± {num(dp['mean_uncertainty'], 5, 3, 100)} %"]
    lines += [f"{label} Δp: {num(dp[key], 6, 3, 100)}%" for key, label in DELTA_P_LABELS]
    lines += [f"RMS Δp    : {num(dp['rms'], 6, 3, 100)} ± {num(dp['rms_uncertainty'], 5, 3, 100)} %",
              f"Same top p: {num(row['top1_agreement'], 6, 3, 100)} ± "
              f"{num(row.get('top1_agreement_uncertainty'), 5, 3, 100)} %"]
    return "\n".join(lines)


def bucket_table(row: dict) -> str:
    """Mean KL by the baseline's top-token probability (exllamav3 qbench's buckets)."""
    lines = ["| baseline's top-token probability | positions | mean KL (nats) |", "|---|---:|---:|"]
    for bucket in row["kl_buckets"]:
        mean = DASH if bucket["kl_mean"] is None else f"{bucket['kl_mean']:.6f}"
        lines.append(f"| {bucket['range']} | {bucket['positions']:,} | {mean} |")
    return "\n".join(lines)


def variant_section(row: dict) -> str:
    """A variant's heading, what was scored, the llama.cpp block and the bucket table."""
    excluded = row.get("nonfinite_positions") or 0
    left_out = f"; {excluded:,} positions with a non-finite figure left out of every statistic" if excluded else ""
    note = f" {markdown_inline(row['protocol_note'])}." if row.get("protocol_note") else ""
    return (f"### {markdown_inline(row['variant'])} against {markdown_inline(row['baseline'])}\n\n"
            f"Protocol `{row.get('protocol')}`: {row['scored_tokens']:,} positions{left_out}.{note}\n\n"
            f"```\n{llamacpp_block(row)}\n```\n\n{bucket_table(row)}\n")
