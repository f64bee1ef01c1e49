"""ZeroGPU mode in its emulation (ARENA_ZEROGPU_EMULATE=1): the process model itself on a toy task, then the arena
over a two-variant profile: greedy answers identical to the normal mode, Stop, the cap, /compare, /battle and
/vote, an evaluation."""

import os
import threading
import time

import pytest
import yaml

from tests.conftest import CLEAR_PROMPT, REPO, free_port, require_clear_answer

VARIANTS = ["smollm2/fp32", "smollm2/bf16"]


# --- the process model, on a toy task ---------------------------------------------------------------------------

def toy_task(count: int, delay_s: float, fail_at: int | None = None):
    """Yields (pid, thread names, i) count times; raises at fail_at."""
    for i in range(count):
        if i == fail_at:
            raise ValueError("secret words that ZeroGPU does not pass on")
        time.sleep(delay_s)
        yield os.getpid(), sorted(t.name for t in threading.enumerate()), i


def test_the_worker_is_forked_later_gets_pickles_and_stops():
    from demo.running.gpu_worker import WorkerError, emulated_gpu

    asked = []
    gpu = emulated_gpu(toy_task, duration=lambda *args, **kwargs: asked.append(args) or 10, workers="reuse")
    started = threading.Thread(target=threading.Event().wait, args=(30,), name="server-thread", daemon=True)
    started.start()  # a thread of the server, started before the first call
    try:
        values = list(gpu(3, 0.0))
        assert [v[2] for v in values] == [0, 1, 2]
        pid = values[0][0]
        assert pid != os.getpid() and "server-thread" not in values[0][1]  # forked: the server's threads are not there
        assert asked == [(3, 0.0)]  # the duration is asked with the call's own arguments
        # a closed generator (Stop, a client gone) sets the stop event: the task ends at its next yield
        stream = gpu(1000, 0.01)
        next(stream)
        began = time.perf_counter()
        stream.close()
        assert time.perf_counter() - began < 2
        # the same warm worker serves the next call; an error reaches the caller as its class name only, titled as
        # `spaces` titles it
        with pytest.raises(WorkerError) as raised:
            list(gpu(3, 0.0, fail_at=1))
        assert (raised.value.title, raised.value.message) == ("ZeroGPU worker error", "ValueError")
        # spaces keeps a worker for the next call only after a call that ended: after a failure, a fresh one
        assert [v[0] for v in gpu(1, 0.0)] != [pid] and gpu.workers_started == 2
        with pytest.raises(TypeError):  # arguments cross by pickle: a lock cannot
            list(gpu(threading.Lock(), 0.0))
    finally:
        gpu.shutdown()


def test_a_fresh_worker_serves_each_call_unless_its_gpu_came_back_idle():
    """`spaces` reuses a worker only when the device API hands its GPU back idle; otherwise it forks a fresh one,
    which starts cold. The emulation's default does the same on every call (the previous worker ends)."""
    from demo.running.gpu_worker import emulated_gpu

    gpu = emulated_gpu(toy_task)
    assert gpu.workers == "fresh"
    try:
        first = next(iter(gpu(1, 0.0)))[0]
        previous = gpu._worker.process
        second = next(iter(gpu(1, 0.0)))[0]
        assert first != second and gpu.workers_started == 2 and gpu.calls == 2
        previous.join(timeout=10)
        assert not previous.is_alive()
    finally:
        gpu.shutdown()


def test_the_emulation_raises_the_worker_errors_spaces_raises():
    from spaces.zero.gradio import error

    from demo.running.gpu_worker import WorkerError

    from demo.running.zerogpu import _from_spaces, _from_spaces_titled

    ours, theirs = WorkerError("GPU task aborted"), error("ZeroGPU worker error", "GPU task aborted")
    assert (ours.title, ours.message) == (theirs.title, theirs.message)
    assert _from_spaces_titled(ours) and _from_spaces_titled(theirs)  # the arena reads both alike
    assert str(_from_spaces(ours)) == str(_from_spaces(theirs))


def test_zerogpu_s_errors_become_the_arena_s_with_their_words():
    import gradio as gr

    from demo.running.zerogpu import _from_spaces

    quota = "You have exceeded your free ZeroGPU quota (90s requested vs. 42s left). Try again in 3:10:00. "
    assert str(_from_spaces(gr.Error(quota, title="ZeroGPU quota exceeded"))) == f"ZeroGPU quota exceeded: {quota}"
    assert str(_from_spaces(gr.Error("plain words"))) == "plain words"
    aborted = str(_from_spaces(gr.Error("RuntimeError", title="ZeroGPU worker error")))
    assert aborted.startswith("ZeroGPU worker error: RuntimeError (in ZeroGPU's worker process") and "log" in aborted
    assert str(_from_spaces(gr.Error("GPU task aborted", title="ZeroGPU worker error"))) == \
        "ZeroGPU worker error: GPU task aborted"  # a worker that died: no traceback was printed


