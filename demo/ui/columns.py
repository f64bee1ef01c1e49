"""The Compare tab's columns while a comparison streams: each variant's heading, answer and figures, and what
its status says in words (the same words in the summary table)."""

from __future__ import annotations

import math
from html import escape

from demo.artifacts.sources import PRESS_QUANTIZE_NOW
from demo.measuring.shapes import RANDOM_WEIGHTS_NOTE
from demo.reports import report
from demo.reports.escaping import html_text
from demo.running.runner import Arena, VariantResult

# The streaming column's text reaches the page at most this often. Each page update costs server CPU that
# a CPU generation shares; every 0.1 s it cost ~20% of decode speed on 2 cores, every 0.4 s under 2%.
TEXT_INTERVAL_S = 0.4

# The same words in a variant's column and in the summary table.
STATUS_TEXT = {
    "queued": "queued",
    "waiting": "waiting for the device: another request is using it",
    "loading": "loading weights…",
    "reading": "reading the prompt…",
    "generating": "generating…",
    "scoring": "scoring fidelity…",
    "done": "done",
    "stopped": "stopped",
    "error": "not available",
}
FINISHED = ("done", "stopped", "error")

# The per-token view's fixed KL scale (nats), log-spaced: (upper bound, background, text colour). The shades are
# ColorBrewer's sequential YlOrBr, which steps in lightness, so they read apart with any colour vision and in grey;
# each text colour is at least 4.5:1 on its shade. A non-finite KL is black with a dashed outline.
KL_SHADES = ((0.001, "#ffffe5", "#1f2937"), (0.01, "#fee391", "#1f2937"), (0.1, "#fe9929", "#1f2937"),
             (1.0, "#993404", "#ffffff"), (math.inf, "#4a1a04", "#ffffff"))
KL_SHADE_LABELS = ("< 0.001", "0.001–0.01", "0.01–0.1", "0.1–1", "≥ 1")
NONFINITE_STYLE = "background:#000000;color:#ffffff;outline:1px dashed #6b7280"
WORST_SHOWN = 5  # the worst positions listed in words, so the view reads without colour
# Line breaks and tabs inside a token: a visible mark, then the break itself so the answer keeps its shape.
_VISIBLE_WHITESPACE = {"\n": "↵\n", "\r": "␍", "\t": "⇥\t"}


def status_text(rec: dict) -> str:
    """A record's status in words, as its column and the summary show it."""
    status = rec.get("status")
    words = STATUS_TEXT.get(status, str(status))
    if status == "error" and rec.get("crashed"):
        words = "crashed (its own process; the others are unaffected)"
    if status == "waiting" and rec.get("queue_ahead"):
        ahead = rec["queue_ahead"]
        words += f" ({ahead} request{'s' if ahead != 1 else ''} ahead of this one)"
    elif status == "reading" and rec.get("prompt_tokens"):
        words = f"reading the prompt ({rec['prompt_tokens']:,} tokens)…"
    if rec.get("truncated") and status in ("done", "stopped"):
        words += f" · cut at {rec['new_tokens']} tokens"
    return words


class ColumnsView:
    """What the streaming columns show, as the streaming event's values: each slot's heading, answer and
    figures. A snapshot changes the streaming column's status and, at most every TEXT_INTERVAL_S, its text;
    a column's figures are set once, when it ends. Every update carries all the values as plain strings:
    Gradio sends the browser only what differs from the last update, whereas an "unchanged" marker would
    make it rebuild that component on every update (about 0.7 ms each, on the CPU the model runs on)."""

    def __init__(self, arena: Arena, n_slots: int):
        self.arena = arena
        self.values = [["", "", ""] for _ in range(n_slots)]  # per slot: heading, answer, figures
        self.text_at_s: dict[int, float] = {}  # when each column's text was last sent
        self.finished: set[int] = set()
        self.quantize_offered = arena.config.quantize_now_offered()
        self.started = False  # start() has shown the first snapshot

    def start(self, results: list[VariantResult]) -> list[str]:
        """The first snapshot: the chosen columns' headings, empty answers."""
        for i, result in enumerate(results[:len(self.values)]):
            self.values[i] = [head_markdown(self.arena, _status_fields(result)), "", ""]
        self.started = True
        return self.flat()

    def step(self, results: list[VariantResult], now_s: float) -> list[str] | None:
        """The values after this snapshot, or None when the page would show nothing new."""
        changed = False
        for i, result in enumerate(results[:len(self.values)]):
            if i not in self.finished:
                changed |= self._update(i, result, now_s)
        return self.flat() if changed else None

    def _update(self, i: int, result: VariantResult, now_s: float) -> bool:
        slot, changed = self.values[i], False
        if result.status in FINISHED:
            rec = result.to_record()
            self.finished.add(i)
            slot[1:] = [answer_text(rec, self.quantize_offered), figures_markdown(rec)]
            head, changed = head_markdown(self.arena, rec), True
        else:
            if self._text_due(i, result, now_s):
                slot[1], self.text_at_s[i], changed = result.text, now_s, True
            head = head_markdown(self.arena, _status_fields(result))
        if head != slot[0]:
            slot[0], changed = head, True
        return changed

    def _text_due(self, i: int, result: VariantResult, now_s: float) -> bool:
        if result.text == self.values[i][1]:
            return False
        # the last tokens, and a column's first text, at once
        return result.status != "generating" or now_s - self.text_at_s.get(i, 0.0) >= TEXT_INTERVAL_S

    def final(self, records: list[dict]) -> list[str]:
        """Fidelity arrives after the last column: every column's heading and figures, once more."""
        for i, rec in enumerate(records[:len(self.values)]):
            self.values[i] = [head_markdown(self.arena, rec), answer_text(rec, self.quantize_offered),
                              figures_markdown(rec)]
        return self.flat()

    def flat(self) -> list[str]:
        return [value for slot in self.values for value in slot]


