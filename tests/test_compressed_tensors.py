"""compressed-tensors checkpoints (vLLM's format) made by llm-compressor itself, in the environment of its own that
`make llm-compressor` builds, and loaded by transformers in the arena's: W4A16 and W8A8-int8 answer, their
settings and the maker's versions are recorded, the kernel says how they ran on this machine, and a missing
environment is named with the command that builds it."""

import json
from pathlib import Path

import pytest
import yaml

from demo.artifacts import llm_compressor, quantize, sources
from demo.config import ConfigError, load_config
from demo.running.runner import Arena
from tests.conftest import CLEAR_PROMPT, REPO, in_process

pytest.importorskip("compressed_tensors", reason="transformers loads these checkpoints through compressed-tensors")
needs_maker = pytest.mark.skipif(not llm_compressor.available(),
                                 reason="llm-compressor's environment is not built (make llm-compressor)")

SCHEMES = {"W4A16": {"scheme": "W4A16", "group_size": 64}, "W8A8": {"scheme": "W8A8"}}


@pytest.fixture(scope="session")
def ct_checkpoints(tmp_path_factory, default_config) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("compressed-tensors")
    made = {}
    for name, settings in SCHEMES.items():
        made[name] = folder / name
        quantize.quantize(default_config.bases["smollm2"], "compressed-tensors", settings, made[name])
    return made


@pytest.fixture(scope="session")
def ct_arena(tmp_path_factory, ct_checkpoints):
    data = yaml.safe_load((REPO / "models.yaml").read_text())
    data["variants"] = [v for v in data["variants"] if v["id"] == "smollm2/fp32"] + [
        {"id": f"smollm2/ct-test-{name.lower()}", "base": "smollm2", "method": "compressed-tensors",
         "settings": settings, "dtype": "bfloat16", "checkpoint": {"kind": "local", "path": str(ct_checkpoints[name])}}
        for name, settings in SCHEMES.items()]
    path = tmp_path_factory.mktemp("ct-config") / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return Arena(in_process(load_config(path)))


@needs_maker
def test_llm_compressor_writes_compressed_checkpoints_with_their_settings(ct_checkpoints):
    for name, folder in ct_checkpoints.items():
        metadata = json.loads((folder / sources.METADATA_FILE).read_text())
        assert metadata["method"] == "compressed-tensors" and metadata["calibration"] is None  # data-free
        assert metadata["settings"]["scheme"] == name
        report = json.loads((folder / "llm_compressor.json").read_text())
        assert report["scheme"] == name and report["versions"]["llmcompressor"]
        config = json.loads((folder / "config.json").read_text())["quantization_config"]
        assert config["quant_method"] == "compressed-tensors"
        weights = next(iter(config["config_groups"].values()))["weights"]
        assert weights["num_bits"] == (4 if name == "W4A16" else 8)
        if name == "W4A16":
            assert weights["group_size"] == 64 and config["format"] == "pack-quantized"


@needs_maker
def test_both_schemes_answer_and_say_they_ran_emulated_here(ct_arena):
    ids = ["smollm2/fp32", "smollm2/ct-test-w4a16", "smollm2/ct-test-w8a8"]
    records = {r["variant"]: r for r in ct_arena.compare_records(CLEAR_PROMPT, ids, ct_arena.settings(max_new_tokens=3))}
    for variant_id, bits in (("smollm2/ct-test-w4a16", 4), ("smollm2/ct-test-w8a8", 8)):
        record = records[variant_id]
        assert record["status"] == "done" and record["text"].strip(), record
        assert record["method"] == "compressed-tensors" and record["bits"] == bits
        assert record["kernel"]["kind"] == "emulated" and "vLLM" in record["kernel"]["reason"]
        # decompressed at the first call and held so: the weights of a bf16 model, counted as they sit
        assert record["weights_mib"] == pytest.approx(0.5 * records["smollm2/fp32"]["weights_mib"], rel=0.02)
        assert "bfloat16" in record["kernel"]["found_by"]
        assert 0 <= record["fidelity"]["kl_divergence"] < 2


def test_a_missing_environment_names_the_command_that_builds_it(monkeypatch, tmp_path):
    monkeypatch.setenv(llm_compressor.PYTHON_ENV, str(tmp_path / "no-python"))
    assert not llm_compressor.available()
    with pytest.raises(llm_compressor.LlmCompressorError, match="make llm-compressor"):
        llm_compressor.make("/nowhere", SCHEMES["W4A16"], tmp_path / "out")


def test_group_size_belongs_to_w4a16(tmp_path):
    from tests.test_config import GOOD

    path = tmp_path / "models.yaml"
    path.write_text(GOOD + "  - {id: tiny/ct, base: tiny, method: compressed-tensors, settings: {scheme: W4A16}}\n")
    variant = load_config(path).variants["tiny/ct"]
    assert variant.bits == 4 and variant.settings == {"scheme": "W4A16", "group_size": 64}
    path.write_text(GOOD + "  - {id: tiny/ct, base: tiny, method: compressed-tensors, "
                           "settings: {scheme: W8A8, group_size: 64}}\n")
    with pytest.raises(ConfigError, match="W4A16 only"):
        load_config(path)
