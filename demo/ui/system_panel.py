"""The System panel: the device, this process's memory, the machine's RAM, VRAM, and which variants are loaded,
refreshed every few seconds while the page is open."""

from __future__ import annotations

import gradio as gr

from demo.measuring import system
from demo.running.runner import Arena
from demo.ui import zerogpu_view

REFRESH_S = 2.0
NOTE = ("<small>USS counts the pages only this process holds (freed if it exits). RSS also counts file-backed "
        "pages it has mapped, such as memory-mapped weights and libraries, which the machine figure leaves out as "
        "reclaimable cache; so RSS can exceed the machine's RAM in use. The budget is how much model weights the "
        "app keeps loaded between comparisons (least recently used variants are unloaded past it), not a cap on "
        "the process's RAM.</small>")


def build(arena: Arena, page: gr.Blocks) -> None:
    """The panel, filled when the page loads and on a timer; it reads figures only (queue=False)."""
    with gr.Accordion("System", open=True):
        shown = gr.Markdown(elem_id="system")
    timer = gr.Timer(REFRESH_S)
    shared = system.SharedSnapshot(max_age_s=REFRESH_S)  # every viewer's timer reads the same figures

    def on_tick() -> str:
        return system_markdown(arena, shared)

    timer.tick(on_tick, None, shown, queue=False, api_visibility="undocumented", show_progress="hidden")
    page.load(on_tick, None, shown, queue=False, api_visibility="undocumented")


def system_markdown(arena: Arena, shared: system.SharedSnapshot | None = None) -> str:
    device = arena.environment()["device_name"]
    snap = shared.get(device) if shared is not None else system.snapshot(device)
    manager = arena.manager
    process = (f"**This process:** {snap.process_uss_mib:,.0f} MiB of its own memory (USS) · "
               f"{snap.process_rss_mib:,.0f} MiB resident (RSS)" if snap.process_uss_mib is not None
               else f"**This process:** {snap.process_rss_mib:,.0f} MiB resident (RSS)")
    lines = [f"**Device:** {snap.device}",
             process,
             f"**Machine RAM in use:** {snap.ram_used_mib:,.0f} of {snap.ram_total_mib:,.0f} MiB"]
    if snap.gpu:
        lines.append(f"**VRAM used (device-wide, NVML):** {snap.gpu.used_mib:,.0f} / {snap.gpu.total_mib:,.0f} MiB "
                     f"· driver {snap.gpu.driver}")
    loaded = manager.loaded_ids()
    if zerogpu_view.is_zerogpu(arena):  # everything placed at start-up, no budget
        lines.append(zerogpu_view.loaded_line(arena))
    else:
        lines.append(f"**Loaded variants:** {', '.join(loaded) if loaded else 'none yet (loaded on first use)'} · "
                     f"weights {manager.resident_mib():,.0f} of a {manager.budget_mib:,.0f} MiB budget")
    lines.append(NOTE)
    return "  \n".join(lines)