def test_the_gpu_time_asked_adds_up():
    from demo.config import load_config
    from demo.errors import GpuTimeTooLong
    from demo.running import gpu_time
    from demo.settings import GenerationSettings

    config = load_config(REPO / "models.yaml")
    rates = {"smollm2/fp32": gpu_time.Rates(10.0, 0.5, 0.01, "measured at start-up"),
             "smollm2/bf16": gpu_time.Rates(20.0, 0.25, 0.005, "measured at start-up")}
    timer = gpu_time.GpuTime(config, rates, cap_s=60)
    settings = GenerationSettings(max_new_tokens=24)
    # answers: 0.5 + 24/10 and 0.25 + 24/20; fidelity over 64 prompt + 24 answer tokens: the baseline twice, bf16 once
    assert timer.compare_s(["smollm2/fp32", "smollm2/bf16"], settings) == 15.0  # ceil(6.55 * 1.5 + 5)
    assert timer.compare_s(["smollm2/bf16"], settings) == 8.0  # no baseline, no scoring: ceil(1.45 * 1.5 + 5)
    # a 600-character prompt is 200 tokens: 136 past a short prompt's, read at 0.005 s a token
    assert timer.compare_s(["smollm2/bf16"], settings, "x" * 600) == 9.0  # ceil((1.45 + 0.68) * 1.5 + 5)
    with pytest.raises(GpuTimeTooLong, match="about 61 s of GPU quota; the limit here is 60 s"):
        timer.check(61)
    # `spaces` counts what is asked for times the GPU's duration factor (1.5 on its Blackwell configuration), and
    # twice with no factor on an xlarge GPU; a fresh worker first moves every placed weight, inside the duration
    blackwell = gpu_time.GpuTime(config, rates, cap_s=60, duration_factor=1.5, placed_mib=5000)
    assert blackwell.compare_s(["smollm2/bf16"], settings) == 13.0  # ceil(1.45 * 1.5 + 5 + 5000 / 1000)
    assert blackwell.charged_s(13.0) == 20.0
    blackwell.check(40)  # 60 s charged: at the cap
    with pytest.raises(GpuTimeTooLong, match=r"about 62 s of GPU quota \(41 s asked for × this GPU's duration "
                                             r"factor 1.5\); the limit here is 60 s"):
        blackwell.check(41)
    xlarge = gpu_time.GpuTime(config, rates, cap_s=60, duration_factor=1.5, xlarge=True)
    assert xlarge.charged_s(31.0) == 62.0
    decided = []  # on ZeroGPU `spaces` decides at launch(): asked each time, not fixed at start-up
    later = gpu_time.GpuTime(config, rates, cap_s=60, duration_factor=1.5, xlarge=lambda: bool(decided))
    assert later.charged_s(10.0) == 15.0
    decided.append(True)
    assert later.charged_s(10.0) == 20.0 and later.minimum_s() == 5.0
    with pytest.raises(GpuTimeTooLong, match="counted twice on an xlarge GPU"):
        xlarge.check(31)
    # a run measured in the worker replaces an assumed rate, never a measured one
    timer.observe([{"variant": "smollm2/bnb-nf4", "status": "done", "decode_tokens_per_s": 8.0, "ttft_ms": 300.0},
                   {"variant": "smollm2/bf16", "status": "done", "decode_tokens_per_s": 1.0, "ttft_ms": 9000.0}])
    assert timer.rates("smollm2/bnb-nf4") == gpu_time.Rates(8.0, 0.3, 0.01, "measured in the worker")
    assert timer.rates("smollm2/bf16") == rates["smollm2/bf16"]


# --- the arena in emulated ZeroGPU mode ------------------------------------------------------------------------

def small_profile(folder, variants=VARIANTS):
    raw = yaml.safe_load((REPO / "models.yaml").read_text())
    raw["variants"] = [v for v in raw["variants"] if v["id"] in variants]
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def zg(tmp_path_factory):
    import torch

    from demo.config import load_config
    from demo.running import zerogpu

    if torch.cuda.is_available():  # app.py hides the GPU when it emulates; a test process cannot any more
        pytest.skip("the emulation runs on the CPU (CUDA cannot be used in a worker forked after CUDA started): "
                    "run with CUDA_VISIBLE_DEVICES=")

    config = load_config(small_profile(tmp_path_factory.mktemp("profile")))
    arena = zerogpu.ZeroGpuArena.start(config, "emulated", cap_s=3600)
    yield arena
    arena._gpu.shutdown()


