"""bitsandbytes weights are counted with their quantization state (absmax, codes, nested state, LLM.int8's row
scales), each stored tensor once: checked against a count made here by walking the layers, on the bundled model."""

import pytest
import torch

from demo.backends import transformers as runtime

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes variants need the bitsandbytes package")

NF4, FP4, INT8 = "smollm2/bnb-nf4", "smollm2/bnb-fp4", "smollm2/bnb-int8"


def parameters_bytes(model) -> int:
    unique = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in unique.values())


def state_bytes(model) -> int:
    """The quantization state, read layer by layer from bitsandbytes' own objects (nbytes of each tensor)."""
    total = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            total += state.absmax.nbytes + state.code.nbytes
            total += state.offset.nbytes if isinstance(state.offset, torch.Tensor) else 0
            nested = state.__dict__.get("state2")
            if nested is not None:
                total += nested.absmax.nbytes + nested.code.nbytes
        elif isinstance(module, bnb.nn.Linear8bitLt):
            weight, matmul = module.weight, module.state
            scales = matmul.SCB if matmul.SCB is not None else weight.SCB
            total += scales.nbytes
            for data in (matmul.CB, weight.CB):  # the int8 weight itself, already a parameter
                assert data is None or data.data_ptr() == weight.data_ptr()
    return total


def unwarmed(default_config, variant_id):
    """The variant as from_pretrained leaves it, before any forward pass repacks it for the CPU kernel."""
    from transformers import AutoModelForCausalLM

    variant = default_config.variants[variant_id]
    weights = runtime.weights_for(variant, default_config.bases[variant.base])
    return AutoModelForCausalLM.from_pretrained(weights.location, **runtime.from_pretrained_kwargs(variant, "cpu"))


def test_models_file_asks_nf4_with_double_quant_and_fp4_without(default_config):
    nf4, fp4 = default_config.variants[NF4].settings, default_config.variants[FP4].settings
    assert nf4["bnb_4bit_quant_type"] == "nf4" and nf4["bnb_4bit_use_double_quant"] is True
    assert fp4["bnb_4bit_quant_type"] == "fp4" and not fp4.get("bnb_4bit_use_double_quant", False)


def test_double_quantization_shows_in_the_weights(default_config):
    nf4, fp4 = unwarmed(default_config, NF4), unwarmed(default_config, FP4)
    for model in (nf4, fp4):
        assert state_bytes(model) > 0
        assert runtime.stored_bytes(model) == parameters_bytes(model) + state_bytes(model)
        # get_memory_footprint() sees the parameters only
        assert model.get_memory_footprint() == parameters_bytes(model)
    assert parameters_bytes(nf4) == parameters_bytes(fp4)  # packed 4-bit weights: the same size either way
    # one 8-bit absmax per block of 64 (plus a float32 one per 256 blocks) against one float32 per block
    assert runtime.stored_bytes(nf4) < runtime.stored_bytes(fp4)


@pytest.mark.parametrize("variant_id", [NF4, FP4, INT8])
def test_loaded_variant_counts_its_state_as_it_runs(default_config, variant_id):
    variant = default_config.variants[variant_id]
    loaded = runtime.load(variant, default_config.bases[variant.base])
    model = loaded.model
    extra = state_bytes(model)
    assert extra > 0
    assert loaded.weights_bytes == parameters_bytes(model) + extra
    assert loaded.details()["quantization_state_mib"] == round(extra / 2**20, 3)
    if variant_id != INT8:  # whether the CPU kernel folded the nested absmax back depends on the CPU
        nested = any(m.weight.quant_state.__dict__.get("state2") is not None
                     for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
        assert loaded.details()["absmax_double_quantized"] is nested
    loaded.free()


def test_a_tensor_shared_by_two_names_counts_once():
    layer = torch.nn.Linear(8, 8)
    model = torch.nn.Sequential(layer, torch.nn.Linear(8, 8))
    model[1].weight = layer.weight  # tied, as embeddings and lm_head are
    layer.state = type("State", (), {"CB": layer.weight.data, "SCB": torch.ones(8)})()  # CB aliases the weight
    assert runtime.stored_bytes(model) == (64 + 8 + 8) * 4 + 8 * 4
