"""The depth protocol (demo.evaluate.depth): its prompts and needles, its rows on a tiny model through the command
line, the needle's scoring, and the teacher-forced rows a long context needs (logits from first_row on)."""

import json

import pytest
import torch

from demo.config import load_config
from demo.errors import InvalidRequest
from demo.evaluate import depth
from tests.conftest import tiny_models_file

FIELDS = ("variant", "depth", "kl_mean", "kl_p99_9", "top1", "ttft_ms", "decode_tokens_per_s", "kv_cache_bytes",
          "peak_mib", "needle")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, default_config):
    pytest.importorskip("hqq")
    folder = tmp_path_factory.mktemp("depth")
    return tiny_models_file(folder, default_config, """
{id: tiny/fp32, base: tiny, method: fp32}
{id: tiny/bf16, base: tiny, method: bf16}
{id: tiny/fp32-kv-int4, base: tiny, method: fp32, settings: {cache_config: {backend: hqq, nbits: 4, axis_key: 0, axis_value: 0, q_group_size: 64, residual_length: 32}}}
""", hidden=128)


@pytest.fixture(scope="module")
def tokenizer(tiny_config):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_config.parent / "base")


def test_the_context_holds_each_fact_between_lines_and_the_longest_question_ends_at_the_depth(tokenizer):
    plan = depth.DepthPlan(depths=(512, 2048), needles=3, new_tokens=16)
    for d in plan.depths:
        probe = plan.probe(tokenizer, d)
        assert len(probe.context) + max(len(q) for q in probe.questions) == d - 16
        assert probe.codes == list(depth.CODES[:3])
        at, n = probe.needles_at, len(probe.context)
        assert at == sorted(at) and at[0] < n / 3 < at[1] < 2 * n / 3 < at[2]
        text = tokenizer.decode(probe.context)
        for colour, code, place, question in zip(depth.COLOURS, probe.codes, at, probe.questions):
            assert text.count(f"the pass code for the {colour} gate is {code}.") == 1
            assert "\n" in tokenizer.decode(probe.context[place - 1:place + 1])  # between lines
            assert tokenizer.decode(question) == depth.QUESTION.format(colour=colour)


def test_a_plan_is_checked_before_any_model_loads(tmp_path):
    for plan, message in [(depth.DepthPlan(depths=()), "at least one depth"),
                          (depth.DepthPlan(depths=(2048, 512)), "smallest first"),
                          (depth.DepthPlan(depths=(100,)), "at least 336 tokens"),
                          (depth.DepthPlan(needles=9), "needles must be from 1 to 8"),
                          (depth.DepthPlan(new_tokens=1), "a decode rate needs two"),
                          (depth.DepthPlan(text_file=tmp_path / "none.txt"), "not found")]:
        with pytest.raises(InvalidRequest, match=message):
            plan.check()


