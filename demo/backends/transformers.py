"""The transformers runtime: plain dtypes, bitsandbytes LLM.int8 / 4-bit, GPTQ, AWQ and torchao, through
from_pretrained, with the attention implementation a variant asks for."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from demo.artifacts import sources
from demo.backends import torchao_quant
from demo.backends.base import LoadedVariant, OnToken
from demo.backends.common import first_line, package_available, pick_device
from demo.config import BaseModel, Variant
from demo.errors import NotQuantized, VariantUnavailable
from demo.settings import GenerationSettings

log = logging.getLogger(__name__)

# bitsandbytes logs this on every int8 matmul whose input is not fp16 (thousands per answer); the
# cast is a documented property of LLM.int8, so it is kept out of the log.
logging.getLogger("bitsandbytes.autograd._functions").addFilter(
    lambda record: "inputs will be cast" not in record.getMessage())

PACKAGES = {"bnb-int8": ("bitsandbytes",), "bnb-4bit": ("bitsandbytes",), "gptq": ("gptqmodel", "optimum"),
            "torchao": ("torchao",), "awq": ("gptqmodel",)}
CHECKPOINT_METHODS = ("gptq", "awq")  # methods whose weights are a quantized checkpoint of their own
AUTOGPTQ_CONFIG = "quantize_config.json"
_AUTOGPTQ_KEYS = ("bits", "group_size", "desc_act", "sym", "true_sequential", "damp_percent", "checkpoint_format")
_PLAIN_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TransformersVariant(LoadedVariant):
    runtime = "transformers"

    def __init__(self, variant: Variant, model: Any, tokenizer: Any, device: str, facts: dict[str, Any] | None = None):
        eos = model.generation_config.eos_token_id
        eos_ids = frozenset(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        super().__init__(variant, tokenizer, device, stored_bytes(model), eos_ids,
                         getattr(model.config, "max_position_embeddings", None))
        self.model, self._facts = model, facts or {}

    def generate(self, prompt_ids: list[int], settings: GenerationSettings, stop: threading.Event,
                 on_token: OnToken) -> None:
        if settings.do_sample:
            torch.manual_seed(settings.seed)
        kwargs = {**self._inputs(prompt_ids), **_generate_kwargs(settings), "pad_token_id": self.tokenizer.pad_token_id,
                  "streamer": _TimestampStreamer(on_token), "stopping_criteria": StoppingCriteriaList([_StopOn(stop)])}
        with torch.inference_mode():
            self.model.generate(**kwargs)

    def logits(self, ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(self._inputs(ids)["input_ids"]).logits[0].float().cpu()

    def bare_token_times(self, prompt_ids: list[int], settings: GenerationSettings) -> list[float]:
        times: list[float] = []
        if settings.do_sample:
            torch.manual_seed(settings.seed)
        with torch.inference_mode():
            self.model.generate(**self._inputs(prompt_ids), **_generate_kwargs(settings),
                                pad_token_id=self.tokenizer.pad_token_id,
                                streamer=_TimestampStreamer(lambda token_id, at_s: times.append(at_s)))
        return times

    def free(self) -> None:
        self.model = None

    def details(self) -> dict[str, Any]:
        # the attention implementation actually in use, read back from the model (transformers may have
        # fallen back from the one asked for)
        return {"runtime": self.runtime, "dtype": str(self.model.dtype).removeprefix("torch."),
                "attn_implementation": getattr(self.model.config, "_attn_implementation", None), **self._facts}

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def _inputs(self, ids: list[int]) -> dict[str, torch.Tensor]:
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


# A model's own generation_config.json may ask for a repetition penalty or n-gram blocking; every runtime
# runs without them, so that answers differ only by what the variants compute.
_PLAIN_DECODING = {"top_k": None, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}


def _generate_kwargs(settings: GenerationSettings) -> dict[str, Any]:
    if not settings.do_sample:
        return {"max_new_tokens": settings.max_new_tokens, "do_sample": False, "temperature": None, "top_p": None,
                **_PLAIN_DECODING}
    return {"max_new_tokens": settings.max_new_tokens, "do_sample": True, "temperature": settings.temperature,
            "top_p": settings.top_p, **_PLAIN_DECODING}


class _TimestampStreamer(BaseStreamer):
    """Receives each new token from generate() and timestamps it; decoding happens on the reader's side."""

    def __init__(self, on_token: OnToken):
        self._on_token, self._prompt_seen = on_token, False

    def put(self, value: torch.Tensor) -> None:
        at_s = time.perf_counter()  # after generate's .cpu() of the token: the device work is done
        if not self._prompt_seen:  # generate() first pushes the prompt ids
            self._prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            self._on_token(int(token_id), at_s)

    def end(self) -> None:
        pass


class _StopOn(StoppingCriteria):
    def __init__(self, stop: threading.Event):
        self._stop = stop

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self._stop.is_set(), dtype=torch.bool, device=input_ids.device)


def stored_bytes(model: torch.nn.Module) -> int:
    """The bytes the weights really occupy: parameters and buffers, each tensor counted once.

    get_memory_footprint() counts a tensor subclass at its nominal shape and dtype, so torchao's int8 and
    int4 weights read as bf16 (257 MiB for SmolLM2-135M either way); a subclass that wraps inner tensors
    (torchao's qdata, scales, zero points) is counted by those instead. Plain tensors, bitsandbytes' and
    gptqmodel's included, count as get_memory_footprint() counts them.
    """
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += _tensor_bytes(tensor)
    return total


