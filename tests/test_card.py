"""The comparison card: JSON, CSV and Markdown from real records, and from real records given nasty text."""

import copy
import csv
import json
import re
from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt

from demo.reports import card

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

# Each must come out of a Markdown renderer exactly as typed.
NASTY = [
    "Use `code`, ``double`` and a lone ` tick",
    "```python\nprint('fenced')\n```\nafter the fence",
    "~~~\ntilde fence\n~~~",
    "<img src=x onerror=alert(1)>",
    "a | b | c\n|---|---|\n| x | y |",
    "# Heading\n## Another",
    "*emphasis*, **strong** and _under_",
    "> quoted\n>> nested",
    "back\\slash, \\| \\* and &amp; &lt; entities &copy;",
    "line one\n\nline three after a blank line\n    indented four\n\ttabbed",
    "$x^2$ math, ~~strike~~, [link](http://e.com), ![img](x.png), <http://auto.link>",
    "````` five backticks then ``````",
    "- a list\n1. numbered\n+ plus\n***",
    "trailing backslash \\",
]


@pytest.fixture(scope="module")
def real_records(arena):
    return arena.compare_records("What is the capital of France?\nAnswer briefly.",
                                 ["smollm2/fp32", "smollm2/bnb-nf4"], arena.settings(max_new_tokens=12))


def test_card_files(real_records, tmp_path):
    records = real_records
    paths = card.write(records, tmp_path)
    doc = json.loads(paths["json"].read_text())
    assert doc["prompt"].startswith("What is the capital") and doc["settings"]["decoding"] == "greedy"
    assert doc["environment"]["torch"]
    assert [v["variant"] for v in doc["variants"]] == ["smollm2/fp32", "smollm2/bnb-nf4"]
    assert doc["variants"][1]["fidelity"]["baseline"] == "smollm2/fp32"
    assert doc["variants"][1]["quantization"]["bnb_4bit_quant_type"] == "nf4"
    assert ISO_UTC.match(doc["created_utc"]) and doc["model"] == card.model_label(records)
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["smollm2/fp32", "smollm2/bnb-nf4"]
    assert rows[1]["kl_divergence"] and json.loads(rows[1]["quantization"])["bnb_4bit_use_double_quant"] is True
    assert {r["created_utc"] for r in rows} == {doc["created_utc"]} and all(r["model"] == (
        records[0].get("model") or records[0].get("base") or "") for r in rows)
    md = paths["markdown"].read_text()
    for expected in ("## Quantization Arena comparison", f"**Date:** {doc['created_utc']} (UTC)",
                     f"**Model:** {card.inline(doc['model'])}",
                     f"**Machine:** {card.inline(doc['environment']['device_name'])}",
                     "greedy decoding, up to 12 new tokens", "What is the capital of France?\nAnswer briefly.\n```",
                     "| smollm2/bnb-nf4 | 4 |", "· fp32, no quantization ·",
                     "· bitsandbytes 4-bit: nf4, double quant, compute bfloat16 ·", "**Conditions.**", "torch 2.",
                     "Peak memory = weights + process RSS growth", "KL "):
        assert expected in md, expected
    assert "None" not in md and "(fp32, none" not in md
    fences = [t.content for t in _parse(md) if t.type == "fence"]
    assert fences == [records[0]["prompt"] + "\n"] + [r["text"] + "\n" for r in records]


@pytest.mark.parametrize("nasty", NASTY)
def test_card_shows_nasty_text_literally(real_records, nasty, tmp_path):
    records = copy.deepcopy(real_records)
    for r in records:
        r.update(prompt=nasty, model=f"Model {nasty}")
    records[0]["text"] = nasty
    records[1].update(variant=f"v/{nasty}", status="error", new_tokens=12, text=f"partial {nasty}",
                      error=f"Boom: {nasty}")
    md = card.markdown_card(records)
    rendered = MarkdownIt("commonmark").enable("table").render(md)
    assert "<img" not in rendered and "<a " not in rendered and "<em>" not in rendered and "<h1>" not in rendered
    assert "<blockquote>" not in rendered and "<ul>" not in rendered and "<ol>" not in rendered
    fences = [t.content for t in _parse(md) if t.type == "fence"]
    assert fences == [nasty + "\n", nasty + "\n", f"partial {nasty}\n", f"Boom: {nasty}\n"]
    page = _Page()
    page.feed(rendered)
    one_line = nasty.replace("\n", " ⏎ ")
    first_line = next(line for line in f"Boom: {nasty}".splitlines() if line.strip())
    assert [row[0] for row in page.rows[1:]] == [records[0]["variant"], f"v/{one_line}"]
    assert page.rows[2][-1] == f"failed: {first_line}" and len(page.rows[2]) == len(page.rows[0]) == 9
    assert f"Model: Model {one_line} · Date:" in page.text
    heading = (f"v/{one_line} · bitsandbytes 4-bit: nf4, double quant, compute bfloat16 · "
               "12 new tokens (the limit), error")
    assert heading in page.text
    assert set(page.tags) <= {"h2", "p", "strong", "pre", "code", "table", "thead", "tbody", "tr", "th", "td"}


