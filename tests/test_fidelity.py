"""Fidelity to the baseline on one prompt: hand-made distributions first, then the real model.

Two figures, kept apart: where a variant's own answer departs from the baseline's, and teacher-forced
agreement over the baseline's answer (top-1 is the variant's argmax against the baseline's argmax).
"""

import html
import json
import re

import numpy as np
import pytest
import torch

from demo.measuring import fidelity
from demo.measuring.fidelity_topk import TopLogProbs
from demo.reports import report

PROMPT = "What is the capital of France?"
FIDELITY_FIELDS = {"baseline", "kl_divergence", "top1_agreement", "first_top1_disagreement",
                   "margin_at_disagreement", "scored_tokens", "kl_lower_bound_top_k", "unavailable",
                   "nonfinite_positions", "per_token", "noise_floor", "statistics"}
MARGIN_FIELDS = {"position", "baseline_token", "baseline_token_id", "baseline_token_p_baseline",
                 "baseline_token_p_variant", "variant_token", "variant_token_id", "variant_token_p_baseline",
                 "variant_token_p_variant", "near_tie"}


def token_text(ids: list[int]) -> str:
    return "".join(f"<{i}>" for i in ids)


def test_first_difference():
    assert fidelity.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert fidelity.first_difference([1, 2, 4], [1, 2, 3]) == 2
    assert fidelity.first_difference([1, 2], [1, 2, 3]) == 2  # stops early
    assert fidelity.first_difference([1, 2, 3, 4], [1, 2, 3]) == 3  # goes on past the baseline's end
    assert fidelity.first_difference([9], [1]) == 0


def test_departure_char_stays_inside_the_common_text():
    """A token boundary inside a two-byte character: the decoded prefix has a "\ufffd" the full text lacks."""
    def decode(ids):  # one byte per token, as byte-level BPE falls back to
        return bytes(ids).decode("utf-8", errors="replace")

    variant, baseline = list("ab\u00e9".encode()), list("ab\u00e8".encode())
    assert fidelity.departure_char(decode, variant, baseline) == 2  # "ab", then é vs è
    assert fidelity.departure_char(decode, variant, variant) is None
    assert fidelity.departure_char(decode, list(b"ab"), list(b"abc")) == 2


def test_compare_by_hand():
    baseline = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.4, 0.6]]).log()  # argmax 0, 1, 1
    variant = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.3, 0.7]]).log()  # argmax 0, 0, 1
    result = fidelity.compare("b", baseline, variant, [0, 1, 1], token_text)
    assert result.top1_agreement == pytest.approx(2 / 3, abs=1e-4)
    assert result.first_top1_disagreement == 1 and result.scored_tokens == 3
    expected = sum(float((p * (p.log() - q.log())).sum()) for p, q in zip(baseline.exp(), variant.exp())) / 3
    assert result.kl_divergence == pytest.approx(expected, abs=1e-6)
    margin = result.as_dict()["margin_at_disagreement"]
    assert set(margin) == MARGIN_FIELDS
    assert margin["position"] == 1 and margin["baseline_token"] == "<1>" and margin["variant_token"] == "<0>"
    probabilities = [margin[k] for k in ("baseline_token_p_baseline", "baseline_token_p_variant",
                                         "variant_token_p_baseline", "variant_token_p_variant")]
    assert probabilities == pytest.approx([0.8, 0.4, 0.2, 0.6])
    assert margin["near_tie"] is False  # the variant prefers its token by 0.2


def test_top1_is_argmax_against_argmax_not_against_the_sampled_answer():
    """A sampled answer holds tokens neither model ranks first; agreement is about the two argmaxes."""
    baseline = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]]).log()
    variant = torch.tensor([[0.45, 0.35, 0.2], [0.5, 0.4, 0.1]]).log()
    result = fidelity.compare("b", baseline, variant, [2, 1], token_text)  # a sampled answer
    assert result.top1_agreement == 1.0
    assert result.first_top1_disagreement is None and result.margin_at_disagreement is None


def test_a_near_tie_reads_as_one():
    baseline = torch.tensor([[0.51, 0.45, 0.04]]).log()
    variant = torch.tensor([[0.47, 0.49, 0.04]]).log()
    margin = fidelity.compare("b", baseline, variant, [1], token_text).margin_at_disagreement
    assert (margin.baseline_token, margin.variant_token) == ("<0>", "<1>")
    assert (margin.variant_token_p_variant, margin.baseline_token_p_variant) == pytest.approx((0.49, 0.47))
    assert margin.near_tie


