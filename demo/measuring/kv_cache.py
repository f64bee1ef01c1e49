"""The KV cache's size: bytes per token from a model's shape and the cache's element types.

Per token a decoder keeps, in every layer, a key and a value for each KV head: layers × KV heads × (key width
× bytes per K element + value width × bytes per V element). llama.cpp's quantized cache types store blocks of
32 elements with their scale (q8_0: 32 int8 + one fp16 scale = 34 bytes per 32; q4_0: 16 bytes + the scale =
18), the same block layouts as its weight types of those names (ggml's type traits).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# bytes per element of each cache type llama.cpp offers for K and V (--cache-type-k / --cache-type-v)
KV_CACHE_TYPES: dict[str, float] = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0,
    "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32,
}
UNQUANTIZED = ("f32", "f16", "bf16")


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
