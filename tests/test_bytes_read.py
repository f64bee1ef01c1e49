"""What a decode step reads: the weights less an untied input embedding table, plus the KV cache at the step's
context; and the achieved bandwidth that implies. Every figure is checked against arithmetic written out here."""

import pytest

from demo.measuring import bandwidth
from demo.measuring.kv_cache import KvShape, bytes_per_token

# Llama-3.1-8B's shape: vocabulary 128,256, hidden 4,096, 32 layers, 32 query heads, 8 KV heads of width 128,
# MLP width 14,336, input embeddings not tied to the output head.
#
# Decoder projections per layer: q 4096x4096 + k 4096x1024 + v 4096x1024 + o 4096x4096 = 41,943,040 and
# gate, up, down 3 x 4096x14336 = 176,160,768: 218,103,808; x 32 layers = 6,979,321,856 parameters.
# In NF4 with double quantization (bitsandbytes): 4 bits each = 3,489,660,928 bytes; one 8-bit absmax per block of
# 64 = 109,051,904 bytes; one float32 per 256 of those blocks = 425,984 x 4 = 1,703,936 bytes. Together
# 3,600,416,768 bytes (the per-layer 16- and 256-entry code tables, a quarter of a MB, left out).
# Kept in bf16: the input table 128,256 x 4,096 x 2 = 1,050,673,152 bytes, the output head the same, and the
# 65 RMSNorm weights 65 x 4,096 x 2 = 532,480 bytes.
# Weights: 3,600,416,768 + 2 x 1,050,673,152 + 532,480 = 5,702,295,552 bytes.
NF4_8B_WEIGHTS = 5_702_295_552
EMBEDDING_8B_BF16 = 1_050_673_152
# f16 cache: 32 layers x 8 KV heads x 128 wide x 2 (K and V) x 2 bytes = 131,072 bytes per token
KV_8B_F16 = 131_072


def test_the_figures_above_are_the_shapes_arithmetic():
    linear = 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336)
    assert linear == 6_979_321_856
    nf4 = linear // 2 + linear // 64 + linear // 64 // 256 * 4
    assert nf4 == 3_600_416_768
    assert 128256 * 4096 * 2 == EMBEDDING_8B_BF16
    assert nf4 + 2 * EMBEDDING_8B_BF16 + 65 * 4096 * 2 == NF4_8B_WEIGHTS
    assert bytes_per_token(KvShape(layers=32, kv_heads=8, key_width=128, value_width=128), "f16", "f16") == KV_8B_F16


def test_untied_8b_nf4_reads_its_weights_less_the_input_table_and_the_cache_at_its_context():
    step = bandwidth.step_bytes(NF4_8B_WEIGHTS, EMBEDDING_8B_BF16, tied_embeddings=False,
                                kv_bytes_per_token=KV_8B_F16, context_tokens=1000)
    # 5,702,295,552 - 1,050,673,152 = 4,651,622,400 bytes of weights; 131,072 x 1,000 = 131,072,000 of cache
    assert step.weights_read == 4_651_622_400
    assert step.kv_read == 131_072_000
    assert step.total == 4_782_694_400
    assert step.input_table_left_out == EMBEDDING_8B_BF16
    assert step.as_dict() == {"weights": 4_651_622_400, "kv": 131_072_000, "total": 4_782_694_400,
                              "context_tokens": 1000, "input_table_left_out": 1_050_673_152}
    # at 20 tokens/s: 4,782,694,400 x 20 = 95,653,888,000 bytes/s
    assert bandwidth.achieved_gb_s_of(step, 20.0) == pytest.approx(95.653888)
    # the weights-only figure: 5,702,295,552 x 20 = 114,045,911,040 bytes/s, 19.2% more than what the step reads
    assert bandwidth.achieved_gb_s(NF4_8B_WEIGHTS, 20.0) == pytest.approx(114.04591104)
    # the input table is 18.4% of the weights counted; leaving it out alone, the old figure overstated by 22.6%
    assert EMBEDDING_8B_BF16 / NF4_8B_WEIGHTS == pytest.approx(0.18425, abs=5e-6)
    assert NF4_8B_WEIGHTS / 4_651_622_400 == pytest.approx(1.22587, abs=5e-6)