@pytest.mark.parametrize("positions", [1, 3, 64, 512, 20_001])
def test_full_agreement_and_no_disagreement_go_together(positions):
    """Random pairs, and one disagreement among 20,001 positions, which must not round to 100%."""
    gen = torch.Generator().manual_seed(positions)
    for trial in range(20):
        baseline = torch.randn(positions, 5, generator=gen).log_softmax(-1)
        variant = baseline + 0.3 * trial / 20 * torch.randn(positions, 5, generator=gen)
        if trial == 0 and positions > 1:  # exactly one position flipped
            variant = baseline.clone()
            variant[positions // 2] = -baseline[positions // 2]
        result = fidelity.compare("b", baseline, variant.log_softmax(-1), [0] * positions, token_text)
        assert (result.top1_agreement == 1.0) == (result.first_top1_disagreement is None)
        assert (result.margin_at_disagreement is None) == (result.first_top1_disagreement is None)
        if trial == 0 and positions > 1:
            assert result.first_top1_disagreement == positions // 2 and result.top1_agreement < 1.0


def numpy_kl_rows(p_log, q_log) -> np.ndarray:
    """KL(P || Q) per row, in float64 numpy: a baseline token of probability 0 adds 0."""
    p_log, q_log = np.asarray(p_log, dtype=np.float64), np.asarray(q_log, dtype=np.float64)
    p = np.exp(p_log)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(p > 0, p * (p_log - q_log), 0.0).sum(-1)


def test_per_token_figures_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 7)) * 2
    baseline = torch.tensor(logits).log_softmax(-1).float()
    variant = torch.tensor(logits + rng.normal(size=(6, 7))).log_softmax(-1).float()
    answer = [3, 1, 4, 1, 5, 6]
    result = fidelity.compare("b", baseline, variant, answer, token_text)
    p, q = baseline.double().exp().numpy(), variant.double().exp().numpy()
    expected = numpy_kl_rows(baseline.numpy(), variant.numpy())
    per_token = result.as_dict()["per_token"]
    assert len(per_token) == 6 and result.nonfinite_positions == 0
    for i, token in enumerate(per_token):
        assert (token["position"], token["token_id"], token["token"]) == (i, answer[i], f"<{answer[i]}>")
        assert token["kl_nats"] == pytest.approx(expected[i], rel=1e-5) and token["kl_nonfinite"] is None
        top_b, top_v = int(p[i].argmax()), int(q[i].argmax())
        assert (token["baseline_top_token_id"], token["baseline_top_token"]) == (top_b, f"<{top_b}>")
        assert (token["variant_top_token_id"], token["variant_top_token"]) == (top_v, f"<{top_v}>")
        assert [token["baseline_top_p_baseline"], token["baseline_top_p_variant"], token["variant_top_p_baseline"],
                token["variant_top_p_variant"]] == pytest.approx([p[i, top_b], q[i, top_b], p[i, top_v], q[i, top_v]],
                                                                 rel=1e-3)
    # the mean of the per-token figures is the Fidelity's mean, and numpy's
    assert np.mean([t["kl_nats"] for t in per_token]) == pytest.approx(result.kl_divergence, abs=1e-6)
    assert result.kl_divergence == pytest.approx(expected.mean(), abs=1e-6)


