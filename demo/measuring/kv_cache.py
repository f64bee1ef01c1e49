"""The KV cache's size: bytes per token from a model's shape and the cache's element types.

Per token a decoder keeps, in every layer, a key and a value for each KV head: layers × KV heads × (key width
× bytes per K element + value width × bytes per V element). llama.cpp's quantized cache types store blocks of
32 elements with their scale (q8_0: 32 int8 + one fp16 scale = 34 bytes per 32; q4_0: 16 bytes + the scale =
18), the same block layouts as its weight types of those names (ggml's type traits).

transformers' quantized caches (QuantizedCache) keep what the prompt wrote quantized and the tokens generated since
the last flush (fewer than residual_length) in the model's dtype: fp8 stores one byte per element with one float32
scale per tensor; hqq stores nbits per element with a scale and a zero point in the model's dtype per group of
q_group_size elements.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# bytes per element of each cache type llama.cpp offers for K and V (--cache-type-k / --cache-type-v)
KV_CACHE_TYPES: dict[str, float] = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0,
    "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32,
}
UNQUANTIZED = ("f32", "f16", "bf16")
# transformers' QuantizedCache backends that run on a CPU with what the project installs: fp8 (transformers' own) and
# hqq (the hqq package); quanto compiles a C++ extension into the user's cache at first use, so it is not offered.
QUANTIZED_CACHE_BACKENDS = ("fp8", "hqq")
HQQ_NBITS = (1, 2, 3, 4, 8)
_HQQ_PACKED_BITS = {1: 1.0, 2: 2.0, 3: 3.2, 4: 4.0, 8: 8.0}  # hqq packs 3-bit weights ten to an int32
TORCH_DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class KvShape:
    """What sizes a token's keys and values: the model's decoder layers, KV heads and per-head widths."""

    layers: int
    kv_heads: int
    key_width: int  # per head
    value_width: int

    @classmethod
    def from_gguf(cls, metadata: dict[str, str]) -> "KvShape":
        """From a GGUF file's metadata (llama.cpp's keys: <arch>.block_count, <arch>.attention.head_count_kv,
        <arch>.attention.key_length and value_length, else embedding_length / head_count)."""
        arch = metadata["general.architecture"]

        def number(key: str, default: int | None = None) -> int:
            value = metadata.get(f"{arch}.{key}")
            if value is None:
                if default is None:
                    raise KeyError(f"{arch}.{key}")
                return default
            return int(value)

        heads = number("attention.head_count")
        head_width = number("embedding_length") // heads
        return cls(number("block_count"), number("attention.head_count_kv", heads),
                   number("attention.key_length", head_width), number("attention.value_length", head_width))

    @classmethod
    def from_config(cls, config) -> "KvShape":
        """From a transformers model config (its text config where it has one)."""
        config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        heads = config.num_attention_heads
        head_width = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(config.num_hidden_layers, kv_heads, head_width, head_width)

    @property
    def elements_per_token(self) -> int:
        """Keys and values of one token in every layer."""
        return self.layers * self.kv_heads * (self.key_width + self.value_width)


@dataclass(frozen=True)
class KvCache:
    """A cache's element types and what one token of it costs."""

    type_k: str
    type_v: str
    bytes_per_token: float
    flash_attention: bool  # llama.cpp quantizes V only with flash attention

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        """E.g. "K q8_0 · V q8_0", or "f16" where both are the same unquantized type."""
        if self.type_k == self.type_v and self.type_k in UNQUANTIZED:
            return self.type_k
        return f"K {self.type_k} · V {self.type_v}"


def bytes_per_token(shape: KvShape, type_k: str, type_v: str) -> float:
    """One token's keys and values in every layer, at the given element types."""
    per_layer = shape.kv_heads * (shape.key_width * KV_CACHE_TYPES[type_k] + shape.value_width * KV_CACHE_TYPES[type_v])
    return shape.layers * per_layer


def kv_cache(shape: KvShape, type_k: str, type_v: str) -> KvCache:
    return KvCache(type_k, type_v, bytes_per_token(shape, type_k, type_v), flash_attention=type_v not in UNQUANTIZED)


def quantized_cache_type(cache_config: dict) -> str:
    """A transformers quantized cache's element type in words: "fp8_e4m3", "hqq int4 g64"."""
    if cache_config["backend"] == "fp8":
        return "fp8_e4m3"
    return f"hqq int{cache_config.get('nbits', 4)} g{cache_config.get('q_group_size', 64)}"


def transformers_kv_cache(shape: KvShape, dtype: str, cache_config: dict | None) -> KvCache:
    """What a transformers model's cache costs per token once quantized (the prompt's tokens; up to residual_length
    generated tokens stay in `dtype` until the next flush, see transformers_cache_bytes)."""
    plain = shape.elements_per_token * TORCH_DTYPE_BYTES[dtype]
    if cache_config is None:
        name = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}[dtype]
        return KvCache(name, name, float(plain), flash_attention=False)
    if cache_config["backend"] == "fp8":
        per_element = 1.0
    else:
        per_element = (_HQQ_PACKED_BITS[cache_config.get("nbits", 4)] / 8
                       + 2 * TORCH_DTYPE_BYTES[dtype] / cache_config.get("q_group_size", 64))
    name = quantized_cache_type(cache_config)
    return KvCache(name, name, shape.elements_per_token * per_element, flash_attention=False)


def transformers_cache_bytes(shape: KvShape, dtype: str, cache_config: dict | None, quantized_tokens: int,
                             residual_tokens: int = 0) -> int:
    """The bytes a transformers cache holds: its quantized tokens at the quantized cost, its residual (not yet
    flushed) tokens in the model's dtype; fp8 adds its two float32 scales per layer."""
    quantized = transformers_kv_cache(shape, dtype, cache_config).bytes_per_token * quantized_tokens
    residual = shape.elements_per_token * TORCH_DTYPE_BYTES[dtype] * residual_tokens
    scales = 2 * 4 * shape.layers if cache_config is not None and cache_config["backend"] == "fp8" else 0
    return round(quantized + residual + scales)
