"""Fidelity to the baseline on one prompt: hand-made answers, then the real model."""

import pytest
import torch

from demo import fidelity

PROMPT = "What is the capital of France?"


def test_first_difference():
    assert fidelity.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert fidelity.first_difference([1, 2, 4], [1, 2, 3]) == 2
    assert fidelity.first_difference([1, 2], [1, 2, 3]) == 2
    assert fidelity.first_difference([9], [1]) == 0


def test_compare_by_hand():
    answer = [0, 1, 1]
    baseline = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.4, 0.6]]).log()
    variant = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.3, 0.7]]).log()
    result = fidelity.compare("b", baseline, variant, answer)
    assert result.top1_agreement == pytest.approx(2 / 3, abs=1e-4)
    assert result.first_divergence_token == 1  # the variant prefers token 0 where the answer has 1
    expected = sum(float((p * (p.log() - q.log())).sum()) for p, q in zip(baseline.exp(), variant.exp())) / 3
    assert result.kl_divergence == pytest.approx(expected, abs=1e-6)


def test_teacher_forcing_a_model_against_itself(arena):
    loaded = arena.manager.get("smollm2/bf16").loaded
    answer = loaded.tokenizer("The capital of France is Paris.", add_special_tokens=False)["input_ids"]
    lp = arena.device.call(fidelity.answer_log_probs, loaded, PROMPT, answer)
    assert lp.shape == (len(answer), len(loaded.tokenizer))
    same = fidelity.compare("smollm2/bf16", lp, lp, lp.argmax(-1).tolist())
    assert same.kl_divergence == 0 and same.top1_agreement == 1.0 and same.first_divergence_token is None


def test_records_carry_fidelity_when_the_baseline_runs(arena):
    records = {r["variant"]: r for r in arena.compare_records(
        "Write one sentence about the sea.", ["smollm2/bnb-fp4", "smollm2/fp32", "smollm2/bf16"],
        arena.settings(max_new_tokens=24))}
    assert records["smollm2/fp32"]["fidelity"] == {"baseline": "smollm2/fp32", "kl_divergence": 0.0,
                                                   "top1_agreement": 1.0, "first_divergence_token": None}
    for variant in ("smollm2/bnb-fp4", "smollm2/bf16"):
        fid = records[variant]["fidelity"]
        assert fid["baseline"] == "smollm2/fp32"
        assert fid["kl_divergence"] >= 0 and 0 <= fid["top1_agreement"] <= 1
        assert set(fid) == {"baseline", "kl_divergence", "top1_agreement", "first_divergence_token"}
        same_text = records[variant]["text"] == records["smollm2/fp32"]["text"]
        assert (records[variant]["diverges_at_char"] is None) == same_text
    fp4 = records["smollm2/bnb-fp4"]
    assert fp4["fidelity"]["kl_divergence"] > records["smollm2/bf16"]["fidelity"]["kl_divergence"]
    if fp4["diverges_at_char"] is not None:  # the texts agree up to the marked point
        cut = fp4["diverges_at_char"]
        assert fp4["text"][:cut] == records["smollm2/fp32"]["text"][:cut]


def test_no_baseline_no_fidelity(arena):
    records = arena.compare_records(PROMPT, ["smollm2/bf16", "smollm2/bnb-nf4"], arena.settings(max_new_tokens=8))
    assert all(r["fidelity"] is None and r["diverges_at_char"] is None for r in records)
