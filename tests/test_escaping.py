"""The one set of escaping rules the page, the card and the blind test share: text shows exactly as typed."""

import pytest

from demo.reports.escaping import fenced, html_text, markdown_inline


@pytest.mark.parametrize("special", list("\\`*_~[]|$!#"))
def test_every_inline_markdown_character_is_backslash_escaped(special):
    assert markdown_inline(f"a{special}b") == f"a\\{special}b"


def test_html_specials_become_entities_once():
    assert html_text("<b>&amp;</b>") == "&lt;b&gt;&amp;amp;&lt;/b&gt;"
    assert markdown_inline("<i>x</i>") == "&lt;i&gt;x&lt;/i&gt;"


def test_inline_text_stays_on_one_line():
    assert markdown_inline("one\ntwo\r\nthree\rfour") == "one ⏎ two ⏎ three ⏎ four"


def test_a_fence_is_longer_than_any_backtick_run_inside():
    assert fenced("plain") == "```text\nplain\n```"
    assert fenced("a ```` b").startswith("`````text\n") and fenced("a ```` b").endswith("\n`````")
