"""The Blind test tab: two anonymous answers to one prompt, one vote, then the reveal; the results so far;
and the /battle and /vote endpoints over the same BlindTest. The results' text and files are
demo.blind.results_view's."""

from __future__ import annotations

import hashlib
import json
import random
import threading
from pathlib import Path
from typing import Any, AsyncIterator

import gradio as gr

from demo.blind import vote_chart
from demo.blind.battle import BlindTest
from demo.blind.results_view import (CSV_FIELDS, HEADERS, csv_row, summary_markdown, table_rows, view_html,
                                     write_results)
from demo.blind.durable import open_store, storage_line
from demo.blind.votes import votes_path
from demo.config import REPO_ROOT
from demo.errors import ArenaError
from demo.reports import report, scratch
from demo.reports.escaping import markdown_inline
from demo.running.runner import Arena
from demo.ui import offpool, routes
from demo.ui.clients import address_of, client_of, session_of

# The results' names stay importable from here too.
__all__ = ["BlindTab", "CSV_FIELDS", "HEADERS", "build_tab", "csv_row", "endpoints", "load_prompts",
           "open_blind_test", "reveal_markdown", "session_of", "summary_markdown", "table_rows", "write_results"]

PROMPTS_FILE = REPO_ROOT / "assets" / "blind_prompts.json"
RESULTS_PATH, FILES_PATH = "/blind/results", "/blind/files"
CHART = "blind_test.png"
MEDIA_TYPES = {".png": "image/png", ".json": "application/json", ".csv": "text/csv; charset=utf-8"}
CHOICES = (("a", "A is better"), ("b", "B is better"), ("tie", "Tie"), ("both_bad", "Both are bad"))

# Nothing here may name a variant: this text is in the page before the vote.
INTRO = """Can you tell a quantized model's answer from the full-precision baseline's? Ask something (or draw a
prompt), read the two answers and vote. The server picks the pair: the baseline and one of its quantized
variants, in random order, both sampled with the same settings and seed. Both answers appear together once both are complete,
with no names, timings or sizes until you have voted."""
WAITING = "Generating both answers… they appear together when both are complete."
VOTED = "**Vote recorded.** Ask again for a new pair."
READY = "Read both answers, then vote. Which is which is revealed after your vote."
RESULTS_NOTE = """**How to read this.** Each row is one quantized variant against its baseline. *Tie* counts
"tie" and "both are bad" votes. *Indistinguishable* = quantized answer preferred + tie: how often the quantized
answer did at least as well. Intervals are 95% Wilson score intervals, so they stay honest with few votes:
3 votes of 3 read 100% (44–100%), not 100–100%. *Rating* is a Bradley-Terry fit (ties as half a win, one
imagined tie per variant to keep it finite) in Elo points with the baseline at 0: −100 means the baseline is
preferred about 64% of the time; its interval is the Wilson interval of the variant's score share against the
baseline, in the same points. Few votes mean wide intervals: read the vote counts first. Votes that look
scripted (many sessions from one address, or one prompt asked over and over from one address, within an hour)
are counted apart, above, and left out of every figure here; the export keeps them, with the reason."""


def load_prompts(path: Path = PROMPTS_FILE) -> list[str]:
    return list(json.loads(path.read_text(encoding="utf-8"))["prompts"])


def build_tab(arena: Arena, blind: BlindTest | None = None) -> BlindTab:
    """The tab's components and events (inside a gr.Tab), and the /battle and /vote endpoints, over one BlindTest
    (by default over the configured votes database); returns the tab, whose routes() serve its Results view."""
    if blind is None:
        blind = open_blind_test(arena)
    tab = BlindTab(arena, blind)
    tab.wire()
    return tab


def open_blind_test(arena: Arena) -> BlindTest:
    """A BlindTest over the configured votes database, journaled to the persistent folder where one is mounted
    (demo.blind.durable)."""
    return BlindTest(arena, open_store(votes_path(arena.config)))