def test_a_profile_that_does_not_fit_is_refused_at_start_up_with_its_sizes(tmp_path, monkeypatch):
    from demo.config import load_config
    from demo.errors import ZeroGpuError
    from demo.running import zerogpu

    monkeypatch.setenv(zerogpu.SLICE_ENV, "600")
    config = load_config(small_profile(tmp_path))
    # refused from the estimates, before any variant loads
    with pytest.raises(ZeroGpuError, match=r"\(estimated\) take 7\d\d MiB but the ZeroGPU slice has 600 MiB.*"
                                           r"smollm2/fp32 5\d\d MiB"):
        zerogpu.ZeroGpuArena.start(config, "emulated")


def test_torchao_is_not_placed_on_zerogpu_and_says_why(tmp_path):
    """torchao quantizes as it loads, with the device's kernels: under ZeroGPU's emulated CUDA that fails (make
    zerogpu-check); the emulation leaves it out too, with the same reason, before anything loads."""
    from demo.config import load_config
    from demo.running import zerogpu

    config = load_config(small_profile(tmp_path, ["smollm2/fp32", "smollm2/torchao-int4"]))
    arena = zerogpu.ZeroGpuArena.start(config, "emulated", cap_s=600)
    try:
        assert list(arena.placement.load_ms) == ["smollm2/fp32"]
        reason = arena.placement.failed["smollm2/torchao-int4"]
        assert reason.startswith("not offered on ZeroGPU: torchao quantizes its weights as they load")
        settings = arena.settings(max_new_tokens=16)  # a variant not placed asks for no GPU time
        assert (arena.compare_gpu_s(["smollm2/fp32", "smollm2/torchao-int4"], settings)
                == arena.compare_gpu_s(["smollm2/fp32"], settings))
    finally:
        arena._gpu.shutdown()


def test_greedy_answers_in_the_worker_are_the_normal_mode_s(zg, arena, clear_prompt):
    for variant_id in VARIANTS:
        require_clear_answer(arena, variant_id)
    settings = arena.settings(max_new_tokens=12)
    normal = arena.compare_records(clear_prompt, VARIANTS, settings)
    emulated = zg.compare_records(clear_prompt, VARIANTS, settings)
    for before, after in zip(normal, emulated):
        assert after["status"] == "done" and after["error"] is None
        assert after["text"] == before["text"] and "Paris" in after["text"]
        facts = after["environment"]["zerogpu"]
        assert facts["execution"].startswith("emulated ZeroGPU") and facts["worker_pid"] != os.getpid()
        assert facts["placed_at_startup_ms"][after["variant"]] > 0 and after["cache_hit"] is True
        assert after["decode_tokens_per_s"] > 0 and after["weights_mib"] > 0
        # read in the worker: its torch has the server's threads (a forked OpenMP runtime can fall back to one)
        assert after["environment"]["device_name"] == before["environment"]["device_name"]
    assert emulated[1]["fidelity"]["kl_divergence"] == pytest.approx(normal[1]["fidelity"]["kl_divergence"], abs=1e-6)
    with pytest.raises(Exception, match="runs no model code"):  # after start-up the server runs none
        zg.device.call(lambda: None)


def test_stop_and_a_client_that_leaves_end_the_worker_s_generation(zg):
    settings = zg.settings(max_new_tokens=300)
    stop = threading.Event()
    shown = []
    for shown in zg.compare("Write a very long story about a dragon.", VARIANTS, settings, stop):
        if shown[0].new_tokens >= 3 and not stop.is_set():
            stop.set()
            began = time.perf_counter()
    assert time.perf_counter() - began < 5
    assert [r.status for r in shown] == ["stopped", "stopped"] and 3 <= shown[0].new_tokens < 300
    stream = zg.compare("Write a very long story about a dragon.", VARIANTS, settings)
    for shown in stream:
        if shown[0].new_tokens >= 3:
            break
    began = time.perf_counter()
    stream.close()  # what Gradio does when the client goes away
    assert time.perf_counter() - began < 5
    [record] = zg.compare_records(CLEAR_PROMPT, ["smollm2/bf16"], zg.settings(max_new_tokens=4))
    # a fresh worker for each call (the emulation's default, as when ZeroGPU hands no idle GPU back): it starts cold
    assert record["status"] == "done" and record["environment"]["zerogpu"]["worker"] == "cold"


