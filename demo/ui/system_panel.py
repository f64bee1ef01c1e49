"""The System panel: the device, this process's memory, the machine's RAM, VRAM, and which variants are loaded,
refreshed every few seconds while the page is open. Every open page polls it, so the page fetches it from a
plain route (demo.ui.routes), not through a Gradio event: one rendering a period, shared by every viewer."""

from __future__ import annotations

import time
from typing import Callable

import gradio as gr
from markdown_it import MarkdownIt
from starlette.routing import Route

from demo.blind.open_battles import HOLD_S
from demo.measuring import system
from demo.running.runner import Arena
from demo.ui import routes, zerogpu_view

PATH = "/system"

REFRESH_S = 2.0
HELD = ("<p><em>These figures hold still while a blind-test battle is under way or awaits its vote (at most "
        f"{HOLD_S / 60:.0f} minutes): what is loaded would say which variant the hidden one is.</em></p>")
NOTE = ("<small>USS counts the pages only this process holds (freed if it exits). RSS also counts file-backed "
        "pages it has mapped, such as memory-mapped weights and libraries, which the machine figure leaves out as "
        "reclaimable cache; so RSS can exceed the machine's RAM in use. The budget is how much model weights the "
        "app keeps loaded between comparisons (least recently used variants are unloaded past it), not a cap on "
        "the process's RAM.</small>")


def build(arena: Arena, page: gr.Blocks, holding_since: Callable[[], float | None] | None = None) -> Route:
    """The panel, filled when the page loads and on a timer, both in the browser (no server function, no queue);
    returns the route they fetch. `holding_since` (the blind test's open battles) says since when the panel must
    show what it showed before (PanelView)."""
    with gr.Accordion("System", open=True):
        shown = gr.HTML(elem_id="system")
    timer = gr.Timer(REFRESH_S)
    fetch = routes.fetch_js(PATH)
    timer.tick(None, None, shown, js=fetch, queue=False, api_visibility="private", show_progress="hidden")
    page.load(None, None, shown, js=fetch, queue=False, api_visibility="private")
    return routes.view_route(PATH, PanelView(arena, REFRESH_S / 2, holding_since=holding_since))


class PanelView:
    """The panel as HTML, rendered at most once per `max_age_s` for every viewer (its snapshot is shared too):
    the same sharing as the snapshot's (system.SharedSnapshot), over the rendering.

    While a blind-test battle is under way or awaits its vote (`holding_since` gives when the oldest began), the
    panel holds still: it shows the last rendering from before that battle began, or nothing but why. A battle
    loads its challenger if it is not loaded yet, and on a quiet arena that one new name (and the memory it
    adds) would name the hidden challenger on the page with the vote buttons (demo.blind.open_battles)."""

    def __init__(self, arena: Arena, max_age_s: float, clock=time.monotonic,
                 holding_since: Callable[[], float | None] | None = None):
        self.arena, self.clock, self.holding_since = arena, clock, holding_since or (lambda: None)
        self._shared = system.SharedSnapshot(max_age_s=REFRESH_S)
        self._rendered = system.SharedSnapshot(max_age_s, take=lambda _: self._render(), clock=clock)
        self._live: tuple[float, str] | None = None  # (clock() when rendered, the HTML) of the last live rendering

    def __call__(self) -> routes.Cached:
        since = self.holding_since()  # asked on every call: a live rendering shared for max_age_s must not
        if since is None:  # outlast the start of a battle
            return self._rendered.get()
        live = self._live
        html = live[1] + HELD + NOTE if live is not None and live[0] < since else HELD
        return routes.Cached(html.encode("utf-8"), "text/html; charset=utf-8")

    def _render(self) -> routes.Cached:
        """The live panel (raw HTML off: the figures name variants from the models file; the note is the panel's
        own HTML), kept as the last live rendering."""
        started = self.clock()
        html = MarkdownIt("commonmark", {"html": False}).render(system_markdown(self.arena, self._shared, note=False))
        self._live = (started, html)
        return routes.Cached((html + NOTE).encode("utf-8"), "text/html; charset=utf-8")


def system_markdown(arena: Arena, shared: system.SharedSnapshot | None = None, note: bool = True) -> str:
    device = arena.environment()["device_name"]
    snap = shared.get(device) if shared is not None else system.snapshot(device)
    manager = arena.manager
    process = (f"**This process:** {snap.process_uss_mib:,.0f} MiB of its own memory (USS) · "
               f"{snap.process_rss_mib:,.0f} MiB resident (RSS)" if snap.process_uss_mib is not None
               else f"**This process:** {snap.process_rss_mib:,.0f} MiB resident (RSS)")
    lines = [f"**Device:** {snap.device}", process]
    if snap.worker_processes:  # each variant's runtime in a process of its own (demo.running.runtime_process)
        uss = f" · {snap.workers_uss_mib:,.0f} MiB of their own memory (USS)" if snap.workers_uss_mib is not None else ""
        lines.append(f"**Runtime processes:** {snap.worker_processes} (a loaded variant's runtime, or a GPU worker, "
                     f"each in its own){uss}")
    lines.append(f"**Machine RAM in use:** {snap.ram_used_mib:,.0f} of {snap.ram_total_mib:,.0f} MiB")
    if snap.gpu:
        lines.append(f"**VRAM used (device-wide, NVML):** {snap.gpu.used_mib:,.0f} / {snap.gpu.total_mib:,.0f} MiB "
                     f"· driver {snap.gpu.driver}")
    loaded = in_file_order(arena, manager.loaded_ids())
    if zerogpu_view.is_zerogpu(arena):  # everything placed at start-up, no budget
        lines.append(zerogpu_view.loaded_line(arena))
    else:
        lines.append(f"**Loaded variants:** {', '.join(loaded) if loaded else 'none yet (loaded on first use)'} · "
                     f"weights {manager.resident_mib():,.0f} of a {manager.budget_mib:,.0f} MiB budget")
    if note:
        lines.append(NOTE)
    return "  \n".join(lines)


def in_file_order(arena: Arena, variant_ids: list[str]) -> list[str]:
    """`variant_ids` in the models file's order, never in the order of use: the variant used last is a blind
    battle's hidden challenger (its fidelity is scored last), and this panel is on the page that votes."""
    known = [v for v in arena.config.variants if v in set(variant_ids)]
    return known + sorted(set(variant_ids) - set(known))