class BlindTab:
    """The Blind test tab's components and handlers: the Vote tab (ask, two answers, vote, the reveal) and
    the Results tab (summary, chart, table, files), over one BlindTest."""

    def __init__(self, arena: Arena, blind: BlindTest):
        self.blind = blind
        self.prompts = load_prompts()
        bases = [(arena.config.bases[b].label, b) for b in blind.bases()]
        with gr.Tabs(elem_id="blind-tabs"):
            with gr.Tab("Vote", id="blind-vote-tab", elem_id="blind-vote"):
                self._build_vote(bases)
            with gr.Tab("Results", id="blind-results-tab", elem_id="blind-results") as self.results_tab:
                self._build_results()
        self._shown_lock = threading.Lock()
        self._view: tuple[tuple, routes.Cached] | None = None  # (vote mark, battle and vote counts) -> the view
        self._files: tuple[tuple, str] | None = None  # vote mark -> the version of its files
        self._versions: dict[str, dict[str, routes.Cached]] = {}  # version -> its files by name, the two newest

    def _build_vote(self, bases: list[tuple[str, str]]) -> None:
        gr.Markdown(INTRO)
        with gr.Row():
            self.prompt = gr.Textbox(label="Your question", lines=2, placeholder="Ask something…",
                                     elem_id="blind-prompt", scale=4)
            self.base = gr.Dropdown(bases, value=bases[0][1] if bases else None, label="Model",
                                    visible=len(bases) > 1, scale=1)
        with gr.Row():
            self.draw = gr.Button("Draw a prompt", elem_id="blind-draw")
            self.start = gr.Button("Get two answers", variant="primary", elem_id="blind-start")
        self.status = gr.Markdown(elem_id="blind-status")
        with gr.Row(visible=False, elem_id="blind-answers") as self.answers:
            self.answer_a = gr.Textbox(label="Answer A", lines=8, max_lines=20, interactive=False,
                                       elem_id="blind-a")
            self.answer_b = gr.Textbox(label="Answer B", lines=8, max_lines=20, interactive=False,
                                       elem_id="blind-b")
        with gr.Row():
            self.buttons = [gr.Button(text, interactive=False, elem_id=f"blind-vote-{choice}")
                            for choice, text in CHOICES]
        self.revealed = gr.Markdown(elem_id="blind-reveal")
        self.battle_id = gr.State(None)  # kept on the server: the page never holds the id

    def _build_results(self) -> None:
        """One HTML view (summary, chart, table, download links), fetched by the browser from a plain route:
        a Refresh costs the server a cached lookup, not a Gradio event (demo.ui.routes)."""
        self.refresh = gr.Button("Refresh", size="sm", elem_id="blind-refresh")
        self.view = gr.HTML(elem_id="blind-results-view")
        gr.Markdown(RESULTS_NOTE, elem_classes=["small-print"])
        gr.Markdown(storage_line(self.blind.store), elem_classes=["small-print"], elem_id="blind-storage")

    def wire(self) -> None:
        """The events and the two endpoints. None is held back by Gradio (concurrency_limit=None): the arena
        admits and orders the generations, and votes and results touch only the database."""
        buttons = self.buttons
        idle = {self.revealed: "", self.answers: gr.update(visible=False), self.status: WAITING,
                **{button: gr.update(interactive=False) for button in buttons}}
        self.draw.click(self.on_draw, None, self.prompt, queue=False, api_visibility="undocumented")
        self.start.click(lambda: idle, None, [self.revealed, self.answers, self.status, *buttons], queue=False,
                         api_visibility="undocumented").then(
            self.on_start, [self.prompt, self.base],
            [self.battle_id, self.answer_a, self.answer_b, self.answers, self.status, *buttons],
            concurrency_limit=None, api_visibility="undocumented", show_progress_on=[self.status],
        ).failure(lambda: "", None, self.status, queue=False, api_visibility="undocumented")  # the error says why
        refresh = routes.fetch_js(RESULTS_PATH)  # in the browser: no server function, no queue
        for button, (choice, _) in zip(buttons, CHOICES):
            button.click(self.on_vote, [gr.State(choice), self.battle_id],
                         [self.battle_id, self.revealed, self.status, *buttons],
                         concurrency_limit=None, api_visibility="undocumented").success(
                None, None, self.view, js=refresh, queue=False, api_visibility="private")
        self.refresh.click(None, None, self.view, js=refresh, queue=False, api_visibility="private")
        self.results_tab.select(None, None, self.view, js=refresh, queue=False, api_visibility="private")
        battle, vote = endpoints(self.blind)
        gr.api(battle, api_name="battle", concurrency_limit=None)
        gr.api(vote, api_name="vote", concurrency_limit=None)

    def on_draw(self) -> str:
        return random.choice(self.prompts)

    async def on_start(self, prompt_text: str, base_id: str | None, request: gr.Request):
        """The battle runs on a thread of its own, awaited here on the event loop (demo.ui.offpool): while it
        waits for the device the status line says how many turns are ahead; then both answers at once. A page
        that goes away ends its battle unissued (out of the line, or after the generation under way)."""
        work = battle_work(self.blind, prompt_text, base_id, request)
        try:
            async for changed, ahead in work.updates():
                if changed:
                    yield {self.status: f"{WAITING} Waiting for the device: {ahead} ahead of this." if ahead
                           else WAITING}
                else:
                    yield gr.skip()  # so that Gradio notices a page that has gone
            issued = await work.outcome()
        except ArenaError as exc:
            raise gr.Error(str(exc)) from None
        finally:
            work.stop.set()  # a page gone: the battle leaves the line, or ends after the generation under way
        yield {self.battle_id: issued["battle"], self.answer_a: _shown_answer(issued["a"]),
               self.answer_b: _shown_answer(issued["b"]), self.answers: gr.update(visible=True),
               self.status: READY, **{button: gr.update(interactive=True) for button in self.buttons}}

    def on_vote(self, choice: str, current: str | None, request: gr.Request):
        if not current:
            raise gr.Error("ask for two answers first, then vote on them")
        try:
            address = address_of(request, self.blind.arena.config.proxies)
            shown = self.blind.vote(current, choice, session_of(request), address)
        except ArenaError as exc:
            raise gr.Error(str(exc)) from None
        return {self.battle_id: None, self.revealed: reveal_markdown(shown), self.status: VOTED,
                **{button: gr.update(interactive=False) for button in self.buttons}}

    def routes(self) -> list:
        """GET /gradio_api/arena/blind/results (the view) and /gradio_api/arena/blind/files/{version}/{name} (its
        chart and files)."""
        return [routes.view_route(RESULTS_PATH, self.results_view), routes.file_route(FILES_PATH, self.results_file)]

    def results_view(self) -> routes.Cached:
        """The view as it stands: rendered again only when a vote or a battle has been added, shared by every
        viewer in between."""
        mark, shown = self.blind.marked_results()
        counts = self.blind.store.counts()
        with self._shown_lock:  # viewers arriving while it renders wait and share it
            if self._view is None or self._view[0] != (mark, counts):
                version = self._files_version(mark, shown)
                url, files = routes.relative_url(f"{FILES_PATH}/{version}/"), self._versions[version]
                html = view_html(shown, counts, url + CHART if CHART in files else None,
                                 {name: url + name for name in files if name != CHART})
                self._view = ((mark, counts), routes.Cached(html.encode("utf-8"), "text/html; charset=utf-8"))
            return self._view[1]

    def results_file(self, version: str, name: str) -> routes.Cached | None:
        with self._shown_lock:
            return self._versions.get(version, {}).get(name)

    def _files_version(self, mark: tuple, shown: dict) -> str:
        """The chart and the JSON and CSV files for this vote mark, drawn and written once per new vote; their
        version (in their URL) is a digest of their contents, so a URL always names the same bytes (the browser
        keeps them), across restarts too. The two newest versions are kept: a page that read the view just
        before a vote still gets its chart."""
        if self._files is None or self._files[0] != mark:
            out = scratch.folder("blind-results-")
            written = {p.name: p for p in write_results(shown, out).values()}
            chart = vote_chart.write_chart(shown, out / CHART)
            if chart is not None:
                written[CHART] = chart
            files = {name: routes.Cached(path.read_bytes(), MEDIA_TYPES[path.suffix])
                     for name, path in sorted(written.items())}
            version = hashlib.blake2b(b"".join(f.body for f in files.values()), digest_size=10).hexdigest()
            self._versions = {**dict(list(self._versions.items())[-1:]), version: files}
            self._files = (mark, version)
        return self._files[1]


