"""Synthetic bases: a named shape with random weights, for speed and memory only. On the tiny test shape: it loads in
every family that takes it, each answer runs to exactly the requested tokens, fidelity and perplexity are refused
with the reason, and the weights footprint equals the size computed from the shapes."""

import hashlib
import threading
from pathlib import Path

import pytest
import torch

from demo.artifacts import cache, gguf, sources, synthetic
from demo.artifacts.quantize import QuantizeError, quantize, quantize_variant
from demo.config import Source, load_config
from demo.errors import ConfigError, InvalidRequest
from demo.measuring.shapes import (QUALITY_NOT_COMPUTED, RANDOM_WEIGHTS_NOTE, SHAPES, parameter_count,
                                   rotary_buffer_bytes, shape_named, weights_bytes)
from demo.reports import card, report
from demo.settings import GenerationSettings, prompt_ids
from tests.conftest import in_process

BASE = "tiny-random"
# One variant of each family (and the plain dtypes and F32 file, whose size the shapes give exactly): each load
# costs seconds on a busy machine, so the other schemes of a family are left to their own tests.
TRANSFORMERS = ["fp32", "bf16", "bnb-nf4", "torchao-int8"]
GGUF = ["gguf-q8_0", "gguf-f32"]
TOKENS = 8  # the stop-token test below makes a stop token certain; here every run must still reach this length

MODELS = f"""
bases:
  {BASE}:
    label: tiny shape, random weights
    source: {{kind: synthetic, shape: tiny, seed: 3}}
    baseline: {BASE}/fp32
variants:
  - {{id: {BASE}/fp32, base: {BASE}, method: fp32}}
  - {{id: {BASE}/bf16, base: {BASE}, method: bf16}}
  - id: {BASE}/bnb-nf4
    base: {BASE}
    method: bnb-4bit
    settings: {{bnb_4bit_quant_type: nf4, bnb_4bit_use_double_quant: true, bnb_4bit_compute_dtype: bfloat16}}
  - {{id: {BASE}/torchao-int8, base: {BASE}, method: torchao, dtype: bfloat16, settings: {{scheme: int8_weight_only}}}}
  - {{id: {BASE}/gguf-q8_0, base: {BASE}, method: gguf, settings: {{type: Q8_0}}}}
  - {{id: {BASE}/gguf-f32, base: {BASE}, method: gguf, settings: {{type: F32}}}}
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "models.yaml"
    path.write_text(MODELS)
    return load_config(path)


@pytest.fixture(scope="module")
def synthetic_arena(config):
    from demo.running.runner import Arena

    return Arena(in_process(config))  # a test sets the loaded model's own generation config


@pytest.fixture(scope="module")
def gguf_made(config):
    if not gguf.llama_cpp_available() or gguf.converter() is None:
        pytest.skip("GGUF variants need llama-cpp-python and llama.cpp's converter (make install)")
    for name in GGUF:
        quantize_variant(config, f"{BASE}/{name}")


def test_shapes_count_what_transformers_builds():
    """The arithmetic against an independent count: each shape built on the meta device by transformers."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    for shape in SHAPES.values():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(LlamaConfig(**shape.config_fields()))
        built = sum(p.numel() for p in model.parameters())  # a tied head shares the embedding: counted once
        assert parameter_count(shape).total == built, shape.name
        assert weights_bytes(shape, 2) == 2 * built
    assert parameter_count(SHAPES["llama-3.2-1b"]).total == 1_235_814_400  # as published for Llama-3.2-1B
    assert parameter_count(SHAPES["llama-3.1-8b"]).total == 8_030_261_248  # and for Llama-3.1-8B


def test_the_models_file_refuses_what_a_synthetic_base_cannot_be(tmp_path):
    def refusal(text: str) -> str:
        path = tmp_path / "m.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        return str(caught.value)

    base = "bases:\n  r: {source: {kind: synthetic, shape: %s%s}}\nvariants:\n  - %s\n"
    assert "unknown shape 'llama-9b'" in refusal(base % ("llama-9b", "", "{id: r/a, base: r, method: bf16}"))
    assert "whole number" in refusal(base % ("tiny", ", seed: -1", "{id: r/a, base: r, method: bf16}"))
    remote = "{id: r/a, base: r, method: remote, endpoint: {url: 'http://h:1/v1', model: m, engine: vllm}}"
    assert "no remote variants" in refusal(base % ("tiny", "", remote))
    pre_made = "{id: r/a, base: r, method: gguf, settings: {type: Q8_0}, checkpoint: {kind: local, path: f.gguf}}"
    assert "no pre-made checkpoint" in refusal(base % ("tiny", "", pre_made))
    other = "bases:\n  r: {source: {kind: hub, repo: a/b, shape: tiny}}\nvariants:\n  - {id: r/a, base: r, method: bf16}\n"
    assert "kind synthetic" in refusal(other)


