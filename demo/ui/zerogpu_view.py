"""What the page says in ZeroGPU mode (demo.running.zerogpu): where the runs happen, that every variant was placed at
start-up with no memory budget, and how much GPU time a run will ask for."""

from __future__ import annotations

import gradio as gr

from demo.errors import ArenaError
from demo.running.runner import Arena


def is_zerogpu(arena: Arena) -> bool:
    return arena.gpu_time is not None


def notice_markdown(arena: Arena) -> str:
    """The page's line on where it runs (empty outside ZeroGPU mode)."""
    if not is_zerogpu(arena):
        return ""
    where = ("**Emulated ZeroGPU:** each run happens in a worker process forked from this app, on its CPU, as a "
             "ZeroGPU Space runs it on a GPU." if arena.mode == "emulated" else
             "**ZeroGPU:** each run happens on a shared ZeroGPU slice, in a worker process that holds the GPU for the "
             "time the run asks for, counted against your daily GPU quota.")
    failed = "".join(f" {v} could not be placed ({why})." for v, why in arena.placement.failed.items())
    if arena.gpu_time.xlarge:  # spaces switches a Space whose packed weights pass its threshold to a whole card
        failed = (" These weights make this Space `xlarge` on ZeroGPU: a whole GPU, each run counted twice against "
                  "the quota." + failed)
    return (f"{where} Every variant was placed when the app started, so there is no memory budget or eviction "
            f"here; a column's load time is that placement. A run may take at most {arena.gpu_time.cap_s:.0f} s "
            f"of GPU quota.{failed}")


def gpu_time_text(arena: Arena, variant_ids, max_new_tokens) -> str:
    """"This run will take about N s of GPU quota", or why it cannot run."""
    if not is_zerogpu(arena):
        return ""
    try:
        settings = arena.settings(max_new_tokens=int(max_new_tokens))
        ids = [v for v in (variant_ids or []) if v in arena.config.variants]
        if not ids:
            return ""
        seconds = arena.compare_gpu_s(ids, settings)
        arena.gpu_time.check(seconds)
    except ArenaError as exc:
        return f"**{exc}**"
    return (f"This run will take about **{arena.gpu_time.charged_s(seconds):.0f} s** of GPU quota "
            f"(at most {arena.gpu_time.cap_s:.0f} s).")


def gpu_time_line(arena: Arena, variants: gr.CheckboxGroup, max_new: gr.Slider) -> None:
    """The line under Run, kept up to date as the variants and new tokens change (nothing outside ZeroGPU mode)."""
    if not is_zerogpu(arena):
        return
    line = gr.Markdown(gpu_time_text(arena, variants.value, max_new.value), elem_id="gpu-time",
                       elem_classes=["small-print"])
    for control in (variants, max_new):
        control.change(lambda ids, n: gpu_time_text(arena, ids, n), [variants, max_new], line, queue=False,
                       api_visibility="undocumented", show_progress="hidden")


def loaded_line(arena: Arena) -> str:
    """The System panel's line on the loaded variants in ZeroGPU mode."""
    placed = arena.placement
    return (f"**Placed at start-up ({arena.execution}):** {', '.join(placed.load_ms) or 'none'} · weights "
            f"{sum(placed.weights_mib.values()):,.0f} MiB of a {placed.slice_mib:,.0f} MiB slice · no memory budget "
            "or eviction here")