def _tensor_bytes(tensor: torch.Tensor) -> int:
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def from_pretrained_kwargs(variant: Variant, device: str) -> dict[str, Any]:
    """The dtype / quantization_config / device_map / attention arguments that define this variant."""
    kwargs: dict[str, Any] = {"device_map": device}
    if variant.attn_implementation:
        kwargs["attn_implementation"] = variant.attn_implementation
    if variant.method in _PLAIN_DTYPES:
        kwargs["dtype"] = getattr(torch, _PLAIN_DTYPES[variant.method])
        return kwargs
    if variant.dtype:
        kwargs["dtype"] = getattr(torch, variant.dtype)
    if variant.method in CHECKPOINT_METHODS:  # settings travel in the checkpoint's own config
        return kwargs
    if variant.method == "torchao":
        kwargs.setdefault("dtype", getattr(torch, torchao_quant.DEFAULT_DTYPE))
        kwargs["quantization_config"] = torchao_quant.quantization_config(variant, device)
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
    if variant.method not in CHECKPOINT_METHODS:
        return sources.resolve(base)
    if variant.checkpoint is not None:
        return sources.resolve_source(variant.checkpoint)
    folder = sources.quantized_dir(base, variant.method, variant.settings)
    if not sources.is_complete_checkpoint(folder):
        raise NotQuantized(f"not quantized yet: run `python -m demo.quantize --variant {variant.id}` "
                           "(takes minutes on a CPU), or press Quantize now")
    sources.check_quantized(folder, variant.id)  # damaged since written: DamagedCheckpoint names the rebuild
    return sources.Weights(str(folder))


def load(variant: Variant, base: BaseModel) -> TransformersVariant:
    """Load one variant from its base model's weights (or its own quantized checkpoint), warmed up."""
    for package in PACKAGES.get(variant.method, ()):
        if not package_available(package):
            raise VariantUnavailable(f"not available: the '{package}' package is not installed")
    if "gptqmodel" in PACKAGES.get(variant.method, ()):
        from demo.artifacts.awq import ensure_cpu_workers

        ensure_cpu_workers()
    device = pick_device(variant)
    check_attention(variant, device)
    weights = weights_for(variant, base)
    kwargs = from_pretrained_kwargs(variant, device)
    common = {"revision": weights.revision, "trust_remote_code": base.trust_remote_code}
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(weights.location, **common)
        if variant.method == "gptq":
            kwargs["config"] = gptq_model_config(weights, common)
        if variant.method == "torchao":  # refused before quantizing layers it would skip
            torchao_quant.check_group_size(variant, AutoConfig.from_pretrained(weights.location, **common))
        # gptqmodel logs to stdout (kept for results); some torchao versions change process-wide settings
        with contextlib.redirect_stdout(sys.stderr), torchao_quant.global_state_kept():
            model = AutoModelForCausalLM.from_pretrained(weights.location, **common, **kwargs)
    except OSError as exc:  # offline, gated without token, missing files: the Hub client raises OSError kinds
        log.warning("loading %s failed", variant.id, exc_info=True)
        raise VariantUnavailable(f"not available: weights for '{base.label}' could not be reached "
                                 f"({first_line(exc)})") from None
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    loaded = TransformersVariant(variant, model, tokenizer, device, _method_facts(variant, model))
    warm_up(loaded)
    return loaded


def quantized_kernels(model: torch.nn.Module) -> list[str]:
    """The gptqmodel layer classes the weights run through (which kernel was picked for this device)."""
    return sorted({type(m).__name__ for m in model.modules() if type(m).__module__.startswith("gptqmodel.")})


def check_attention(variant: Variant, device: str) -> None:
    """Refuse flash attention where it cannot run, with the reason, before any weights load."""
    name = variant.attn_implementation or ""
    if not name.startswith("flash_attention"):
        return
    if device != "cuda":
        raise VariantUnavailable(f"not available: {name} needs an NVIDIA GPU (this variant runs on the CPU here)")
    package = "flash_attn_interface" if name == "flash_attention_3" else "flash_attn"
    if not package_available(package):
        raise VariantUnavailable(f"not available: {name} needs the flash-attn package, which is not installed")


def _method_facts(variant: Variant, model: Any) -> dict[str, Any]:
    """What the quantization really did, read off the loaded model: torchao's quantized layers, or the
    gptqmodel kernels a GPTQ / AWQ checkpoint runs through on this device."""
    if variant.method == "torchao":
        return torchao_quant.quantized_layers(model)
    if variant.method in CHECKPOINT_METHODS:
        return {"kernels": quantized_kernels(model)}
    return {}


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


def warm_up(loaded: TransformersVariant) -> None:
    """Generate two tokens once, as part of the cold load.

    Faults mmap'd weights into memory and runs one-time kernel set-up, so that a variant's first
    measured run neither counts its weights twice in RSS growth nor pays set-up in its TTFT.
    """
    ids = loaded.tokenizer("Hello")["input_ids"]
    loaded.generate(ids, GenerationSettings(max_new_tokens=2), threading.Event(), lambda token_id, at_s: None)
