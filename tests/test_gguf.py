"""GGUF variants through llama.cpp, in this process: made with llama.cpp's quantizer, run, scored, refused."""

import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
import torch

from demo import evaluate
from demo.artifacts import gguf, sources
from demo.config import load_config
from demo.running.streaming import StreamingGeneration
from demo.settings import GenerationSettings, prompt_ids
from demo.artifacts.quantize import quantize_variant
from demo.running.runner import Arena
from tests.conftest import CLEAR_PROMPT, REPO, require_clear_answer

pytest.importorskip("llama_cpp", reason="GGUF variants need llama-cpp-python (built by make install)")

# llama.cpp's quantized matmuls also quantize the activations (to 8 bits), so even Q8_0 flips the
# near-tie first token of "What is the capital of France?" ("The" vs "L"): the tests use CLEAR_PROMPT.
PROMPT = CLEAR_PROMPT


@pytest.fixture(scope="module")
def gguf_files(default_config):
    """The default profile's GGUF files, made once with llama.cpp's own quantizer (seconds)."""
    return {v: quantize_variant(default_config, v) for v in ("smollm2/gguf-q8_0", "smollm2/gguf-q4_k_m")}


def test_quantizing_records_what_the_file_stores(gguf_files):
    q8 = json.loads((gguf_files["smollm2/gguf-q8_0"] / sources.METADATA_FILE).read_text())
    q4 = json.loads((gguf_files["smollm2/gguf-q4_k_m"] / sources.METADATA_FILE).read_text())
    assert q8["made_from"].startswith("requantized from the shipped SmolLM2-135M-Instruct.Q4_1.gguf")
    assert set(q8["stored"]["tensor_types"]) <= {"Q8_0", "F32"}
    assert 8.0 < q8["stored"]["weights_bits_per_weight"] < 9.0
    # 576-wide rows cannot hold K-quants: most Q4_K tensors fall back to Q5_0, only the 1536-wide
    # ffn_down ones keep a true K-quant, and the tied embedding is Q8_0.
    types = q4["stored"]["tensor_types"]
    assert "Q5_0" in types and "Q8_0" in types and any(t.endswith("_K") for t in types)
    assert q4["stored"]["weights_bits_per_weight"] > 5.0  # not the ~4.8 of a 7B model's Q4_K_M


def test_both_runtimes_stream_score_and_free_through_one_interface(arena, gguf_files):
    settings = GenerationSettings(max_new_tokens=12)
    for variant_id in ("smollm2/bf16", "smollm2/gguf-q8_0"):
        require_clear_answer(arena, variant_id)
        loaded = arena.device.call(arena.manager.get, variant_id).loaded
        ids = arena.device.call(prompt_ids, loaded.tokenizer, PROMPT)
        events = list(StreamingGeneration(arena.device, loaded, ids, settings, threading.Event()))
        assert 1 <= len(events) <= 12 and all(b.at_s >= a.at_s for a, b in zip(events, events[1:]))
        assert "Paris" in loaded.tokenizer.decode([e.token_id for e in events])
        logits = arena.device.call(loaded.logits, ids)
        assert logits.shape == (len(ids), len(loaded.tokenizer)) and logits.dtype == torch.float32
        assert int(logits[-1].argmax()) == events[0].token_id  # scoring and greedy generation agree
        assert loaded.weights_bytes > 0 and loaded.details()["runtime"] == loaded.runtime
        arena.manager.evict(variant_id)
        assert variant_id not in arena.manager.loaded_ids()


def test_gguf_answers_and_sits_closer_to_the_baseline_at_q8_than_q4(arena, gguf_files):
    ids = ["smollm2/fp32", "smollm2/gguf-q8_0", "smollm2/gguf-q4_k_m"]
    for variant_id in ids:
        require_clear_answer(arena, variant_id)
    records = {r["variant"]: r for r in arena.compare_records(PROMPT, ids, arena.settings(max_new_tokens=16))}
    for variant_id in ids[1:]:
        record = records[variant_id]
        assert record["status"] == "done" and "Paris" in record["text"], record
        assert record["runtime"] == "llama.cpp" and record["device"] == "cpu" and record["memory_kind"] == "cpu-rss"
        assert record["stored"]["tensor_types"] and record["stored"]["memory_mapped"] is True
        assert record["decode_tokens_per_s"] > 0 and record["peak_memory_mib"] >= record["weights_mib"] > 0
        assert record["prompt_tokens"] == records["smollm2/fp32"]["prompt_tokens"]  # the same prompt ids
    q8, q4 = records["smollm2/gguf-q8_0"]["fidelity"], records["smollm2/gguf-q4_k_m"]["fidelity"]
    assert q8["baseline"] == "smollm2/fp32"
    assert 0 <= q8["kl_divergence"] < 0.05 and q8["kl_divergence"] < q4["kl_divergence"]
    assert records["smollm2/gguf-q8_0"]["weights_mib"] < records["smollm2/gguf-q4_k_m"]["weights_mib"] * 2


