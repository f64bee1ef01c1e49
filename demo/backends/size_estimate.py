"""A variant's weights size before it is loaded, so the model manager can make room for a first load.

Two ways, both erring high:
- a quantized file already on disk (a GGUF file, a GPTQ / AWQ checkpoint folder): its size on disk;
- otherwise the base model's parameters, counted on the meta device (AutoModelForCausalLM.from_config under
  torch.device("meta"): the config is read, no weight is), times what the method stores per parameter.
  Linear layers (the output embedding excepted: bitsandbytes and GPTQ keep it) take the method's bytes per
  weight plus its quantization state at the worst case (no double quantization, fp32 scales); every other
  parameter stays at the compute dtype.
Once a variant has loaded, the manager uses its measured size instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from demo.artifacts import sources
from demo.backends.llamacpp import GGUF_FILE
from demo.config import CHECKPOINT_METHODS, GGUF_TYPES, TORCHAO_SCHEMES, BaseModel, Variant

log = logging.getLogger(__name__)

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_PLAIN_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
BNB_4BIT_BLOCK = 64  # bitsandbytes keeps one fp32 absmax per 64 weights (double quantization makes it smaller)
STATE_BYTES = 4  # one fp32 scale per row or group, the worst case every method stays under
DEFAULT_GROUP_SIZE = 128  # torchao int4 / GPTQ / AWQ when the variant names none


@dataclass(frozen=True)
class ParameterCount:
    """The base model's parameters as the methods see them."""

    linear: int  # weights of Linear layers a method quantizes
    linear_rows: int  # their output rows (one scale each for per-row schemes)
    other: int  # everything else: embeddings, output head, norms, biases, buffers
    dtype_bytes: int  # bytes per parameter of the checkpoint's own dtype


@dataclass(frozen=True)
class SizeEstimate:
    bytes: int
    how: str  # how it was computed, for the log and the budget's refusal


def estimate(variant: Variant, base: BaseModel) -> SizeEstimate | None:
    """The variant's weights in bytes before loading it; None where it cannot be told (the load will say why)."""
    if variant.runtime == "remote":
        return SizeEstimate(0, "served elsewhere: nothing loaded here")
    try:
        on_disk = _file_size(variant, base)
        if on_disk is not None:
            return on_disk
        count = count_parameters(base)
    except Exception as exc:  # weights not reachable, not quantized yet: the load itself reports it
        log.info("no size estimate for %s: %s", variant.id, exc)
        return None
    return SizeEstimate(weights_bytes(count, variant), f"{count.linear + count.other:,} parameters at {variant.method}")


def weights_bytes(count: ParameterCount, variant: Variant) -> int:
    """What the variant's method stores for these parameters, its quantization state at the worst case."""
    method, settings = variant.method, variant.settings
    if method in _PLAIN_BYTES:
        return (count.linear + count.other) * _PLAIN_BYTES[method]
    rest = count.other * _rest_bytes(variant, count)
    group = settings.get("group_size", DEFAULT_GROUP_SIZE)
    if method == "bnb-int8":
        return count.linear + count.linear_rows * STATE_BYTES + rest
    if method == "bnb-4bit":
        return _ceil(count.linear * (0.5 + STATE_BYTES / BNB_4BIT_BLOCK)) + rest
    if method == "torchao":
        bits = TORCHAO_SCHEMES[settings["scheme"]]
        per_group = STATE_BYTES * 2 / group if bits == 4 else 0.0  # int4: a scale and a zero point per group
        # a scale and a zero point per row as well (int8 keeps both; int4's layouts pad rows)
        return _ceil(count.linear * (bits / 8 + per_group)) + count.linear_rows * STATE_BYTES * 2 + rest
    if method == "hqq":  # a scale and a zero point per group, in the compute dtype (bf16 unless named)
        per_group = 2 * _rest_bytes(variant, count) / group
        return _ceil(count.linear * (settings["nbits"] / 8 + per_group)) + rest
    if method in CHECKPOINT_METHODS:
        bits = variant.bits or 4
        return _ceil(count.linear * (bits / 8 + STATE_BYTES * 2 / group)) + count.linear_rows * STATE_BYTES + rest
    if method == "gguf":  # k-quant blocks add under one bit per weight; the rest is counted at 16 bits or more
        bits = GGUF_TYPES[settings["type"]]
        return _ceil(count.linear * (bits + 1) / 8) + count.other * max(2, _ceil((bits + 1) / 8))
    raise ValueError(f"no size estimate for method '{method}'")


def count_parameters(base: BaseModel) -> ParameterCount:
    """The base model's parameters, counted on the meta device (no weight is read or allocated)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    weights = sources.resolve(base)
    config = AutoConfig.from_pretrained(weights.location, revision=weights.revision,
                                        trust_remote_code=base.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=base.trust_remote_code)
    head = model.get_output_embeddings()
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    quantized = {id(m.weight) for m in linear}
    other = sum(p.numel() for p in model.parameters() if id(p) not in quantized)
    other += sum(b.numel() for b in model.buffers())  # rotary frequencies and the like, held beside the weights
    dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    return ParameterCount(linear=sum(m.weight.numel() for m in linear), linear_rows=sum(m.out_features for m in linear),
                          other=other, dtype_bytes=_DTYPE_BYTES.get(dtype.removeprefix("torch."), 4))


def _rest_bytes(variant: Variant, count: ParameterCount) -> int:
    """Bytes per unquantized parameter: the variant's dtype, torchao's bf16, else the checkpoint's own dtype."""
    if variant.dtype:
        return _DTYPE_BYTES[variant.dtype]
    if variant.method in ("torchao", "hqq"):
        return 2
    return count.dtype_bytes


def _file_size(variant: Variant, base: BaseModel) -> SizeEstimate | None:
    """The quantized file's size where it is already on disk (never downloaded nor made here)."""
    if variant.method == "gguf":
        if variant.checkpoint is None:  # made by demo.quantize
            path = sources.quantized_dir(base, "gguf", variant.file_settings) / GGUF_FILE
        elif variant.checkpoint.kind == "local":
            path = Path(variant.checkpoint.path)
        else:
            return None
        return SizeEstimate(path.stat().st_size, f"the GGUF file's size ({path.name})") if path.is_file() else None
    if variant.method not in CHECKPOINT_METHODS:
        return None
    if variant.checkpoint is not None:
        folder = Path(variant.checkpoint.path) if variant.checkpoint.kind == "local" else None
    else:
        folder = sources.quantized_dir(base, variant.method, variant.settings)
    if folder is None or not sources.is_complete_checkpoint(folder):
        return None
    files = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    if not files:
        return None
    return SizeEstimate(sum(f.stat().st_size for f in files), f"the checkpoint's weight files ({folder.name})")


def _ceil(value: float) -> int:
    return int(-(-value // 1))
