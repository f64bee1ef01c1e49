"""AWQ through gptqmodel on the bundled model: made with the calibration text, loaded by transformers on the
CPU kernel, answering, with its weights, fidelity and evaluate rows.

AWQ's scale search takes minutes on a 2-core CPU even on a few samples, so the checkpoint is made once per
session from a short slice of the calibration text, outside the cache, and loaded as a pre-made checkpoint.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from demo import evaluate
from demo.artifacts import quantize, sources
from demo.backends import load as load_variant
from demo.config import load_config
from demo.errors import NotQuantized
from demo.running.runner import Arena
from tests.conftest import CLEAR_PROMPT, REPO, in_process, require_clear_answer

pytest.importorskip("gptqmodel", reason="AWQ variants need gptqmodel")

PROMPT = CLEAR_PROMPT
AWQ = "smollm2/awq-test"
SAMPLES = 8
SETTINGS = {"bits": 4, "group_size": 64, "zero_point": True}


@pytest.fixture(scope="session")
def awq_checkpoint(tmp_path_factory, default_config) -> Path:
    folder = tmp_path_factory.mktemp("awq")
    lines = quantize.CALIBRATION_FILE.read_text().splitlines()
    calibration = folder / "calibration.txt"
    calibration.write_text("\n".join([line for line in lines if line.strip()][:SAMPLES * quantize.LINES_PER_SAMPLE]))
    out = folder / "checkpoint"
    quantize.quantize(default_config.bases["smollm2"], "awq", SETTINGS, out, calibration)
    return out


@pytest.fixture(scope="session")
def awq_arena(tmp_path_factory, awq_checkpoint):
    data = yaml.safe_load((REPO / "models.yaml").read_text())
    data["variants"] = [v for v in data["variants"] if v["id"] == "smollm2/fp32"] + [
        {"id": AWQ, "base": "smollm2", "method": "awq", "settings": SETTINGS,
         "checkpoint": {"kind": "local", "path": str(awq_checkpoint)}}]
    path = tmp_path_factory.mktemp("awq-config") / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return Arena(in_process(load_config(path)))  # the test reads the loaded layers' own tensors


def test_quantizing_records_the_awq_settings_and_calibration(awq_checkpoint):
    metadata = json.loads((awq_checkpoint / sources.METADATA_FILE).read_text())
    assert metadata["method"] == "awq" and metadata["settings"] == SETTINGS
    assert metadata["calibration"]["samples"] == SAMPLES and metadata["environment"]["gptqmodel"]
    config = json.loads((awq_checkpoint / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "awq" and config["group_size"] == 64 and config["zero_point"] is True


def stored_file_bytes(folder: Path) -> int:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return sum(_nbytes(f, name) for name in f.keys())


def held_bytes(model) -> int:
    """Every parameter and buffer once, plus each tensor a layer keeps as a plain attribute."""
    registered = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    plain = [value for module in model.modules() for value in vars(module).values() if torch.is_tensor(value)]
    return sum(t.nbytes for t in registered.values()) + sum(t.nbytes for t in plain)


def _nbytes(f, name: str) -> int:
    tensor = f.get_tensor(name)
    return tensor.numel() * tensor.element_size()


def test_awq_answers_on_the_cpu_kernel_with_its_true_size_and_fidelity(awq_arena, awq_checkpoint):
    require_clear_answer(awq_arena, AWQ)
    records = {r["variant"]: r for r in awq_arena.compare_records(PROMPT, ["smollm2/fp32", AWQ],
                                                                   awq_arena.settings(max_new_tokens=8))}
    record = records[AWQ]
    assert record["status"] == "done" and "Paris" in record["text"], record
    assert record["method"] == "awq" and record["bits"] == 4 and record["device"] == "cpu"
    assert any("Awq" in kernel for kernel in record["stored"]["kernels"]), record["stored"]
    # what the layers hold once the kernel has run (gptqmodel's CPU kernel repacks zero points into bf16 and
    # keeps scales and zeros together in one more tensor), never less than the file's packed int4 weights
    loaded = awq_arena.device.call(awq_arena.manager.get, AWQ).loaded
    assert record["weights_mib"] * 2**20 == pytest.approx(held_bytes(loaded.model), abs=4096)
    assert record["weights_mib"] * 2**20 >= stored_file_bytes(awq_checkpoint)
    assert record["weights_mib"] < 0.25 * records["smollm2/fp32"]["weights_mib"]
    assert record["fidelity"]["baseline"] == "smollm2/fp32" and 0 <= record["fidelity"]["kl_divergence"] < 1


def test_evaluate_writes_awq_rows(awq_arena, awq_checkpoint, tmp_path):
    text = "\n".join((REPO / "assets" / "evaluation.txt").read_text().splitlines()[:8])
    results = evaluate.evaluate(awq_arena, ["smollm2/fp32", AWQ], text, runs=1, max_new_tokens=4)
    paths = evaluate.write_outputs(results, awq_arena, tmp_path,
                                   evaluate.conditions(REPO / "assets" / "evaluation.txt", 1, 4))
    row = {r["variant"]: r for r in json.loads(paths["json"].read_text())["variants"]}[AWQ]
    assert row["error"] is None and 1 < row["perplexity"] < 1000 and 0.5 < row["top1_agreement"] <= 1
    assert row["disk_mib"] == pytest.approx(quantize.folder_mib(awq_checkpoint), abs=0.1)


def test_the_default_awq_variant_names_its_quantize_command(default_config, monkeypatch, tmp_path):
    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path))  # an empty cache: nothing made yet
    variant = default_config.variants["smollm2/awq-4bit"]
    with pytest.raises(NotQuantized, match="python -m demo.quantize --variant smollm2/awq-4bit"):
        load_variant(variant, default_config.bases["smollm2"])


def test_awq_cli_settings():
    assert quantize.settings_for("awq", None, 64) == ("awq", SETTINGS)
    with pytest.raises(quantize.QuantizeError, match="AWQ here is 4-bit"):
        quantize.settings_for("awq", 8, 64)
