"""The evaluate tool on the bundled model: every file written, with the documented fields."""

import csv
import json
import math
import subprocess
import sys

import pytest

from demo import evaluate
from tests.conftest import REPO

FIELDS = {"variant", "baseline", "perplexity", "kl_divergence", "top1_agreement", "ttft_ms_p50",
          "decode_tokens_per_s_p50", "decode_tokens_per_s_p90", "runs", "weights_mib", "peak_memory_mib", "disk_mib"}


def test_windows_score_every_token_once():
    for n in (1, 2, 100, 512, 513, 1000, 1301):
        scored = [t for _, end, first in evaluate.windows(n) for t in range(first, end)]
        assert scored == list(range(1, n))
        for begin, end, first in evaluate.windows(n):
            assert end - begin <= evaluate.WINDOW and (first == 1 or first - begin >= evaluate.WINDOW - evaluate.STRIDE)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    text = REPO / "assets" / "evaluation.txt"
    short = out / "text.txt"
    short.write_text("\n".join(text.read_text().splitlines()[:25]))  # ~600 tokens: two windows
    run = subprocess.run([sys.executable, "-m", "demo.evaluate", "--variants", "smollm2/fp32,smollm2/bnb-nf4",
                          "--text", str(short), "--out", str(out / "results"), "--runs", "2",
                          "--max-new-tokens", "8"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return out / "results"


def test_writes_every_file_with_the_documented_fields(evaluated):
    for name in ("results.json", "results.csv", "results.md", "quality_vs_memory.png", "speed_vs_memory.png"):
        assert (evaluated / name).stat().st_size > 0, name
    for name in ("quality_vs_memory.png", "speed_vs_memory.png"):
        assert (evaluated / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((evaluated / "results.json").read_text())
    assert data["environment"]["torch"] and "sliding window" in data["conditions"]["method"]
    rows = {row["variant"]: row for row in data["variants"]}
    assert set(rows) == {"smollm2/fp32", "smollm2/bnb-nf4"}
    for row in rows.values():
        assert FIELDS <= set(row) and row["error"] is None
        assert row["runs"] == 2 and row["baseline"] == "smollm2/fp32"
        assert 1 < row["perplexity"] < 1000
        assert row["decode_tokens_per_s_p90"] >= row["decode_tokens_per_s_p50"] > 0
    baseline, nf4 = rows["smollm2/fp32"], rows["smollm2/bnb-nf4"]
    assert baseline["kl_divergence"] == pytest.approx(0, abs=1e-4) and baseline["top1_agreement"] == 1.0
    assert nf4["kl_divergence"] > 0.001 and 0.5 < nf4["top1_agreement"] < 1.0
    assert nf4["weights_mib"] < 0.4 * baseline["weights_mib"]
    with (evaluated / "results.csv").open() as f:
        assert FIELDS <= set(csv.DictReader(f).fieldnames)
    table = (evaluated / "results.md").read_text()
    assert "| smollm2/bnb-nf4 |" in table and "mean KL vs baseline" in table and "Conditions:" in table
    assert "KL 99.9 %" in table and "====== KL divergence statistics ======" in table and "| [0.95, 1] |" in table


STATISTICS = {"ppl_baseline", "ln_ppl_ratio", "ppl_ratio", "ppl_difference", "log_prob_correlation", "kl", "delta_p",
              "top1_agreement_uncertainty", "kl_buckets", "nonfinite_positions", "kl_per_position", "protocol"}


def check_statistics(row: dict) -> None:
    """The nested statistics are present, finite and consistent with the flat figures."""
    assert STATISTICS <= set(row)
    kl, dp = row["kl"], row["delta_p"]
    undefined = {"rms_uncertainty"} if dp["rms"] == 0 else set()  # the baseline: 0.5 / RMS × 0 has no value
    for value in [*kl.values(), *(v for k, v in dp.items() if k not in undefined), row["ln_ppl_ratio"]["value"],
                  row["ln_ppl_ratio"]["uncertainty"], row["top1_agreement_uncertainty"], row["ppl_baseline"]["value"]]:
        assert value is not None and math.isfinite(value)
    assert kl["mean"] == pytest.approx(row["kl_divergence"], abs=1e-6)
    assert kl["min"] <= kl["p0_1"] <= kl["median"] <= kl["p99_9"] <= kl["max"]
    assert dp["min"] <= dp["median"] <= dp["max"] and dp["rms"] >= abs(dp["mean"])
    assert row["nonfinite_positions"] == 0 and len(row["kl_per_position"]) == row["scored_tokens"]
    assert sum(b["positions"] for b in row["kl_buckets"]) == row["scored_tokens"]
    assert row["perplexity"] == pytest.approx(math.exp(math.log(row["ppl_baseline"]["value"])
                                                       + row["ln_ppl_ratio"]["value"]), rel=1e-4)


def test_results_json_holds_the_distribution_statistics(evaluated):
    data = json.loads((evaluated / "results.json").read_text())
    assert data["conditions"]["protocol"] == "sliding"
    rows = {row["variant"]: row for row in data["variants"]}
    for row in rows.values():
        check_statistics(row)
        assert row["protocol"] == "sliding"
    baseline, nf4 = rows["smollm2/fp32"], rows["smollm2/bnb-nf4"]
    assert baseline["kl"]["max"] == 0 and baseline["ln_ppl_ratio"]["value"] == 0
    assert nf4["kl"]["max"] > nf4["kl"]["mean"] > 0 and nf4["top1_agreement_uncertainty"] > 0
    with (evaluated / "results.csv").open() as f:
        header = csv.DictReader(f).fieldnames
    assert "kl_p99_9" in header and "kl_per_position" not in header and "kl" not in header


def test_the_noise_floor_is_under_nf4_and_in_every_output(evaluated):
    rows = {row["variant"]: row for row in json.loads((evaluated / "results.json").read_text())["variants"]}
    floor = rows["smollm2/fp32"]["noise_floor"]
    assert rows["smollm2/bnb-nf4"]["noise_floor"] == floor  # one floor per baseline, carried by each of its rows
    assert floor["epsilon"] == 2 ** -9 and floor["positions"] == rows["smollm2/fp32"]["scored_tokens"]
    assert 0 < floor["kl_mean"] < rows["smollm2/bnb-nf4"]["kl"]["mean"]
    assert floor["kl_median"] <= floor["kl_p99_9"] <= floor["kl_max"]
    table = (evaluated / "results.md").read_text()
    assert f"Noise floor of smollm2/fp32" in table and f"mean KL {floor['kl_mean']:.6f} nats" in table
    for name in ("kl_vs_size.png", "kl_per_token.png"):  # drawn with the floor's line
        assert (evaluated / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_llamacpp_protocol_scores_chunks_with_bos(arena, tmp_path):
    text = "\n".join((REPO / "assets" / "evaluation.txt").read_text().splitlines()[:25])  # ~600 tokens
    protocol = evaluate.Protocol("llamacpp", ctx=128)
    rows = evaluate.evaluate(arena, ["smollm2/fp32", "smollm2/bf16"], text, runs=1, max_new_tokens=2,
                             protocol=protocol)
    n_chunks = len(arena.manager.get("smollm2/fp32").loaded.tokenizer(text)["input_ids"]) // 128
    for row in rows:
        assert row.error is None and row.protocol == "llamacpp"
        assert row.scored_tokens == n_chunks * (128 - 1 - 64)
        assert "BOS = the tokenizer's bos_token '<|im_start|>' (id 1)" in row.protocol_note
        check_statistics(vars(row))
    conditions = evaluate.conditions(REPO / "assets" / "evaluation.txt", 1, 2, protocol)
    assert "beside llama.cpp's published tables" in conditions["method"]
    table = evaluate.markdown_table([vars(r) for r in rows], arena.environment(), conditions)
    assert "Protocol `llamacpp`" in table and "protocol llamacpp" in table
    [short] = evaluate.evaluate(arena, ["smollm2/fp32"], text, runs=1, max_new_tokens=2,
                                protocol=evaluate.Protocol("llamacpp"))  # llama.cpp's default context: 512
    assert "needs at least 1024 tokens" in short.error and short.kl is None


def test_trace_protocol_scores_the_baseline_s_answers(arena, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name the capital of France.\nWhat is 2 + 2?\n")
    protocol = evaluate.Protocol("trace", prompts_file=prompts)
    rows = evaluate.evaluate(arena, ["smollm2/fp32", "smollm2/bf16"], "", runs=1, max_new_tokens=2,
                             protocol=protocol)
    for row in rows:
        assert row.error is None and row.protocol == "trace" and "2 baseline answers" in row.protocol_note
        assert 2 <= row.scored_tokens <= 2 * evaluate.TRACE_ANSWER_TOKENS
        check_statistics(vars(row))
    assert rows[0].kl["max"] == 0 and rows[0].top1_agreement == 1.0
    assert evaluate.conditions(REPO / "x.txt", 1, 2, protocol)["text"] == "prompts.txt"


def test_bad_variant_is_one_line_and_exit_1():
    run = subprocess.run([sys.executable, "-m", "demo.evaluate", "--variants", "smollm2/fp64"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "unknown variant id(s): smollm2/fp64" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_a_variant_that_raises_keeps_the_rows_around_it(arena, monkeypatch):
    """Any error (a kernel error, out of memory) goes in its variant's row, in one line without paths; the
    variants before and after it are evaluated and kept."""
    from demo.evaluate import quality

    real_quality = quality.measure

    def failing(arena_, result, text, baselines):
        if result.variant == "smollm2/bf16":
            raise RuntimeError("kernel failed in /opt/secret/libkernel.so at block 3\nwith a second line")
        return real_quality(arena_, result, text, baselines)

    monkeypatch.setattr(quality, "measure", failing)
    text = "\n".join((REPO / "assets" / "evaluation.txt").read_text().splitlines()[:6])
    rows = evaluate.evaluate(arena, ["smollm2/fp32", "smollm2/bf16", "smollm2/bnb-int8"], text, runs=1,
                             max_new_tokens=2)
    assert [r.variant for r in rows] == ["smollm2/fp32", "smollm2/bf16", "smollm2/bnb-int8"]
    assert rows[0].error is None and rows[0].perplexity is not None
    assert rows[1].error == "failed while evaluating: RuntimeError: kernel failed in <path> at block 3"
    assert rows[2].error is None and rows[2].kl_divergence is not None and rows[2].decode_tokens_per_s_p50
