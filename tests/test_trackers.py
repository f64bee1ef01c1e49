"""Trackers against known answers: explicit timestamps, real sleeps, and tensors of known size."""

import json
import subprocess
import sys
import time

import pytest
import torch

from demo.measuring.trackers import LatencyTracker, Memory, track_memory
from tests.conftest import REPO

MIB = 2**20


def test_latency_from_known_timestamps():
    tracker = LatencyTracker()
    tracker.start(10.0)
    for t in (10.1, 10.2, 10.3, 10.4):
        tracker.token(t)
    latency = tracker.finish(10.5)
    assert latency.new_tokens == 4
    assert latency.ttft_ms == pytest.approx(100.0)
    assert latency.decode_tokens_per_s == pytest.approx(3 / 0.3)  # (n - 1) / (last - first)
    assert latency.total_ms == pytest.approx(500.0)


def test_latency_with_one_or_no_token_has_no_decode_rate():
    tracker = LatencyTracker()
    tracker.start(0.0)
    assert tracker.result().ttft_ms is None
    tracker.token(0.25)
    latency = tracker.finish(0.3)
    assert latency.ttft_ms == pytest.approx(250.0) and latency.decode_tokens_per_s is None


def test_latency_against_real_sleeps():
    tracker = LatencyTracker()
    tracker.start()
    time.sleep(0.05)
    tracker.token()
    for _ in range(4):
        time.sleep(0.02)
        tracker.token()
    latency = tracker.finish()
    assert 50 <= latency.ttft_ms < 50 + 200
    assert 1000 / 20 * 0.4 < latency.decode_tokens_per_s <= 1000 / 20  # sleeps only ever run long
    assert latency.total_ms >= 130


def test_latency_sync_runs_before_clock_reads():
    calls = []
    tracker = LatencyTracker(sync=lambda: calls.append("sync"))
    tracker.start()
    tracker.finish()
    assert calls == ["sync", "sync"]


# Run in a fresh process: by the end of the suite this one has held and freed gigabytes of models, and what
# its allocator keeps or returns decides whether a new block grows the RSS at all.
KNOWN_ALLOCATION = """
import dataclasses, json, time, torch
from demo.measuring.trackers import track_memory
MIB = 2**20
with track_memory("cpu", 100 * MIB) as memory:
    block = torch.ones(256 * MIB // 4, dtype=torch.float32)  # 256 MiB, every page written
    time.sleep(0.05)  # let the sampler see it
    del block
print(json.dumps(dataclasses.asdict(memory.result)))
"""


def test_cpu_memory_sees_a_known_allocation():
    done = subprocess.run([sys.executable, "-c", KNOWN_ALLOCATION], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = Memory(**json.loads(done.stdout.strip().splitlines()[-1]))
    assert result.memory_kind == "cpu-rss" and result.peak_reserved_mib is None
    assert result.weights_mib == pytest.approx(100.0)
    assert 256 * 0.9 <= result.run_peak_mib <= 256 * 1.5
    assert result.peak_memory_mib == pytest.approx(result.weights_mib + result.run_peak_mib)


@pytest.mark.gpu
def test_cuda_memory_sees_a_known_allocation():
    with track_memory("cuda", 0) as memory:
        block = torch.ones(64 * MIB // 4, dtype=torch.float32, device="cuda")
        del block
    assert memory.result.memory_kind == "cuda-allocated"
    assert memory.result.run_peak_mib == pytest.approx(64, rel=0.01)
    assert memory.result.peak_reserved_mib >= 64 * 0.99


def test_the_environment_names_the_cpu_features_and_every_runtime_version():
    import os

    from demo.measuring import system

    env = system.environment()
    assert {"torchao", "gptqmodel", "llama_cpp_python"} <= set(env)
    if os.path.exists("/proc/cpuinfo"):  # read independently: the flags line of the first processor
        flags = next(line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags"))
        assert env["cpu_features"] == [f for f in system._CPU_FEATURES if f in flags]


def test_the_samplers_rss_reader_reads_what_psutil_reads():
    import os

    import psutil

    from demo.measuring.trackers import RssReader

    reader = RssReader()
    block = bytearray(64 * 2**20)  # 64 MiB touched: resident
    try:
        ours, theirs = reader(), psutil.Process().memory_info().rss
        assert abs(ours - theirs) < 2**20  # the same figure, allowing for pages touched between the two reads
        assert ours > 64 * 2**20
    finally:
        del block
        reader.close()
    if os.path.exists("/proc/self/statm"):  # the descriptor is closed, and a later read opens it again
        assert reader._fd is None and reader() > 0
        reader.close()
