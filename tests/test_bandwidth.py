"""Memory bandwidth: the copy benchmark, the achieved figure's arithmetic, and how records and reports show it."""

import time

import pytest

from demo.measuring import bandwidth
from demo.reports import card, report

MIB = 2**20


def test_copy_counts_read_plus_write_bytes_as_stream_does():
    # 256 MiB copied in 10 ms: 2 x 268,435,456 bytes / 0.01 s = 53,687,091,200 bytes/s
    assert bandwidth.copy_gb_s(256 * MIB, 0.01) == pytest.approx(53.6870912)


def test_achieved_bandwidth_against_a_hand_computed_example():
    # 500 MB of weights read once per token at 20 tokens/s: 10 GB/s; against a measured 40 GB/s, a quarter
    achieved = bandwidth.achieved_gb_s(500_000_000, 20.0)
    assert achieved == pytest.approx(10.0)
    assert bandwidth.share(achieved, 40.0) == pytest.approx(0.25)
    # SmolLM2-135M in bf16 (269,060,096 bytes) at 45 tokens/s: 12.1077 GB/s, 37.8% of 32 GB/s
    assert bandwidth.achieved_gb_s(269_060_096, 45.0) == pytest.approx(12.10770432)
    assert bandwidth.share(12.10770432, 32.0) == pytest.approx(0.37836576)


def test_unknown_is_none_never_zero_and_a_share_above_one_is_kept():
    assert bandwidth.achieved_gb_s(500_000_000, None) is None
    assert bandwidth.achieved_gb_s(None, 20.0) is None
    assert bandwidth.share(None, 40.0) is None and bandwidth.share(10.0, None) is None
    assert bandwidth.share(10.0, 0.0) is None
    assert bandwidth.share(50.0, 40.0) == pytest.approx(1.25)  # weights partly served from a cache: said, not clamped


def test_the_measured_figure_is_the_one_of_the_device_the_variant_ran_on():
    env = {"memory_bandwidth": {"cpu": {"gb_s": 40.0}, "cuda": {"gb_s": 3000.0}}}
    assert bandwidth.measured_gb_s(env, "cpu") == 40.0 and bandwidth.measured_gb_s(env, "cuda") == 3000.0
    assert bandwidth.measured_gb_s(env, "remote") is None and bandwidth.measured_gb_s({}, "cpu") is None


def test_the_cpu_benchmark_gives_a_positive_figure_in_bounded_time():
    started = time.perf_counter()
    measured = bandwidth.cpu_bandwidth()
    elapsed = time.perf_counter() - started
    assert measured.gb_s > 0 and measured.median_gb_s <= measured.gb_s
    assert bandwidth.MIN_REPEATS <= measured.repeats <= bandwidth.MAX_REPEATS
    assert measured.buffer_mib >= bandwidth.CPU_BUFFER_MIN_BYTES / MIB or measured.buffer_mib >= 16
    assert "STREAM" in measured.method and measured.device == "cpu"
    assert elapsed < 10  # about a second on two shared cores


def test_the_budget_stops_the_timed_copies():
    calls = []

    def slow_copy() -> float:
        time.sleep(0.02)
        calls.append(1)
        return 0.02

    seconds = bandwidth._timed_copies(slow_copy, budget_s=0.05)
    assert bandwidth.MIN_REPEATS <= len(seconds) < bandwidth.MAX_REPEATS and len(calls) == len(seconds) + 1


def test_last_level_caches_are_summed_once_each(tmp_path):
    def cache(cpu: int, index: int, level: int, size: str, shared: str) -> None:
        folder = tmp_path / f"cpu{cpu}" / "cache" / f"index{index}"
        folder.mkdir(parents=True)
        (folder / "level").write_text(f"{level}\n")
        (folder / "size").write_text(f"{size}\n")
        (folder / "shared_cpu_list").write_text(f"{shared}\n")

    for cpu in range(4):  # two L3s of 32 MiB, each shared by two CPUs; a private L2 each
        cache(cpu, 2, 2, "1024K", str(cpu))
        cache(cpu, 3, 3, "32768K", "0-1" if cpu < 2 else "2-3")
    assert bandwidth.last_level_cache_bytes(str(tmp_path)) == 64 * MIB
    assert bandwidth.last_level_cache_bytes(str(tmp_path / "absent")) == 0


def _record(**figures) -> dict:
    base = {"variant": "b/bf16", "method": "bf16", "bits": 16, "status": "done", "new_tokens": 8,
            "prompt_tokens": 5, "ttft_ms": 10.0, "decode_tokens_per_s": 20.0, "total_ms": 400.0, "load_ms": 1.0,
            "cache_hit": True, "weights_mib": 476.837158203125, "peak_memory_mib": 500.0, "memory_kind": "cpu-rss",
            "text": "x", "error": None, "fidelity": None, "quantization": {}, "prompt": "p", "settings": {},
            "environment": {"device_name": "CPU: test", "memory_bandwidth": {"cpu": {
                "gb_s": 40.0, "method": "torch copy_ of a 256 MiB buffer"}}}}
    return {**base, **figures}