def battle_work(blind: BlindTest, prompt: str, base: str | None, request: gr.Request | None) -> offpool.Work:
    """A battle for this request's client, on a thread of its own (the wait holds none of Gradio's threads): it
    reports its turns ahead, and its `stop` ends it unissued."""
    proxies = blind.arena.config.proxies
    session, address, client = session_of(request), address_of(request, proxies), client_of(request, proxies)
    return offpool.Work(lambda work: blind.battle(prompt, base, session, address, client, work.stop, work.report),
                        name="battle")


def endpoints(blind: BlindTest):
    """The /battle and /vote API functions: gradio reads their names, signatures (the gr.Request parameter
    included) and docstrings, so they stay plain functions."""

    async def battle(prompt: str, base: str = "", request: gr.Request = None) -> AsyncIterator[dict]:
        """Answer a prompt with a base model's baseline and one of its variants, drawn by the server, in random
        order: the last output is {"battle": id, "a": answer, "b": answer}, with nothing that tells them apart;
        before it, while the battle waits for the device, {"ahead": turns ahead of it} every half second.
        Vote with /vote from the same client (session). A client that goes away ends its battle unissued."""
        work = battle_work(blind, prompt, base or None, request)
        try:
            async for _, ahead in work.updates():  # every half second: so that Gradio notices a client gone
                if ahead is not None:
                    yield {"ahead": ahead}
            yield await work.outcome()
        except ArenaError as exc:
            raise gr.Error(str(exc)) from None
        finally:
            work.stop.set()

    def vote(battle: str, choice: str, request: gr.Request = None) -> dict:
        """Vote on a battle this client was issued: choice "a", "b", "tie" or "both_bad"; returns both sides
        named, with their figures and fidelity. Each battle takes one vote."""
        try:
            return blind.vote(battle, choice, session_of(request), address_of(request, blind.arena.config.proxies))
        except ArenaError as exc:
            raise gr.Error(str(exc)) from None

    return battle, vote


