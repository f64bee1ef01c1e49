"""The KV cache as a variant axis: its bytes per token from the model's shape, and llama.cpp's q8_0 and q4_0
caches holding exactly that (read back from llama.cpp's own state size), each loading and answering."""

import threading

import pytest

from demo.config import load_config
from demo.errors import ConfigError
from demo.measuring.kv_cache import KvShape, bytes_per_token, kv_cache
from demo.settings import GenerationSettings, prompt_ids
from tests.conftest import CLEAR_PROMPT, in_process, tiny_models_file

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


# --- transformers' quantized caches ----------------------------------------------------------------------

def test_a_quantized_cache_is_checked_in_the_models_file(tmp_path):
    base = "bases:\n  b: {source: {kind: local, path: .}}\nvariants:\n"
    for settings, message in [("{cache_config: {backend: quanto}}", "backend must be one of fp8, hqq"),
                              ("{cache_config: {backend: fp8, nbits: 4}}", "fp8 backend quantizes per tensor"),
                              ("{cache_config: {backend: hqq, nbits: 5}}", "nbits must be one of"),
                              ("{cache_config: {nbits: 4}}", "needs a backend"),
                              ("{cache_config: {backend: hqq, group: 64}}", "unknown argument 'group'")]:
        (tmp_path / "models.yaml").write_text(base + f"  - {{id: b/kv, base: b, method: bf16, settings: {settings}}}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(tmp_path / "models.yaml")


def test_transformers_bytes_per_token_by_hand():
    from demo.measuring.kv_cache import transformers_kv_cache

    shape = KvShape(layers=30, kv_heads=3, key_width=64, value_width=64)  # SmolLM2-135M: 11,520 elements a token
    assert transformers_kv_cache(shape, "bfloat16", None).bytes_per_token == 11520 * 2 == 23040
    assert transformers_kv_cache(shape, "float32", None).bytes_per_token == 11520 * 4
    assert transformers_kv_cache(shape, "bfloat16", {"backend": "fp8"}).bytes_per_token == 11520
    # 4 bits an element, and a bf16 scale and zero point per group of 64: 0.5 + 4 / 64 bytes an element
    hqq = transformers_kv_cache(shape, "bfloat16", {"backend": "hqq", "nbits": 4, "q_group_size": 64})
    assert hqq.bytes_per_token == 11520 * (0.5 + 4 / 64) == 6480 and hqq.label == "K hqq int4 g64 · V hqq int4 g64"


@pytest.mark.parametrize("cache_config", [None, {"backend": "fp8"},
                                          {"backend": "hqq", "nbits": 4, "axis_key": 0, "axis_value": 0,
                                           "q_group_size": 64, "residual_length": 4}])
def test_a_transformers_cache_holds_what_the_shape_says(cache_config):
    """The tensors in the cache object, after a prompt and a few decode steps (hqq keeps the tokens since its last
    flush unquantized), against the arithmetic."""
    import torch
    from transformers import DynamicCache, QuantizedCache

    from demo.backends.transformers import cache_tensor_bytes
    from demo.measuring.kv_cache import transformers_cache_bytes
    from tests.conftest import tiny_causal_lm

    if cache_config and cache_config["backend"] == "hqq":
        pytest.importorskip("hqq")
    model = tiny_causal_lm(hidden=128, layers=2, vocab=300).to(torch.bfloat16)  # 4 heads of 32: group 64 spans two
    shape = KvShape.from_config(model.config)
    assert shape == KvShape(layers=2, kv_heads=4, key_width=32, value_width=32)
    settings = dict(cache_config or {})
    cache = (QuantizedCache(settings.pop("backend"), model.config, **settings) if cache_config
             else DynamicCache(config=model.config))
    ids = torch.randint(0, 300, (1, 37))
    with torch.inference_mode():
        model(ids, cache=cache, use_cache=True)
        for step in range(6):  # hqq (residual 4): 4 kept, flushed at the 4th, then 2 kept
            model(ids[:, step:step + 1], cache=cache, use_cache=True)
    residual = 2 if cache_config and cache_config["backend"] == "hqq" else 0
    expected = transformers_cache_bytes(shape, "bfloat16", cache_config, 43 - residual, residual)
    assert cache_tensor_bytes(cache) == expected


@pytest.fixture(scope="module")
def kv_models(tmp_path_factory, default_config):
    pytest.importorskip("hqq")
    folder = tmp_path_factory.mktemp("kv")
    return load_config(tiny_models_file(folder, default_config, """
{id: tiny/fp32, base: tiny, method: fp32}
{id: tiny/fp32-kv-fp8, base: tiny, method: fp32, settings: {cache_config: {backend: fp8}}}
{id: tiny/fp32-kv-int4, base: tiny, method: fp32, settings: {cache_config: {backend: hqq, nbits: 4, axis_key: 0, axis_value: 0, q_group_size: 64, residual_length: 4}}}
""", hidden=128))


@pytest.mark.parametrize("variant_id", ["tiny/fp32-kv-fp8", "tiny/fp32-kv-int4"])
def test_teacher_forcing_meets_the_cache_as_generation_does(kv_models, variant_id):
    """A quantized-cache variant generates through transformers' own quantized cache, and its teacher-forced
    logits after the prompt are the ones generate() computed step by step (prompt in one pass, then each token
    against the quantized past, hqq's flushes included); the plain variant's are not those."""
    import torch

    from demo.backends import transformers as backend

    variant = kv_models.variants[variant_id]
    loaded = backend.load(variant, kv_models.bases["tiny"])
    plain = backend.load(kv_models.variants["tiny/fp32"], kv_models.bases["tiny"])
    assert loaded.details()["kv_cache"]["type_k"] in ("fp8_e4m3", "hqq int4 g64")
    prompt = prompt_ids(loaded.tokenizer, "Name the capital of France.")
    tokens = []
    loaded.generate(prompt, GenerationSettings(max_new_tokens=10), threading.Event(),
                    lambda token, at_s: tokens.append(token))
    with torch.inference_mode():  # the same generation, with its stop tokens held off and each step's logits kept
        out = loaded.model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, output_logits=True,
                                    return_dict_in_generate=True, min_new_tokens=10, **loaded._cache_kwargs())
    steps = torch.cat([row.float() for row in out.logits])  # [10, vocab], what each step saw
    reference = out.sequences[0, len(prompt):].tolist()
    assert tokens and reference[:len(tokens)] == tokens  # random weights may reach a stop token early
    ids = prompt + reference
    forced = loaded.logits(ids, len(prompt))[len(prompt) - 1:len(ids) - 1]
    exact = plain.logits(ids, len(prompt))[len(prompt) - 1:len(ids) - 1]
    # Chunks and steps sum in other orders, so a value on a rounding boundary of the 4-bit grid can land on the
    # other side: held against the cache's own error, not against zero.
    cache_error, forcing_error = (exact - steps).abs().max(), (forced - steps).abs().max()
    assert cache_error > 1e-3 and forcing_error < cache_error / 10, (float(forcing_error), float(cache_error))


