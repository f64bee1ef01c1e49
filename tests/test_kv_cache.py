"""The KV cache as a variant axis: its bytes per token from the model's shape, and llama.cpp's q8_0 and q4_0
caches holding exactly that (read back from llama.cpp's own state size), each loading and answering."""

import threading

import pytest

from demo.config import load_config
from demo.errors import ConfigError
from demo.measuring.kv_cache import KvShape, bytes_per_token, kv_cache
from demo.settings import GenerationSettings, prompt_ids
from tests.conftest import CLEAR_PROMPT, in_process

# SmolLM2-135M as its GGUF file describes it: 30 layers, 9 query heads and 3 KV heads over 576 wide (64 each)
SMOLLM2 = {"general.architecture": "llama", "llama.block_count": "30", "llama.attention.head_count": "9",
           "llama.attention.head_count_kv": "3", "llama.embedding_length": "576"}
# what llama.cpp's state holds per used cell besides its keys and values: its position, its count of sequence
# ids and the one sequence id (int32 each)
CELL_BYTES = 12
KV_VARIANTS = {"smollm2/gguf-q8_0": ("f16", 23040), "smollm2/gguf-q8_0-kv-q8_0": ("K q8_0 · V q8_0", 12240),
               "smollm2/gguf-q8_0-kv-q4_0": ("K q4_0 · V q4_0", 6480)}


def test_bytes_per_token_from_the_shape_by_hand():
    shape = KvShape.from_gguf(SMOLLM2)
    assert shape == KvShape(layers=30, kv_heads=3, key_width=64, value_width=64)
    assert bytes_per_token(shape, "f16", "f16") == 30 * 3 * (64 * 2 + 64 * 2) == 23040
    assert bytes_per_token(shape, "q8_0", "q8_0") == 30 * 3 * 2 * 64 * 34 / 32 == 12240  # 32 int8 + an fp16 scale
    assert bytes_per_token(shape, "q4_0", "q4_0") == 30 * 3 * 2 * 64 * 18 / 32 == 6480  # 16 bytes + the scale
    assert bytes_per_token(shape, "q8_0", "f16") == 30 * 3 * 64 * (34 / 32 + 2)
    assert kv_cache(shape, "q8_0", "f16").flash_attention is False  # only a quantized V needs it
    assert kv_cache(shape, "q4_0", "q4_0").label == "K q4_0 · V q4_0" and kv_cache(shape, "f16", "f16").label == "f16"


def test_a_cache_type_is_checked_in_the_models_file(tmp_path):
    (tmp_path / "models.yaml").write_text("""
bases:
  b: {source: {kind: local, path: .}}
variants:
  - {id: b/q8, base: b, method: gguf, settings: {type: Q8_0, cache_type_v: q3_k}}
""")
    with pytest.raises(ConfigError, match="cache_type_v"):
        load_config(tmp_path / "models.yaml")


@pytest.fixture(scope="module")
def gguf_arena(default_config):
    pytest.importorskip("llama_cpp", reason="GGUF variants need llama-cpp-python (built by make install)")
    from demo.artifacts.quantize import quantize_variant
    from demo.running.runner import Arena

    quantize_variant(default_config, "smollm2/gguf-q8_0")  # one file for all three (its type is the same)
    return Arena(in_process(default_config))  # in this process: the test reads llama.cpp's own state


@pytest.mark.parametrize("variant_id", list(KV_VARIANTS))
def test_llama_cpp_keeps_what_the_shape_says_and_answers(gguf_arena, variant_id):
    loaded = gguf_arena.device.call(gguf_arena.manager.get, variant_id).loaded
    label, expected = KV_VARIANTS[variant_id]
    kv = loaded.details()["kv_cache"]
    assert (kv["label"], kv["bytes_per_token"]) == (label, expected)
    assert kv["bytes"] == expected * loaded.llm.n_ctx()

    def state_bytes(tokens: int) -> int:
        import llama_cpp

        loaded.llm.reset()  # the cells from position 0 on are written again
        loaded.llm.eval(list(range(100, 100 + tokens)))
        return llama_cpp.llama_state_get_size(loaded.llm.ctx)

    held = gguf_arena.device.call(lambda: (state_bytes(128) - state_bytes(64)) / 64)
    assert held - CELL_BYTES == expected  # llama.cpp's own figure: what its cache holds per token
    ids = gguf_arena.device.call(prompt_ids, loaded.tokenizer, CLEAR_PROMPT)
    tokens = []
    gguf_arena.device.call(loaded.generate, ids, GenerationSettings(max_new_tokens=6), threading.Event(),
                           lambda token_id, at_s: tokens.append(token_id))
    assert len(tokens) >= 1 and loaded.tokenizer.decode(tokens).strip()
    gguf_arena.manager.evict(variant_id)
