"""The Gradio page: the header, one tab per module (Compare, Evaluate, Blind test), the System panel, and
the theme, CSS and JS that go to launch()."""

from __future__ import annotations

from typing import Any

import gradio as gr

from demo.running.runner import Arena
from demo.ui import blind, clients, compare, disk, evaluate, summary, system_panel, zerogpu_view

HOW_TO_READ = """
**How to read the figures.** Variants run one after another under one device lock, with the same
settings (greedy unless you ask to sample with a seed) and the chat template applied.
*Time to first token* runs from the call to `generate` to the first new token; *decode* is
(new tokens − 1) / (last token time − first token time), so an answer of 1 token has no decode rate.
*Load* is shown cold (first load, including a 2-token warm-up) or cached. *Weights* is the bytes the
weights occupy as the runtime stores them after the warm-up: packed quantized tensors at their packed size
with their scales, bitsandbytes' quantization state included (4-bit absmax and, with double quantization,
its nested state; LLM.int8's row scales), which `get_memory_footprint()` leaves out; llama.cpp's own
model size for GGUF. *Peak memory* is weights plus the growth during the run: on CUDA from
`max_memory_allocated`, on CPU from process RSS sampled every 5 ms, which is approximate (mmap and
allocator caching).
**Slower but smaller is expected:** bitsandbytes dequantizes on the fly, so at batch 1 its int8 and 4-bit
variants are often slower than fp16 while holding a fraction of the memory. On a CPU, timings are for
smoke tests, not verdicts.
"""

# How the variant picker groups variants: by family, the baseline first (models.yaml order within a family).
FAMILIES = {"fp32": "transformers", "fp16": "transformers", "bf16": "transformers", "bnb-int8": "bitsandbytes",
            "bnb-4bit": "bitsandbytes", "gptq": "GPTQ", "awq": "AWQ", "torchao": "torchao", "hqq": "HQQ",
            "autoround": "AutoRound", "compressed-tensors": "compressed-tensors", "gguf": "llama.cpp", "remote": "remote"}


def variant_choices(config) -> list[tuple[str, str]]:
    """(label, id) for the picker: baselines first, then grouped by family, each label led by its family."""
    order = list(dict.fromkeys(FAMILIES.values()))
    baselines = {b.baseline for b in config.bases.values()}

    def key(item):
        index, variant = item
        family = FAMILIES.get(variant.method, variant.method)
        return (variant.id not in baselines, order.index(family) if family in order else len(order), index)

    def label(variant) -> str:
        family, text = FAMILIES.get(variant.method, variant.method), variant.label or variant.id
        return f"{text if text.lower().startswith(family.lower()) else f'{family} · {text}'} ({variant.id})"

    return [(label(v), v.id) for _, v in sorted(enumerate(config.variants.values()), key=key)]


def build_demo(arena: Arena) -> gr.Blocks:
    """The whole page; each tab's handlers translate ArenaError into gr.Error and nothing else."""
    clients.serve_peers_as_they_are()  # who a client is: the arena reads the proxy headers itself
    disk.remove_abandoned_scratch()
    choices = variant_choices(arena.config)
    with gr.Blocks(title="Quantization Arena") as page:
        gr.Markdown("# Quantization Arena\nOne prompt, several quantized variants of the same model, side by side: "
                    "their answers, latency and memory, and how far each strays from the full-precision baseline.")
        if zerogpu_view.is_zerogpu(arena):
            gr.Markdown(zerogpu_view.notice_markdown(arena), elem_id="zerogpu-notice")
        notes = [f"**{b.label}.** {b.note}" for b in arena.config.bases.values() if b.note]
        if notes:  # closed by default: the controls stay at the top of the page
            with gr.Accordion("About the model", open=False):
                gr.Markdown("\n\n".join(notes), elem_classes=["small-print"])
        with gr.Tab("Compare", id="compare"):
            compare.build_tab(arena, choices)
        with gr.Tab("Evaluate", id="evaluate"):
            evaluate.build_tab(arena, choices)
        with gr.Tab("Blind test", id="blind", elem_id="blind"):
            blind_tab = blind.build_tab(arena)
        system_route = system_panel.build(arena, page, holding_since=blind_tab.blind.open.holding_since)
        gr.Markdown(HOW_TO_READ)
    page.arena_routes = [*blind_tab.routes(), system_route]  # launch_kwargs(page) hands them to the server
    page.arena_lifespan = disk.lifespan(page, arena.config.limits)  # and this: what it writes expires
    return page


