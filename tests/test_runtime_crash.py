"""A runtime that faults, aborts, hangs or runs out of memory takes down its own column, never the arena: GGUF variants
run in a worker process of their own (demo.running.runtime_process), and faults are injected into that worker
(demo.running.faults) since no machine at hand reproduces llama.cpp's AMX fault on demand."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from demo.artifacts.quantize import quantize_variant
from demo.config import load_config
from demo.errors import VariantUnavailable
from demo.running import faults, lifeline
from demo.running.runner import Arena
from demo.running.runtime_process import CrashLedger
from tests.conftest import REPO, require_clear_answer

FP32, Q8, Q4 = "smollm2/fp32", "smollm2/gguf-q8_0", "smollm2/gguf-q4_k_m"
THREE = [FP32, Q8, Q4]


@pytest.fixture(scope="module")
def gguf_files(default_config):
    return {v: quantize_variant(default_config, v) for v in (Q8, Q4)}


def config_with(tmp_path, **limits):
    """The default profile with other limits, as a models file of its own."""
    data = yaml.safe_load((REPO / "models.yaml").read_text())
    data["limits"].update(limits)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def compare(arena, variant_ids, prompt="Name the capital of France.", max_new_tokens=12, stop=None):
    final = None
    for final in arena.compare(prompt, variant_ids, arena.settings(max_new_tokens=max_new_tokens), stop):
        pass
    return {r.variant: r for r in final}


# --- the pieces ---------------------------------------------------------------------------------------------

def test_fault_plans_are_parsed_and_bad_ones_refused():
    spec = "a/x=segv@token3, b/y=hang@load"
    assert faults.planned("a/x", spec) == faults.Fault("segv", 3)
    assert faults.planned("b/y", spec) == faults.Fault("hang", None)
    assert faults.planned("c/z", spec) is None
    with pytest.raises(ValueError, match="ARENA_INJECT_FAULT"):
        faults.planned("a/x", "a/x=explode@token1")


def test_the_ledger_refuses_after_crashes_in_a_row_and_forgets_them_after_a_success():
    ledger = CrashLedger(limit=2)
    ledger.crashed("v", "crashed: signal 11")
    ledger.check("v")
    ledger.succeeded("v")
    ledger.crashed("v", "crashed: signal 11")
    ledger.check("v")
    ledger.crashed("v", "crashed: signal 6 (SIGABRT) in llama.cpp")
    with pytest.raises(VariantUnavailable, match=r"crashed 2 times in a row \(last: crashed: signal 6"):
        ledger.check("v")


def test_a_forked_worker_keeps_no_listening_socket_of_its_parent():
    server = socket.create_server(("127.0.0.1", 0))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report how many listening sockets it dropped, and whether the server's is gone
        try:
            dropped = lifeline.close_listening_sockets()
            still = server.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            os.write(write_end, f"{dropped} {still}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 64).decode()
    os.waitpid(pid, 0)
    os.close(read_end)
    dropped, still = map(int, answer.split())
    assert dropped >= 1 and still == 0
    assert server.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1  # the parent's is untouched
    server.close()


def test_a_worker_dies_with_its_parent_even_when_the_parent_is_killed(tmp_path):
    """A parent that starts a child with die_with_parent, then dies by SIGKILL: the child ends within a second."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", f"""
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import os, time; from demo.running import lifeline; "
                          "lifeline.die_with_parent(os.getppid(), kernel_signal=False); time.sleep(600)"])
open({str(pid_file)!r}, "w").write(str(child.pid))
time.sleep(600)
"""], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        time.sleep(1.5)  # the child imports the package and starts its watch
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while _running(child):
            assert time.monotonic() < deadline, "the child outlived its parent"
            time.sleep(0.1)
    finally:
        parent.kill()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


# --- in the arena ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault, says", [("segv@token3", "crashed: signal 11 (SIGSEGV) in llama.cpp"),
                                         ("abort@token2", "crashed: signal 6 (SIGABRT) in llama.cpp"),
                                         ("oom@token2", "out of memory in llama.cpp")])
