"""HQQ 4-bit through the hqq library on the bundled model: it answers, its weights are counted as stored (packed
4-bit values plus the scales and zero points hqq keeps beside them), the record says its matmuls are emulated on a
CPU, and nothing in the config lets a setting hqq does not know through."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from demo.artifacts import sources

from demo.config import load_config
from demo.errors import ConfigError
from tests.conftest import CLEAR_PROMPT, require_clear_answer

pytest.importorskip("hqq", reason="HQQ variants need the hqq package")

HQQ = "smollm2/hqq-4bit"
GROUP_SIZE = 64


def expected_bytes(checkpoint: str) -> int:
    """Every decoder linear at half a byte per weight plus a bf16 scale and zero point per group of 64; the rest
    (embeddings, norms) in bf16, and the rotary embedding's two float32 buffers of head_dim / 2 (not in the file)."""
    with safe_open(f"{checkpoint}/model.safetensors", "pt") as f:
        shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
    config = json.loads(Path(f"{checkpoint}/config.json").read_text())
    total = 2 * (config["hidden_size"] // config["num_attention_heads"] // 2) * 4
    for name, shape in shapes.items():
        count = torch.Size(shape).numel()
        if len(shape) == 2 and "embed_tokens" not in name:  # a linear layer's weight: [out, in]
            total += count // 2 + count // GROUP_SIZE * 2 * 2
        else:
            total += 2 * count
    return total


def test_hqq_answers_with_its_true_size_and_an_emulated_kernel(arena, default_config):
    ids = ["smollm2/fp32", HQQ]
    for variant_id in ids:
        require_clear_answer(arena, variant_id)
    records = {r["variant"]: r for r in arena.compare_records(CLEAR_PROMPT, ids, arena.settings(max_new_tokens=12))}
    record = records[HQQ]
    assert record["status"] == "done" and "Paris" in record["text"], record
    assert record["method"] == "hqq" and record["bits"] == 4
    assert record["weights_mib"] * 2**20 == expected_bytes(sources.resolve(default_config.bases["smollm2"]).location)
    stored = record["stored"]
    assert stored["quantized_linear_layers"] == 210 and stored["unquantized_linear_layers"] == ["lm_head"]
    assert record["kernel"]["kind"] == "emulated" and "HQQLinear" in record["kernel"]["found_by"]
    assert 0 <= record["fidelity"]["kl_divergence"] < 1
    assert record["weights_mib"] < records["smollm2/fp32"]["weights_mib"] / 4


def test_hqq_settings_are_checked(tmp_path):
    from tests.test_config import GOOD as base

    good = tmp_path / "good.yaml"
    good.write_text(base + "  - {id: tiny/hqq, base: tiny, method: hqq, settings: {nbits: 3}}\n")
    variant = load_config(good).variants["tiny/hqq"]
    assert variant.bits == 3 and variant.settings == {"nbits": 3, "group_size": 64, "axis": 1}
    for bad in ("{nbits: 5}", "{group_size: 64}", "{nbits: 4, group_size: 100}", "{nbits: 4, scheme: x}"):
        path = tmp_path / "bad.yaml"
        path.write_text(base + f"  - {{id: tiny/hqq, base: tiny, method: hqq, settings: {bad}}}\n")
        with pytest.raises(ConfigError):
            load_config(path)
