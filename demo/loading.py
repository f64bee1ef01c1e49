"""One variant spec -> a loaded model and tokenizer (dtype, BitsAndBytesConfig, device)."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

from demo import sources
from demo.config import BaseModel, Variant
from demo.errors import VariantUnavailable

log = logging.getLogger(__name__)

# bitsandbytes logs this on every int8 matmul whose input is not fp16 (thousands per answer); the
# cast is a documented property of LLM.int8, so it is kept out of the log.
logging.getLogger("bitsandbytes.autograd._functions").addFilter(
    lambda record: "inputs will be cast" not in record.getMessage())

_BACKENDS = {"bnb-int8": "bitsandbytes", "bnb-4bit": "bitsandbytes"}
_PLAIN_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class LoadedModel:
    variant: Variant
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    device: str  # "cpu" or "cuda"
    weights_bytes: int  # model.get_memory_footprint(): parameters and buffers as stored


def backend_available(package: str) -> bool:
    """Whether a quantization backend's package is installed (checked without importing it)."""
    return importlib.util.find_spec(package) is not None


def pick_device(variant: Variant) -> str:
    """The device a variant runs on; raises VariantUnavailable when it needs a GPU and none exists."""
    import torch

    has_cuda = torch.cuda.is_available()
    if variant.device == "cuda" and not has_cuda:
        raise VariantUnavailable("not available: this variant needs an NVIDIA GPU and none was found")
    if variant.device == "cpu":
        return "cpu"
    return "cuda" if has_cuda else "cpu"


def from_pretrained_kwargs(variant: Variant, device: str) -> dict[str, Any]:
    """The dtype / quantization_config / device_map arguments that define this variant."""
    import torch

    kwargs: dict[str, Any] = {"device_map": device}
    if variant.method in _PLAIN_DTYPES:
        kwargs["dtype"] = getattr(torch, _PLAIN_DTYPES[variant.method])
        return kwargs
    if variant.dtype:
        kwargs["dtype"] = getattr(torch, variant.dtype)
    from transformers import BitsAndBytesConfig

    settings = dict(variant.settings)
    if variant.method == "bnb-int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, **settings)
    elif variant.method == "bnb-4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, **settings)
    else:  # config validation makes this unreachable; keep the failure loud if a method is added half-way
        raise VariantUnavailable(f"not available: method '{variant.method}' has no loader")
    return kwargs


def load_variant(variant: Variant, base: BaseModel) -> LoadedModel:
    """Load one variant from its base model's weights."""
    backend = _BACKENDS.get(variant.method)
    if backend and not backend_available(backend):
        raise VariantUnavailable(f"not available: the '{backend}' package is not installed")
    device = pick_device(variant)
    weights = sources.resolve(base)
    kwargs = from_pretrained_kwargs(variant, device)
    common = {"revision": weights.revision, "trust_remote_code": base.trust_remote_code}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(weights.location, **common)
        model = AutoModelForCausalLM.from_pretrained(weights.location, **common, **kwargs)
    except OSError as exc:  # offline, gated without token, missing files: the Hub client raises OSError kinds
        log.warning("loading %s failed", variant.id, exc_info=True)
        raise VariantUnavailable(f"not available: weights for '{base.label}' could not be reached ({_first_line(exc)})") from None
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    warm_up(model, tokenizer, device)
    return LoadedModel(variant, model, tokenizer, device, int(model.get_memory_footprint()))


def warm_up(model, tokenizer, device: str) -> None:
    """Generate two tokens once, as part of the cold load.

    Faults mmap'd weights into memory and runs one-time kernel set-up, so that a variant's first
    measured run neither counts its weights twice in RSS growth nor pays set-up in its TTFT.
    """
    import torch

    inputs = tokenizer("Hello", return_tensors="pt").to(device)
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:200]