def test_greedy_gguf_is_deterministic_and_honours_max_new_tokens(arena, gguf_files):
    settings = arena.settings(max_new_tokens=5)
    first, second = (arena.compare_records("Count from one to twenty.", ["smollm2/gguf-q8_0"], settings)[0]
                     for _ in range(2))
    assert first["text"] == second["text"] and first["new_tokens"] == 5 and first["truncated"] is True
    assert first["load_ms"] is not None and second["cache_hit"] is True


def test_evaluate_writes_gguf_rows(arena, gguf_files, tmp_path):
    text = "\n".join((REPO / "assets" / "evaluation.txt").read_text().splitlines()[:8])
    rows = evaluate.evaluate(arena, ["smollm2/fp32", "smollm2/gguf-q8_0"], text, runs=1, max_new_tokens=8)
    q8 = rows[1]
    assert q8.error is None and 1 < q8.perplexity < 1000 and q8.scored_tokens > 50
    assert 0 < q8.kl_divergence < 0.05 and q8.top1_agreement > 0.8
    assert q8.disk_mib and q8.decode_tokens_per_s_p50 > 0
    paths = evaluate.write_outputs(rows, arena, tmp_path, evaluate.conditions(REPO / "assets" / "evaluation.txt", 1, 8))
    assert "| smollm2/gguf-q8_0 |" in paths["markdown"].read_text()


def test_a_gguf_with_another_vocabulary_is_refused(arena, gguf_files, tmp_path):
    """A file whose token texts differ from the base tokenizer's would silently read other tokens."""
    from gguf import GGUFWriter

    tokenizer = arena.device.call(arena.manager.get, "smollm2/fp32").loaded.tokenizer
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    tokens[10], tokens[11] = tokens[11], tokens[10]  # among the token texts every load compares
    path = tmp_path / "other.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_token_list(tokens)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    models = tmp_path / "models.yaml"
    models.write_text((REPO / "models.yaml").read_text() + f"""  - id: smollm2/other
    base: smollm2
    method: gguf
    settings: {{type: Q8_0}}
    checkpoint: {{kind: local, path: {path}}}
""")
    local = Arena(load_config(models))
    [record] = local.compare_records(PROMPT, ["smollm2/other"], local.settings(max_new_tokens=4))
    assert record["status"] == "error"
    assert record["error"].startswith("not available: the GGUF file's vocabulary differs from the base model's")
    with pytest.raises(Exception, match="vocabulary has 49,152 tokens but the base model.s has 49,153"):
        gguf.check_vocabulary(path, tokenizer, len(tokenizer) + 1)


def test_without_llama_cpp_only_the_gguf_column_fails(gguf_files, arena, clear_prompt, tmp_path):
    """llama_cpp made unimportable in every process the CLI starts, its runtimes' own included (as on a Space
    without a compiler): a sitecustomize module on PYTHONPATH, which every interpreter imports at start-up."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['llama_cpp'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    code = ("import sys; from demo.__main__ import main; "
            f"sys.exit(main(['compare', '--prompt', {clear_prompt!r}, '--variants', "
            "'smollm2/bf16,smollm2/gguf-q8_0', '--max-new-tokens', '8', '--json']))")
    require_clear_answer(arena, "smollm2/bf16")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    bf16, q8 = json.loads(run.stdout)
    assert bf16["status"] == "done" and "Paris" in bf16["text"]
    assert q8["status"] == "error" and q8["error"] == "not available: llama-cpp-python is not installed " \
                                                      "(make install builds it)"


def test_quantize_cli_makes_a_gguf_file_from_a_transformers_checkpoint(default_config, tmp_path):
    """A local transformers base is converted to F32 GGUF by llama.cpp's converter, then quantized."""
    if gguf.converter() is None:
        pytest.skip("llama.cpp's convert_hf_to_gguf.py is not installed (make install puts it in the venv)")
    folder = tmp_path / "checkpoint"
    shutil.copytree(sources.resolve(default_config.bases["smollm2"]).location, folder)
    config = json.loads((folder / "config.json").read_text())
    assert config.get("architectures", ["LlamaForCausalLM"]) == ["LlamaForCausalLM"]
    config["architectures"] = ["LlamaForCausalLM"]  # checkpoints materialized before it was recorded lack it
    (folder / "config.json").write_text(json.dumps(config))
    models = tmp_path / "models.yaml"
    models.write_text(f"""
bases:
  local: {{source: {{kind: local, path: {folder}}}}}
variants:
  - {{id: local/fp32, base: local, method: fp32}}
""")
    out = tmp_path / "local-q8_0.gguf"
    run = subprocess.run([sys.executable, "-m", "demo.quantize", "--models", str(models), "--base", "local",
                          "--method", "gguf", "--type", "Q8_0", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "ARENA_CACHE_DIR": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "converted from the transformers checkpoint" in run.stdout and out.is_file()
    assert gguf.stored_weights(out).tensor_types.keys() <= {"Q8_0", "F32"}
    assert not list(tmp_path.glob(".*.partial"))