def test_the_card_names_a_transformers_cache():
    from demo.reports import card

    record = {"method": "bf16", "quantization": {"cache_config": {"backend": "hqq", "nbits": 4, "q_group_size": 64,
                                                                  "residual_length": 128}}}
    assert card.quantization_text(record) == (
        f"{card.METHOD_NAMES.get('bf16', 'bf16')}: KV cache hqq int4 g64, last 128 tokens unquantized")
    assert card.quantization_text({"method": "bf16", "quantization": {"cache_config": {"backend": "fp8"}}}).endswith(
        ": KV cache fp8_e4m3")


@pytest.mark.parametrize("variant_id", ["smollm2/gguf-q8_0", "smollm2/gguf-q8_0-kv-q4_0"])
def test_llama_cpp_reads_a_context_once_and_answers_after_it(gguf_arena, variant_id):
    """read_and_ask (the depth sweep's reading): the scored rows equal teacher forcing's, and the answer after the
    kept context is the answer generate() gives to the whole prompt."""
    import torch

    loaded = gguf_arena.device.call(gguf_arena.manager.get, variant_id).loaded
    ids = prompt_ids(loaded.tokenizer, CLEAR_PROMPT)
    context, question = ids[:-2], ids[-2:]
    run = gguf_arena.device.call(loaded.read_and_ask, context, 8, [question, question], 8)
    forced = gguf_arena.device.call(loaded.logits, context, len(context) - 8, len(context) - 9)[:8]
    torch.testing.assert_close(run["scored_logits"], forced, rtol=1e-3, atol=1e-3)
    whole: list[int] = []
    gguf_arena.device.call(loaded.generate, ids, GenerationSettings(max_new_tokens=8), threading.Event(),
                           lambda token, at_s: whole.append(token))
    assert [a["tokens"] for a in run["answers"]] == [whole, whole]
