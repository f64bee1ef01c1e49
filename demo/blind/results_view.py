"""The blind test's results as the page shows and offers them: the summary line, the table's rows, the JSON and
CSV files, and the whole view as one HTML fragment. Plain text and files: no gradio, nothing from ui."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from demo.reports.escaping import html_text

HEADERS = ["variant", "votes", "quantized preferred", "tie", "baseline preferred", "indistinguishable",
           "rating (Elo, baseline 0)"]
CSV_FIELDS = ["variant", "label", "base", "baseline", "role", "votes", "flagged", "preferred", "tie", "both_bad",
              "baseline_preferred"] + [f"{k}{end}" for k in ("rate_preferred", "rate_tied", "rate_baseline_preferred",
                                                              "rate_indistinguishable")
                                       for end in ("", "_low", "_high")] + ["rating", "rating_low", "rating_high"]


def summary_markdown(shown: dict, counts: tuple[int, int]) -> str:
    """The headline: votes counted, and the votes that look scripted, counted apart and left out of the ratings."""
    battles, votes = counts
    flagged = shown.get("flagged_votes", 0)
    apart = (f" **{flagged} vote{'s' if flagged != 1 else ''} that look{'s' if flagged == 1 else ''} scripted** "
             f"({shown['flag_rules']}) {'is' if flagged == 1 else 'are'} counted apart: left out of the rates and "
             "ratings below, kept in the database and its export." if flagged else "")
    if not shown["variants"]:
        return f"**No votes counted yet.** {battles} battle{'s' if battles != 1 else ''} issued so far.{apart}"
    counted = votes - flagged
    return (f"**{counted} vote{'s' if counted != 1 else ''}** counted in {battles} "
            f"battle{'s' if battles != 1 else ''} issued (battles never voted on are not counted).{apart}")


def _pct(rate: float, interval: list[float]) -> str:
    return f"{100 * rate:.0f}% ({100 * interval[0]:.0f}–{100 * interval[1]:.0f}%)"


def table_rows(shown: dict) -> list[list[Any]]:
    """One row a variant, in HEADERS' order."""
    rows = []
    for r in shown["variants"]:
        name = f"{r['label']} ({r['variant']})" if r["label"] else r["variant"]
        rating = f"{r['rating']:+.0f} ({r['rating_interval'][0]:+.0f} to {r['rating_interval'][1]:+.0f})"
        if r["role"] == "baseline":
            rows.append([f"{name}, baseline", r["votes"], "–", "–", "–", "–", "0 (anchor)"])
            continue
        rates, intervals = r["rates"], r["intervals"]
        rows.append([name, r["votes"], *(_pct(rates[k], intervals[k]) for k in
                                         ("preferred", "tied", "baseline_preferred", "indistinguishable")), rating])
    return rows


def csv_row(r: dict) -> dict:
    row = {k: r[k] for k in ("variant", "label", "base", "baseline", "role", "votes", "flagged")}
    row.update(r["counts"] or {})
    for key in ("preferred", "tied", "baseline_preferred", "indistinguishable"):
        if r["rates"]:
            row[f"rate_{key}"] = r["rates"][key]
            row[f"rate_{key}_low"], row[f"rate_{key}_high"] = r["intervals"][key]
    row["rating"], (row["rating_low"], row["rating_high"]) = r["rating"], r["rating_interval"]
    return row


def write_results(shown: dict, out: Path) -> dict[str, Path]:
    """blind_results.json (the summary as `python -m demo votes --json` prints it) and blind_results.csv (one row a
    variant)."""
    paths = {"json": out / "blind_results.json", "csv": out / "blind_results.csv"}
    paths["json"].write_text(json.dumps(shown, indent=2), encoding="utf-8")
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, CSV_FIELDS)
        writer.writeheader()
        for r in shown["variants"]:
            writer.writerow(csv_row(r))
    return paths


def view_html(shown: dict, counts: tuple[int, int], chart_url: str | None, file_urls: dict[str, str]) -> str:
    """The Results view: the summary, the chart (by URL), the table and the download links, as one fragment
    (every name escaped: labels come from the models file, which the page does not trust to be HTML)."""
    summary = MarkdownIt("commonmark", {"html": False}).render(summary_markdown(shown, counts))
    chart = (f'<img src="{attribute(chart_url)}" alt="Votes against the baseline, per variant" '
             'style="max-width: 100%;">' if chart_url else "")
    head = "".join(f"<th>{html_text(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{html_text(str(cell))}</td>" for cell in row) + "</tr>"
                   for row in table_rows(shown))
    links = " · ".join(f'<a href="{attribute(url)}" download="{attribute(name)}">{html_text(name)}</a>'
                       for name, url in file_urls.items())
    return (f'<div id="blind-summary">{summary}</div>'
            f'<div id="blind-chart">{chart}</div>'
            f'<table id="blind-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            f'<p id="blind-files">Download the results: {links}</p>')


def attribute(value: str) -> str:
    """`value` inside a double-quoted HTML attribute: quotes escaped too."""
    return html.escape(value, quote=True)