def test_a_faulting_runtime_fails_its_column_alone_and_runs_afresh_next_time(default_config, gguf_files, monkeypatch,
                                                                             fault, says):
    arena = Arena(default_config)
    require_clear_answer(arena, FP32, tokens=None)
    monkeypatch.setenv(faults.ENV, f"{Q8}={fault}")
    first = compare(arena, THREE)
    assert first[Q8].status == "error" and first[Q8].error.startswith(says), first[Q8].error
    assert "the other variants are unaffected" in first[Q8].error
    assert first[Q8].text  # what it said before the fault stays in its column
    for other in (FP32, Q4):
        assert first[other].status == "done" and "Paris" in first[other].text
    assert first[Q4].fidelity is not None and first[Q4].fidelity["kl_divergence"] is not None
    assert Q8 not in arena.manager.loaded_ids()  # its dead runtime was dropped at once

    monkeypatch.delenv(faults.ENV)
    again = compare(arena, THREE)
    assert all(r.status == "done" for r in again.values()), {v: r.error for v, r in again.items()}
    assert again[Q8].cache_hit is False and "Paris" in again[Q8].text  # a fresh runtime, loaded again
    assert again[Q8].fidelity["kl_divergence"] < 0.1
    assert again[Q8].stored["process"] == "own"
    arena.manager.clear()


def test_killing_the_runtime_mid_comparison_leaves_the_others_done(default_config, gguf_files):
    """What a SIGSEGV from outside does (the kernel's fault, as on an AMX Xeon): the column fails with its reason, the
    others finish, and the same comparison answers correctly a moment later."""
    arena = Arena(default_config)
    compare(arena, [Q8], max_new_tokens=2)  # loaded, so its process can be found while it generates
    pid = arena.manager._cache[Q8]._worker.pid
    killed = threading.Event()

    def kill_when_generating(records):
        if not killed.is_set() and records[Q8].status == "generating":
            os.kill(pid, signal.SIGSEGV)
            killed.set()

    final = None
    prompt = "Write a long story about a lighthouse keeper and the sea, with many details."
    for final in arena.compare(prompt, [FP32, Q8, Q4], arena.settings(max_new_tokens=300)):
        kill_when_generating({r.variant: r for r in final})
    records = {r.variant: r for r in final}
    assert killed.is_set(), "the GGUF column finished before it could be killed"
    assert records[Q8].status == "error" and records[Q8].error.startswith("crashed: signal 11 (SIGSEGV) in llama.cpp")
    assert records[FP32].status == "done" and records[Q4].status == "done"
    again = compare(arena, [FP32, Q8, Q4])
    assert all(r.status == "done" and "Paris" in r.text for r in again.values())
    arena.manager.clear()


def test_a_hung_runtime_is_ended_at_its_deadline(tmp_path, gguf_files, monkeypatch):
    # 8 s: long enough that the healthy runtime never goes that long without a word on a loaded 2-core machine
    # (at 3 s it did, while another process took both cores)
    arena = Arena(config_with(tmp_path, runtime_stall_s=8))
    monkeypatch.setenv(faults.ENV, f"{Q8}=hang@token2")
    started = time.monotonic()
    records = compare(arena, [Q8, Q4])
    assert time.monotonic() - started < 60
    assert records[Q8].status == "error" and records[Q8].error.startswith("hung: llama.cpp said nothing for 8 s")
    assert records[Q4].status == "done"
    arena.manager.clear()


def test_stop_reaches_a_runtime_in_its_own_process(default_config, gguf_files):
    arena = Arena(default_config)
    compare(arena, [Q8], max_new_tokens=2)
    stop = threading.Event()
    final = None
    started = None
    for final in arena.compare("Write a long story about the sea.", [Q8], arena.settings(max_new_tokens=400), stop):
        if final[0].status == "generating" and not stop.is_set():
            stop.set()
            started = time.monotonic()
    assert started is not None and time.monotonic() - started < 2
    assert final[0].status == "stopped" and final[0].new_tokens < 400
    again = compare(arena, [Q8])  # the same runtime, still alive, answers the next request
    assert again[Q8].status == "done" and again[Q8].cache_hit is True
    arena.manager.clear()


def test_a_runtime_that_keeps_crashing_is_refused(tmp_path, gguf_files, monkeypatch):
    arena = Arena(config_with(tmp_path, max_runtime_crashes=2))
    monkeypatch.setenv(faults.ENV, f"{Q8}=segv@load")
    for _ in range(2):
        assert compare(arena, [Q8])[Q8].error.startswith("crashed: signal 11 (SIGSEGV) in llama.cpp")
    refused = compare(arena, [Q8, Q4])
    assert refused[Q8].error.startswith("refused: its runtime crashed 2 times in a row")
    assert refused[Q4].status == "done"
    arena.manager.clear()