def test_a_tied_table_is_the_head_read_whole_and_counted_once():
    # Llama-3.2-1B in bf16: 1,235,814,400 parameters x 2 = 2,471,628,800 bytes, its tied table
    # 128,256 x 2,048 x 2 = 525,336,576 bytes; cache: 16 layers x 8 heads x 64 wide x 2 x 2 bytes = 32,768 per token
    step = bandwidth.step_bytes(2_471_628_800, 525_336_576, tied_embeddings=True, kv_bytes_per_token=32_768,
                                context_tokens=512)
    assert step.weights_read == 2_471_628_800 and step.input_table_left_out == 0
    assert step.kv_read == 16_777_216  # 32,768 x 512
    assert step.total == 2_488_406_016
    assert bandwidth.achieved_gb_s_of(step, 50.0) == pytest.approx(124.4203008)  # x 50 / 1e9


def test_a_quantized_cache_counts_its_fractional_bytes_per_token():
    # SmolLM2-135M's q8_0 cache: 12,240 bytes per token (test_kv_cache); a mean context of 300.5 tokens
    step = bandwidth.step_bytes(100, 0, tied_embeddings=True, kv_bytes_per_token=12_240, context_tokens=300.5)
    assert step.kv_read == 3_678_120  # 12,240 x 300.5
    assert bandwidth.step_bytes(0, 0, True, 34 / 32, 3).kv_read == 3  # 3.1875 bytes, rounded to a byte


def test_unknown_rate_or_step_is_none_never_zero():
    step = bandwidth.step_bytes(NF4_8B_WEIGHTS, EMBEDDING_8B_BF16, False, KV_8B_F16, 1000)
    assert bandwidth.achieved_gb_s_of(step, None) is None
    assert bandwidth.achieved_gb_s_of(None, 20.0) is None
    assert bandwidth.achieved_gb_s_of(step, 0.0) is None
    assert bandwidth.achieved_gb_s_of(step, float("nan")) is None


def test_an_impossible_count_is_refused():
    with pytest.raises(ValueError):
        bandwidth.step_bytes(100, 200, tied_embeddings=False, kv_bytes_per_token=0, context_tokens=0)
    with pytest.raises(ValueError):
        bandwidth.step_bytes(100, 0, tied_embeddings=True, kv_bytes_per_token=-1, context_tokens=10)
    # tied: the table is part of what is read, so it may be as large as the weights
    assert bandwidth.step_bytes(100, 100, tied_embeddings=True, kv_bytes_per_token=0, context_tokens=0).total == 100


def test_mean_context_of_a_run():
    # prompt 936, 128 new tokens: 127 timed steps read 937 ... 1,063 tokens' keys and values; mean 936 + 64
    assert bandwidth.mean_context_tokens(936, 128) == 1000
    assert sum(936 + j for j in range(1, 128)) / 127 == 1000
    # 3 new tokens after a 10-token prompt: steps read 11 and 12, mean 11.5
    assert bandwidth.mean_context_tokens(10, 3) == 11.5
    assert bandwidth.mean_context_tokens(10, 2) == 11  # one step, reading 11
    # no decode step (one new token), or a count unknown: no context
    assert bandwidth.mean_context_tokens(10, 1) is None
    assert bandwidth.mean_context_tokens(None, 5) is None and bandwidth.mean_context_tokens(5, None) is None


@pytest.mark.parametrize("tied", [True, False])
def test_input_table_and_tying_read_from_a_transformers_model(tied):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    assert bandwidth.input_embedding_bytes(model) == 1000 * 64 * 2  # 128,000 bytes
    assert bandwidth.embeddings_tied(model) is tied
    assert config.get_text_config().tie_word_embeddings is tied
