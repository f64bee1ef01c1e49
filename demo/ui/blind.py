"""The Blind test tab: two anonymous answers to one prompt, one vote, then the reveal; the results so far;
and the /battle and /vote endpoints over the same BlindTest."""

from __future__ import annotations

import csv
import html
import json
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from demo.blind import vote_chart
from demo.reports import report
from demo.blind.battle import BlindTest
from demo.config import REPO_ROOT
from demo.errors import ArenaError
from demo.running.runner import Arena
from demo.blind.votes import SPACE_DATA, VoteStore, space_storage, votes_path

log = logging.getLogger(__name__)
PROMPTS_FILE = REPO_ROOT / "assets" / "blind_prompts.json"
VOTES_QUEUE = "votes"  # votes touch only the database: they never wait behind a generation
CHOICES = (("a", "A is better"), ("b", "B is better"), ("tie", "Tie"), ("both_bad", "Both are bad"))

# Nothing here may name a variant: this text is in the page before the vote.
INTRO = """Can you tell a quantized model's answer from the full-precision baseline's? Ask something (or draw a
prompt), read the two answers and vote. The server picks the pair: the baseline and one of its quantized
variants, in random order, both with the same settings. Both answers appear together once both are complete,
with no names, timings or sizes until you have voted."""
WAITING = "Generating both answers… they appear together when both are complete."
VOTED = "**Vote recorded.** Ask again for a new pair."
READY = "Read both answers, then vote. Which is which is revealed after your vote."
RESULTS_NOTE = """**How to read this.** Each row is one quantized variant against its baseline. *Tie* counts
"tie" and "both are bad" votes. *Indistinguishable* = quantized answer preferred + tie: how often the quantized
answer did at least as well. Intervals are 95% percentile bootstrap intervals (1,000 resamples of the votes,
seeded). *Rating* is a Bradley-Terry fit (ties as half a win, one imagined tie per variant to keep it finite)
in Elo points with the baseline at 0: −100 means the baseline is preferred about 64% of the time. Few votes
mean wide intervals: read the vote counts first."""
HEADERS = ["variant", "votes", "quantized preferred", "tie", "baseline preferred", "indistinguishable",
           "rating (Elo, baseline 0)"]


def load_prompts(path: Path = PROMPTS_FILE) -> list[str]:
    return list(json.loads(path.read_text(encoding="utf-8"))["prompts"])


def session_of(request: gr.Request | None) -> str:
    """Gradio's session: one per page load in a browser, one per gradio_client Client."""
    return (request.session_hash if request is not None else None) or "anonymous"


