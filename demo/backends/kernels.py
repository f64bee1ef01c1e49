"""How a variant's matmuls really run: `native` (a kernel made for its format did them) or `emulated` (its weights
dequantized, on the fly or at load, and multiplied in a float type), with a one-line reason and how the arena found
out. Read off the loaded model after its warm-up (layer classes, tensor subclasses, flags a library sets when it
repacks weights for its own kernel), the library's kernel registry, and the CPU's flags. An emulated row's speed
and memory say nothing about its format, so the summary marks it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

NATIVE, EMULATED, UNKNOWN = "native", "emulated", "unknown"

# gptqmodel's layer classes: whether a kernel for the packed format does the matmul, or the layer dequantizes
# its weights to the activation dtype on each call first (TorchLinear / TorchAwqLinear, the portable fallback).
_GPTQMODEL_NATIVE = {
    "TorchAtenLinear": "aten's _weight_int4pack_mm_for_cpu on the repacked 4-bit weights",
    "TorchAtenAwqLinear": "aten's _weight_int4pack_mm_for_cpu on the repacked 4-bit weights",
    "MarlinLinear": "the Marlin 4-bit CUDA kernel", "MarlinAwqLinear": "the Marlin 4-bit CUDA kernel",
    "ExllamaV2Linear": "the ExLlamaV2 4-bit CUDA kernel", "AwqGEMMLinear": "AWQ's GEMM kernel",
    "AwqGEMVLinear": "AWQ's GEMV kernel", "MacheteLinear": "the Machete CUDA kernel",
}


def kernel(kind: str, reason: str, found_by: str) -> dict[str, str]:
    return {"kind": kind, "reason": reason, "found_by": found_by}


def transformers_kernel(method: str, model: torch.nn.Module, device: str) -> dict[str, str]:
    """The kernel a transformers variant's linear layers run through, after its warm-up."""
    if method in ("fp32", "fp16", "bf16"):
        return _float_kernel(method, device)
    if method == "bnb-int8":
        return _bnb_int8(device)
    if method == "bnb-4bit":
        return _bnb_4bit(model, device)
    if method in ("gptq", "awq"):
        return _gptqmodel(model)
    if method == "torchao":
        return _torchao(model)
    if method == "hqq":
        return _hqq(model)
    if method == "autoround":
        return _autoround(model)
    if method == "compressed-tensors":
        return _compressed_tensors(model)
    return kernel(UNKNOWN, f"no rule for method {method}", "nothing")


def llama_cpp_kernel(tensor_types: dict[str, int], device: str) -> dict[str, str]:
    """ggml has a dot-product kernel for every GGUF tensor type: its matmuls run on the packed blocks."""
    where = "CUDA" if device == "cuda" else "CPU"
    types = ", ".join(sorted(t for t in tensor_types if t not in ("F32",)))
    return kernel(NATIVE, f"ggml's {where} kernels for {types or 'F32'} multiply the stored blocks",
                  "the GGUF file's tensor types (every one has a ggml kernel)")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _float_kernel(method: str, device: str) -> dict[str, str]:
    if method == "fp32" or device == "cuda":
        dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[method]
        return kernel(NATIVE, f"{dtype} matmuls", "the weights' dtype")
    needed = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}[method]
    have = [flag for flag in needed if flag in cpu_flags()]
    if have:
        return kernel(NATIVE, f"{method} matmuls on the CPU's {' and '.join(have)} instructions",
                      "the weights' dtype and the CPU's flags")
    return kernel(EMULATED, f"this CPU has no {method} arithmetic ({' / '.join(needed)}): {method} values are "
                  "converted to float32 inside the matmul", "the CPU's flags")


def _bnb_int8(device: str) -> dict[str, str]:
    if device == "cuda":
        return kernel(NATIVE, "bitsandbytes' int8 CUDA matmul (outlier columns in float16)", "the device")
    if torch._C._dispatch_has_kernel_for_dispatch_key("bitsandbytes::int8_linear_matmul", "CPU"):
        return kernel(NATIVE, "torch._int_mm: int8 × int8 → int32 (outlier columns in float16)",
                      "bitsandbytes' kernel registry (a CPU kernel is registered where torch and AVX-512 allow)")
    return kernel(EMULATED, "bitsandbytes' default kernel multiplies the int8 values in float32 (no AVX-512)",
                  "bitsandbytes' kernel registry (no CPU kernel registered)")


def _bnb_4bit(model: torch.nn.Module, device: str) -> dict[str, str]:
    if device == "cuda":
        return kernel(NATIVE, "bitsandbytes' 4-bit CUDA kernels (gemv at batch 1)", "the device")
    states = [getattr(getattr(m, "weight", None), "quant_state", None) for m in model.modules()
              if type(m).__name__ == "Linear4bit"]
    packed = [s for s in states if s is not None and getattr(s, "packing_format_for_cpu", False)]
    if states and len(packed) == len(states):
        return kernel(NATIVE, "bitsandbytes' fused 4-bit CPU GEMM on repacked weights (AVX512-BF16)",
                      "the layers' quant_state after the warm-up (packing_format_for_cpu)")
    return kernel(EMULATED, "each call dequantizes the 4-bit weights to the compute dtype, then a float matmul "
                  "(bitsandbytes' fused CPU kernel needs AVX512-BF16)",
                  "the layers' quant_state after the warm-up (not repacked for the CPU kernel)")