def test_the_cli_reports_a_crashed_variant_in_its_record(gguf_files):
    env = {**os.environ, faults.ENV: f"{Q8}=segv@token2"}
    done = subprocess.run([sys.executable, "-m", "demo", "compare", "--variants", ",".join(THREE), "--json",
                           "--max-new-tokens", "8", "--prompt", "Name the capital of France."],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = {r["variant"]: r for r in map(json.loads, filter(None, done.stdout.splitlines()))} \
        if not done.stdout.lstrip().startswith("[") else {r["variant"]: r for r in json.loads(done.stdout)}
    assert records[Q8]["status"] == "error" and records[Q8]["error"].startswith("crashed: signal 11")
    assert records[FP32]["status"] == "done" and records[Q4]["status"] == "done"


def test_evaluate_reports_a_crash_in_that_variants_row(default_config, gguf_files, monkeypatch):
    from demo.evaluate.run import evaluate

    arena = Arena(default_config)
    monkeypatch.setenv(faults.ENV, f"{Q8}=segv@token1")
    text = (REPO / "assets" / "evaluation.txt").read_text()[:3000]
    rows = {row.variant: row for row in evaluate(arena, [Q8, Q4], text, runs=1, max_new_tokens=8)}
    assert rows[Q8].error.startswith("crashed: signal 11 (SIGSEGV) in llama.cpp")
    assert rows[Q4].error is None
    arena.manager.clear()


def _kill_when_generating(final, variant_id: str, pid: int, killed: threading.Event) -> None:
    records = {r.variant: r for r in final}
    if not killed.is_set() and records[variant_id].status == "generating":
        os.kill(pid, signal.SIGSEGV)
        killed.set()


def test_in_emulated_zerogpu_a_runtime_crash_is_its_column_alone(tmp_path, gguf_files, default_config):
    """Placed at start-up in the serving process, the GGUF runtime's own process is used from the forked GPU worker;
    killed mid-generation, its column fails, the baseline's finishes, and the next request loads it afresh there."""
    import torch

    from demo.running import zerogpu
    from tests.test_zerogpu import small_profile

    if torch.cuda.is_available():
        pytest.skip("the emulation runs on the CPU: run with CUDA_VISIBLE_DEVICES=")
    zg = zerogpu.ZeroGpuArena.start(load_config(small_profile(tmp_path, [FP32, Q8])), "emulated", cap_s=3600)
    try:
        pid = zg.manager._cache[Q8]._worker.pid
        killed, final = threading.Event(), None
        prompt = "Write a long story about a lighthouse keeper and the sea, with many details."
        for final in zg.compare(prompt, [FP32, Q8], zg.settings(max_new_tokens=300)):
            _kill_when_generating(final, Q8, pid, killed)
        records = {r.variant: r for r in final}
        assert killed.is_set(), "the GGUF column finished before it could be killed"
        assert records[Q8].status == "error" and records[Q8].error.startswith("crashed: signal 11 (SIGSEGV)")
        assert records[FP32].status == "done"
        again = {r["variant"]: r for r in zg.compare_records("Name the capital of France.", [FP32, Q8],
                                                            zg.settings(max_new_tokens=8))}
        assert again[Q8]["status"] == "done" and again[Q8]["cache_hit"] is False, again[Q8]["error"]
    finally:
        zg._gpu.shutdown()
        zg.manager.clear()


def test_a_battle_whose_challenger_crashed_is_never_issued_or_scored(tmp_path, gguf_files, monkeypatch):
    """blind.variants [Q8, Q4]: Q8's runtime crashes mid-answer, so the battle that reaches the voter is against Q4,
    and no stored battle names Q8."""
    from demo.blind.battle import BlindTest
    from demo.blind.votes import VoteStore

    data = yaml.safe_load((REPO / "models.yaml").read_text())
    data["blind"] = {"max_new_tokens": 6, "variants": [Q8, Q4], "battles_per_minute": 60, "votes_per_minute": 60}
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(data))
    arena = Arena(load_config(tmp_path / "models.yaml"))
    monkeypatch.setenv(faults.ENV, f"{Q8}=segv@token1")
    blind = BlindTest(arena, VoteStore(tmp_path / "votes.sqlite3"))
    monkeypatch.setattr(blind, "draw", lambda base, tried=frozenset(): next((v for v in (Q8, Q4) if v not in tried),
                                                                             None))
    issued = blind.battle("Name the capital of France.", None, "s1")
    stored = blind.store.battle(issued["battle"])
    assert {stored.variant_a, stored.variant_b} == {FP32, Q4}
    shown = blind.vote(issued["battle"], "a", "s1")
    assert Q8 not in json.dumps(shown)
    arena.manager.clear()


