"""The evaluate tool on the bundled model: every file written, with the documented fields."""

import csv
import json
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
    assert "| smollm2/bnb-nf4 |" in table and "KL div." in table and "Conditions:" in table


def test_bad_variant_is_one_line_and_exit_1():
    run = subprocess.run([sys.executable, "-m", "demo.evaluate", "--variants", "smollm2/fp64"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "unknown variant id(s): smollm2/fp64" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_a_variant_that_raises_keeps_the_rows_around_it(arena, monkeypatch):
    """Any error (a kernel error, out of memory) goes in its variant's row, in one line without paths; the
    variants before and after it are evaluated and kept."""
    real_quality = evaluate._quality

    def failing(arena_, result, text, baselines):
        if result.variant == "smollm2/bf16":
            raise RuntimeError("kernel failed in /opt/secret/libkernel.so at block 3\nwith a second line")
        return real_quality(arena_, result, text, baselines)

    monkeypatch.setattr(evaluate, "_quality", failing)
    text = "\n".join((REPO / "assets" / "evaluation.txt").read_text().splitlines()[:6])
    rows = evaluate.evaluate(arena, ["smollm2/fp32", "smollm2/bf16", "smollm2/bnb-int8"], text, runs=1,
                             max_new_tokens=2)
    assert [r.variant for r in rows] == ["smollm2/fp32", "smollm2/bf16", "smollm2/bnb-int8"]
    assert rows[0].error is None and rows[0].perplexity is not None
    assert rows[1].error == "failed while evaluating: RuntimeError: kernel failed in <path> at block 3"
    assert rows[2].error is None and rows[2].kl_divergence is not None and rows[2].decode_tokens_per_s_p50