def test_a_run_over_the_cap_is_refused_before_anything_runs(zg, monkeypatch):
    from demo.errors import GpuTimeTooLong

    calls = zg._gpu.calls
    monkeypatch.setattr(zg.gpu_time, "cap_s", 10)
    with pytest.raises(GpuTimeTooLong, match=r"would take about \d+ s of GPU quota.*; the limit here is 10 s"):
        zg.compare("Hi", VARIANTS, zg.settings(max_new_tokens=64))
    assert zg._gpu.calls == calls


def raising_job(arena, words):
    from demo.errors import Busy

    raise Busy(words)
    yield  # a generator, as every job is


def test_the_arena_s_own_errors_cross_with_their_words(zg):
    from demo.errors import Busy

    with pytest.raises(Busy, match="^busy: these exact words$"):
        list(zg.run_job(raising_job, "busy: these exact words", gpu_seconds=10))


def test_an_evaluation_runs_whole_in_the_worker(zg, arena):
    from demo import evaluate

    text = "The lighthouse keeper climbed the stairs every evening to light the lamp for the ships. " * 3
    seen = []
    rows = evaluate.evaluate(zg, VARIANTS, text, runs=1, max_new_tokens=8, progress=lambda f, m: seen.append(m))
    normal = evaluate.evaluate(arena, VARIANTS, text, runs=1, max_new_tokens=8)
    assert [r.variant for r in rows] == VARIANTS and all(r.error is None for r in rows)
    assert [r.perplexity for r in rows] == [r.perplexity for r in normal]  # the same computation, in the worker
    assert rows[1].kl_divergence == normal[1].kl_divergence and rows[1].decode_tokens_per_s_p50 > 0
    assert "smollm2/bf16: speed" in seen


@pytest.fixture(scope="module")
def client(zg):
    from gradio_client import Client

    from demo import ui

    demo = ui.build_demo(zg)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                            **ui.launch_kwargs(demo))
    yield Client(url, verbose=False)
    demo.close()


def test_compare_battle_and_vote_through_the_api(client, zg, monkeypatch):
    records = client.predict(prompt=CLEAR_PROMPT, variants=VARIANTS, max_new_tokens=8, api_name="/compare")
    assert [r["status"] for r in records] == ["done", "done"]
    assert all(r["environment"]["zerogpu"]["worker_pid"] != os.getpid() for r in records)
    issued = client.predict(prompt=CLEAR_PROMPT, base="", api_name="/battle")
    assert set(issued) == {"battle", "a", "b"}
    shown = client.predict(battle=issued["battle"], choice="tie", api_name="/vote")
    assert {shown["a"]["variant"], shown["b"]["variant"]} == set(VARIANTS)
    monkeypatch.setattr(zg.gpu_time, "cap_s", 10)
    with pytest.raises(Exception, match="the limit here is 10 s"):  # one line, before anything runs
        client.predict(prompt=CLEAR_PROMPT, variants=VARIANTS, max_new_tokens=64, api_name="/compare")


def test_a_variant_not_placed_at_start_up_is_unavailable_in_the_worker_with_its_reason():
    from demo.errors import VariantUnavailable
    from demo.running.zerogpu import _PlacedOnly

    class Placed:
        budget_mib = float("inf")

        def get(self, variant_id):
            return f"loaded {variant_id}"

    manager = _PlacedOnly(Placed(), {"smollm2/gptq-4bit": "not quantized yet: run python -m demo.quantize"})
    assert manager.get("smollm2/bf16") == "loaded smollm2/bf16" and manager.budget_mib == float("inf")
    with pytest.raises(VariantUnavailable, match="^not placed when the app started: not quantized yet"):
        manager.get("smollm2/gptq-4bit")


def test_zerogpu_s_own_quota_error_reaches_the_client_as_it_is(client, zg, monkeypatch):
    import gradio as gr

    words = "You have exceeded your GPU quota (60s requested vs. 42s left). Try again in 3:10:00"

    def refused(job, args, sent_at_s, gpu_seconds):  # what spaces.GPU raises before any worker runs
        raise gr.Error(words)
        yield

    monkeypatch.setattr(zg, "_gpu", refused)
    with pytest.raises(Exception) as info:
        client.predict(prompt=CLEAR_PROMPT, variants=VARIANTS, max_new_tokens=8, api_name="/compare")
    assert str(info.value).endswith(words)