def test_a_runtime_that_cannot_honour_stop_is_ended_and_counts_as_stopped(tmp_path, gguf_files, monkeypatch):
    """llama.cpp reading a long prompt checks Stop only once it is read: a runtime that does not stop in time is
    ended (the device is free at once), the column says stopped, and no crash is counted against the variant."""
    from demo.running import runtime_process

    monkeypatch.setattr(runtime_process, "STOP_GRACE_S", 2.0)
    arena = Arena(config_with(tmp_path, max_runtime_crashes=1))
    monkeypatch.setenv(faults.ENV, f"{Q8}=hang@token1")
    stop, final = threading.Event(), None
    for final in arena.compare("Name the capital of France.", [Q8], arena.settings(max_new_tokens=8), stop):
        if final[0].status == "generating" and not stop.is_set():
            stop.set()
    assert final[0].status == "stopped" and not final[0].crashed and final[0].error is None
    monkeypatch.delenv(faults.ENV)
    again = compare(arena, [Q8])  # refused after one crash, were the ended run counted as one
    assert again[Q8].status == "done" and again[Q8].cache_hit is False
    arena.manager.clear()


def test_a_variant_refused_by_the_budget_leaves_no_worker_behind(tmp_path):
    import psutil

    data = yaml.safe_load((REPO / "models.yaml").read_text())
    data["memory_budget_mib"] = 50  # the fp32 baseline's 513 MiB cannot fit
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(data))
    arena = Arena(load_config(tmp_path / "models.yaml"))

    def workers() -> set[int]:
        return {p.pid for p in psutil.Process().children(recursive=True)
                if "demo.running.runtime_worker" in " ".join(p.cmdline())}

    before = workers()
    records = compare(arena, [FP32])
    assert records[FP32].status == "error" and "memory budget" in records[FP32].error
    assert workers() - before == set()  # the worker that estimated its size was ended with the refusal


def test_a_run_records_how_late_its_tokens_reached_the_server(default_config, gguf_files):
    arena = Arena(default_config)
    record = compare(arena, [Q8])[Q8]
    lag = record.stored["token_delivery_ms"]
    assert 0 <= lag["p50"] <= lag["max"] < 1000
    arena.manager.clear()


def test_the_emulated_zerogpu_worker_holds_no_port_and_dies_with_the_app(tmp_path):
    """The worker forked from the app (ARENA_ZEROGPU_EMULATE=1) drops the server's listening socket it inherited
    and ends when the app is stopped with SIGTERM, so a restarted app gets the same port back."""
    import psutil
    from gradio_client import Client

    from tests.conftest import free_port
    from tests.test_zerogpu import small_profile

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "ARENA_ZEROGPU_EMULATE": "1",
           "ARENA_MODELS": str(small_profile(tmp_path, [FP32])), "ARENA_ZEROGPU_MAX_S": "3600"}
    log = (tmp_path / "app.log").open("w")
    app = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 600
        while True:
            try:
                client = Client(url, verbose=False)
                break
            except Exception:
                assert app.poll() is None and time.monotonic() < deadline, (tmp_path / "app.log").read_text()[-3000:]
                time.sleep(0.5)
        [record] = client.predict(prompt="Name the capital of France.", variants=[FP32], max_new_tokens=4,
                                  api_name="/compare")
        assert record["status"] == "done", record["error"]
        worker = record["environment"]["zerogpu"]["worker_pid"]
        assert worker != app.pid and psutil.Process(worker).ppid() == app.pid
        listening = [c for c in psutil.Process(worker).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        assert listening == [], listening
        app.terminate()
        app.wait(timeout=60)
        deadline = time.monotonic() + 10
        while _running(worker):
            assert time.monotonic() < deadline, "the forked worker outlived the app"
            time.sleep(0.1)
        with socket.create_server(("127.0.0.1", port)):  # the port is free again
            pass
    finally:
        app.kill()
        log.close()
