"""One variant spec -> a loaded model and tokenizer (dtype, BitsAndBytesConfig, device)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

from demo import sources
from demo.config import BaseModel, Variant
from demo.errors import NotQuantized, VariantUnavailable

log = logging.getLogger(__name__)

# bitsandbytes logs this on every int8 matmul whose input is not fp16 (thousands per answer); the
# cast is a documented property of LLM.int8, so it is kept out of the log.
logging.getLogger("bitsandbytes.autograd._functions").addFilter(
    lambda record: "inputs will be cast" not in record.getMessage())

_BACKENDS = {"bnb-int8": ("bitsandbytes",), "bnb-4bit": ("bitsandbytes",), "gptq": ("gptqmodel", "optimum")}
AUTOGPTQ_CONFIG = "quantize_config.json"
_AUTOGPTQ_KEYS = ("bits", "group_size", "desc_act", "sym", "true_sequential", "damp_percent", "checkpoint_format")
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
    if variant.method == "gptq":  # settings travel in the checkpoint's own config
        return kwargs
    from transformers import BitsAndBytesConfig

    settings = dict(variant.settings)
    if variant.method == "bnb-int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, **settings)
    elif variant.method == "bnb-4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, **settings)
    else:  # config validation makes this unreachable; keep the failure loud if a method is added half-way
        raise VariantUnavailable(f"not available: method '{variant.method}' has no loader")
    return kwargs


def weights_for(variant: Variant, base: BaseModel) -> sources.Weights:
    """The checkpoint a variant loads: the base model's, or its own quantized one."""
    if variant.method != "gptq":
        return sources.resolve(base)
    if variant.checkpoint is not None:
        return sources.resolve_source(variant.checkpoint)
    folder = sources.quantized_dir(base, variant.method, variant.settings)
    if not sources.is_complete_checkpoint(folder):
        raise NotQuantized(f"not quantized yet: run `python -m demo.quantize --variant {variant.id}` "
                           "(takes minutes on a CPU), or press Quantize now")
    sources.check_quantized(folder, variant.id)  # damaged since written: DamagedCheckpoint names the rebuild
    return sources.Weights(str(folder))


def load_variant(variant: Variant, base: BaseModel) -> LoadedModel:
    """Load one variant from its base model's weights (or its own quantized checkpoint)."""
    for backend in _BACKENDS.get(variant.method, ()):
        if not backend_available(backend):
            raise VariantUnavailable(f"not available: the '{backend}' package is not installed")
    device = pick_device(variant)
    weights = weights_for(variant, base)
    kwargs = from_pretrained_kwargs(variant, device)
    common = {"revision": weights.revision, "trust_remote_code": base.trust_remote_code}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(weights.location, **common)
        if variant.method == "gptq":
            kwargs["config"] = gptq_model_config(weights, common)
        with contextlib.redirect_stdout(sys.stderr):  # gptqmodel logs to stdout; keep stdout for results
            model = AutoModelForCausalLM.from_pretrained(weights.location, **common, **kwargs)
    except OSError as exc:  # offline, gated without token, missing files: the Hub client raises OSError kinds
        log.warning("loading %s failed", variant.id, exc_info=True)
        raise VariantUnavailable(f"not available: weights for '{base.label}' could not be reached ({_first_line(exc)})") from None
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    warm_up(model, tokenizer, device)
    return LoadedModel(variant, model, tokenizer, device, int(model.get_memory_footprint()))


def gptq_model_config(weights: sources.Weights, common: dict):
    """The model config of a GPTQ checkpoint, with its quantization settings in it.

    Checkpoints saved by transformers/optimum carry them in config.json. Older AutoGPTQ checkpoints
    keep them only in quantize_config.json; copying them into the config lets transformers load the
    weights as pre-quantized, through GPTQModel's kernels (transformers 5 has no AutoGPTQ path).
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(weights.location, **common)
    if getattr(config, "quantization_config", None):
        return config
    if weights.is_hub:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(weights.location, AUTOGPTQ_CONFIG, revision=weights.revision)
    else:
        path = f"{weights.location}/{AUTOGPTQ_CONFIG}"
    with open(path, encoding="utf-8") as f:
        settings = json.load(f)
    config.quantization_config = {"quant_method": "gptq", **{k: settings[k] for k in _AUTOGPTQ_KEYS if k in settings}}
    return config


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
