"""Where in the answer a variant strays: the per-token view drawn after a comparison, and a non-finite KL kept
honest on the page, in the card and in the blind test's database."""

import json
import math
from dataclasses import replace
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
import torch

from demo.blind.votes import NONFINITE_KEY, Battle, VoteStore, now_iso, session_digest
from demo.measuring import fidelity
from demo.reports import card
from demo.ui import columns

# Token texts that must come out literally: markup, Markdown, entities, line breaks, a tab, nothing at all.
TEXTS = ["<b>bold</b>", " **not bold**", "&amp;", "\n", "\tx", "", " Paris", "`code`"]


def text_of(ids: list[int]) -> str:
    return "".join(TEXTS[i] for i in ids)


class _View(HTMLParser):
    """The view as a browser reads it: each token span's attributes and text, the worst table's rows."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.spans, self.rows, self.tags, self._span, self._cell = [], [], [], None, None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "span" and attrs.get("class") == "kl-token":
            self._span = {**attrs, "text": ""}
        elif tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "span" and self._span is not None:
            self.spans.append(self._span)
            self._span = None
        elif tag == "td":
            self.rows[-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._span is not None:
            self._span["text"] += data
        if self._cell is not None:
            self._cell += data


def hand_built(nonfinite: bool = True) -> dict:
    """Fidelity over an 8-token answer from hand-made distributions over the 8 texts; with nonfinite, position 2's
    variant row is NaN and position 5's gives probability 0 to the baseline's top token (an infinite KL)."""
    gen = torch.Generator().manual_seed(3)
    baseline = (torch.randn(8, 8, generator=gen) * 2).log_softmax(-1)
    variant = (baseline + torch.randn(8, 8, generator=gen) * torch.linspace(0, 3, 8)[:, None]).log_softmax(-1)
    if nonfinite:
        variant[2] = float("nan")
        variant[5, int(baseline[5].argmax())] = -math.inf
    return fidelity.compare("smollm2/fp32", baseline, variant, list(range(8)), text_of).as_dict()


def read(page: str) -> _View:
    view = _View()
    view.feed(page)
    return view


def test_each_token_is_shaded_by_its_kl_and_carries_it():
    fid = hand_built()
    view = read(columns.strays_html(fid))
    assert [s["data-position"] for s in view.spans] == [str(i) for i in range(8)]
    for span, token in zip(view.spans, fid["per_token"]):
        if token["kl_nats"] is None:
            assert span["data-nonfinite"] == token["kl_nonfinite"] and "data-kl" not in span
            assert f"KL not a number ({token['kl_nonfinite']})" in span["title"]
            assert "background:#000000" in span["style"]
        else:
            assert float(span["data-kl"]) == token["kl_nats"]  # the record's value, exactly
            assert f"KL {token['kl_nats']:.3g} nats" in span["title"]
            shade = next(b for bound, b, _ in columns.KL_SHADES if token["kl_nats"] < bound)
            assert f"background:{shade}" in span["style"]
    # one shade per decade: a KL ten times larger is never drawn lighter
    finite = sorted((t["kl_nats"], columns.KL_SHADES.index(next(s for s in columns.KL_SHADES if t["kl_nats"] < s[0])))
                    for t in fid["per_token"] if t["kl_nats"] is not None)
    assert [shade for _, shade in finite] == sorted(shade for _, shade in finite)


def test_tokens_are_literal_text_with_line_breaks_marked():
    page = columns.strays_html(hand_built())
    view = read(page)
    assert "b" not in view.tags and "strong" not in view.tags  # no markup from a token survives
    texts = [s["text"] for s in view.spans]
    assert texts == ["<b>bold</b>", " **not bold**", "&amp;", "↵\n", "⇥\tx", "∅", " Paris", "`code`"]
    assert "<details" in page and "Where it strays (per-token KL)" in page and "white-space:pre-wrap" in page


def test_the_worst_positions_read_without_colour():
    fid = hand_built()
    view = read(columns.strays_html(fid))
    finite = sorted((t for t in fid["per_token"] if t["kl_nats"] is not None), key=lambda t: -t["kl_nats"])
    rows = [row for row in view.rows if row]  # the heading row has no td
    assert [int(row[0]) for row in rows] == [t["position"] for t in finite[:columns.WORST_SHOWN]]
    first, worst = rows[0], finite[0]
    assert first[2] == f"{worst['kl_nats']:.3g}"
    assert first[3] == (f"{worst['baseline_top_token'].replace(chr(10), '↵')}: "
                        f"{worst['baseline_top_p_baseline']:.3g} / {worst['baseline_top_p_variant']:.3g}")
    assert "2 positions non-finite (NaN or infinite KL), left out of the mean" in columns.strays_html(fid)


def test_the_column_says_how_many_positions_are_non_finite(default_config):
    fid = hand_built()
    assert fid["nonfinite_positions"] == 2
    rec = {"variant": "smollm2/bnb-nf4", "method": "bnb-4bit", "bits": 4, "status": "done", "new_tokens": 8,
           "ttft_ms": 50.0, "decode_tokens_per_s": 20.0, "total_ms": 400.0, "load_ms": 100.0, "cache_hit": False,
           "weights_mib": 100.0, "peak_memory_mib": 200.0, "text": "".join(TEXTS), "answer_departs_at_token": None,
           "answer_departs_at_char": None, "fidelity": fid}
    assert "| KL non-finite | 2 positions non-finite (NaN or infinite), left out of the mean |" in \
        columns.figures_markdown(rec)
    arena = SimpleNamespace(config=default_config)
    page = columns.divergence_html(arena, rec, "".join(TEXTS))
    assert "Where it strays (per-token KL)" in page
    assert columns.divergence_html(arena, {**rec, "variant": "smollm2/fp32",  # the baseline: no view of itself
                                           "fidelity": fidelity.of_baseline("smollm2/fp32", 8).as_dict()}, "") == ""
    assert columns.strays_html(fidelity.of_baseline("smollm2/fp32", 8).as_dict()) == ""
    every = {**fid, "kl_divergence": None, "nonfinite_positions": 8, "unavailable": "KL not a number at every one"}
    assert "8 positions non-finite" in columns.figures_markdown({**rec, "fidelity": every})


def test_the_card_carries_per_token_figures_and_the_count():
    fid = hand_built()
    rec = {"variant": "smollm2/bnb-nf4", "method": "bnb-4bit", "bits": 4, "status": "done", "new_tokens": 8,
           "text": "answer", "prompt": "p", "settings": {"decoding": "greedy", "max_new_tokens": 8},
           "environment": {"device_name": "cpu"}, "quantization": {}, "fidelity": fid,
           "answer_departs_at_token": None, "answer_departs_at_char": None}
    doc = json.loads(json.dumps(card.comparison([rec], "2025-01-01T00:00:00Z"), allow_nan=False))
    assert doc["variants"][0]["fidelity"]["per_token"] == fid["per_token"]
    [row] = card.csv_rows([rec], "2025-01-01T00:00:00Z")
    assert row["nonfinite_positions"] == 2 and row["kl_divergence"] == fid["kl_divergence"]
    assert "KL non-finite (NaN or infinite) at 2 of 8 positions, left out of the mean" in card.markdown_card([rec])


def _battle(record_b: dict) -> Battle:
    return Battle("b1", now_iso(), session_digest("s1"), "smollm2", "smollm2/fp32", "smollm2/fp32", "smollm2/bnb-nf4",
                  "hi", {"decoding": "greedy"}, "answer a", "answer b", {"variant": "smollm2/fp32", "label": "fp32"},
                  record_b, {"device_name": "cpu"})


def test_an_infinite_kl_does_not_stop_a_battle_being_stored(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite3")
    fid = hand_built()
    store.add_battle(_battle({"variant": "smollm2/bnb-nf4", "label": "nf4", "fidelity": fid}))
    assert store.battle("b1").record_b["fidelity"] == fid  # the fidelity record holds no non-finite number
    # a record that still holds one (from anywhere) is stored with null there, and says where and what it was
    raw = {"variant": "smollm2/bnb-nf4", "label": "nf4", "decode_tokens_per_s": math.inf,
           "fidelity": {**fid, "kl_divergence": math.inf, "per_token": [{"kl_nats": math.nan}]}}
    store.add_battle(replace(_battle(raw), id="b2"))
    stored = store.battle("b2").record_b
    assert stored["fidelity"]["kl_divergence"] is None and stored["decode_tokens_per_s"] is None
    assert stored[NONFINITE_KEY] == {"decode_tokens_per_s": "inf", "fidelity.kl_divergence": "inf",
                                     "fidelity.per_token[0].kl_nats": "nan"}
    assert "nonfinite" not in json.dumps(store.battle("b2").record_a)
    assert store.counts() == (2, 0)
    store.close()


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_the_store_refuses_no_non_finite_number(tmp_path, value):
    store = VoteStore(tmp_path / "votes.sqlite3")
    store.add_battle(_battle({"variant": "smollm2/bnb-nf4", "label": "nf4", "fidelity": {"kl_divergence": value}}))
    stored = store.battle("b1").record_b
    assert stored["fidelity"]["kl_divergence"] is None and stored[NONFINITE_KEY] == {
        "fidelity.kl_divergence": str(value)}
    store.close()


def test_the_answer_s_statistics_leave_the_non_finite_positions_out_and_reach_the_page():
    gen = torch.Generator().manual_seed(3)
    baseline = (torch.randn(8, 8, generator=gen) * 2).log_softmax(-1)
    variant = (baseline + torch.randn(8, 8, generator=gen) * torch.linspace(0, 3, 8)[:, None]).log_softmax(-1)
    variant[2] = float("nan")
    answer = list(range(8))
    fid = fidelity.compare("smollm2/fp32", baseline, variant, answer, text_of).as_dict()
    stats, keep = fid["statistics"], [i for i in range(8) if i != 2]
    assert stats["positions"] == 7 and stats["nonfinite_positions"] == 1
    p, q = baseline.double().exp().numpy(), variant.double().exp().numpy()
    kl = [sum(p[i, j] * math.log(p[i, j] / q[i, j]) for j in range(8)) for i in keep]
    delta = [q[i, answer[i]] - p[i, answer[i]] for i in keep]
    assert stats["kl"]["mean"] == pytest.approx(sum(kl) / 7, rel=1e-4) == pytest.approx(fid["kl_divergence"], rel=1e-4)
    assert stats["kl"]["max"] == pytest.approx(max(kl), rel=1e-4)
    assert stats["delta_p"]["mean"] == pytest.approx(sum(delta) / 7, abs=1e-6)
    assert stats["delta_p"]["rms"] == pytest.approx(math.sqrt(sum(d * d for d in delta) / 7), abs=1e-6)
    line = read(columns.strays_html(fid))
    assert "per-token-statistics" in columns.strays_html(fid) and line.spans
    assert f"Over 7 positions: KL median {stats['kl']['median']:.3g}" in columns.strays_html(fid)