def build_tab(arena: Arena, queue: str, blind: BlindTest | None = None) -> BlindTest:
    """The tab's components, its events and the two endpoints; model-running events share the device queue."""
    if blind is None:
        path = votes_path(arena.config)
        if os.environ.get("SPACE_ID") and space_storage() is None and not path.is_relative_to(SPACE_DATA):
            log.warning("blind test: votes are kept in %s, on this Space's own disk, which is lost when the Space "
                        "restarts; add persistent storage (/data) to keep them", path)
        blind = BlindTest(arena, VoteStore(path))
    prompts = load_prompts()
    bases = [(arena.config.bases[b].label, b) for b in blind.bases()]
    with gr.Tabs(elem_id="blind-tabs"):
        with gr.Tab("Vote", id="blind-vote-tab", elem_id="blind-vote"):
            gr.Markdown(INTRO)
            with gr.Row():
                prompt = gr.Textbox(label="Your question", lines=2, placeholder="Ask something…",
                                    elem_id="blind-prompt", scale=4)
                base = gr.Dropdown(bases, value=bases[0][1] if bases else None, label="Model", visible=len(bases) > 1,
                                   scale=1)
            with gr.Row():
                draw = gr.Button("Draw a prompt", elem_id="blind-draw")
                start = gr.Button("Get two answers", variant="primary", elem_id="blind-start")
            status = gr.Markdown(elem_id="blind-status")
            with gr.Row(visible=False, elem_id="blind-answers") as answers:
                answer_a = gr.Textbox(label="Answer A", lines=8, max_lines=20, interactive=False, elem_id="blind-a")
                answer_b = gr.Textbox(label="Answer B", lines=8, max_lines=20, interactive=False, elem_id="blind-b")
            with gr.Row():
                buttons = [gr.Button(text, interactive=False, elem_id=f"blind-vote-{choice}")
                           for choice, text in CHOICES]
            revealed = gr.Markdown(elem_id="blind-reveal")
            battle_id = gr.State(None)  # kept on the server: the page never holds the id
        with gr.Tab("Results", id="blind-results-tab", elem_id="blind-results") as results_tab:
            refresh = gr.Button("Refresh", size="sm", elem_id="blind-refresh")
            summary = gr.Markdown(elem_id="blind-summary")
            chart = gr.Image(label="Votes against the baseline, per variant", type="filepath", interactive=False,
                             elem_id="blind-chart")
            table = gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, elem_id="blind-table")
            gr.Markdown(RESULTS_NOTE, elem_classes=["small-print"])
            files = gr.File(label="Download the results: JSON, CSV", file_count="multiple", interactive=False,
                            elem_id="blind-files")
    result_outputs = [summary, chart, table, files]

    def on_draw() -> str:
        return random.choice(prompts)

    def on_start(prompt_text: str, base_id: str | None, request: gr.Request):
        try:
            issued = blind.battle(prompt_text, base_id, session_of(request))
        except ArenaError as exc:
            raise gr.Error(str(exc)) from None
        return {battle_id: issued["battle"], answer_a: _shown_answer(issued["a"]),
                answer_b: _shown_answer(issued["b"]), answers: gr.update(visible=True), status: READY,
                **{button: gr.update(interactive=True) for button in buttons}}

    def on_vote(choice: str, current: str | None, request: gr.Request):
        if not current:
            raise gr.Error("ask for two answers first, then vote on them")
        try:
            shown = blind.vote(current, choice, session_of(request))
        except ArenaError as exc:
            raise gr.Error(str(exc)) from None
        return {battle_id: None, revealed: reveal_markdown(shown), status: VOTED,
                **{button: gr.update(interactive=False) for button in buttons}, **results_updates()}

    def results_updates() -> dict:
        shown = blind.results()
        out = Path(tempfile.mkdtemp(prefix="blind-results-"))
        paths = write_results(shown, out)
        chart_path = vote_chart.write_chart(shown, out / "blind_test.png")
        return {summary: summary_markdown(shown, blind.store.counts()), chart: str(chart_path) if chart_path else None,
                table: pd.DataFrame(table_rows(shown), columns=HEADERS), files: [str(p) for p in paths.values()]}

    def on_results():
        return results_updates()

    idle = {revealed: "", answers: gr.update(visible=False), status: WAITING,
            **{button: gr.update(interactive=False) for button in buttons}}
    draw.click(on_draw, None, prompt, queue=False, api_visibility="undocumented")
    start.click(lambda: idle, None, [revealed, answers, status, *buttons], queue=False,
                api_visibility="undocumented").then(
        on_start, [prompt, base], [battle_id, answer_a, answer_b, answers, status, *buttons],
        concurrency_id=queue, concurrency_limit=None, api_visibility="undocumented", show_progress_on=[status],
    ).failure(lambda: "", None, status, queue=False, api_visibility="undocumented")  # the error says why
    for button, (choice, _) in zip(buttons, CHOICES):
        button.click(on_vote, [gr.State(choice), battle_id],
                     [battle_id, revealed, status, *buttons, *result_outputs], concurrency_id=VOTES_QUEUE,
                     concurrency_limit=None, api_visibility="undocumented")
    refresh.click(on_results, None, result_outputs, concurrency_id=VOTES_QUEUE, concurrency_limit=None,
                  api_visibility="undocumented")
    results_tab.select(on_results, None, result_outputs, concurrency_id=VOTES_QUEUE, concurrency_limit=None,
                       api_visibility="undocumented")

    def battle(prompt: str, base: str = "", request: gr.Request = None) -> dict:
        """Answer a prompt with a base model's baseline and one of its variants, drawn by the server, in random
        order: returns {"battle": id, "a": answer, "b": answer} and nothing that tells them apart. Vote with
        /vote from the same client (session)."""
        try:
            return blind.battle(prompt, base or None, session_of(request))
        except ArenaError as exc:
            raise gr.Error(str(exc)) from None

    def vote(battle: str, choice: str, request: gr.Request = None) -> dict:
        """Vote on a battle this client was issued: choice "a", "b", "tie" or "both_bad"; returns both sides
        named, with their figures and fidelity. Each battle takes one vote."""
        try:
            return blind.vote(battle, choice, session_of(request))
        except ArenaError as exc:
            raise gr.Error(str(exc)) from None

    gr.api(battle, api_name="battle", concurrency_id=queue, concurrency_limit=None)
    gr.api(vote, api_name="vote", concurrency_id=VOTES_QUEUE, concurrency_limit=None)
    return blind


