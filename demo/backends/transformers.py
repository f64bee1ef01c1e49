"""The transformers runtime: plain dtypes, bitsandbytes LLM.int8 / 4-bit, GPTQ, AWQ, torchao and HQQ, through
from_pretrained, with the attention implementation a variant asks for."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from demo.artifacts import sources
from demo.backends import hqq_quant, kernels, torchao_quant
from demo.backends.base import LoadedVariant, OnToken
from demo.backends.common import first_line, package_available, pick_device
from demo.config import CHECKPOINT_METHODS, BaseModel, Variant
from demo.errors import NotQuantized, VariantUnavailable
from demo.measuring import bandwidth, kv_cache

# transformers 5 replaces some layers on a GPU (rotary embedding among them) with kernels it downloads from the Hub
# at load (its `kernels` package, "kernels-community/*", by major version rather than by commit). The arena compares
# quantization methods on transformers' own code, the same offline as online: off unless USE_HUB_KERNELS is set.
# (Offline, as in `make zerogpu-check`, every GPU load failed on the missing kernel.)
os.environ.setdefault("USE_HUB_KERNELS", "0")
from demo.settings import GenerationSettings

log = logging.getLogger(__name__)

# bitsandbytes logs this on every int8 matmul whose input is not fp16 (thousands per answer); the
# cast is a documented property of LLM.int8, so it is kept out of the log.
logging.getLogger("bitsandbytes.autograd._functions").addFilter(
    lambda record: "inputs will be cast" not in record.getMessage())

PACKAGES = {"bnb-int8": ("bitsandbytes",), "bnb-4bit": ("bitsandbytes",), "gptq": ("gptqmodel", "optimum"),
            "torchao": ("torchao",), "awq": ("gptqmodel",), "hqq": ("hqq",),
            "autoround": ("auto_round",), "compressed-tensors": ("compressed_tensors",)}
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
        self.cache_config: dict | None = variant.settings.get("cache_config")  # a quantized KV cache, or None

    def generate(self, prompt_ids: list[int], settings: GenerationSettings, stop: threading.Event,
                 on_token: OnToken) -> None:
        if settings.do_sample:
            torch.manual_seed(settings.seed)
        reading = _StopsWhileReading(self.model, stop)
        kwargs = {**self._inputs(prompt_ids), **_generate_kwargs(settings), **self._length_kwargs(settings),
                  **self._cache_kwargs(), "pad_token_id": self.tokenizer.pad_token_id, "streamer": _TimestampStreamer(reading.then(on_token)),
                  "stopping_criteria": StoppingCriteriaList([_StopOn(stop)])}
        try:
            with torch.inference_mode():
                self.model.generate(**kwargs)
        except _Stopped:  # stopped while the prompt was read: no token
            pass
        finally:
            reading.remove()

    def logits(self, ids: list[int], prompt_tokens: int | None = None, first_row: int = 0) -> torch.Tensor:
        if self.cache_config is None:  # every position in one pass: what generation computes, up to arithmetic
            with torch.inference_mode():
                out = self.model(self._inputs(ids)["input_ids"], logits_to_keep=len(ids) - first_row)
                return out.logits[0].float().cpu()
        return self._read_into(self._new_cache(), ids, prompt_tokens or len(ids), first_row,
                               int(self.cache_config.get("residual_length", 128)))

    def _read_into(self, cache, ids: list[int], prompt_tokens: int, first_row: int, chunk: int) -> torch.Tensor:
        """Teacher forcing as generation meets a quantized KV cache. generate() reads the prompt in one pass, whose
        attention sees its own keys and values unquantized, and quantizes them into the cache; each later token
        attends to the quantized past. So the prompt goes in one pass and the rest in chunks of residual_length
        (hqq: a chunk then ends where generation's residual is flushed; fp8 quantizes every new token, so any
        chunk length gives the same figures)."""
        input_ids = self._inputs(ids)["input_ids"]
        rows = []
        with torch.inference_mode():
            for start, end in [(0, prompt_tokens), *_chunks(prompt_tokens, len(ids), chunk)]:
                keep = end - max(start, first_row)  # this pass's rows from first_row on (0 would mean all of them)
                out = self.model(input_ids[:, start:end], cache=cache, use_cache=True, logits_to_keep=max(keep, 1))
                if keep > 0:
                    rows.append(out.logits[0].float().cpu())
        return torch.cat(rows)

    def read_and_ask(self, context_ids: list[int], scored: int, questions: list[list[int]],
                     max_new_tokens: int) -> dict[str, Any]:
        """The context read once into a cache of the variant's kind: up to its scored tokens in one pass, the scored
        ones as generated tokens are read (in chunks of residual_length for a quantized cache, else one); then
        each question answered from a copy of that cache, so only the question is read again."""
        import copy

        first = len(context_ids) - scored
        cache = self._new_cache()
        chunk = int((self.cache_config or {}).get("residual_length", scored))
        started = time.perf_counter()
        logits = self._read_into(cache, context_ids, first, first - 1, chunk)[:scored]
        self.sync()
        read_s = time.perf_counter() - started
        answers = []
        settings = GenerationSettings(max_new_tokens=max_new_tokens)
        for index, question in enumerate(questions):
            own = cache if index == len(questions) - 1 else copy.deepcopy(cache)
            stamps: list[float] = []
            tokens: list[int] = []
            streamer = _TimestampStreamer(lambda token, at_s: (tokens.append(token), stamps.append(at_s)))
            asked = time.perf_counter()
            with torch.inference_mode():
                self.model.generate(**self._inputs(context_ids + question), **_generate_kwargs(settings),
                                    **self._length_kwargs(settings), cache=own, streamer=streamer,
                                    pad_token_id=self.tokenizer.pad_token_id)
            answers.append({"tokens": tokens, "ttft_s": stamps[0] - asked if stamps else None, "stamps": stamps})
        return {"read_s": read_s, "scored_logits": logits, "answers": answers}

    def _new_cache(self):
        from transformers import DynamicCache, QuantizedCache

        if self.cache_config is None:
            return DynamicCache(config=self.model.config)
        config = dict(self.cache_config)
        return QuantizedCache(config.pop("backend"), self.model.config, **config)

    def _cache_kwargs(self) -> dict[str, Any]:
        """generate()'s own quantized cache (cache_implementation="quantized") where the variant asks for one."""
        if self.cache_config is None:
            return {}
        return {"cache_implementation": "quantized", "cache_config": dict(self.cache_config)}

    def bare_token_times(self, prompt_ids: list[int], settings: GenerationSettings) -> list[float]:
        times: list[float] = []
        if settings.do_sample:
            torch.manual_seed(settings.seed)
        with torch.inference_mode():
            self.model.generate(**self._inputs(prompt_ids), **_generate_kwargs(settings), **self._length_kwargs(settings),
                                **self._cache_kwargs(), pad_token_id=self.tokenizer.pad_token_id,
                                streamer=_TimestampStreamer(lambda token_id, at_s: times.append(at_s)))
        return times

    def generate_batch(self, prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
        """One generate() call for every request: the prompts left-padded to the longest, the padding masked out
        (generate() derives each row's positions from its attention mask), greedy, each row exactly new_tokens long.
        Every row's token of a step arrives at that step's time."""
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else min(self.stop_token_ids, default=0)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids):] = 1
        rows: list[dict[str, list]] = [{"tokens": [], "stamps": []} for _ in prompts]
        streamer = _BatchStreamer(rows)
        started_s = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                **_generate_kwargs(GenerationSettings(max_new_tokens=new_tokens)),
                                min_new_tokens=new_tokens, eos_token_id=sorted(self.stop_token_ids),
                                **self._cache_kwargs(), pad_token_id=pad, streamer=streamer)
        return {"started_s": started_s, "requests": rows}

    def free(self) -> None:
        self.model = None

    def _length_kwargs(self, settings: GenerationSettings) -> dict[str, Any]:
        """Random weights: the stop tokens banned until max_new_tokens (transformers' min_new_tokens)."""
        if not self.random_weights:
            return {}
        return {"min_new_tokens": settings.max_new_tokens, "eos_token_id": sorted(self.stop_token_ids)}

    def details(self) -> dict[str, Any]:
        # the attention implementation actually in use, read back from the model (transformers may have
        # fallen back from the one asked for)
        dtype = str(self.model.dtype).removeprefix("torch.")
        kv = kv_cache.transformers_kv_cache(kv_cache.KvShape.from_config(self.model.config), dtype, self.cache_config)
        return {"runtime": self.runtime, "dtype": dtype,
                "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
                "kv_cache": {**kv.as_dict(), "label": kv.label,
                             **({"settings": dict(self.cache_config)} if self.cache_config else {})}, **self._facts}

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def _inputs(self, ids: list[int]) -> dict[str, torch.Tensor]:
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