def test_a_nonfinite_kl_is_counted_and_left_out_never_read_as_zero():
    baseline = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.8, 0.0], [0.4, 0.6, 0.0], [0.5, 0.25, 0.25]]).log()
    variant = torch.tensor([[0.6, 0.4, 0.0], [1.0, 0.0, 0.0], [0.3, 0.7, 0.0], [0.5, 0.25, 0.25]]).log()
    variant[2] = float("nan")  # a broken kernel's row
    # position 0: the baseline gives token 2 probability 0, which adds 0 (not 0 * -inf = NaN);
    # position 1: the variant gives probability 0 to a token the baseline gives 0.8: an infinite KL
    result = fidelity.compare("b", baseline, variant, [0, 1, 1, 0], token_text)
    expected = numpy_kl_rows(baseline.numpy(), variant.numpy())
    assert np.isinf(expected[1]) and np.isnan(expected[2])  # numpy agrees these are not numbers
    assert result.nonfinite_positions == 2 and result.unavailable is None
    assert result.kl_divergence > 0 and result.kl_divergence == pytest.approx((expected[0] + expected[3]) / 2, abs=1e-6)
    kls = [(t.kl_nats, t.kl_nonfinite) for t in result.per_token]
    assert kls[1] == (None, "inf") and kls[2] == (None, "nan") and kls[3] == (0.0, None)
    assert kls[0][0] == pytest.approx(expected[0], rel=1e-5)
    assert result.per_token[2].variant_top_p_variant is None  # a NaN probability is unknown, not 0
    margin = result.margin_at_disagreement  # at position 1, where the variant gives the baseline's token 0
    assert margin.position == 1 and margin.baseline_token_p_variant == 0.0 and margin.variant_token_p_variant == 1.0
    broken = fidelity.compare("b", baseline[2:3], variant[2:3], [1], token_text)  # disagrees on a NaN row
    assert broken.first_top1_disagreement == 0 and broken.margin_at_disagreement is None
    json.dumps(result.as_dict(), allow_nan=False)  # nothing a JSON reader would refuse

    everywhere = fidelity.compare("b", baseline, torch.full_like(variant, float("nan")), [0, 1, 1, 0], token_text)
    assert everywhere.kl_divergence is None and everywhere.nonfinite_positions == 4
    assert "every one of the 4 answer positions" in everywhere.unavailable
    shown = dict(report.figures(record(fidelity=everywhere.as_dict())))["teacher-forced"]
    assert shown == everywhere.unavailable and "0" not in shown.replace("4", "")


def _engine_top_k(q_log: torch.Tensor, k: int, collide: set[int] = frozenset()) -> TopLogProbs:
    """A remote engine's answer by hand: the top k per position by id; at `collide` positions its top-1 text is one
    that several ids read as (so it has no id, and is left out of `known`)."""
    known, top_text, top_id = [], [], []
    for i, row in enumerate(q_log):
        order = row.argsort(descending=True)[:k].tolist()
        known.append({t: float(row[t]) for t in order if not (i in collide and t == order[0])})
        top_text.append("shared" if i in collide else f"<{order[0]}>")
        top_id.append(None if i in collide else order[0])
    return TopLogProbs(known, top_text, top_id, [None] * len(known), k, lambda t: f"<{t}>")


def test_per_token_figures_from_a_top_k_engine():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 8)) * 2
    baseline = torch.tensor(logits).log_softmax(-1).float()
    q_log = torch.tensor(logits + rng.normal(size=(5, 8))).log_softmax(-1).float()
    engine = _engine_top_k(q_log, 3, collide={3})
    engine.known[4][next(iter(engine.known[4]))] = float("nan")  # the engine sent a log-probability that is NaN
    result = fidelity.compare("b", baseline, engine, [1, 2, 3, 4, 5], token_text)
    assert result.kl_lower_bound_top_k == 3 and result.nonfinite_positions == 1
    p = baseline.double().exp().numpy()
    for i, token in enumerate(result.per_token[:4]):
        ids = list(engine.known[i])  # the bucket bound, by numpy: the known tokens plus one rest bucket
        p_known, q_known = p[i, ids], np.exp([engine.known[i][t] for t in ids])
        bound = float((p_known * np.log(p_known / q_known)).sum())
        bound += (1 - p_known.sum()) * np.log((1 - p_known.sum()) / (1 - q_known.sum()))
        assert token.kl_nats == pytest.approx(max(bound, 0), rel=1e-4)
        top_b = int(p[i].argmax())
        assert token.baseline_top_token_id == top_b and token.baseline_top_p_baseline == pytest.approx(p[i, top_b],
                                                                                                        rel=1e-3)
        in_top_k = engine.known[i].get(top_b)
        assert token.baseline_top_p_variant == (None if in_top_k is None else pytest.approx(np.exp(in_top_k), rel=1e-3))
    shared = result.per_token[3]
    assert (shared.variant_top_token, shared.variant_top_token_id, shared.variant_top_p_variant) == ("shared", None,
                                                                                                     None)
    assert result.per_token[4].kl_nats is None and result.per_token[4].kl_nonfinite == "nan"
    finite = [t.kl_nats for t in result.per_token if t.kl_nats is not None]
    assert result.kl_divergence == pytest.approx(np.mean(finite), abs=1e-6)


def test_teacher_forcing_a_model_against_itself(arena):
    loaded = arena.manager.get("smollm2/bf16").loaded
    answer = loaded.tokenizer("The capital of France is Paris.", add_special_tokens=False)["input_ids"]
    lp = arena.device.call(fidelity.answer_log_probs, loaded, PROMPT, answer)
    assert lp.shape == (len(answer), len(loaded.tokenizer))
    same = fidelity.compare("smollm2/bf16", lp, lp, answer, loaded.tokenizer.decode)
    assert same.kl_divergence == 0 and same.top1_agreement == 1.0 and same.first_top1_disagreement is None


