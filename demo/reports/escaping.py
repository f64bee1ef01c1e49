"""Text shown exactly as typed inside Markdown and HTML: one set of rules for the page, the card and the blind test.

Inline text (table cells, header lines) is escaped character by character: line breaks become " ⏎ " (a
cell or header holds one line); the HTML specials become entities, so no tag or entity survives; every
character that can start an inline construct in CommonMark or GitHub's Markdown (backslash escapes, code
spans, emphasis, strikethrough, links and images, GitHub math, table cells, headings) gets a backslash,
which CommonMark defines for any ASCII punctuation. Longer text goes in a fence instead (`fenced`).
"""

from __future__ import annotations

import re

_INLINE_SPECIAL = re.compile(r"[\\`*_~\[\]|$!#]")
_HTML_SPECIAL = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def html_text(text: str) -> str:
    """`text` as HTML character data: no tag or entity survives."""
    return "".join(_HTML_SPECIAL.get(c, c) for c in text)


def markdown_inline(text: str) -> str:
    """`text` as Markdown inline content that renders exactly as typed, on one line."""
    text = html_text(_LINE_BREAK.sub(" ⏎ ", text))
    return _INLINE_SPECIAL.sub(lambda m: "\\" + m.group(0), text)


def fenced(text: str) -> str:
    """`text` as a fenced code block that renders exactly as typed, line breaks included.

    Fenced rather than escaped: inside a fence CommonMark interprets nothing (no HTML, no Markdown, no
    entities, no GitHub emoji or math), so the text stays readable when the card is read raw too. A fence
    closes only on a line of at least as many backticks as it opened with, so one backtick longer than the
    longest run in the text (and at least three) cannot be closed by the text; it opens at column 0, so
    no indentation is stripped from the text's lines."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"
