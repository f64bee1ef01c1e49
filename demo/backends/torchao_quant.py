"""torchao weight quantization at load time: the scheme a variant names as a TorchAoConfig, the group size
checked against the model's layers, and the process-wide settings kept as they were.

Nothing is saved: torchao's CPU int4 tensors cannot be serialized, and quantizing the bundled model takes
seconds, so every load quantizes the base model's weights afresh (transformers' TorchAoConfig).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from demo.config import Variant
from demo.errors import VariantUnavailable

DEFAULT_DTYPE = "bfloat16"  # torchao's int4 CPU kernel takes bf16 activations; the unquantized modules match


def quantization_config(variant: Variant, device: str):
    """transformers' TorchAoConfig for the variant's scheme, on this device's kernel."""
    from transformers import TorchAoConfig

    return TorchAoConfig(quant_type=_scheme_config(variant.settings, device))


def _scheme_config(settings: dict[str, Any], device: str):
    # set_inductor_config=False everywhere: by default every torchao scheme rewrites torch._inductor's
    # global config when it quantizes a layer, which would change how any later compiled variant runs.
    scheme = settings["scheme"]
    if scheme == "int8_weight_only":
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig(set_inductor_config=False)
    if scheme == "float8_weight_only":  # e4m3 weights, one scale per row; fp8 activations need a GPU (sm 8.9+)
        from torchao.quantization import Float8WeightOnlyConfig

        return Float8WeightOnlyConfig(set_inductor_config=False)
    if scheme == "int8_dynamic":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    algorithm = settings.get("int4_choose_qparams_algorithm", "tinygemm")
    if device == "cuda":  # tinygemm's packed layout: the int4 kernel CUDA has (HQQ parameters included)
        from torchao.quantization import Int4WeightOnlyConfig

        return Int4WeightOnlyConfig(group_size=settings["group_size"], int4_packing_format="tile_packed_to_4d",
                                    int4_choose_qparams_algorithm=algorithm, set_inductor_config=False)
    # Int4WeightOnlyConfig's layouts need CUDA or XPU; this one has a CPU kernel
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=settings["group_size"], int4_choose_qparams_algorithm=algorithm,
                                         set_inductor_config=False)


def check_group_size(variant: Variant, model_config: Any) -> None:
    """Refuse an int4 group size that does not divide every linear layer's input width.

    torchao leaves such a layer unquantized and says so only in a log line, so the variant would load,
    answer, and pass for int4 while most of it ran in bf16 (group 128 on SmolLM2-135M's 576-wide layers).
    """
    group_size = variant.settings.get("group_size")
    if variant.settings["scheme"] != "int4_weight_only" or group_size is None:
        return
    widths = set(linear_input_widths(model_config).values())
    bad = sorted(w for w in widths if w % group_size)
    if bad:
        fits = [g for g in (32, 64, 128, 256) if all(w % g == 0 for w in widths)]
        raise VariantUnavailable(f"not available: group size {group_size} does not divide this model's layer "
                                 f"widths ({', '.join(map(str, bad))}), so torchao would leave those layers "
                                 f"unquantized; use group_size {' or '.join(map(str, fits)) or 'none fits'}")


def linear_input_widths(model_config: Any) -> dict[str, int]:
    """Input width of every nn.Linear the architecture builds, read off a model made on the meta device
    (no memory, no weights): module name -> in_features."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return {name: m.in_features for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def quantized_layers(model: torch.nn.Module) -> dict[str, Any]:
    """How many linear layers hold torchao tensors, and the names of those that do not (lm_head, tied to
    the embeddings, stays as it is by transformers' choice)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    plain = [name for name, m in linears.items() if not is_traceable_wrapper_subclass(m.weight)]
    return {"quantized_linear_layers": len(linears) - len(plain), "linear_layers": len(linears),
            "unquantized_linear_layers": plain}


@contextlib.contextmanager
def global_state_kept() -> Iterator[None]:
    """Put back the process-wide float32 matmul precision after loading: some torchao versions set it to
    "high" for the whole process, which would change every fp32 variant's numbers from then on."""
    precision = torch.get_float32_matmul_precision()
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