def test_materialised_once_seeded_and_sealed(config, tmp_path):
    source = config.bases[BASE].source
    folder = Path(sources.resolve(config.bases[BASE]).location)
    weights = folder / "model.safetensors"
    written_ns = weights.stat().st_mtime_ns
    assert sources.resolve(config.bases[BASE]).location == str(folder)  # a cache hit: not written again
    assert weights.stat().st_mtime_ns == written_ns
    assert cache.verify(folder, full=True).ok  # sealed with a manifest, like the bundled checkpoint
    assert folder.relative_to(cache.cache_dir()).parts[:2] == (cache.BUNDLED, "synthetic")
    listed = {e.path: e for e in cache.entries()}[folder.relative_to(cache.cache_dir()).as_posix()]
    assert (listed.kind, listed.state) == ("random weights", "ok")
    # the same shape and seed write the same bytes; another seed, other weights
    synthetic.write_checkpoint(shape_named("tiny"), source.seed, tmp_path / "again")
    synthetic.write_checkpoint(shape_named("tiny"), source.seed + 1, tmp_path / "other")
    digest = {name: hashlib.sha256((tmp_path / name / "model.safetensors").read_bytes()).hexdigest()
              for name in ("again", "other")}
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest["again"] != digest["other"]


def test_a_larger_vocabulary_gets_the_bundled_tokenizer_padded_to_its_size(config, tmp_path):
    from transformers import AutoTokenizer

    bundled = AutoTokenizer.from_pretrained(sources.resolve(config.bases[BASE]).location)  # tiny: the bundled one
    padded = synthetic._tokenizer(128256, tmp_path)
    assert len(bundled) == synthetic.TOKENIZER_TOKENS and len(padded) == 128256
    text = "Quantization trades precision for memory: 4-bit weights, ½ the bytes."
    assert padded(text)["input_ids"] == bundled(text)["input_ids"]
    assert padded.decode([100_000]) == synthetic.PLACEHOLDER.format(100_000)
    assert "79,104 placeholder tokens" in synthetic.tokenizer_text(128256)
    assert "the shape's vocabulary" in synthetic.tokenizer_text(49152)


def test_every_family_loads_and_runs_to_exactly_the_tokens_asked(synthetic_arena, config, gguf_made):
    ids = [f"{BASE}/{name}" for name in TRANSFORMERS + GGUF]
    settings = synthetic_arena.settings(max_new_tokens=TOKENS)
    records = []
    for start in range(0, len(ids), 3):  # at most 3 a comparison keeps the tiny models' budget small
        records += synthetic_arena.compare_records("Tell me about the sea.", ids[start:start + 3], settings)
    for record in records:
        assert record["status"] == "done", record["error"]
        assert record["new_tokens"] == TOKENS and record["truncated"], record["variant"]
        assert record["random_weights"]["note"] == RANDOM_WEIGHTS_NOTE
        assert record["random_weights"]["shape"] == "tiny" and record["random_weights"]["seed"] == 3
        assert record["fidelity"] is None and record["answer_departs_at_token"] is None  # not computed ...
        lines = dict(report.figures(record))  # ... and said, with the reason, not left blank
        assert lines["fidelity"] == QUALITY_NOT_COMPUTED and RANDOM_WEIGHTS_NOTE in lines["weights are"]
    runtimes = {r["variant"]: r["runtime"] for r in records}
    assert {runtimes[f"{BASE}/{name}"] for name in GGUF} == {"llama.cpp"}


def test_weights_footprint_equals_the_size_from_the_shapes(synthetic_arena, gguf_made):
    shape = shape_named("tiny")
    def held(name: str) -> int:
        return synthetic_arena.device.call(lambda: synthetic_arena.manager.get(f"{BASE}/{name}").loaded.weights_bytes)

    for name, width in {"fp32": 4, "bf16": 2}.items():
        # transformers holds the rotary inverse frequencies beside the weights: inv_freq and its original copy
        assert held(name) == weights_bytes(shape, width) + 2 * rotary_buffer_bytes(shape), name
    assert held("gguf-f32") == weights_bytes(shape, 4)  # llama.cpp's F32 file: the tied embedding stored once


def _first_token(loaded, ids) -> int:
    """The token a run would open with if nothing were banned (computed here, on this machine)."""
    saved, loaded.random_weights = loaded.random_weights, False
    try:
        first: list[int] = []
        loaded.generate(ids, GenerationSettings(max_new_tokens=1), threading.Event(), lambda t, at: first.append(t))
    finally:
        loaded.random_weights = saved
    return first[0]