def test_records_carry_fidelity_when_the_baseline_runs(arena):
    records = {r["variant"]: r for r in arena.compare_records(
        "Write one sentence about the sea.", ["smollm2/bnb-fp4", "smollm2/fp32", "smollm2/bf16"],
        arena.settings(max_new_tokens=24))}
    baseline = records["smollm2/fp32"]
    assert "noise floor KL" in report.teacher_forced_text(baseline)
    floor = baseline["fidelity"].pop("noise_floor")  # the baseline rerun with noise, on its own answer
    assert floor["epsilon"] == 2 ** -9 and floor["positions"] == baseline["new_tokens"]
    assert 0 < floor["kl_mean"] <= floor["kl_max"] < 1  # its place against bf16 is tested on 64 tokens
    assert all(records[v]["fidelity"]["noise_floor"] == floor for v in ("smollm2/bnb-fp4", "smollm2/bf16"))
    assert baseline["fidelity"] == {"baseline": "smollm2/fp32", "kl_divergence": 0.0, "top1_agreement": 1.0,
                                    "first_top1_disagreement": None, "margin_at_disagreement": None,
                                    "scored_tokens": baseline["new_tokens"], "kl_lower_bound_top_k": None,
                                    "unavailable": None, "nonfinite_positions": 0, "per_token": [],
                                    "statistics": None}
    assert baseline["answer_departs_at_token"] is None and baseline["answer_departs_at_char"] is None
    for variant in ("smollm2/bnb-fp4", "smollm2/bf16"):
        rec = records[variant]
        fid = rec["fidelity"]
        assert set(fid) == FIDELITY_FIELDS and fid["baseline"] == "smollm2/fp32"
        assert fid["kl_divergence"] >= 0 and 0 <= fid["top1_agreement"] <= 1
        assert fid["scored_tokens"] == baseline["new_tokens"]
        per_token = fid["per_token"]
        assert len(per_token) == fid["scored_tokens"] and fid["nonfinite_positions"] == 0
        assert np.mean([t["kl_nats"] for t in per_token]) == pytest.approx(fid["kl_divergence"], abs=1e-6)
        stats = fid["statistics"]  # the Evaluate tab's statistics over this answer's positions
        assert stats["positions"] == fid["scored_tokens"] and stats["kl"]["mean"] == pytest.approx(fid["kl_divergence"],
                                                                                                  abs=1e-6)
        assert stats["top1_agreement"] == pytest.approx(fid["top1_agreement"], abs=1e-4)
        assert stats["kl"]["median"] <= stats["kl"]["max"] == pytest.approx(max(t["kl_nats"] for t in per_token), rel=1e-4)
        assert "kl_per_position" not in stats
        assert "".join(t["token"] for t in per_token).startswith(baseline["text"])  # the baseline's answer
        same_text = rec["text"] == baseline["text"]
        assert (rec["answer_departs_at_char"] is None) == same_text
        assert (rec["answer_departs_at_token"] is None) == (rec["answer_departs_at_char"] is None)
    fp4 = records["smollm2/bnb-fp4"]
    assert fp4["fidelity"]["kl_divergence"] > records["smollm2/bf16"]["fidelity"]["kl_divergence"]
    if fp4["answer_departs_at_char"] is not None:  # the texts agree up to the marked point
        cut = fp4["answer_departs_at_char"]
        assert fp4["text"][:cut] == baseline["text"][:cut]


PROMPTS = ["What is the capital of France?", "Write a haiku about autumn leaves.",
           "List three uses of a paperclip.\n\nAnswer in one line."]


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampled"])
def test_the_invariant_holds_on_the_real_model(arena, sample):
    """bf16 and LLM.int8 against fp32 on several prompts: 100% top-1 exactly when there is no disagreement."""
    settings = arena.settings(max_new_tokens=16, do_sample=sample, temperature=1.0, top_p=0.95,
                              seed=7 if sample else None)
    for prompt in PROMPTS:
        records = arena.compare_records(prompt, ["smollm2/fp32", "smollm2/bf16", "smollm2/bnb-int8"], settings)
        baseline = records[0]
        for rec in records[1:]:
            fid = rec["fidelity"]
            assert set(fid) == FIDELITY_FIELDS, rec["variant"]
            assert (fid["top1_agreement"] == 1.0) == (fid["first_top1_disagreement"] is None), (prompt, fid)
            if fid["first_top1_disagreement"] is not None:
                margin = fid["margin_at_disagreement"]
                assert set(margin) == MARGIN_FIELDS and margin["position"] == fid["first_top1_disagreement"]
                assert margin["baseline_token_p_baseline"] >= margin["variant_token_p_baseline"]
                assert margin["variant_token_p_variant"] >= margin["baseline_token_p_variant"]
            cut = rec["answer_departs_at_char"]
            assert (cut is None) == (rec["answer_departs_at_token"] is None)
            assert (cut is None) == (rec["text"] == baseline["text"]), (prompt, rec["variant"])
            if cut is not None:
                assert rec["text"][:cut] == baseline["text"][:cut]


