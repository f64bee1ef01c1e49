"""AutoRound through Intel's auto-round library on the bundled model: made by the arena's quantize tool from the
calibration text, saved in auto-round's own format, loaded by transformers the way its users load it, answering,
with its settings recorded and the kernel that ran it named.

Tuning takes minutes at auto-round's own defaults, so the test checkpoint is made once per session with few
iterations on the calibration text's first windows, outside the cache, and loaded as a pre-made checkpoint."""

import json
from pathlib import Path

import pytest
import yaml

from demo.artifacts import autoround, quantize, sources
from demo.backends import load as load_variant
from demo.config import load_config
from demo.errors import NotQuantized
from demo.running.runner import Arena
from tests.conftest import CLEAR_PROMPT, REPO, in_process

pytest.importorskip("auto_round", reason="AutoRound variants need the auto-round package")

AUTOROUND = "smollm2/autoround-test"
SETTINGS = {"bits": 4, "group_size": 64, "sym": True, "iters": 8, "seqlen": 64}
CALIBRATION_TOKENS = 900  # about twelve windows of seqlen + slack


@pytest.fixture(scope="session")
def autoround_checkpoint(tmp_path_factory, default_config) -> Path:
    folder = tmp_path_factory.mktemp("autoround")
    calibration = folder / "calibration.txt"
    calibration.write_text(quantize.CALIBRATION_FILE.read_text()[:CALIBRATION_TOKENS * 4])
    out = folder / "checkpoint"
    quantize.quantize(default_config.bases["smollm2"], "autoround", SETTINGS, out, calibration)
    return out


@pytest.fixture(scope="session")
def autoround_arena(tmp_path_factory, autoround_checkpoint):
    data = yaml.safe_load((REPO / "models.yaml").read_text())
    data["variants"] = [v for v in data["variants"] if v["id"] == "smollm2/fp32"] + [
        {"id": AUTOROUND, "base": "smollm2", "method": "autoround", "settings": SETTINGS, "dtype": "bfloat16",
         "checkpoint": {"kind": "local", "path": str(autoround_checkpoint)}}]
    path = tmp_path_factory.mktemp("autoround-config") / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return Arena(in_process(load_config(path)))


def test_quantizing_records_the_autoround_settings_and_calibration(autoround_checkpoint):
    metadata = json.loads((autoround_checkpoint / sources.METADATA_FILE).read_text())
    assert metadata["method"] == "autoround" and metadata["settings"] == SETTINGS
    assert metadata["calibration"]["samples"] >= 8 and metadata["environment"]["auto-round"]
    config = json.loads((autoround_checkpoint / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "auto-round" and config["bits"] == 4 and config["group_size"] == 64
    assert config["iters"] == SETTINGS["iters"] and config["sym"] is True
    assert (autoround_checkpoint / "model.safetensors").is_file()  # moved up from auto-round's own subfolder


def test_autoround_answers_with_its_kernel_named(autoround_arena):
    """What it answers is not asserted: a checkpoint tuned for eight iterations leads by under half a nat on
    some machines; its fidelity against the baseline is."""
    records = {r["variant"]: r for r in autoround_arena.compare_records(
        CLEAR_PROMPT, ["smollm2/fp32", AUTOROUND], autoround_arena.settings(max_new_tokens=8))}
    record = records[AUTOROUND]
    assert record["status"] == "done" and record["new_tokens"] >= 1 and record["text"].strip(), record
    assert record["method"] == "autoround" and record["bits"] == 4 and record["device"] == "cpu"
    kernel = record["kernel"]
    assert record["stored"]["kernels"] and all(name in kernel["found_by"] for name in record["stored"]["kernels"])
    if kernel["kind"] == "native":  # auto-round-lib installed: its own CPU kernel
        assert "auto_round_kernel" in kernel["found_by"]
    else:
        assert kernel["kind"] == "emulated" and "dequantizes" in kernel["reason"]
    # packed 4-bit linears, the rest in the bf16 the variant asks for (auto-round saves it in the base's fp32)
    assert record["weights_mib"] < 0.25 * records["smollm2/fp32"]["weights_mib"]
    assert record["fidelity"]["baseline"] == "smollm2/fp32" and 0 <= record["fidelity"]["kl_divergence"] < 1


def test_the_default_autoround_variant_names_its_quantize_command(default_config, monkeypatch, tmp_path):
    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path))  # an empty cache: nothing made yet
    variant = default_config.variants["smollm2/autoround-4bit"]
    with pytest.raises(NotQuantized, match="python -m demo.quantize --variant smollm2/autoround-4bit"):
        load_variant(variant, default_config.bases["smollm2"])


def test_a_calibration_text_shorter_than_one_window_is_refused_with_its_size(default_config):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sources.resolve(default_config.bases["smollm2"]).location)
    with pytest.raises(autoround.AutoRoundError, match="fewer than one sample of seqlen 128"):
        autoround.calibration_windows("A short text.", tokenizer, 128)
    windows = autoround.calibration_windows(quantize.CALIBRATION_FILE.read_text(), tokenizer, 128)
    assert len(windows) >= 20 and all(len(tokenizer(w)["input_ids"]) >= 128 for w in windows)