def test_answer_cut_mid_character_is_marked_not_shown(real_records):
    records = copy.deepcopy(real_records)
    records[0]["text"] = "A cat " + "\ufffd"  # what a decoder writes for the first byte of 🐱 alone
    md = card.markdown_card(records)
    assert "\ufffd" not in md and "done (cut mid-character)" in md
    assert [t.content for t in _parse(md) if t.type == "fence"][1] == "A cat \n"


def test_quantization_reads_from_method_and_settings(real_records):
    fp32, nf4 = real_records
    assert card.quantization_text(fp32) == "fp32, no quantization"
    assert card.quantization_text(nf4) == "bitsandbytes 4-bit: nf4, double quant, compute bfloat16"
    # The method, not the id, decides; an unknown method or setting still reads as name and value.
    assert card.quantization_text({**nf4, "variant": "x/fp32"}).startswith("bitsandbytes 4-bit")
    assert card.quantization_text({"method": "awq", "quantization": {"bits": 4, "zero_point": True}}) == \
        "AWQ: 4-bit, zero point"
    assert card.quantization_text({"method": "rtn", "quantization": {"bits": 4, "damping": True}}) == \
        "rtn: 4-bit, damping=True"
    assert card.quantization_text({"method": "torchao", "quantization": {
        "scheme": "int4_weight_only", "group_size": 64, "int4_choose_qparams_algorithm": "hqq"}}) == \
        "torchao: int4 weight only, group size 64, HQQ scales and zero points"
    assert card.quantization_text({"method": "gptq", "quantization": {"bits": 4, "group_size": 64, "desc_act": False,
                                                                      "sym": True}}) == \
        "GPTQ: 4-bit, group size 64, no act-order, symmetric"


def test_model_and_date_in_all_three_files(real_records, tmp_path):
    records = copy.deepcopy(real_records)
    for r in records:
        r.update(base="smollm2", model="SmolLM2-135M-Instruct")
    paths = card.write(records, tmp_path, created_utc="2025-06-01T12:34:56Z")
    doc = json.loads(paths["json"].read_text())
    assert (doc["model"], doc["base"]) == ("SmolLM2-135M-Instruct", "smollm2")
    assert doc["created_utc"] == "2025-06-01T12:34:56Z"
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["model"], r["base"], r["created_utc"]) for r in rows} == {
        ("SmolLM2-135M-Instruct", "smollm2", "2025-06-01T12:34:56Z")}
    md = paths["markdown"].read_text()
    assert "**Model:** SmolLM2-135M-Instruct · **Date:** 2025-06-01T12:34:56Z (UTC) · **Machine:** " in md


def test_csv_carries_both_fidelity_figures(real_records):
    record = copy.deepcopy(real_records[1])
    record["fidelity"]["first_top1_disagreement"] = 3
    record.update(answer_departs_at_char=17, answer_departs_at_token=4)
    [row] = card.csv_rows([record])
    assert (row["first_top1_disagreement"], row["answer_departs_at_char"], row["answer_departs_at_token"]) == (3, 17, 4)


def test_card_json_carries_the_per_token_figures_as_they_are(real_records, tmp_path):
    doc = json.loads(card.write(real_records, tmp_path)["json"].read_text())
    baseline, nf4 = doc["variants"]
    per_token = nf4["fidelity"]["per_token"]
    assert per_token == real_records[1]["fidelity"]["per_token"]
    assert len(per_token) == nf4["fidelity"]["scored_tokens"] == baseline["new_tokens"]
    assert [t["position"] for t in per_token] == list(range(len(per_token)))
    assert all(t["kl_nats"] >= 0 and 0 <= t["variant_top_p_variant"] <= 1 for t in per_token)
    assert baseline["fidelity"]["per_token"] == []  # the baseline against itself: 0 everywhere, nothing to list
    with (tmp_path / "comparison.csv").open() as f:
        assert [r["nonfinite_positions"] for r in csv.DictReader(f)] == ["0", "0"]


def _parse(md):
    return MarkdownIt("commonmark").enable("table").parse(md)


class _Page(HTMLParser):
    """The rendered card's text, its tags, and its table as rows of cell text (entities decoded)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows, self.tags, self.text, self._cell = [], [], "", None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        self.text += data
        if self._cell is not None:
            self._cell += data



def test_answer_heading_says_whether_the_answer_departs(real_records):
    fp32, nf4 = copy.deepcopy(real_records)
    nf4["status"] = "done"
    for departs, expected in (({"answer_departs_at_char": None, "answer_departs_at_token": None},
                               "same answer as the baseline"),
                              ({"answer_departs_at_char": 5, "answer_departs_at_token": 2},
                               "departs from the baseline's answer at token 2, character 5")):
        record = nf4 | departs
        md = card.markdown_card([fp32, record])
        assert expected in md, expected
        assert "baseline's answer" not in md.split("**smollm2/fp32**")[1].split("**smollm2/bnb")[0]
