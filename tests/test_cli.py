"""python -m demo compare: listing, one-line errors with exit 1, and JSON records."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, require_clear_answer


def run(*args, env_extra=None):
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "demo", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)


def test_list():
    out = run("compare", "--list")
    assert out.returncode == 0
    assert [line.split("\t")[0] for line in out.stdout.splitlines()] == [
        "smollm2/fp32", "smollm2/bf16", "smollm2/bf16-kv-fp8", "smollm2/bf16-kv-int4", "smollm2/bnb-int8",
        "smollm2/bnb-nf4", "smollm2/bnb-fp4", "smollm2/gptq-4bit",
        "smollm2/awq-4bit", "smollm2/gguf-q8_0", "smollm2/gguf-q8_0-kv-q8_0", "smollm2/gguf-q8_0-kv-q4_0",
        "smollm2/gguf-q4_k_m", "smollm2/gguf-f32", "smollm2/gguf-q4_k_m-imat", "smollm2/gguf-iq4_xs-imat",
        "smollm2/gguf-iq3_xxs-imat", "smollm2/gguf-iq2_xs-imat", "smollm2/torchao-int8", "smollm2/torchao-int4",
        "smollm2/torchao-fp8", "smollm2/autoround-4bit", "smollm2/ct-w4a16", "smollm2/ct-w8a8",
        "smollm2/hqq-4bit"]


@pytest.mark.parametrize("args, message", [
    (["--prompt", "hi", "--variants", "smollm2/fp64"], "unknown variant id(s): smollm2/fp64"),
    (["--prompt", "   ", "--variants", "smollm2/fp32"], "the prompt is empty"),
    (["--prompt", "hi", "--variants", "smollm2/fp32", "--max-new-tokens", "0"], "from 1 to 512"),
    (["--prompt", "hi", "--variants", "smollm2/fp32", "--max-new-tokens", "100000"], "from 1 to 512"),
    (["--prompt", "hi", "--variants", "smollm2/fp32,smollm2/fp32"], "listed twice"),
    (["--prompt", "hi", "--variants", "smollm2/fp32", "--sample"], "needs an explicit seed"),
    (["--prompt", "hi"], "needs --prompt and --variants"),
])
def test_bad_input_is_one_line_and_exit_1(args, message):
    out = run("compare", *args)
    assert out.returncode == 1
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_broken_models_file_is_one_line(tmp_path):
    bad = tmp_path / "models.yaml"
    bad.write_text("variants: [{id: x, base: nowhere, method: fp32}]\nbases: {}\n")
    out = run("compare", "--list", env_extra={"ARENA_MODELS": str(bad)})
    assert out.returncode == 1 and str(bad) in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("before", [True, False], ids=["before-the-subcommand", "after-it"])
def test_models_option_is_honoured_before_or_after_the_subcommand(tmp_path, capsys, before):
    from demo.__main__ import main

    bad = tmp_path / "models.yaml"
    bad.write_text("variants: [{id: x, base: nowhere, method: fp32}]\nbases: {}\n")
    argv = ["--models", str(bad), "compare", "--list"] if before else ["compare", "--models", str(bad), "--list"]
    assert main(argv) == 1 and str(bad) in capsys.readouterr().err


def test_json_records(arena, clear_prompt):
    for variant_id in ("smollm2/bf16", "smollm2/bnb-nf4"):
        require_clear_answer(arena, variant_id)
    out = run("compare", "--prompt", clear_prompt, "--variants", "smollm2/bf16,smollm2/bnb-nf4",
              "--max-new-tokens", "12", "--json")
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)
    assert [r["variant"] for r in records] == ["smollm2/bf16", "smollm2/bnb-nf4"]
    for record in records:
        assert record["error"] is None and "Paris" in record["text"]
        assert record["bits"] in (16, 4) and record["cache_hit"] is False
        assert record["environment"]["bitsandbytes"] and record["settings"]["decoding"] == "greedy"


def test_text_report_shows_units():
    out = run("compare", "--prompt", "What is the capital of France?", "--variants", "smollm2/bf16",
              "--max-new-tokens", "8")
    assert out.returncode == 0, out.stderr
    for unit in ("ms", "tokens/s", "MiB", "approx."):
        assert unit in out.stdout


def test_out_writes_the_comparison_card(tmp_path):
    out = run("compare", "--prompt", "What is the capital of France?", "--variants", "smollm2/fp32,smollm2/bf16",
              "--max-new-tokens", "8", "--out", str(tmp_path / "card"))
    assert out.returncode == 0, out.stderr
    for name in ("comparison.json", "comparison.csv", "comparison.md"):
        assert (tmp_path / "card" / name).stat().st_size > 0
    assert json.loads((tmp_path / "card" / "comparison.json").read_text())["variants"][1]["fidelity"]
