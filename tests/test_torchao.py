"""torchao int8 / int4 weight-only variants on the bundled model: they answer, their weights are counted as
stored, loading them leaves every other variant's numbers alone, and a group size that cannot fit is refused."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from demo import evaluate
from demo.artifacts import sources
from demo.backends import load as load_variant
from demo.backends import torchao_quant
from demo.config import load_config
from demo.errors import ConfigError, VariantUnavailable
from demo.settings import prompt_ids
from tests.conftest import CLEAR_PROMPT, require_clear_answer

pytest.importorskip("torchao", reason="torchao variants need the torchao package")

PROMPT = CLEAR_PROMPT
INT8, INT4 = "smollm2/torchao-int8", "smollm2/torchao-int4"
GROUP_SIZE = 64


def expected_bytes(checkpoint: str, scheme: str) -> int:
    """The weights' size from the checkpoint's tensor shapes: every linear weight as torchao stores it,
    everything else (embeddings, norms) in bf16. int8: one int8 per weight plus a float32 scale and an int8
    zero point per row; int4: two weights per byte plus a bf16 scale and zero point per group of 64. The
    rotary embedding adds two float32 buffers of head_dim / 2 (inv_freq and its original), not in the file."""
    with safe_open(f"{checkpoint}/model.safetensors", "pt") as f:
        shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
    config = json.loads(Path(f"{checkpoint}/config.json").read_text())
    total = 2 * (config["hidden_size"] // config["num_attention_heads"] // 2) * 4
    for name, shape in shapes.items():
        if len(shape) == 2 and "embed_tokens" not in name:  # a linear layer's weight: [out, in]
            out, width = shape
            total += out * width + out * 5 if scheme == "int8" else out * width // 2 + out * (width // GROUP_SIZE) * 4
        else:
            total += 2 * torch.Size(shape).numel()
    return total


def test_each_scheme_answers_with_its_true_weights_size_and_fidelity(arena, default_config):
    ids = ["smollm2/fp32", INT8, INT4]
    for variant_id in ids:
        require_clear_answer(arena, variant_id)
    records = {r["variant"]: r for r in arena.compare_records(PROMPT, ids, arena.settings(max_new_tokens=12))}
    checkpoint = sources.resolve(default_config.bases["smollm2"]).location
    for variant_id, scheme in ((INT8, "int8"), (INT4, "int4")):
        record = records[variant_id]
        assert record["status"] == "done" and "Paris" in record["text"], record
        assert record["method"] == "torchao" and record["bits"] == int(scheme[-1])
        assert record["weights_mib"] * 2**20 == expected_bytes(checkpoint, scheme)
        stored = record["stored"]
        assert stored["dtype"] == "bfloat16" and stored["attn_implementation"] == "sdpa"
        # all 210 decoder linears hold torchao tensors; lm_head shares the embeddings and stays bf16
        assert stored["quantized_linear_layers"] == 210 and stored["unquantized_linear_layers"] == ["lm_head"]
        fidelity = record["fidelity"]
        assert fidelity["baseline"] == "smollm2/fp32" and 0 <= fidelity["kl_divergence"] < 1
    # get_memory_footprint() would say 257 MiB for both; what is stored differs by scheme
    assert records[INT4]["weights_mib"] < records[INT8]["weights_mib"] < 160


def test_loading_torchao_leaves_the_fp32_numbers_and_global_settings_alone(arena):
    import torch._inductor.config as inductor

    def fp32_logits():
        loaded = arena.device.call(arena.manager.get, "smollm2/fp32").loaded
        return arena.device.call(loaded.logits, arena.device.call(prompt_ids, loaded.tokenizer, PROMPT))

    before, precision = fp32_logits(), torch.get_float32_matmul_precision()
    tuning = inductor.coordinate_descent_tuning
    for variant_id in (INT8, INT4):
        arena.device.call(arena.manager.evict, variant_id)  # a fresh load, quantizing again
        arena.device.call(arena.manager.get, variant_id)
    assert torch.equal(fp32_logits(), before)
    assert torch.get_float32_matmul_precision() == precision
    assert inductor.coordinate_descent_tuning == tuning


def test_the_global_state_guard_puts_the_matmul_precision_back():
    before = torch.get_float32_matmul_precision()
    with torchao_quant.global_state_kept():
        torch.set_float32_matmul_precision("high" if before != "high" else "medium")  # what older torchao did
    assert torch.get_float32_matmul_precision() == before


def test_a_group_size_that_does_not_divide_the_layers_is_refused_before_loading(default_config):
    variant = default_config.variants[INT4]
    odd = dataclasses.replace(variant, settings={**variant.settings, "group_size": 128})
    with pytest.raises(VariantUnavailable, match=r"group size 128 does not divide this model's layer widths "
                                                 r"\(576\).*use group_size 32 or 64"):
        load_variant(odd, default_config.bases["smollm2"])


@pytest.mark.parametrize("settings, field, message", [
    ({"scheme": "int4_weight_only"}, "settings.group_size", "is required for scheme int4_weight_only"),
    ({"scheme": "int8_weight_only", "group_size": 64}, "settings.group_size", "applies to scheme int4_weight_only"),
    ({"scheme": "int8_dynamic", "int4_choose_qparams_algorithm": "hqq"}, "settings.int4_choose_qparams_algorithm",
     "applies to scheme int4_weight_only"),
    ({"scheme": "int4_weight_only", "group_size": 100}, "settings.group_size", "must be one of 32, 64, 128, 256"),
    ({"scheme": "int2"}, "settings.scheme", "must be one of int8_weight_only, int4_weight_only, int8_dynamic"),
])
def test_torchao_settings_are_checked_in_the_config(tmp_path, settings, field, message):
    path = tmp_path / "models.yaml"
    path.write_text(json.dumps({
        "bases": {"tiny": {"source": {"kind": "hub", "repo": "org/tiny"}}},
        "variants": [{"id": "tiny/ao", "base": "tiny", "method": "torchao", "settings": settings}]}))
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert caught.value.field == field and caught.value.variant == "tiny/ao"


def test_hqq_parameters_are_a_setting_of_the_int4_scheme(default_config):
    variant = default_config.variants[INT4]
    hqq = dataclasses.replace(variant, id="smollm2/torchao-int4-hqq",
                              settings={**variant.settings, "int4_choose_qparams_algorithm": "hqq"})
    loaded = load_variant(hqq, default_config.bases["smollm2"])
    try:
        assert loaded.details()["quantized_linear_layers"] == 210
        ids = prompt_ids(loaded.tokenizer, PROMPT)
        assert loaded.tokenizer.decode([int(loaded.logits(ids)[-1].argmax())]).strip() in ("The", "Paris")
    finally:
        loaded.free()


def test_evaluate_writes_torchao_rows(arena, tmp_path):
    from tests.conftest import REPO

    text = "\n".join((REPO / "assets" / "evaluation.txt").read_text().splitlines()[:8])
    results = evaluate.evaluate(arena, ["smollm2/fp32", INT4], text, runs=1, max_new_tokens=4)
    paths = evaluate.write_outputs(results, arena, tmp_path, evaluate.conditions(REPO / "assets" / "evaluation.txt",
                                                                                  1, 4))
    rows = {row["variant"]: row for row in json.loads(paths["json"].read_text())["variants"]}
    row = rows[INT4]
    assert row["error"] is None and row["baseline"] == "smollm2/fp32"
    assert 1 < row["perplexity"] < 1000 and row["kl_divergence"] > 0 and 0.5 < row["top1_agreement"] <= 1
    assert row["weights_mib"] < 0.25 * rows["smollm2/fp32"]["weights_mib"] and row["disk_mib"] is None
    assert f"| {INT4} |" in paths["markdown"].read_text()
