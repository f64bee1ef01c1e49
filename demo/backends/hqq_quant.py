"""HQQ weight quantization at load time, through the hqq library itself.

HQQ (half-quadratic quantization) needs no calibration data: each linear layer's scales and zero points are
solved from its own weights, in seconds for the bundled model. transformers 5's `HqqConfig` cannot quantize
(its quantizer raises NotImplementedError), so the arena calls the library the way its own README does:
`AutoHQQHFModel.quantize_model` on a model loaded in the compute dtype. lm_head stays as it is (hqq's default,
as with every other family here). Nothing is saved, as with torchao: every load quantizes the base weights afresh.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch

from demo.config import Variant

DEFAULT_DTYPE = "bfloat16"  # the compute dtype: what the layers dequantize to before their matmul


def quantize(model: torch.nn.Module, variant: Variant, device: str) -> None:
    """Replace the model's linear layers (lm_head aside) by HQQLinear ones, in place."""
    from hqq.core.quantize import BaseQuantizeConfig
    from hqq.models.hf.base import AutoHQQHFModel

    settings = variant.settings
    config = BaseQuantizeConfig(nbits=settings["nbits"], group_size=settings["group_size"], axis=settings["axis"])
    compute_dtype = next(model.parameters()).dtype
    # hqq casts every other module to the compute dtype, buffers included: the rotary frequencies transformers keeps
    # in float32 would turn bf16 and move every position's angle, an error that is not the weights' quantization.
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    with contextlib.redirect_stdout(sys.stderr):  # hqq prints; stdout is kept for results
        AutoHQQHFModel.quantize_model(model, quant_config=config, compute_dtype=compute_dtype, device=device)
    for name, buffer in model.named_buffers():
        if name in buffers and buffer.dtype != buffers[name].dtype:
            buffer.data = buffers[name].to(buffer.device)


def is_hqq_layer(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "HQQLinear" and type(module).__module__.startswith("hqq.")


def quantized_layers(model: torch.nn.Module) -> dict[str, Any]:
    """How many linear layers HQQ replaced, and the names of the plain ones left (lm_head)."""
    hqq = [name for name, m in model.named_modules() if is_hqq_layer(m)]
    plain = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return {"quantized_linear_layers": len(hqq), "linear_layers": len(hqq) + len(plain),
            "unquantized_linear_layers": plain}


def state_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors an HQQLinear keeps in its `meta` dict beside its packed weights: scales and zero points (and,
    where those are themselves quantized, their own scales and zeros in meta_scale / meta_zero)."""
    if not is_hqq_layer(module):
        return []
    found: list[torch.Tensor] = []
    pending = [getattr(module, "meta", None) or {}]
    while pending:
        for value in pending.pop().values():
            if isinstance(value, torch.Tensor):
                found.append(value)
            elif isinstance(value, dict):
                pending.append(value)
    return found


def backend_name() -> str:
    """The forward HQQLinear layers use in this process (PYTORCH: dequantize, then a float matmul)."""
    from hqq.core.quantize import HQQLinear

    return getattr(HQQLinear.backend, "name", str(HQQLinear.backend))