def _shown_answer(text: str) -> str:
    return text if text.strip() else "(an empty answer: the model stopped at once)"


def reveal_markdown(shown: dict[str, Any]) -> str:
    """Both sides named, their figures side by side, and which one the vote preferred."""
    a, b = shown["a"], shown["b"]
    said = dict(CHOICES)[shown["choice"]]

    def name(side: str, record: dict) -> str:
        role = " — the baseline" if shown["baseline"] == side else ""
        return f"{html.escape(record['label'])} (`{record['variant']}`){role}"

    def method(record: dict) -> str:
        bits = f" · {record['bits']}-bit" if record.get("bits") else ""
        return f"{record['method']}{bits} · {record['runtime']}"

    rows = [("variant", name("a", a), name("b", b)), ("method", method(a), method(b))]
    figures_a, figures_b = dict(report.figures(a)), dict(report.figures(b))
    rows += [(label, _cell(figures_a[label]), _cell(figures_b.get(label, "–"))) for label in figures_a
             if label != "load"]
    table = "\n".join(f"| {label} | {x} | {y} |" for label, x, y in rows)
    settings = ", ".join(f"{k}={v}" for k, v in shown["settings"].items())
    return (f"### Revealed\nYou voted **{said}**. Answer A was **{name('a', a)}**; Answer B was "
            f"**{name('b', b)}**.\n\n| | Answer A | Answer B |\n|---|---|---|\n{table}\n\n"
            f"<small>Settings: {html.escape(settings)}, the same for both. Figures from this run on "
            f"{html.escape(str(a.get('device') or ''))}; the teacher-forced line compares the baseline's answer "
            "through each model (see the Compare tab's guide).</small>")


def _cell(value: str) -> str:
    """A table cell shown literally: HTML escaped, the table's own separator escaped."""
    return html.escape(value, quote=False).replace("|", "\\|")


def summary_markdown(shown: dict, counts: tuple[int, int]) -> str:
    battles, votes = counts
    if not shown["variants"]:
        return f"**No votes yet.** {battles} battle{'s' if battles != 1 else ''} issued so far."
    return (f"**{votes} vote{'s' if votes != 1 else ''}** in {battles} battle{'s' if battles != 1 else ''} issued "
            "(battles never voted on are not counted).")


def _pct(rate: float, interval: list[float]) -> str:
    return f"{100 * rate:.0f}% ({100 * interval[0]:.0f}–{100 * interval[1]:.0f}%)"


def table_rows(shown: dict) -> list[list[Any]]:
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


CSV_FIELDS = ["variant", "label", "base", "baseline", "role", "votes", "preferred", "tie", "both_bad",
              "baseline_preferred"] + [f"{k}{end}" for k in ("rate_preferred", "rate_tied", "rate_baseline_preferred",
                                                              "rate_indistinguishable")
                                       for end in ("", "_low", "_high")] + ["rating", "rating_low", "rating_high"]


def csv_row(r: dict) -> dict:
    row = {k: r[k] for k in ("variant", "label", "base", "baseline", "role", "votes")}
    row.update(r["counts"] or {})
    for key in ("preferred", "tied", "baseline_preferred", "indistinguishable"):
        if r["rates"]:
            row[f"rate_{key}"] = r["rates"][key]
            row[f"rate_{key}_low"], row[f"rate_{key}_high"] = r["intervals"][key]
    row["rating"], (row["rating_low"], row["rating_high"]) = r["rating"], r["rating_interval"]
    return row


def write_results(shown: dict, out: Path) -> dict[str, Path]:
    """results.json (the summary as `python -m demo votes --json` prints it) and results.csv (one row a variant)."""
    paths = {"json": out / "blind_results.json", "csv": out / "blind_results.csv"}
    paths["json"].write_text(json.dumps(shown, indent=2), encoding="utf-8")
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, CSV_FIELDS)
        writer.writeheader()
        for r in shown["variants"]:
            writer.writerow(csv_row(r))
    return paths