def test_start_up_places_transformers_variants_in_the_thread_that_imported_spaces(tmp_path, monkeypatch,
                                                                                    default_config):
    """ZeroGPU's patch of torch is active only in the thread that imported `spaces`: transformers 5 copies a
    checkpoint's tensors on a thread pool of its own unless told not to, and there the patch is absent (every
    variant would fail to be placed on a real Space). Start-up must load with no such pool."""
    import concurrent.futures

    import torch
    import transformers.core_model_loading as loading
    from demo.config import load_config
    from demo.running import zerogpu
    from tests.conftest import tiny_models_file

    if torch.cuda.is_available():
        pytest.skip("the emulation runs on the CPU: run with CUDA_VISIBLE_DEVICES=")
    pools = []

    class RecordedPool(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(threading.current_thread().name)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(loading, "ThreadPoolExecutor", RecordedPool)
    tiny_models_file(tmp_path, default_config, """
{id: tiny/fp32, base: tiny, method: fp32}
{id: tiny/bf16, base: tiny, method: bf16}""")
    loading_outside = len(pools)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "base")  # outside start-up: transformers' own pool
    assert len(pools) == loading_outside + 1, "the check must see transformers' pool where it is used"
    arena = zerogpu.ZeroGpuArena.start(load_config(tmp_path / "models.yaml"), "emulated", cap_s=600)
    try:
        assert arena.placement.failed == {} and set(arena.placement.load_ms) == {"tiny/fp32", "tiny/bf16"}
        assert len(pools) == loading_outside + 1  # none made while placing
        assert os.environ.get(zerogpu.ASYNC_LOAD_ENV) is None  # and the setting is put back
    finally:
        arena._gpu.shutdown()


def test_zerogpu_on_a_cpu_build_of_torch_stops_with_the_reason_not_a_traceback():
    """The real `spaces` package, told it is on ZeroGPU, reads torch.version.cuda as it is imported: on a CPU
    build that is None and the import raises AttributeError, which app.py let through as a traceback."""
    import subprocess
    import sys

    env = {**os.environ, "SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "error: SPACES_ZERO_GPU is set, but the `spaces` package failed to start: AttributeError" in done.stderr
    assert "CPU build" in done.stderr and "Traceback" not in done.stderr


def test_a_zerogpu_space_gets_the_gpu_profile(monkeypatch):
    """Its serving process sees no GPU (NVML finds none), yet it is a GPU Space: SPACES_ZERO_GPU says so."""
    from demo import config

    monkeypatch.delenv(config.MODELS_ENV, raising=False)
    monkeypatch.setenv(config.SPACE_ENV, "someone/arena")
    monkeypatch.setattr(config, "_has_nvidia_gpu", lambda: False)  # as in ZeroGPU's serving process
    assert config.models_path() == config.DEFAULT_MODELS_FILE  # a CPU Space
    monkeypatch.setenv(config.ZEROGPU_ENV, "true")
    assert config.models_path() == config.GPU_MODELS_FILE


def test_placing_on_zerogpu_asks_gptqmodel_for_kernels_that_need_no_build(monkeypatch):
    """Under ZeroGPU's emulated CUDA, gptqmodel would build its Marlin kernel in the serving process as a GPTQ or AWQ
    checkpoint loads (6 minutes, then a failed build, under make zerogpu-check): placement asks for its plain-torch
    kernels instead (and runs no warm-up); the emulation keeps the normal mode's CPU kernels; the settings are put
    back afterwards."""
    from demo.backends import transformers as runtime
    from demo.running import zerogpu

    monkeypatch.delenv(runtime.PLACING_ON_ZEROGPU_ENV, raising=False)
    assert runtime._kernel_without_build("gptq") == {}
    with zerogpu.placing("zerogpu"):
        assert os.environ[zerogpu.ASYNC_LOAD_ENV] == "1"
        gptq, awq = runtime._kernel_without_build("gptq"), runtime._kernel_without_build("awq")
        assert gptq["quantization_config"].get_loading_attributes()["backend"] == "gptq_torch"
        assert awq["quantization_config"].get_loading_attributes()["backend"] == "torch_awq"
        autoround = runtime._kernel_without_build("autoround")["quantization_config"]
        assert autoround.get_loading_attributes()["backend"] == "torch"
        assert runtime._kernel_without_build("bnb-4bit") == {} and runtime.placing_on_zerogpu()
    with zerogpu.placing("emulated"):
        assert runtime._kernel_without_build("gptq") == {}
    assert runtime.PLACING_ON_ZEROGPU_ENV not in os.environ and zerogpu.ASYNC_LOAD_ENV not in os.environ
