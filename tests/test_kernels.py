"""Every record says how its matmuls ran (demo.backends.kernels): native or emulated, why, and how the arena found
out; the summary marks emulated rows. What a CPU offers differs between machines, so each check holds the label
against the evidence it names rather than against one machine's answer."""

import pytest
import torch

from demo.backends import kernels
from demo.reports import report


def test_float_dtypes_follow_the_cpus_own_arithmetic(monkeypatch):
    assert kernels.transformers_kernel("fp32", None, "cpu")["kind"] == "native"
    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    bf16 = kernels.transformers_kernel("bf16", None, "cpu")
    assert bf16["kind"] == "emulated" and "avx512_bf16" in bf16["reason"] and bf16["found_by"] == "the CPU's flags"
    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))
    assert kernels.transformers_kernel("bf16", None, "cpu")["kind"] == "native"
    assert kernels.transformers_kernel("fp16", None, "cpu")["kind"] == "emulated"
    assert kernels.transformers_kernel("fp16", None, "cuda")["kind"] == "native"


def test_bitsandbytes_int8_is_native_where_its_cpu_kernel_is_registered():
    pytest.importorskip("bitsandbytes")
    registered = torch._C._dispatch_has_kernel_for_dispatch_key("bitsandbytes::int8_linear_matmul", "CPU")
    found = kernels.transformers_kernel("bnb-int8", None, "cpu")
    assert found["kind"] == ("native" if registered else "emulated") and "kernel registry" in found["found_by"]


def test_torchao_weight_only_int8_is_emulated_and_int4_native():
    """torchao's Int8Tensor linear casts the int8 weights to the activation dtype on each call (weight-only)."""
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False)).to(torch.bfloat16)
    quantize_(model, Int8WeightOnlyConfig())
    found = kernels.transformers_kernel("torchao", model, "cpu")
    assert found["kind"] == "emulated" and "Int8Tensor" in found["found_by"]


def test_torchao_float8_weights_are_emulated_on_a_cpu():
    """No CPU has an fp8 matmul: torchao's Float8Tensor linear casts the e4m3 weights up on every call."""
    pytest.importorskip("torchao")
    from torchao.quantization import Float8WeightOnlyConfig, quantize_

    model = torch.nn.Sequential(torch.nn.Linear(64, 64, bias=False)).to(torch.bfloat16)
    quantize_(model, Float8WeightOnlyConfig())
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    assert model(x).dtype == torch.bfloat16
    found = kernels.transformers_kernel("torchao", model, "cpu")
    assert found["kind"] == "emulated" and "Float8Tensor" in found["found_by"] and "fp8 matmul" in found["reason"]


def test_hqq_and_autoround_layers_name_their_kernel():
    class HQQLinear(torch.nn.Module):
        __module__ = "hqq.core.quantize"

    class QuantLinearGPTQ(torch.nn.Module):
        __module__ = "auto_round_kernel.qlinear"

    class QuantLinear(torch.nn.Module):
        __module__ = "auto_round_extension.torch.qlinear_torch_zp"

    pytest.importorskip("hqq")
    hqq = kernels.transformers_kernel("hqq", torch.nn.Sequential(HQQLinear()), "cpu")
    assert hqq["kind"] == "emulated" and "HQQLinear.backend (PYTORCH" in hqq["found_by"]
    ark = kernels.transformers_kernel("autoround", torch.nn.Sequential(QuantLinearGPTQ()), "cpu")
    assert ark["kind"] == "native" and "auto-round-lib" in ark["reason"]
    fallback = kernels.transformers_kernel("autoround", torch.nn.Sequential(QuantLinear()), "cpu")
    assert fallback["kind"] == "emulated" and "auto_round_extension" in fallback["found_by"]


def test_gptqmodel_layers_name_their_kernel():
    class TorchAtenLinear(torch.nn.Module):
        __module__ = "gptqmodel.nn_modules.qlinear.torch_aten_kernel"
        linear_mode = "inference"

    class TorchLinear(torch.nn.Module):
        __module__ = "gptqmodel.nn_modules.qlinear.torch"

    native = kernels.transformers_kernel("gptq", torch.nn.Sequential(TorchAtenLinear()), "cpu")
    assert native["kind"] == "native" and "_weight_int4pack_mm_for_cpu" in native["reason"]
    assert native["found_by"] == "the layers' classes (TorchAtenLinear)"
    emulated = kernels.transformers_kernel("gptq", torch.nn.Sequential(TorchLinear()), "cpu")
    assert emulated["kind"] == "emulated" and "dequantizes" in emulated["reason"]


def test_a_loaded_variant_records_its_kernel_and_the_summary_marks_emulated_rows(arena):
    [record] = arena.compare_records("Hi.", ["smollm2/bnb-nf4"], arena.settings(max_new_tokens=2))
    kernel = record["kernel"]
    assert record["stored"]["kernel"] == kernel and kernel["kind"] in ("native", "emulated")
    assert "quant_state" in kernel["found_by"]
    assert dict(report.figures(record))["kernel"].startswith(kernel["kind"] + ": ")
    row = dict(zip(report.SUMMARY_HEADERS, report.summary_rows([record])[0]))
    assert row["method"] == ("bnb-4bit (emulated)" if kernel["kind"] == "emulated" else "bnb-4bit")


def test_gguf_runs_on_ggml_kernels():
    found = kernels.llama_cpp_kernel({"Q8_0": 211, "F32": 61}, "cpu")
    assert found["kind"] == "native" and "Q8_0" in found["reason"]