def _status_fields(result: VariantResult) -> dict:
    """The few fields a column's heading reads, without copying the whole record on every snapshot."""
    return {"variant": result.variant, "method": result.method, "bits": result.bits, "device": result.device,
            "status": result.status, "prompt_tokens": result.prompt_tokens, "new_tokens": result.new_tokens,
            "queue_ahead": getattr(result, "queue_ahead", None), "truncated": getattr(result, "truncated", False)}


def figures_markdown(rec: dict) -> str:
    """The column's figures, and how many positions have a KL that is not a number (left out of its mean)."""
    figures = report.figures_markdown(rec)
    nonfinite = (rec.get("fidelity") or {}).get("nonfinite_positions")
    if nonfinite:
        figures += f"\n| KL non-finite | {_positions_text(nonfinite)} non-finite (NaN or infinite), left out of " \
                   "the mean |"
    return figures


def _positions_text(count: int) -> str:
    return f"{count} position{'s' if count != 1 else ''}"


def answer_text(rec: dict, quantize_offered: bool = True) -> str:
    """The answer, or why there is none (without "press Quantize now" where the page does not offer it)."""
    if not rec.get("error"):
        return rec["text"]
    if rec.get("crashed"):  # what it said before its runtime died, then how it died
        return f"{rec['text']}\n\n— {rec['error']}" if rec.get("text") else rec["error"]
    error = rec["error"] if quantize_offered else rec["error"].replace(PRESS_QUANTIZE_NOW, "")
    return f"Not available — {error}"


def wants_quantize(rec: dict) -> bool:
    """Whether the variant could run once its quantized file is made."""
    return (rec.get("error") or "").startswith("not quantized")


def head_markdown(arena: Arena, rec: dict) -> str:
    variant = arena.config.variants[rec["variant"]]
    label = variant.label or variant.id
    device = rec.get("device") or "…"
    random = arena.config.bases[variant.base].random_weights  # said in every heading, from the first snapshot on
    return (f"### {label}\n`{rec['variant']}` · {rec['method']} · {rec['bits']}-bit · {device}  \n"
            + (f"**{RANDOM_WEIGHTS_NOTE}**  \n" if random else "") + f"**{status_text(rec)}**")


def divergence_html(arena: Arena, rec: dict, baseline_text: str | None) -> str:
    """Where this answer departs from the baseline's (marked, as literal text), then where it strays token by token;
    or why there is no comparison."""
    baseline = arena.config.base_of(rec["variant"]).baseline
    if rec["status"] != "done" or baseline is None or baseline == rec["variant"]:
        return ""
    if rec.get("fidelity") is None:
        return f"<p><em>Tick <code>{html_text(baseline)}</code> too to see how far this answer strays from " \
               "the baseline.</em></p>"
    return report.divergence_html(rec, baseline_text or "") + strays_html(rec["fidelity"])


def strays_html(fid: dict) -> str:
    """The baseline's answer token by token, each shaded by the KL there (its value in the title and data-kl), a
    legend, and the worst positions in words; "" without per-token figures. Drawn once, when the comparison ends."""
    per_token = fid.get("per_token") or []
    if not per_token:
        return ""
    notes = ["The baseline's answer, teacher-forced: each token shaded by KL(baseline ‖ this variant) at that "
             "position, in nats (hover a token for its value)."]
    if fid.get("kl_lower_bound_top_k"):
        notes.append(f"From the engine's top-{fid['kl_lower_bound_top_k']} log-probabilities only: each KL is a "
                     "lower bound, and a probability outside a top k shows as –.")
    if fid.get("nonfinite_positions"):
        notes.append(f"{_positions_text(fid['nonfinite_positions'])} non-finite (NaN or infinite KL), left out of "
                     "the mean; shown black with a dashed outline.")
    tokens = "".join(_token_span(t) for t in per_token)
    return ('<details class="per-token-kl"><summary>Where it strays (per-token KL)</summary>'
            f'<p class="per-token-note">{html_text(" ".join(notes))}</p>{_statistics_line(fid)}{_legend()}'
            '<div class="per-token-answer" style="white-space:pre-wrap;word-break:break-word;max-height:16em;'
            f'overflow-y:auto;line-height:1.7;font-family:var(--font-mono, monospace)">{tokens}</div>'
            f'{_worst_table(per_token)}</details>')