def test_no_baseline_no_fidelity(arena):
    records = arena.compare_records(PROMPT, ["smollm2/bf16", "smollm2/bnb-nf4"], arena.settings(max_new_tokens=8))
    assert all(r["fidelity"] is None and r["answer_departs_at_char"] is None and r["answer_departs_at_token"] is None
               for r in records)


# The page: each figure on its own labelled line, the summary's columns, the literal divergence view.

def record(**overrides) -> dict:
    """A finished variant's record as the runner writes it, departing at token 6 (char 30)."""
    rec = {"variant": "smollm2/bnb-int8", "method": "bnb-int8", "bits": 8, "status": "done", "new_tokens": 16,
           "ttft_ms": 80.0, "decode_tokens_per_s": 21.5, "total_ms": 800.0, "load_ms": 2100.0, "cache_hit": False,
           "weights_mib": 160.0, "peak_memory_mib": 400.0, "text": "The capital of France is Paris, the city.",
           "answer_departs_at_token": 6, "answer_departs_at_char": 30,
           "fidelity": {"baseline": "smollm2/fp32", "kl_divergence": 0.0123, "top1_agreement": 0.9375,
                        "first_top1_disagreement": 6, "scored_tokens": 16,
                        "margin_at_disagreement": {
                            "position": 6, "baseline_token": " Paris", "baseline_token_id": 1,
                            "baseline_token_p_baseline": 0.51, "baseline_token_p_variant": 0.47,
                            "variant_token": " the", "variant_token_id": 2, "variant_token_p_baseline": 0.45,
                            "variant_token_p_variant": 0.49, "near_tie": True}}}
    rec.update(overrides)
    return rec


def agreeing(**overrides) -> dict:
    fid = {**record()["fidelity"], "top1_agreement": 1.0, "first_top1_disagreement": None,
           "margin_at_disagreement": None}
    return record(fidelity=fid, **overrides)


def test_the_two_figures_are_separate_labelled_lines():
    figures = dict(report.figures(record()))
    assert figures["own answer"] == "departs at token 6"
    assert figures["teacher-forced"] == ("KL 0.0123 nats · top-1 93.8% · first top-1 disagreement at token 6: "
                                         "baseline ' Paris' 51% vs ' the' 45%; variant ' the' 49% vs ' Paris' 47% "
                                         "(near tie)")
    same = dict(report.figures(agreeing(answer_departs_at_token=None, answer_departs_at_char=None)))
    assert same["own answer"] == "same as the baseline's, token for token"
    assert same["teacher-forced"] == "KL 0.0123 nats · top-1 100% · no top-1 disagreement"
    assert dict(report.figures(record(fidelity=None)))["own answer"] == "–"
    line = report.fidelity_text(record())
    assert line.startswith("own answer: departs at token 6; teacher-forced: KL 0.0123 nats") and "\n" not in line
    assert report.FIDELITY_HELP and "near tie" in report.FIDELITY_HELP


def test_prefix_answers_say_so():
    assert report.own_answer_text(record(answer_departs_at_token=16, new_tokens=16,
                                         fidelity={**record()["fidelity"], "scored_tokens": 20})) \
        == "departs at token 16: stops where the baseline's goes on"
    assert report.own_answer_text(record(answer_departs_at_token=16, new_tokens=20)) \
        == "departs at token 16: goes on where the baseline's stops"


def test_a_percentage_never_rounds_to_100_or_0():
    assert report.percent(1.0) == "100%" and report.percent(0.0) == "0%"
    assert report.percent(0.99996) == "99.9%" and report.percent(0.00004) == "0.1%"
    assert report.percent_value(0.9375) == 93.8
    text = report.teacher_forced_text(record(fidelity={**record()["fidelity"], "top1_agreement": 0.9999}))
    assert "top-1 99.9%" in text