@pytest.mark.parametrize("name", ["bf16", "gguf-q8_0"])
def test_a_stop_token_the_model_would_emit_first_is_banned(synthetic_arena, gguf_made, name):
    """Make the token the model opens with a stop token: unbanned, the run would end after it; banned, it runs to
    the end without ever emitting it."""
    def job():
        loaded = synthetic_arena.manager.get(f"{BASE}/{name}").loaded
        ids = prompt_ids(loaded.tokenizer, "Tell me about the sea.")
        first, saved = _first_token(loaded, ids), loaded.stop_token_ids
        loaded.stop_token_ids = frozenset({first})
        tokens: list[int] = []
        try:
            if loaded.runtime == "transformers":
                loaded.model.generation_config.eos_token_id = first  # what transformers alone would stop on
            loaded.generate(ids, GenerationSettings(max_new_tokens=TOKENS), threading.Event(),
                            lambda t, at: tokens.append(t))
        finally:
            loaded.stop_token_ids = saved
            if loaded.runtime == "transformers":
                loaded.model.generation_config.eos_token_id = sorted(saved)
        return first, tokens

    first, tokens = synthetic_arena.device.call(job)
    assert len(tokens) == TOKENS and first not in tokens


def test_quality_is_refused_with_its_reason_everywhere(synthetic_arena, config, tmp_path):
    from demo.evaluate import quality
    from demo.evaluate.plan import Plan, Protocol
    from demo.evaluate.records import VariantEvaluation
    from demo.flips import FlipPrompt, run_flips

    records = synthetic_arena.compare_records("Hello", [f"{BASE}/fp32", f"{BASE}/bf16"],
                                              synthetic_arena.settings(max_new_tokens=4))
    assert all(r["fidelity"] is None for r in records)  # not scored against the baseline, though one is named
    row = dict(zip(report.SUMMARY_HEADERS, report.summary_rows(records)[1]))
    assert [row[h] for h in report.FIDELITY_HEADERS] == [report.NOT_COMPUTED_CELL] * 3
    assert QUALITY_NOT_COMPUTED in report.fidelity_text(records[1])
    assert "random weights: speed and memory only" in report.text_report(records)
    markdown = card.markdown_card(records)
    assert "**Random weights: speed and memory only (the tiny (tests) shape, seed 3):**" in markdown
    assert QUALITY_NOT_COMPUTED in markdown
    assert all(row["random_weights"] for row in card.csv_rows(records))
    from demo.ui.columns import head_markdown
    from demo.ui.summary import conditions_markdown

    assert f"**{RANDOM_WEIGHTS_NOTE}**" in head_markdown(synthetic_arena, {**records[1], "status": "loading"})
    assert f"fidelity and perplexity {QUALITY_NOT_COMPUTED}" in conditions_markdown(records)
    row = VariantEvaluation(f"{BASE}/bf16", f"{BASE}/fp32")
    quality.measure(synthetic_arena, row, Plan(Protocol(), "Some text to score."), {})
    assert row.perplexity is None and row.kl_divergence is None and QUALITY_NOT_COMPUTED in row.quality_note
    with pytest.raises(InvalidRequest, match="random weights"):
        run_flips(synthetic_arena, [f"{BASE}/bf16"], [FlipPrompt("p", "greeting", "Hello", None)])
    from demo.blind.battle import BlindTest

    assert BlindTest(synthetic_arena, store=None).bases() == []  # a baseline is named, yet no blind battles


def test_gptq_and_awq_are_refused_at_a_billion_parameters_on_a_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a GPU they are allowed")
    base = load_config(Path(__file__).resolve().parent.parent / "models.synthetic.yaml").bases["llama-1b-random"]
    for method in ("gptq", "awq"):
        with pytest.raises(QuantizeError, match="takes hours"):
            quantize(base, method, {"bits": 4, "group_size": 128}, tmp_path / method)
        assert not (tmp_path / method).exists()  # refused before anything was made, the weights included


def test_the_synthetic_profile_names_the_1b_shape_and_its_families():
    config = load_config(Path(__file__).resolve().parent.parent / "models.synthetic.yaml")
    base = config.bases["llama-1b-random"]
    assert base.random_weights and base.source == Source("synthetic", shape="llama-3.2-1b", seed=0)
    methods = {(v.method, v.settings.get("scheme") or v.settings.get("type") or v.settings.get("bnb_4bit_quant_type"))
               for v in config.variants.values()}
    assert methods == {("bf16", None), ("bnb-4bit", "nf4"), ("torchao", "int8_weight_only"),
                       ("torchao", "int4_weight_only"), ("gguf", "Q8_0"), ("gguf", "Q4_K_M")}