CSS = """
.variant-col {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px;}
.variant-col table {font-size: 0.85em;}
.variant-divergence mark {background: #fde68a; color: #1f2937; padding: 0 1px;}
.variant-divergence pre {white-space: pre-wrap; word-break: break-word; max-height: 16em; overflow-y: auto;}
.small-print, .small-print p {font-size: 0.85em;}
/* Labels wrap between words only. Gradio's tables may break anywhere (word-break: break-word), which at three
   columns on a 1440-px screen split headers and figure names mid-word ("statu / s", "decod / e"); a word
   too long for its column widens the column (the table scrolls) instead. */
#summary-table th, #summary-table th *, #evaluate-table th, #evaluate-table th *, #blind-table th,
#blind-table th *, .variant-figures th, .variant-figures td {
  word-break: normal; overflow-wrap: normal; hyphens: manual;}
#summary-table table {font-size: 0.85em;}  /* whole words need room: all fourteen columns fit 1440 px */
/* The worst positions under a column: five columns of short figures in a third of the page. */
.per-token-worst th, .per-token-worst td {padding: 3px 5px; word-break: normal; overflow-wrap: normal;}
.per-token-worst td:nth-child(-n+3) {white-space: nowrap;}
input[type=checkbox]:focus-visible, input[type=checkbox]:checked:focus-visible {
  outline: 3px solid #1e1b4b; outline-offset: 2px;}
"""

# Runs once in the browser: Ctrl+Enter in the prompt runs, and charts get accessible names (Gradio
# offers no aria attributes; the observer re-applies them when a chart is drawn again).
PAGE_JS = """
() => {
  const names = %s;
  const apply = () => {
    for (const [id, name] of Object.entries(names)) {
      const el = document.getElementById(id);
      if (el && el.getAttribute('aria-label') !== name) {
        el.setAttribute('role', 'img');
        el.setAttribute('aria-label', name);
      }
    }
  };
  new MutationObserver(apply).observe(document.body, {childList: true, subtree: true});
  apply();
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey) && event.target.closest('#prompt')) {
      event.preventDefault();
      document.getElementById('run')?.click();
    }
  }, true);
}
""" % {**{chart[0]: chart[3] for chart in summary.CHARTS}, summary.KL_CHART_ID: summary.KL_CHART_NAME}

def theme() -> gr.themes.Base:
    """Soft, darkened where its text fell under WCAG's 4.5:1 contrast (white on primary_500 is 4.47:1)."""
    return gr.themes.Soft().set(
        button_primary_background_fill="*primary_600", button_primary_background_fill_hover="*primary_700",
        checkbox_label_background_fill_selected="*primary_600", block_label_text_color="*primary_700",
        block_title_text_color="*neutral_800", block_info_text_color="*neutral_600",
        body_text_color_subdued="*neutral_600", checkbox_border_color_focus="*primary_800",
    )


def launch_kwargs(page: gr.Blocks) -> dict[str, Any]:
    """Theme, CSS and JS go to launch() in Gradio 6; so do the page's own routes (demo.ui.routes), as routes of
    the server's FastAPI app, ahead of Gradio's."""
    return {"theme": theme(), "css": CSS, "js": PAGE_JS, "footer_links": ["api", "gradio"],
            "app_kwargs": {"routes": list(getattr(page, "arena_routes", [])),
                           **({"lifespan": page.arena_lifespan} if hasattr(page, "arena_lifespan") else {})}}