def test_reports_show_the_figure_its_share_and_energy_or_why_not():
    rec = _record(achieved_bandwidth_gb_s=10.0, measured_bandwidth_gb_s=40.0, bandwidth_share=0.25,
                  energy_joules_per_token=None, energy_source="not exposed by this machine")
    shown = dict(report.figures(rec))
    assert shown["memory bandwidth"] == ("10.0 GB/s achieved (bytes a step reads × decode rate), 25% of the 40.0 GB/s "
                                         "measured")
    parts = _record(achieved_bandwidth_gb_s=10.0, measured_bandwidth_gb_s=40.0, bandwidth_share=0.25,
                    bytes_read_per_step={"weights": 443_000_000, "kv": 1_250_000, "total": 444_250_000})
    assert dict(report.figures(parts))["memory bandwidth"] == (
        "10.0 GB/s achieved (a step reads 443.0 MB of weights + 1.2 MB of KV cache), 25% of the 40.0 GB/s measured")
    assert shown["energy"] == "not exposed by this machine"
    row = dict(zip(report.SUMMARY_HEADERS, report.summary_rows([rec])[0]))
    assert row["bandwidth (GB/s)"] == 10.0 and row["share of measured bandwidth (%)"] == 25.0
    assert row["energy (J/token)"] is None
    markdown = card.markdown_card([rec])
    assert "| 10 (25%) | – |" in markdown
    assert r"Memory bandwidth measured, CPU: 40.0 GB/s (torch copy\_ of a 256 MiB buffer)." in markdown
    assert "Energy per token: not exposed by this machine." in markdown
    assert card.csv_rows([rec])[0]["bandwidth_share"] == 0.25


def test_reports_never_show_an_unknown_figure_as_zero():
    rec = _record(decode_tokens_per_s=None, achieved_bandwidth_gb_s=None, bandwidth_share=None,
                  energy_joules_per_token=0.5, energy_source="RAPL package-0 (whole CPU package: every process on it)",
                  energy_joules=4.0)
    assert dict(report.figures(rec))["memory bandwidth"] == "–"
    assert dict(report.figures(rec))["energy"].startswith("0.5 J/token (RAPL package-0")
    row = dict(zip(report.SUMMARY_HEADERS, report.summary_rows([rec])[0]))
    assert row["bandwidth (GB/s)"] is None and row["share of measured bandwidth (%)"] is None
    assert row["energy (J/token)"] == 0.5


def test_a_real_run_records_its_achieved_bandwidth_and_energy(arena):
    [rec] = arena.compare_records("Count from one to ten.", ["smollm2/fp32"], arena.settings(max_new_tokens=6))
    assert rec["error"] is None and rec["decode_tokens_per_s"] > 0
    measured = rec["environment"]["memory_bandwidth"]["cpu"]
    assert measured["gb_s"] > 0 and "STREAM" in measured["method"]
    # SmolLM2's embeddings are tied (the table is the head, read whole); the fp32 cache at the run's mean context
    step = rec["bytes_read_per_step"]
    assert rec["stored"]["tied_embeddings"] is True and step["weights"] == round(rec["weights_mib"] * MIB)
    assert step["kv"] == round(46080 * (rec["prompt_tokens"] + rec["new_tokens"] / 2))
    expected = (step["weights"] + step["kv"]) * rec["decode_tokens_per_s"] / 1e9
    assert rec["achieved_bandwidth_gb_s"] == pytest.approx(expected)
    assert rec["measured_bandwidth_gb_s"] == measured["gb_s"]
    assert rec["bandwidth_share"] == pytest.approx(expected / measured["gb_s"])
    if rec["energy_joules_per_token"] is None:  # a machine without readable RAPL says why
        assert rec["energy_source"] and rec["energy_joules"] is None
    else:
        assert rec["energy_joules_per_token"] == pytest.approx(rec["energy_joules"] / rec["new_tokens"])


def test_the_evaluation_keeps_the_medians_and_shows_them_with_units():
    from demo import evaluate
    from demo.evaluate.speed import _median
    from demo.ui.evaluate import HEADERS, table_rows

    runs = [{"bandwidth_share": 0.2}, {"bandwidth_share": None}, {"bandwidth_share": 0.3}, {"bandwidth_share": 0.25}]
    assert _median(runs, "bandwidth_share", 4) == 0.25 and _median(runs[1:2], "bandwidth_share", 4) is None
    row = evaluate.VariantEvaluation("b/bf16", None, achieved_bandwidth_gb_s_p50=12.1, bandwidth_share_p50=0.27,
                                     energy_joules_per_token_p50=0.00042, energy_source="NVML total energy")
    cells = dict(zip(HEADERS, table_rows([row])[0]))
    assert cells["achieved_bandwidth_gb_s_p50"] == "12.10" and cells["bandwidth_share_p50"] == "27%"
    assert cells["energy_joules_per_token_p50"] == "0.00042"
    env = {"device_name": "CPU: test", "memory_bandwidth": {"cpu": {"gb_s": 44.8, "method": "torch copy_"}}}
    table = evaluate.markdown_table([vars(row)], env, {"text": "t", "method": "m", "speed": "s"})
    assert "| 12.1 (27%) | 0.00042 |" in table and "Memory bandwidth measured, CPU: 44.8 GB/s (torch copy_)." in table
    assert "Energy per token from NVML total energy: the whole generation" in table


@pytest.mark.gpu
def test_the_gpu_benchmark_gives_a_positive_figure_in_bounded_time():
    started = time.perf_counter()
    measured = bandwidth.cuda_bandwidth()
    assert measured.gb_s > 0 and measured.device == "cuda" and "CUDA events" in measured.method
    assert time.perf_counter() - started < 10


def test_a_failed_benchmark_is_said_never_a_figure():
    def failing() -> bandwidth.Bandwidth:
        raise RuntimeError("CUDA error: out of memory")

    entry = bandwidth._attempt("cuda", failing)
    assert entry["gb_s"] is None and entry["method"].startswith("not measured: RuntimeError: CUDA error")
    assert report.machine_bandwidth_lines({"memory_bandwidth": {"cuda": entry}}) == [
        "Memory bandwidth, GPU: not measured: RuntimeError: CUDA error: out of memory"]
