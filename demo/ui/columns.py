"""The Compare tab's columns while a comparison streams: each variant's heading, answer and figures, and what
its status says in words (the same words in the summary table)."""

from __future__ import annotations

from demo.reports import report
from demo.reports.escaping import html_text
from demo.running.runner import Arena, VariantResult

# The streaming column's text reaches the page at most this often. Each page update costs server CPU that
# a CPU generation shares; every 0.1 s it cost ~20% of decode speed on 2 cores, every 0.4 s under 2%.
TEXT_INTERVAL_S = 0.4

# The same words in a variant's column and in the summary table.
STATUS_TEXT = {
    "queued": "queued",
    "waiting": "waiting for the device: another comparison is running",
    "loading": "loading weights…",
    "reading": "reading the prompt…",
    "generating": "generating…",
    "scoring": "scoring fidelity…",
    "done": "done",
    "stopped": "stopped",
    "error": "not available",
}
FINISHED = ("done", "stopped", "error")


def status_text(rec: dict) -> str:
    """A record's status in words, as its column and the summary show it."""
    status = rec.get("status")
    words = STATUS_TEXT.get(status, str(status))
    if status == "waiting" and rec.get("queue_ahead"):
        ahead = rec["queue_ahead"]
        words += f" ({ahead} comparison{'s' if ahead != 1 else ''} ahead of this one)"
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

    def start(self, results: list[VariantResult]) -> list[str]:
        """The first snapshot: the chosen columns' headings, empty answers."""
        for i, result in enumerate(results[:len(self.values)]):
            self.values[i] = [head_markdown(self.arena, _status_fields(result)), "", ""]
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
            slot[1:] = [answer_text(rec), report.figures_markdown(rec)]
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
            self.values[i] = [head_markdown(self.arena, rec), answer_text(rec), report.figures_markdown(rec)]
        return self.flat()

    def flat(self) -> list[str]:
        return [value for slot in self.values for value in slot]


def _status_fields(result: VariantResult) -> dict:
    """The few fields a column's heading reads, without copying the whole record on every snapshot."""
    return {"variant": result.variant, "method": result.method, "bits": result.bits, "device": result.device,
            "status": result.status, "prompt_tokens": result.prompt_tokens, "new_tokens": result.new_tokens,
            "queue_ahead": getattr(result, "queue_ahead", None), "truncated": getattr(result, "truncated", False)}


def answer_text(rec: dict) -> str:
    return f"Not available — {rec['error']}" if rec.get("error") else rec["text"]


def offers_quantize(rec: dict) -> bool:
    return (rec.get("error") or "").startswith("not quantized")


def head_markdown(arena: Arena, rec: dict) -> str:
    variant = arena.config.variants[rec["variant"]]
    label = variant.label or variant.id
    device = rec.get("device") or "…"
    return (f"### {label}\n`{rec['variant']}` · {rec['method']} · {rec['bits']}-bit · {device}  \n"
            f"**{status_text(rec)}**")


def divergence_html(arena: Arena, rec: dict, baseline_text: str | None) -> str:
    """Where this answer departs from the baseline's (marked, as literal text), or why there is no comparison."""
    baseline = arena.config.base_of(rec["variant"]).baseline
    if rec["status"] != "done" or baseline is None or baseline == rec["variant"]:
        return ""
    if rec.get("fidelity") is None:
        return f"<p><em>Tick <code>{html_text(baseline)}</code> too to see how far this answer strays from " \
               "the baseline.</em></p>"
    return report.divergence_html(rec, baseline_text or "")
