"""Named architecture shapes for bases with random weights, and the weights size computed from a shape alone.

A synthetic base (models.yaml `source: {kind: synthetic, shape: ...}`) is one of these shapes filled with a seeded
random initialisation: speed and memory depend on the shapes, not on the weights' values (LLM-Perf measures with
random weights for the same reason), so such a base measures how fast and how large a variant is at a size people
ship, and nothing about its quality. The figures are the public config.json values of each model.

`parameter_count` and `weights_bytes` are the arithmetic from the shapes: the benchmark and the bandwidth figures
use them, and a plain-dtype variant of a synthetic base loads to exactly weights_bytes(shape, its dtype's bytes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RANDOM_WEIGHTS_NOTE = "random weights: speed and memory only"
# Why quality is not computed for such a base, in every place that would otherwise show it.
QUALITY_NOT_COMPUTED = ("not computed: the weights are random (speed and memory only), so fidelity and perplexity "
                        "would measure noise, not what a quantization does to a model")


@dataclass(frozen=True)
class Shape:
    """A Llama-architecture decoder's shapes (transformers' LlamaConfig field names)."""

    name: str  # as a models file names it, e.g. "llama-3.2-1b"
    label: str  # the model whose shape it is, e.g. "Llama-3.2-1B"
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    rope_parameters: dict[str, Any] = field(default_factory=dict)  # rope_theta and any scaling (rope_type ...)
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def config_fields(self) -> dict[str, Any]:
        """The LlamaConfig keyword arguments for this shape (without token ids: those are the tokenizer's)."""
        fields = asdict(self)
        for key in ("name", "label"):
            fields.pop(key)
        return {**fields, "head_dim": self.head_dim, "attention_bias": False, "mlp_bias": False,
                "hidden_act": "silu", "initializer_range": 0.02}


_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

SHAPES: dict[str, Shape] = {s.name: s for s in (
    Shape("llama-3.2-1b", "Llama-3.2-1B", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
          num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
          rope_parameters={**_LLAMA3_ROPE, "factor": 32.0}, max_position_embeddings=131072),
    Shape("smollm2-1.7b", "SmolLM2-1.7B", hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
          num_key_value_heads=32, intermediate_size=8192, vocab_size=49152, tie_word_embeddings=True,
          rope_parameters={"rope_type": "default", "rope_theta": 130000.0}, max_position_embeddings=8192),
    Shape("llama-3.1-8b", "Llama-3.1-8B", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
          num_key_value_heads=8, intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
          rope_parameters={**_LLAMA3_ROPE, "factor": 8.0}, max_position_embeddings=131072),
    # For tests: SmolLM2's vocabulary (the bundled tokenizer fits), two small layers; 256 and 512 wide, so every
    # quantizer here takes it (torchao int4 group sizes up to 256, GGUF K-quants' 256-wide super-blocks).
    Shape("tiny", "tiny (tests)", hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, intermediate_size=512, vocab_size=49152, tie_word_embeddings=True,
          rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, max_position_embeddings=2048),
)}


@dataclass(frozen=True)
class ParameterCount:
    """A shape's parameters, by where they sit."""

    embedding: int  # vocab_size x hidden_size
    linear: int  # every decoder layer's projections (q, k, v, o, gate, up, down)
    norms: int  # the RMSNorm weights: two per layer and the final one
    output: int  # the output head when it is not tied to the embedding; 0 when tied

    @property
    def total(self) -> int:
        return self.embedding + self.linear + self.norms + self.output


def parameter_count(shape: Shape) -> ParameterCount:
    """The parameters a Llama decoder of this shape holds, from its shapes alone."""
    h, kv_width = shape.hidden_size, shape.num_key_value_heads * shape.head_dim
    q_width = shape.num_attention_heads * shape.head_dim
    attention = h * q_width + 2 * h * kv_width + q_width * h  # q, k, v, o
    mlp = 3 * h * shape.intermediate_size  # gate, up, down
    embedding = shape.vocab_size * h
    return ParameterCount(embedding=embedding, linear=shape.num_hidden_layers * (attention + mlp),
                          norms=(2 * shape.num_hidden_layers + 1) * h,
                          output=0 if shape.tie_word_embeddings else embedding)


def rotary_buffer_bytes(shape: Shape) -> int:
    """The rotary embedding's inverse frequencies (head_dim / 2 float32 values) that transformers holds beside
    the weights."""
    return shape.head_dim // 2 * 4


def weights_bytes(shape: Shape, bytes_per_parameter: float) -> int:
    """The bytes a shape's weights occupy stored at one width (4 for float32, 2 for bfloat16 / float16, 1 for
    8 bits): parameters x width. A plain-dtype transformers variant holds this plus rotary_buffer_bytes."""
    return round(parameter_count(shape).total * bytes_per_parameter)


def shape_named(name: str) -> Shape:
    """The shape of that name; KeyError names the known ones."""
    try:
        return SHAPES[name]
    except KeyError:
        raise KeyError(f"unknown shape {name!r} (known: {', '.join(SHAPES)})") from None