def _statistics_line(fid: dict) -> str:
    """The answer's KL distribution and Δp in one line (the Evaluate tab gives them over a longer text)."""
    stats = fid.get("statistics")
    if not stats or not stats.get("positions"):
        return ""
    kl, dp = stats["kl"], stats["delta_p"]

    def num(value, spec: str, scale: float = 1.0) -> str:
        return "–" if value is None else format(scale * value, spec)

    text = (f"Over {stats['positions']} positions: KL median {num(kl['median'], '.3g')}, 99 % "
            f"{num(kl['p99'], '.3g')}, max {num(kl['max'], '.3g')} nats · Δp of the baseline's token: mean "
            f"{num(dp['mean'], '+.2f', 100)} ± {num(dp['mean_uncertainty'], '.2f', 100)} %, RMS "
            f"{num(dp['rms'], '.2f', 100)} % · same top {num(stats['top1_agreement'], '.1f', 100)} ± "
            f"{num(stats['top1_agreement_uncertainty'], '.1f', 100)} %")
    return f'<p class="per-token-statistics">{html_text(text)}</p>'


def _token_span(token: dict) -> str:
    kl, position = token["kl_nats"], token["position"]
    if kl is None:
        style, title = NONFINITE_STYLE, f"position {position} · KL not a number ({token['kl_nonfinite']})"
        data = f'data-nonfinite="{escape(str(token["kl_nonfinite"]))}"'
    else:
        background, colour = next((b, c) for bound, b, c in KL_SHADES if kl < bound)
        style, title = f"background:{background};color:{colour}", f"position {position} · KL {kl:.3g} nats"
        data = f'data-kl="{kl!r}"'  # the record's value as it is, for anyone to check against the API
    return (f'<span class="kl-token" style="{style}" title="{escape(title)}" data-position="{int(position)}" {data}>'
            f"{_literal(token['token'])}</span>")


def _literal(text: str, one_line: bool = False) -> str:
    """A token as literal HTML text, line breaks and tabs marked (one_line: the marks only); a token that decodes to
    nothing as ∅."""
    if not text:
        return "∅"
    marked = "".join(_VISIBLE_WHITESPACE.get(c, c) for c in text)
    return html_text(marked.replace("\n", "").replace("\t", "") if one_line else marked)


def _legend() -> str:
    swatches = [f'<span style="background:{b};color:{c};padding:0 4px">{html_text(label)}</span>'
                for (_, b, c), label in zip(KL_SHADES, KL_SHADE_LABELS)]
    swatches.append(f'<span style="{NONFINITE_STYLE};padding:0 4px">non-finite</span>')
    return f'<p class="per-token-legend small-print">KL (nats): {" ".join(swatches)}</p>'


def _worst_table(per_token: list[dict]) -> str:
    """The WORST_SHOWN positions with the largest finite KL, with both models' top tokens and probabilities."""
    worst = sorted((t for t in per_token if t["kl_nats"] is not None), key=lambda t: -t["kl_nats"])[:WORST_SHOWN]
    if not worst:
        return ""
    rows = "".join(f"<tr><td>{t['position']}</td><td><code>{_literal(t['token'], one_line=True)}</code></td>"
                   f"<td>{t['kl_nats']:.3g}</td><td>{_top(t, 'baseline')}</td><td>{_top(t, 'variant')}</td></tr>"
                   for t in worst)
    # Inside its column at any width: the table scrolls sideways rather than spilling over the next column.
    return ('<div class="per-token-worst-frame" style="max-width:100%;overflow-x:auto">'
            '<table class="per-token-worst" style="width:100%;font-size:0.85em">'
            "<caption>The worst positions</caption><thead><tr><th>pos.</th><th>token</th><th>KL (nats)</th>"
            "<th>baseline's top (p: baseline / variant)</th><th>variant's top (p: baseline / variant)</th></tr>"
            f"</thead><tbody>{rows}</tbody></table></div>")


def _top(token: dict, side: str) -> str:
    text = token[f"{side}_top_token"]
    shown = "–" if text is None else f"<code>{_literal(text, one_line=True)}</code>"
    return f"{shown}: {_prob(token[f'{side}_top_p_baseline'])} / {_prob(token[f'{side}_top_p_variant'])}"


def _prob(p: float | None) -> str:
    return "–" if p is None else f"{p:.3g}"