# A model's own generation_config.json may ask for a repetition penalty or n-gram blocking; every runtime
# runs without them, so that answers differ only by what the variants compute.
_PLAIN_DECODING = {"top_k": None, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}


def _chunks(start: int, end: int, length: int) -> list[tuple[int, int]]:
    return [(i, min(i + length, end)) for i in range(start, end, length)]


def cache_tensor_bytes(cache: Any) -> int:
    """The bytes a transformers cache object holds: every layer's unquantized keys and values, and its quantized
    states with the tensors stored beside them (fp8's scale, hqq's scales and zero points)."""
    total = 0
    for layer in cache.layers:
        for value in (layer.keys, layer.values, getattr(layer, "_quantized_keys", None),
                      getattr(layer, "_quantized_values", None)):
            total += _nested_tensor_bytes(value)
    return total


def _nested_tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nested_tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nested_tensor_bytes(v) for v in value.values())
    return 0


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


class _Stopped(Exception):
    """Ends the prompt's forward pass between two layers once stop is set (caught in generate)."""


class _BatchStreamer(BaseStreamer):
    """A batched generate()'s tokens, one per row at each step, timestamped when the step hands them over."""

    def __init__(self, rows: list[dict[str, list]]):
        self._rows, self._prompt_seen = rows, False

    def put(self, value: torch.Tensor) -> None:
        at_s = time.perf_counter()
        if not self._prompt_seen:  # generate() first pushes the prompt ids
            self._prompt_seen = True
            return
        for row, token_id in zip(self._rows, value.reshape(-1).tolist()):
            row["tokens"].append(int(token_id))
            row["stamps"].append(at_s)

    def end(self) -> None:
        pass