def test_a_text_too_short_for_the_depth_is_refused(tokenizer, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Alice sat by the river.\n" * 40)
    with pytest.raises(InvalidRequest, match="too short for depth 2,048"):
        depth.DepthPlan(depths=(2048,), text_file=short).probe(tokenizer, 2048)


@pytest.mark.parametrize("answer, found", [(" 7402.", True), ("7402", True), (': "7402"', True), (" 74021", False),
                                           (" 7403", False), (" the number 7402", False), ("", False)])
def test_the_needle_is_found_by_exact_match_at_the_answers_start(answer, found):
    assert depth._found(answer, "7402") is found


def test_the_needle_counts_its_interval_and_flips_against_the_baseline():
    result = depth._needle([True, False, True], [True, True, False])
    assert (result["found"], result["total"], result["baseline_found"]) == (2, 3, 2)
    assert (result["lost"], result["gained"]) == (1, 1)
    low, high = result["interval"]
    assert 0.2 < low < 2 / 3 < high < 1  # Wilson 95 %: (0.208, 0.939)
    assert depth._needle([False], None) == {"found": 0, "total": 1, "interval": [0.0, 0.793],
                                            "method": result["method"]}


def test_gguf_contexts_are_raised_for_the_sweep(default_config):
    config, notes = depth.config_for_depths(default_config, (512, 8192))
    assert config.variants["smollm2/gguf-q8_0"].settings["n_ctx"] == 8192
    assert default_config.variants["smollm2/gguf-q8_0"].settings["n_ctx"] == 2048  # the original is untouched
    assert "smollm2/gguf-q8_0: n_ctx raised from 2048 to 8192 for the sweep" in notes
    assert config.variants["smollm2/bf16"] == default_config.variants["smollm2/bf16"]


@pytest.mark.parametrize("variant_id", ["tiny/fp32", "tiny/fp32-kv-int4"])
def test_rows_from_first_row_on_are_the_same_rows(tiny_config, variant_id):
    """A long context's teacher forcing computes only the rows it scores; they are those of the whole pass."""
    from demo.backends import transformers as backend

    config = load_config(tiny_config)
    loaded = backend.load(config.variants[variant_id], config.bases["tiny"])
    ids = list(range(200, 300))
    whole = loaded.logits(ids, 60)
    part = loaded.logits(ids, 60, first_row=59)
    assert part.shape == (41, whole.shape[1])
    torch.testing.assert_close(part, whole[59:], rtol=1e-5, atol=1e-5)


def test_the_sweep_writes_one_row_per_variant_and_depth(tiny_config, tmp_path):
    from demo.evaluate.__main__ import main

    out = tmp_path / "out"
    assert main(["--models", str(tiny_config), "--protocol", "depth", "--depths", "384,768", "--needles", "2",
                 "--variants", "tiny/bf16,tiny/fp32,tiny/fp32-kv-int4", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    rows = data["rows"]
    # the baseline first: its own runs are the reference every variant is held against
    assert [(r["variant"], r["depth"]) for r in rows] == [
        ("tiny/fp32", 384), ("tiny/fp32", 768), ("tiny/bf16", 384), ("tiny/bf16", 768),
        ("tiny/fp32-kv-int4", 384), ("tiny/fp32-kv-int4", 768)]
    for row in rows:
        assert row["error"] is None and all(name in row for name in FIELDS)
        assert row["depth"] - depth.NEW_TOKENS - 3 <= row["prompt_tokens"] <= row["depth"] - depth.NEW_TOKENS
        assert row["ttft_ms"] > 0 and row["decode_tokens_per_s"] > 0 and row["peak_mib"] > 0
        assert row["needle"]["total"] == 2 and row["needle"]["baseline_found"] is not None
        assert len(row["answers"]) == 2
        step = row["bytes_read_per_step"]
        assert step["kv"] == round(row["kv_cache_bytes"] / row["prompt_tokens"] * (row["prompt_tokens"] + 8))
    by = {(r["variant"], r["depth"]): r for r in rows}
    # 2 layers x 4 KV heads x (32 + 32) wide: 512 elements a token, 4 bytes each in fp32, 2 in bf16, and hqq's
    # 4 bits plus an fp32 scale and zero point per 64
    tokens = by["tiny/fp32", 384]["prompt_tokens"]
    assert by["tiny/fp32", 384]["kv_cache_bytes"] == 512 * 4 * tokens
    assert by["tiny/bf16", 768]["kv_cache_bytes"] == 512 * 2 * by["tiny/bf16", 768]["prompt_tokens"]
    assert by["tiny/fp32-kv-int4", 384]["kv_cache_bytes"] == round(512 * (0.5 + 8 / 64) * tokens)
    assert by["tiny/fp32", 384]["kl_mean"] == 0 and by["tiny/fp32", 384]["top1"] == 1
    for vid in ("tiny/bf16", "tiny/fp32-kv-int4"):
        assert by[vid, 768]["kl_mean"] > 0 and by[vid, 768]["kl_p99_9"] >= by[vid, 768]["kl_mean"]
        assert 0 < by[vid, 768]["top1"] <= 1
    assert by["tiny/fp32-kv-int4", 768]["kv_cache"] == "K hqq int4 g64 · V hqq int4 g64"
    assert data["conditions"]["depths"] == [384, 768] and data["conditions"]["sweep_seconds"] > 0
    assert (out / "kl_vs_depth.png").stat().st_size > 0 and (out / "decode_vs_depth.png").stat().st_size > 0
    table = (out / "results.md").read_text()
    assert "| tiny/fp32-kv-int4 | 768 | K hqq int4 g64 · V hqq int4 g64 |" in table


def test_a_depth_past_a_variants_context_is_that_rows_error(tiny_config, tmp_path):
    from demo.evaluate.__main__ import main

    out = tmp_path / "out"
    # the tiny Llama's context is LlamaConfig's default 2048 positions
    assert main(["--models", str(tiny_config), "--protocol", "depth", "--depths", "384,4096", "--needles", "1",
                 "--variants", "tiny/fp32", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows[0]["error"] is None
    assert rows[1]["error"] == "depth 4,096 is past this variant's context of 2,048 tokens"


def test_the_evaluate_tab_runs_the_sweep_and_shows_its_rows_and_charts(tiny_config):
    """The tab's depth choice: the sweep's rows in words, both charts, the files; a bad depth list is the page's
    error line."""
    import asyncio
    from types import SimpleNamespace

    import gradio as gr

    from demo.running.runner import Arena
    from demo.ui import depth_view
    from demo.ui.evaluate import EvaluateTab

    request = SimpleNamespace(session_hash="visitor", headers={}, client=SimpleNamespace(host="127.0.0.1"))
    arena = Arena(load_config(tiny_config))
    with gr.Blocks():
        tab = EvaluateTab(arena, [("fp32", "tiny/fp32"), ("bf16", "tiny/bf16")])

    async def last(*args):
        final = None
        async for update in tab.on_evaluate(*args):
            final = update
        return final

    final = asyncio.run(last(["tiny/bf16", "tiny/fp32"], 1, 4, "depth", request, "384"))
    assert final[tab.status].startswith("**Done.**")
    table = final[tab.table]
    assert list(table.columns) == list(depth_view.HEADERS.values())
    assert table.iloc[:, 0].tolist() == ["tiny/fp32", "tiny/bf16"] and table.iloc[:, 1].tolist() == ["384", "384"]
    assert table.iloc[0, 3] == "0.00000" and table.iloc[0, 5] == "100.0%"
    assert final[tab.quality_chart]["value"].endswith("kl_vs_depth.png")
    assert final[tab.speed_chart]["value"].endswith("decode_vs_depth.png")
    assert [p.rsplit("/", 1)[-1] for p in final[tab.files]] == ["results.json", "results.md"]
    with pytest.raises(gr.Error, match="whole numbers separated by commas"):
        asyncio.run(last(["tiny/fp32"], 1, 4, "depth", request, "512;2048"))


@pytest.mark.parametrize("variant_id", ["tiny/fp32", "tiny/fp32-kv-int4"])
def test_one_reading_gives_the_scored_rows_and_an_answer_to_each_question(tiny_config, variant_id):
    """read_and_ask: the scored rows are those of teacher forcing the context alone, and each question is answered
    from the context's cache (the last one without a copy)."""
    from demo.backends import transformers as backend

    config = load_config(tiny_config)
    loaded = backend.load(config.variants[variant_id], config.bases["tiny"])
    context, questions = list(range(200, 420)), [[5, 6, 7], [8, 9]]
    run = loaded.read_and_ask(context, 64, questions, 6)
    torch.testing.assert_close(run["scored_logits"], loaded.logits(context, 156, 155)[:64], rtol=1e-4, atol=1e-4)
    assert run["read_s"] > 0 and len(run["answers"]) == 2
    for answer in run["answers"]:
        assert 1 <= len(answer["tokens"]) <= 6 and len(answer["stamps"]) == len(answer["tokens"])
        assert answer["ttft_s"] > 0