def test_margin_probabilities_that_round_alike_get_decimals():
    margin = {**record()["fidelity"]["margin_at_disagreement"], "variant_token_p_variant": 0.4944,
              "baseline_token_p_variant": 0.4941}
    assert "variant ' the' 49.44% vs ' Paris' 49.41%" in report.margin_text(margin)


def test_figures_markdown_shows_token_text_literally():
    fid = record()["fidelity"]
    margin = {**fid["margin_at_disagreement"], "baseline_token": "|", "variant_token": "<b>*x*</b>"}
    md = report.figures_markdown(record(fidelity={**fid, "margin_at_disagreement": margin}))
    assert "\\|" in md and "&lt;b&gt;\\*x\\*&lt;/b&gt;" in md and "<b>" not in md
    assert all(line.count("|") - line.count("\\|") == 3 for line in md.splitlines())  # one cell per column


def test_summary_shows_load_meaning_and_fidelity():
    baseline = record(variant="smollm2/fp32", answer_departs_at_token=None,
                      fidelity={**agreeing()["fidelity"], "baseline": "smollm2/fp32"})
    rows = report.summary_rows([baseline, record(), record(load_ms=0.05, cache_hit=True, answer_departs_at_token=None),
                                record(fidelity=None, load_ms=None)])
    assert all(len(row) == len(report.SUMMARY_HEADERS) for row in rows)
    col = {h: [row[i] for row in rows] for i, h in enumerate(report.SUMMARY_HEADERS)}
    assert col["load"] == ["cold 2.1 s", "cold 2.1 s", "cached (0.05 ms)", None]
    assert col["KL vs baseline (nats)"] == [0.0123, 0.0123, 0.0123, None]
    assert col["top-1 agreement (%)"] == [100.0, 93.8, 93.8, None]
    assert col["own answer departs at token"] == ["baseline", "6", "never (same answer)", None]


BASELINE = "Here is code:\n\n```python\nprint(`x`)\n```\n\nThe end."


def view(text: str, cut: int | None, baseline: str = BASELINE) -> str:
    return report.divergence_html(record(text=text, answer_departs_at_char=cut), baseline)


def pre_text(page: str) -> str:
    """What the <pre> shows, as a browser would: tags dropped, entities decoded, the first newline eaten."""
    inner = re.search(r'<pre class="divergence" style="white-space:pre-wrap">(.*?)</pre>', page, re.S).group(1)
    return html.unescape(re.sub(r"<[^>]+>", "", inner.removeprefix("\n")))


def test_divergence_view_is_literal_text():
    text = "Here is code:\n\n```python\nprint(`y`)\n```\n\n<img src=x onerror=alert(1)> and **bold**"
    cut = text.index("y")
    page = view(text, cut)
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert pre_text(page) == text  # backticks, fences, blank lines and ** as typed
    assert f"<mark>{html.escape(text[cut:])}</mark>" in page
    assert "Departs from the baseline" in page
    assert view(text, None) == ""


def test_divergence_view_keeps_a_leading_blank_line():
    assert pre_text(view("\n\nHello", 0, "Hi")) == "\n\nHello"


def test_divergence_view_when_one_answer_is_a_prefix():
    early = view(BASELINE[:20], 20)
    assert "Stops early" in early and f"{len(BASELINE) - 20} more characters" in early and "<mark>" not in early
    longer = BASELINE + "\nAnd more."
    past = view(longer, len(BASELINE))
    assert "Continues past the end" in past and "<mark>\nAnd more.</mark>" in past


def test_divergence_view_of_a_long_answer_is_a_window():
    baseline = "word " * 600  # about a 512-token answer
    text = baseline[:1500] + "other " * 500
    page = view(text, 1500, baseline)
    shown = pre_text(page)
    assert len(page) < 1500 and len(shown) < 600
    assert "(1,300 characters before)" in shown and f"({len(text) - 1700:,} more characters)" in shown
    assert page.count("word") < 60  # the baseline's text is previewed, never copied in full


def test_the_card_carries_both_figures_under_their_names():
    from demo.reports import card

    row = card.csv_rows([{**record(), "quantization": {}}])[0]
    assert set(row) == set(card.CSV_FIELDS)
    assert (row["first_top1_disagreement"], row["answer_departs_at_token"], row["answer_departs_at_char"]) == (6, 6, 30)
    assert json.loads(row["margin_at_disagreement"])["variant_token"] == " the"