def _gptqmodel(model: torch.nn.Module) -> dict[str, str]:
    layers = [m for m in model.modules() if type(m).__module__.startswith("gptqmodel.")]
    names = sorted({type(m).__name__ for m in layers})
    if not names:
        return kernel(UNKNOWN, "no gptqmodel layer found", "the layers' classes")
    found_by = f"the layers' classes ({', '.join(names)})"
    if any(n not in _GPTQMODEL_NATIVE for n in names):
        return kernel(EMULATED, "each call dequantizes the 4-bit weights to the activation dtype, then a float "
                      "matmul (gptqmodel's portable torch kernel)", found_by)
    modes = {getattr(m, "linear_mode", "inference") for m in layers}
    if modes - {"inference", None}:
        return kernel(EMULATED, "the layers fell back to dequantize + float matmul", found_by + " and their mode")
    return kernel(NATIVE, _GPTQMODEL_NATIVE[names[0]], found_by)


def _torchao(model: torch.nn.Module) -> dict[str, str]:
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    kinds = sorted({type(w).__name__ for w in weights if type(w).__name__ not in ("Parameter", "Tensor")})
    found_by = f"the weights' tensor classes ({', '.join(kinds) or 'none'})"
    if "Int4OpaqueTensor" in kinds:
        return kernel(NATIVE, "aten's _weight_int4pack_mm_for_cpu on the packed int4 weights", found_by)
    if "Int4TilePackedTo4dTensor" in kinds:
        return kernel(NATIVE, "tinygemm's _weight_int4pack_mm (CUDA)", found_by)
    if "Float8Tensor" in kinds:
        if any(w.is_cuda for w in weights):
            return kernel(NATIVE, "float8 weights multiplied by torch's scaled fp8 matmul (CUDA)", found_by)
        return kernel(EMULATED, "weight-only float8: each call casts the e4m3 weights to the activation dtype and "
                      "scales them, then a float matmul (no CPU fp8 matmul)", found_by)
    if "Int8Tensor" in kinds:
        dynamic = any(getattr(w, "act_quant_kwargs", None) is not None for w in weights)
        if dynamic:
            return kernel(NATIVE, "activations quantized per token, then int8 × int8 → int32 (torch._int_mm)",
                          found_by + " with activation quantization")
        return kernel(EMULATED, "weight-only int8: each call casts the int8 weights to the activation dtype, then a "
                      "float matmul and the scale (torchao's Int8Tensor linear)", found_by)
    return kernel(UNKNOWN, "no torchao tensor class with a known kernel", found_by)


def _hqq(model: torch.nn.Module) -> dict[str, str]:
    from demo.backends import hqq_quant

    layers = [m for m in model.modules() if hqq_quant.is_hqq_layer(m)]
    if not layers:
        return kernel(UNKNOWN, "no HQQLinear layer found", "the layers' classes")
    backend = hqq_quant.backend_name()
    found_by = f"the layers' classes (HQQLinear) and HQQLinear.backend ({backend})"
    if backend.startswith("PYTORCH") or backend.startswith("ATEN"):
        return kernel(EMULATED, "each call dequantizes the packed weights to the compute dtype, then a float matmul "
                      "(hqq's own forward; its fused kernels are CUDA backends set by prepare_for_inference)", found_by)
    return kernel(UNKNOWN, f"HQQ backend {backend} has no rule here", found_by)


def _autoround(model: torch.nn.Module) -> dict[str, str]:
    """auto-round picks its inference backend at load: its kernel library (auto-round-lib), gptqmodel's kernels, or
    a torch fallback that dequantizes on every call."""
    layers = {type(m).__name__: type(m).__module__ for m in model.modules()
              if type(m).__module__.startswith(("auto_round", "gptqmodel."))}
    found_by = f"the layers' classes ({', '.join(sorted(f'{mod}.{name}' for name, mod in layers.items())) or 'none'})"
    if not layers:
        return kernel(UNKNOWN, "no auto-round or gptqmodel layer found", found_by)
    if all(mod.startswith("gptqmodel.") for mod in layers.values()):
        return _gptqmodel(model)
    if all(mod.startswith("auto_round_kernel.") for mod in layers.values()):
        where = "CUDA" if any(p.is_cuda for p in model.parameters()) else "CPU"
        return kernel(NATIVE, f"the AutoRound kernel library's {where} GEMM on the packed low-bit weights "
                      "(auto-round-lib)", found_by)
    return kernel(EMULATED, "each call dequantizes the packed weights to the activation dtype, then a float matmul "
                  "(auto-round's torch fallback; auto-round-lib has the CPU kernel)", found_by)


def _compressed_tensors(model: torch.nn.Module) -> dict[str, str]:
    """transformers runs a compressed-tensors checkpoint through compressed-tensors' own forward, which on its first
    call decompresses the packed weights to the activation dtype and keeps them so; every call after is a float
    matmul behind its quantize-dequantize hooks. The kernels for these formats are vLLM's."""
    layers = [m for m in model.modules() if getattr(m, "quantization_scheme", None) is not None]
    if not layers:
        return kernel(UNKNOWN, "no layer carries a compressed-tensors quantization scheme", "the layers' schemes")
    dtypes = sorted({str(m.weight.dtype).removeprefix("torch.") for m in layers if hasattr(m, "weight")})
    found_by = (f"the layers' compressed-tensors schemes and the dtype their weights hold after the warm-up "
                f"({', '.join(dtypes) or 'still packed'})")
    return kernel(EMULATED, "compressed-tensors decompresses the weights to the activation dtype at the first call and "
                  "runs float matmuls (with its quantize-dequantize hooks): no low-bit kernel on this runtime, and "
                  "the memory of a 16-bit model; vLLM has the kernels for this format", found_by)