class _StopsWhileReading:
    """Stop while the prompt is read: the first forward pass, one step that takes seconds for a long prompt on a
    CPU. Until the first token, each decoder layer checks stop before it runs; from the first token the hooks
    are gone and the StoppingCriteria checks once per token, so decoding pays nothing for this."""

    def __init__(self, model: torch.nn.Module, stop: threading.Event):
        self._stop = stop
        self._handles = [layer.register_forward_pre_hook(self._check) for layer in decoder_layers(model)]

    def _check(self, module, args) -> None:
        if self._stop.is_set():
            raise _Stopped

    def then(self, on_token: OnToken) -> OnToken:
        def first_token_ends_reading(token_id: int, at_s: float) -> None:
            if self._handles:
                self.remove()
            on_token(token_id, at_s)
        return first_token_ends_reading

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's decoder layers: the module list as long as its config's num_hidden_layers; [] if none is."""
    count = getattr(model.config, "num_hidden_layers", None)
    found = next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count), None)
    return list(found) if found is not None else []


class _StopOn(StoppingCriteria):
    def __init__(self, stop: threading.Event):
        self._stop = stop

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self._stop.is_set(), dtype=torch.bool, device=input_ids.device)


def stored_bytes(model: torch.nn.Module) -> int:
    """The bytes the weights really occupy: parameters, buffers and quantization state, each stored tensor
    counted once.

    get_memory_footprint() counts a tensor subclass at its nominal shape and dtype, so torchao's int8 and
    int4 weights read as bf16 (257 MiB for SmolLM2-135M either way); a subclass that wraps inner tensors
    (torchao's qdata, scales, zero points) is counted by those instead. It also misses what layers hold
    beside their parameters and buffers (held_tensors). A tensor at the address of one already counted
    (LLM.int8's CB is the weight's own data) is not counted again.
    """
    seen: set[tuple[str, int, int]] = set()  # (device, address, bytes) of each tensor counted
    total = sum(_tensor_bytes(tensor, seen) for tensor in [*model.parameters(), *model.buffers()])
    return total + sum(_tensor_bytes(tensor, seen) for module in model.modules() for tensor in held_tensors(module))


def held_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors a layer holds outside its parameters and buffers: bitsandbytes' quantization state, and any
    tensor kept as a plain attribute (gptqmodel's AWQ CPU kernel packs scales and zero points into one on its
    first pass)."""
    plain = [value for value in vars(module).values() if isinstance(value, torch.Tensor)]
    return quantization_state_tensors(module) + hqq_quant.state_tensors(module) + plain


def quantization_state_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors bitsandbytes keeps outside parameters and buffers for one layer.

    4-bit (Params4bit): weight.quant_state, a QuantState holding absmax (one scale per block), code (the
    16-value NF4/FP4 map) and, with double quantization, offset plus a nested state2 whose absmax and code
    quantize the absmax itself. LLM.int8 (Int8Params, Linear8bitLt): SCB, the per-row scales, on the weight
    or in the layer's MatmulLtState, and CB, which is the int8 weight's own data.
    """
    weight = getattr(module, "weight", None)
    found: list[torch.Tensor] = []
    state = getattr(weight, "quant_state", None)
    while state is not None:  # bitsandbytes' CPU kernel may have folded state2 back (no attribute left)
        found += [t for t in (getattr(state, name, None) for name in ("absmax", "code", "offset"))
                  if isinstance(t, torch.Tensor)]
        state = vars(state).get("state2")
    for holder in (weight, getattr(module, "state", None)):
        found += [t for t in (getattr(holder, name, None) for name in ("CB", "SCB")) if isinstance(t, torch.Tensor)]
    return found


def quantization_state_facts(model: torch.nn.Module) -> dict[str, Any]:
    """The MiB layers hold beyond their parameters and buffers (held_tensors: bitsandbytes' quantization
    state, a kernel's own packing), and for bitsandbytes 4-bit whether the absmax is still double-quantized
    in memory: its CPU kernel for AVX-512 BF16 folds the nested state back into one bf16 absmax per block on
    the first pass, so NF4 with double quantization then holds as much as without. {} where there is none."""
    seen: set[tuple[str, int, int]] = set()
    for tensor in [*model.parameters(), *model.buffers()]:
        _tensor_bytes(tensor, seen)
    extra = sum(_tensor_bytes(t, seen) for m in model.modules() for t in held_tensors(m))
    states = [m.weight.quant_state for m in model.modules()
              if getattr(getattr(m, "weight", None), "quant_state", None) is not None]
    if not extra and not states:
        return {}
    facts: dict[str, Any] = {"quantization_state_mib": round(extra / 2**20, 3)}
    if states:
        facts["absmax_double_quantized"] = all(vars(state).get("state2") is not None for state in states)
    return facts


def _tensor_bytes(tensor: torch.Tensor, seen: set[tuple[str, int, int]]) -> int:
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, name), seen) for name in names)
    size = tensor.numel() * tensor.element_size()
    if size == 0:
        return 0
    key = (str(tensor.device), tensor.data_ptr(), size)
    if key in seen:
        return 0
    seen.add(key)
    return size


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
        kwargs.update(_kernel_without_build(variant.method))
        return kwargs
    if variant.method == "torchao":
        kwargs.setdefault("dtype", getattr(torch, torchao_quant.DEFAULT_DTYPE))
        kwargs["quantization_config"] = torchao_quant.quantization_config(variant, device)
        return kwargs
    if variant.method == "hqq":  # loaded in its compute dtype, then quantized by the hqq library (load())
        kwargs.setdefault("dtype", getattr(torch, hqq_quant.DEFAULT_DTYPE))
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


# ZeroGPU places every variant at start-up in its serving process, where CUDA is the `spaces` package's emulation: a
# tensor "on cuda" stays in host memory and nothing can run on a GPU (demo.running.zerogpu sets this to "1" then).
# Two things change while it is set:
# - gptqmodel picks the fastest kernel the device has and builds it on first use: on CUDA its Marlin kernel,
#   compiled with nvcc as the checkpoint loads (6 minutes on 2 cores under `make zerogpu-check`, then a failed
#   build), for AutoRound checkpoints too. GPTQ, AWQ and AutoRound checkpoints load with plain-torch kernels instead,
#   which need no build (gptqmodel's guide puts its own at about 80 % of its Triton kernel's speed);
# - the two-token warm-up is not run: under the emulation it would run on the host, or reach real CUDA (gptqmodel's
#   Triton dequantization asked for libcuda); the worker that runs the variant pays its one-off costs instead.
PLACING_ON_ZEROGPU_ENV = "ARENA_PLACING_ON_ZEROGPU"
# as transformers' GPTQConfig / AwqConfig / AutoRoundConfig name them (auto-round's "torch": its auto_round:torch
# layers, which also picked gptqmodel's Marlin kernel under the emulation otherwise)
NO_BUILD_BACKENDS = {"gptq": "gptq_torch", "awq": "torch_awq", "autoround": "torch"}


def placing_on_zerogpu() -> bool:
    return os.environ.get(PLACING_ON_ZEROGPU_ENV) == "1"


def _kernel_without_build(method: str) -> dict[str, Any]:
    """from_pretrained's quantization_config that asks gptqmodel for a kernel needing no build, while placing on
    ZeroGPU (only its loading attributes, the backend among them, are merged into the checkpoint's own config)."""
    if not placing_on_zerogpu() or method not in NO_BUILD_BACKENDS:
        return {}
    from transformers import AutoRoundConfig, AwqConfig, GPTQConfig

    config_class = {"gptq": GPTQConfig, "awq": AwqConfig, "autoround": AutoRoundConfig}[method]
    return {"quantization_config": config_class(bits=4, backend=NO_BUILD_BACKENDS[method])}


def weights_for(variant: Variant, base: BaseModel) -> sources.Weights:
    """The checkpoint a variant loads: the base model's, or its own quantized one."""
    if variant.method not in CHECKPOINT_METHODS:
        return sources.resolve(base)
    if variant.checkpoint is not None:
        return sources.resolve_source(variant.checkpoint)
    folder = sources.quantized_dir(base, variant.method, variant.settings)
    if not sources.is_complete_checkpoint(folder):
        raise NotQuantized(f"not quantized yet: run `python -m demo.quantize --variant {variant.id}` "
                           f"(takes minutes on a CPU){sources.PRESS_QUANTIZE_NOW}")
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
    if (variant.settings.get("cache_config") or {}).get("backend") == "hqq" and not package_available("hqq"):
        raise VariantUnavailable("not available: its KV cache is quantized by the 'hqq' package, which is not installed")
    device = pick_device(variant)
    check_attention(variant, device)
    weights = weights_for(variant, base)
    kwargs = from_pretrained_kwargs(variant, device)
    common = {"revision": weights.revision, "trust_remote_code": base.trust_remote_code}
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        prompting = base_prompting(variant, base, weights)
        if variant.method == "gptq":
            kwargs["config"] = gptq_model_config(weights, common)
        if variant.method == "torchao":  # refused before quantizing layers it would skip
            torchao_quant.check_group_size(variant, AutoConfig.from_pretrained(weights.location, **common))
        # gptqmodel logs to stdout (kept for results); some torchao versions change process-wide settings
        with contextlib.redirect_stdout(sys.stderr), torchao_quant.global_state_kept():
            model = AutoModelForCausalLM.from_pretrained(weights.location, **common, **kwargs)
            if variant.method == "hqq":
                hqq_quant.quantize(model, variant, device)
    except OSError as exc:  # offline, gated without token, missing files: the Hub client raises OSError kinds
        log.warning("loading %s failed", variant.id, exc_info=True)
        raise VariantUnavailable(f"not available: weights for '{base.label}' could not be reached "
                                 f"({first_line(exc)})") from None
    return _ready(variant, model, prompting, device, base.random_weights)


def _ready(variant: Variant, model: Any, prompting: Prompting, device: str,
           random_weights: bool = False) -> TransformersVariant:
    """The loaded model with the base's tokenizer and stop ids, warmed up, its weights counted as they now sit."""
    model.eval()
    if prompting.generation_config is not None:  # the base's stop ids, not the checkpoint's own
        model.generation_config = prompting.generation_config
    tokenizer = prompting.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    facts = {**_method_facts(variant, model), **prompting.facts}
    loaded = TransformersVariant(variant, model, tokenizer, device, facts)
    loaded.random_weights = random_weights
    if not placing_on_zerogpu():  # nothing can run on the emulated device (see PLACING_ON_ZEROGPU_ENV)
        warm_up(loaded)
    # counted after the warm-up: bitsandbytes' CPU kernel repacks 4-bit weights and their state on the first pass
    loaded.weights_bytes = stored_bytes(model)
    loaded._facts.update(quantization_state_facts(model))
    loaded._facts["kernel"] = kernels.transformers_kernel(variant.method, model, device)  # after the warm-up
    # what a decode step does not read whole (demo.measuring.bandwidth.step_bytes): an untied input table
    loaded._facts.update(embedding_table_bytes=bandwidth.input_embedding_bytes(model),
                         tied_embeddings=bandwidth.embeddings_tied(model))
    return loaded


@dataclass(frozen=True)
class Prompting:
    """What makes a variant's prompt ids and stops its answer: the base model's, whatever the weights."""

    tokenizer: Any  # the base model's tokenizer, with its chat template
    generation_config: Any | None  # the base's GenerationConfig (its eos ids); None: the weights' own is the base's
    facts: dict[str, Any]  # recorded with each result


def base_prompting(variant: Variant, base: BaseModel, weights: sources.Weights) -> Prompting:
    """The base model's tokenizer, chat template and stop ids for a variant.

    A pre-made GPTQ / AWQ checkpoint carries a tokenizer and chat template of its own; every variant must
    get the same prompt ids, so the base's are used, once the checkpoint is checked to share the base's
    vocabulary (VariantUnavailable names the difference otherwise).
    """
    from transformers import AutoTokenizer, GenerationConfig

    if variant.method not in CHECKPOINT_METHODS:  # the base model's own weights: its own files
        tokenizer = AutoTokenizer.from_pretrained(weights.location, revision=weights.revision,
                                                  trust_remote_code=base.trust_remote_code)
        return Prompting(tokenizer, None, {})
    base_weights = sources.resolve(base)
    base_common = {"revision": base_weights.revision, "trust_remote_code": base.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(base_weights.location, **base_common)
    try:
        generation = GenerationConfig.from_pretrained(base_weights.location, **base_common)
    except OSError:  # a base without generation_config.json: the base config's defaults
        from transformers import AutoConfig

        base_config = AutoConfig.from_pretrained(base_weights.location, **base_common)
        generation = GenerationConfig.from_model_config(base_config)
    own = _checkpoint_tokenizer(weights, base)
    name = checkpoint_name(variant, weights)
    if own is None:
        return Prompting(tokenizer, generation, {"tokenizer": f"{base.label}'s ({name} has none of its own)"})
    check_same_vocabulary(own, tokenizer, name, base.label)
    same_template = getattr(own, "chat_template", None) == getattr(tokenizer, "chat_template", None)
    note = "" if same_template else "; the checkpoint's own chat template differs and is not used"
    return Prompting(tokenizer, generation, {"tokenizer": f"{base.label}'s, with its chat template{note}"})


def _checkpoint_tokenizer(weights: sources.Weights, base: BaseModel) -> Any | None:
    """A checkpoint's own tokenizer, or None where it ships none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(weights.location, revision=weights.revision,
                                             trust_remote_code=base.trust_remote_code)
    except (OSError, ValueError):  # no tokenizer files in the checkpoint
        return None


def checkpoint_name(variant: Variant, weights: sources.Weights) -> str:
    """How a message names a variant's checkpoint: its Hub repository, its folder, or the one demo.quantize made."""
    checkpoint = variant.checkpoint
    if checkpoint is not None and checkpoint.kind == "hub":
        return f"checkpoint {checkpoint.repo}"
    if checkpoint is not None:
        return f"checkpoint {checkpoint.path.name}"
    return f"the {variant.method.upper()} checkpoint made by demo.quantize"


def check_same_vocabulary(own: Any, base_tokenizer: Any, name: str, base_label: str) -> None:
    """Refuse a checkpoint whose tokenizer maps any token to another id than the base's: the base's prompt
    ids would then mean other tokens to its weights."""
    ours, theirs = base_tokenizer.get_vocab(), own.get_vocab()
    prefix = f"not available: {name}'s tokenizer differs from base {base_label}'s"
    if len(theirs) != len(ours):
        raise VariantUnavailable(f"{prefix}: vocab {len(theirs):,} vs {len(ours):,}")
    moved = sorted((ours.get(token, -1), token) for token, token_id in theirs.items() if ours.get(token) != token_id)
    if moved:
        first = moved[0][1]
        where = f"id {ours[first]} in the base" if first in ours else "absent from the base"
        raise VariantUnavailable(f"{prefix}: {len(moved):,} tokens differ (first: {first!r} is id {theirs[first]} "
                                 f"in the checkpoint, {where})")


# The packages whose layer classes run a pre-quantized checkpoint's weights.
KERNEL_PACKAGES = ("gptqmodel.", "auto_round_kernel.", "auto_round_extension.", "auto_round.")


def quantized_kernels(model: torch.nn.Module) -> list[str]:
    """The gptqmodel / auto-round layer classes the weights run through (which kernel was picked for this device)."""
    return sorted({type(m).__name__ for m in model.modules() if type(m).__module__.startswith(KERNEL_PACKAGES)})


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
    if variant.method == "hqq":
        return hqq_quant.quantized_layers(model)
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