def _shown_answer(text: str) -> str:
    return text if text.strip() else "(an empty answer: the model stopped at once)"


def reveal_markdown(shown: dict[str, Any]) -> str:
    """Both sides named, their figures side by side, and which one the vote preferred. What the records and
    settings say is shown literally."""
    a, b = shown["a"], shown["b"]
    said = dict(CHOICES)[shown["choice"]]

    def name(side: str, record: dict) -> str:
        role = " — the baseline" if shown["baseline"] == side else ""
        return f"{markdown_inline(record['label'])} (`{record['variant']}`){role}"

    def method(record: dict) -> str:
        bits = f" · {record['bits']}-bit" if record.get("bits") else ""
        return f"{record['method']}{bits} · {record['runtime']}"

    rows = [("variant", name("a", a), name("b", b)), ("method", method(a), method(b))]
    figures_a, figures_b = dict(report.figures(a)), dict(report.figures(b))
    rows += [(label, markdown_inline(figures_a[label]), markdown_inline(figures_b.get(label, "–")))
             for label in figures_a if label != "load"]
    table = "\n".join(f"| {label} | {x} | {y} |" for label, x, y in rows)
    settings = ", ".join(f"{k}={v}" for k, v in shown["settings"].items())
    return (f"### Revealed\nYou voted **{said}**. Answer A was **{name('a', a)}**; Answer B was "
            f"**{name('b', b)}**.\n\n| | Answer A | Answer B |\n|---|---|---|\n{table}\n\n"
            f"<small>Settings: {markdown_inline(settings)}, the same for both. Figures from this run on "
            f"{markdown_inline(str(a.get('device') or ''))}; the teacher-forced line compares the baseline's "
            "answer through each model (see the Compare tab's guide).</small>")
