"""The quantize tool: GPTQ on a tiny model built here, AutoGPTQ-format loading, bad arguments, no half-written output."""

import contextlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from demo.artifacts import quantize, sources
from demo.config import load_config
from demo.running.runner import Arena
from tests.conftest import REPO, in_process, tiny_causal_lm

pytest.importorskip("gptqmodel", reason="GPTQ needs gptqmodel (installed by make install)")

TINY_MODELS = """
bases:
  tiny:
    source: {{kind: local, path: {base}}}
    baseline: tiny/fp32
variants:
  - {{id: tiny/fp32, base: tiny, method: fp32}}
  - {{id: tiny/gptq, base: tiny, method: gptq, settings: {{bits: 4, group_size: 64}}}}
  - {{id: tiny/autogptq, base: tiny, method: gptq, settings: {{bits: 4, group_size: 64}},
     checkpoint: {{kind: local, path: {autogptq}}}}}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_config):
    """A tiny random Llama with SmolLM2's tokenizer, saved as a local base model, and its models file."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("tiny")
    tokenizer = AutoTokenizer.from_pretrained(sources.resolve(default_config.bases["smollm2"]).location)
    import torch

    torch.manual_seed(0)
    model = tiny_causal_lm(hidden=128, layers=2, vocab=len(tokenizer))
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    (root / "models.yaml").write_text(TINY_MODELS.format(base=root / "base", autogptq=root / "autogptq"))
    return root


@pytest.fixture(scope="module")
def tiny_config(tiny):
    return load_config(tiny / "models.yaml")


@contextlib.contextmanager
def cache_in(folder):
    """Quantized checkpoints of the tiny model go to its own cache; everything else keeps the shared one."""
    saved = os.environ["ARENA_CACHE_DIR"]
    os.environ["ARENA_CACHE_DIR"] = str(folder)
    try:
        yield
    finally:
        os.environ["ARENA_CACHE_DIR"] = saved


@pytest.fixture(scope="module")
def quantized(tiny, tiny_config):
    """The tiny GPTQ checkpoint, made once through the same path as `--variant` and Quantize now."""
    with cache_in(tiny / "cache"):
        arena = Arena(tiny_config)
        before = arena.compare_records("Hello", ["tiny/gptq"], arena.settings(max_new_tokens=4))
        folder = quantize.quantize_variant(tiny_config, "tiny/gptq")
    return before, folder


def test_missing_checkpoint_names_the_command(quantized):
    before, _ = quantized
    assert before[0]["status"] == "error"
    assert "not quantized yet: run `python -m demo.quantize --variant tiny/gptq`" in before[0]["error"]


def test_gptq_checkpoint_with_metadata_and_never_twice(quantized, tiny_config, tiny):
    _, folder = quantized
    metadata = json.loads((folder / "quantize.json").read_text())
    assert metadata["method"] == "gptq" and metadata["settings"]["bits"] == 4
    assert metadata["settings"]["group_size"] == 64
    assert metadata["calibration"]["file"] == "calibration.txt" and metadata["calibration"]["samples"] > 20
    assert metadata["wall_time_s"] > 0 and metadata["size_on_disk_mib"] > 0
    assert metadata["environment"]["transformers"] and metadata["environment"]["gptqmodel"]
    stamp = (folder / "quantize.json").stat().st_mtime_ns
    with cache_in(tiny / "cache"):
        assert quantize.quantize_variant(tiny_config, "tiny/gptq") == folder
    assert (folder / "quantize.json").stat().st_mtime_ns == stamp


def test_gptq_variant_loads_and_generates(quantized, tiny_config, tiny):
    with cache_in(tiny / "cache"):
        arena = Arena(tiny_config)
        records = arena.compare_records("Hello there", ["tiny/fp32", "tiny/gptq"], arena.settings(max_new_tokens=6))
    fp32, gptq = records
    assert gptq["status"] == "done", gptq["error"]
    assert gptq["bits"] == 4 and gptq["new_tokens"] > 0
    assert gptq["weights_mib"] < fp32["weights_mib"]


def test_autogptq_format_checkpoint_loads_through_gptqmodel(quantized, tiny_config, tiny):
    """AutoGPTQ kept its settings in quantize_config.json, not in config.json."""
    _, folder = quantized
    target = tiny / "autogptq"
    shutil.copytree(folder, target)
    config = json.loads((target / "config.json").read_text())
    settings = config.pop("quantization_config")
    (target / "config.json").write_text(json.dumps(config))
    (target / "quantize_config.json").write_text(json.dumps(
        {k: settings[k] for k in ("bits", "group_size", "desc_act", "sym") if k in settings}
        | {"true_sequential": True, "model_file_base_name": "model"}))
    (target / "quantize.json").unlink()
    arena = Arena(in_process(tiny_config))  # the loaded layers' classes are read below
    settings_ = arena.settings(max_new_tokens=6)
    autogptq = arena.compare_records("Hello there", ["tiny/autogptq"], settings_)[0]
    assert autogptq["status"] == "done", autogptq["error"]
    loaded = arena.manager.get("tiny/autogptq").loaded
    assert "gptqmodel" in type(loaded.model.model.layers[0].self_attn.q_proj).__module__


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "demo.quantize", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--base", "nope", "--method", "gptq", "--out", "{tmp}/a"], "unknown base 'nope'"),
    (["--base", "smollm2", "--method", "gptq", "--bits", "5", "--out", "{tmp}/a"], "GPTQ supports 2, 3, 4, 8 bits"),
    (["--base", "smollm2", "--method", "bnb-nf4", "--bits", "8", "--out", "{tmp}/a"], "bnb-nf4 is 4-bit"),
    (["--base", "smollm2", "--method", "gptq", "--out", "{tmp}/full"], "is not empty"),
    (["--base", "smollm2", "--method", "gptq", "--out", "{tmp}/file.txt/sub"], "is not writable"),
    (["--base", "smollm2", "--method", "gptq", "--group-size", "128", "--out", "{tmp}/a"],
     "group size 128 does not divide this model's layer sizes (576)"),
    (["--base", "smollm2", "--method", "awq", "--group-size", "128", "--out", "{tmp}/a"],
     "group size 128 does not divide this model's layer sizes (576), which the AWQ kernels need; use 32 or 64"),
    (["--base", "smollm2", "--method", "awq", "--bits", "8", "--out", "{tmp}/a"], "AWQ here is 4-bit"),
    (["--variant", "smollm2/fp32"], "needs no quantizing"),
    (["--base", "smollm2"], "give --variant ID, or --base, --method and --out"),
])
def test_bad_arguments_are_one_line_and_exit_1(tmp_path, args, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "file.txt").write_text("x")
    out = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert out.returncode == 1, out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_failed_run_leaves_nothing_that_looks_complete(tmp_path, default_config, monkeypatch):
    def half_then_fail(base, method, settings, out, calibration):
        (out / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(quantize, "_write_checkpoint", half_then_fail)
    target = tmp_path / "out"
    with pytest.raises(quantize.QuantizeError, match="quantization failed: RuntimeError: interrupted"):
        quantize.quantize(default_config.bases["smollm2"], "gptq", {"bits": 4}, target)
    assert not target.exists() and list(tmp_path.iterdir()) == []
