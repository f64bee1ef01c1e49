"""Stop, timings, and slow work that holds nobody else: a cold load leaves the System panel, Stop and votes
answering at once; a Stop ends a column waiting on a stalled remote engine within a second, and a stream closed
on the event loop (a client gone) returns at once, while another session's comparison keeps moving; a
transformers prompt read stops between layers; every clock of a record is read on the device thread."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import gradio as gr
import pytest
import yaml

from demo.backends.base import LoadedVariant
from demo.blind.battle import BlindTest
from demo.blind.votes import Battle, VoteStore, now_iso, session_digest
from demo.config import load_config
from demo.errors import VariantUnavailable
from demo.running.device import DeviceThread
from demo.running.manager import ModelManager
from demo.running.runner import Arena
from demo.running.turns import Client
from demo.running.streaming import StreamingGeneration
from demo.settings import GenerationSettings
from demo.ui.compare import CompareTab
from demo.ui.system_panel import system_markdown
from demo.measuring import system
from tests.conftest import REPO, tiny_causal_lm

MODEL = "fake-engine"
STALL_S = 30.0  # a stalled engine sends nothing this long: far past every bound the tests hold


class _Engine(BaseHTTPRequestHandler):
    """A fake OpenAI-compatible engine: /stall/ sends its headers and then nothing, /stall-headers/ sends nothing
    at all, /moving/ streams a token every 50 ms."""

    released = threading.Event()  # set at teardown: stalled handlers return

    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": MODEL}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        mode = self.path.split("/")[1]
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if mode == "stall-headers":
            self.released.wait(STALL_S)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.flush()
        if mode == "stall":
            self.released.wait(STALL_S)
            return
        for i in range(20):
            finish = "null" if i < 19 else '"length"'
            self.wfile.write(f'data: {{"choices": [{{"text": " w{i}", "finish_reason": {finish}}}]}}\n\n'.encode())
            self.wfile.flush()
            time.sleep(0.05)
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def engine():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Engine)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    _Engine.released.set()
    httpd.shutdown()


@pytest.fixture(scope="module")
def remote_arena(engine, tmp_path_factory):
    data = yaml.safe_load((REPO / "models.yaml").read_text())
    timeouts = {"connect": 2, "first_token": STALL_S, "total": 2 * STALL_S}
    data["variants"] += [{"id": f"smollm2/{mode}", "base": "smollm2", "method": "remote", "label": mode,
                          "endpoint": {"url": f"{engine}/{mode}/v1", "model": MODEL, "engine": "openai",
                                       "timeouts": timeouts}}
                         for mode in ("stall", "stall-headers", "moving")]
    path = tmp_path_factory.mktemp("models") / "models.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    arena = Arena(load_config(path))
    for mode in ("stall", "stall-headers", "moving"):  # loaded beforehand: only the answers are timed here
        arena.device.call(arena.manager.get, f"smollm2/{mode}")
    return arena


class Stream:
    """Runs one comparison in its own thread as a session's stream would, timing every snapshot it yields."""

    def __init__(self, arena, variant_id, stop=None, tokens=20):
        self.stop = stop or threading.Event()
        self.iterator = arena.compare("Say something.", [variant_id], arena.settings(max_new_tokens=tokens), self.stop)
        self.times: list[float] = []
        self.final = None

    def start(self):
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        return self

    def _run(self):
        for self.final in self.iterator:
            self.times.append(time.perf_counter())

    def reading(self, timeout_s=10.0):
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if self.final and self.final[0].status == "reading":
                return True
            time.sleep(0.01)
        return False


def test_stop_ends_a_column_waiting_for_a_stalled_engine_at_once_while_another_stream_moves(remote_arena):
    stalled = Stream(remote_arena, "smollm2/stall").start()
    assert stalled.reading()
    other = Stream(remote_arena, "smollm2/moving").start()  # another session: waits for the device's turn
    time.sleep(1.0)
    stopped_at = time.perf_counter()
    stalled.stop.set()
    stalled.thread.join(5)
    assert stalled.times[-1] - stopped_at < 1.0
    [record] = stalled.final
    assert record.status == "stopped" and record.error is None and record.new_tokens == 0
    assert record.total_ms is not None and record.total_ms > 900  # its clock ran on the device thread
    other.thread.join(10)
    [moved] = other.final
    assert moved.status == "done" and moved.text.startswith(" w0 w1"), moved.error
    gaps = [b - a for a, b in zip(other.times, other.times[1:])]
    assert max(gaps) < 1.0  # its stream kept moving: waiting, then its answer
    assert other.times[-1] - stopped_at < 4.0


@pytest.mark.parametrize("mode", ["stall", "stall-headers"])
def test_a_stream_closed_while_its_engine_stalls_returns_at_once_and_frees_the_device(remote_arena, mode):
    """Gradio closes a gone client's stream on its event loop, which every session's stream shares."""
    stalled = Stream(remote_arena, f"smollm2/{mode}")
    for snapshot in stalled.iterator:
        if snapshot[0].status == "reading":
            break
    time.sleep(0.3)  # the request is out; the engine sends nothing
    started = time.perf_counter()
    stalled.iterator.close()
    assert time.perf_counter() - started < 0.2
    other = Stream(remote_arena, "smollm2/moving").start()  # the device is free again within a second
    other.thread.join(5)
    assert other.final[0].status == "done" and other.times[0] - started < 1.0
    assert other.times[-1] - started < 3.0, other.final[0]


def test_a_cold_load_leaves_the_panel_stop_and_votes_answering_at_once(default_config, tmp_path):
    loading, release = threading.Event(), threading.Event()

    def slow_loader(variant, base):
        loading.set()
        release.wait(10)  # a cold load of several seconds
        raise VariantUnavailable("not available: the test's load ended")

    arena = Arena(default_config, manager=ModelManager(default_config, slow_loader))
    blind = BlindTest(arena, VoteStore(tmp_path / "votes.sqlite3"))
    blind.store.add_battle(Battle("b1", now_iso(), session_digest("voter"), "smollm2", "smollm2/fp32", "smollm2/fp32",
                                  "smollm2/bf16", "hi", {}, "one", "two", {"variant": "smollm2/fp32"},
                                  {"variant": "smollm2/bf16"}, {}))
    with gr.Blocks():
        tab = CompareTab(arena, [("fp32", "smollm2/fp32")])
    other = tab.stops.running("other")  # another session's comparison, waiting its turn
    other_stop = other.__enter__()
    loader = Stream(arena, "smollm2/bf16").start()
    try:
        assert loading.wait(10)
        shared = system.SharedSnapshot(max_age_s=2.0)

        def timed(fn, *args):
            started = time.perf_counter()
            fn(*args)
            return time.perf_counter() - started

        with ThreadPoolExecutor(40) as pool:
            panel = list(pool.map(lambda _: timed(system_markdown, arena, shared), range(40)))
        assert max(panel) < 1.0
        assert timed(tab.on_stop, SimpleNamespace(session_hash="other")) < 1.0 and other_stop.is_set()
        assert timed(blind.vote, "b1", "a", "voter") < 1.0
        assert loader.thread.is_alive()  # all of it while the load went on
    finally:
        release.set()
        loader.thread.join(10)
        other.__exit__(None, None, None)
    assert loader.final[0].status == "error" and "the test's load ended" in loader.final[0].error


def test_stop_during_its_own_cold_load_says_stopped_at_once_and_keeps_the_turn_until_the_load_ends(default_config):
    """The column says "stopped" within a second; the load is not abandoned midway, and until it ends the
    comparison keeps its turn (stopping never lets a client queue loads past its share); then it is cached."""
    loading, release, loaded = threading.Event(), threading.Event(), threading.Event()
    fake = _ThreadRecorder()

    def slow_loader(variant, base):
        loading.set()
        release.wait(10)  # a cold load of several seconds
        loaded.set()
        return fake

    arena = Arena(default_config, manager=ModelManager(default_config, slow_loader))
    column = Stream(arena, "smollm2/bf16").start()
    try:
        assert loading.wait(10)
        started = time.perf_counter()
        column.stop.set()
        deadline = started + 1.0
        while time.perf_counter() < deadline and column.final[0].status != "stopped":
            time.sleep(0.01)
        assert column.final[0].status == "stopped" and not loaded.is_set()  # said at once, the load going on
        assert column.thread.is_alive() and arena.turns.waiting() == 0
        following = arena.turns.join(Client("next"))
        assert arena.turns.ahead(following) == 1  # the turn is still the stopped comparison's
        arena.turns.leave(following)
    finally:
        release.set()
    column.thread.join(10)
    assert not column.thread.is_alive() and column.final[0].status == "stopped" and column.final[0].text == ""
    assert "smollm2/bf16" in arena.manager.loaded_ids()  # kept for the next comparison that wants it


def test_stop_before_a_queued_load_starts_cancels_it(default_config):
    gate, calls = threading.Event(), []
    arena = Arena(default_config, manager=ModelManager(default_config, lambda v, b: calls.append(v.id) or _ThreadRecorder()))
    arena.environment()  # read on the device thread (the bandwidth, once): before the device is kept busy
    arena.device.submit(gate.wait, 10)  # the device is busy with other work: the load waits behind it
    column = Stream(arena, "smollm2/bf16").start()
    deadline = time.perf_counter() + 10
    while not (column.final and column.final[0].status == "loading") and time.perf_counter() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the load is queued behind the busy device
    column.stop.set()
    column.thread.join(5)
    gate.set()
    arena.device.call(lambda: None)
    assert column.final[0].status == "stopped" and calls == []  # never loaded


def test_a_transformers_prompt_read_stops_between_two_layers():
    from demo.backends.transformers import TransformersVariant, decoder_layers

    model = tiny_causal_lm(layers=4)
    loaded = TransformersVariant(SimpleNamespace(id="tiny", settings={}), model, SimpleNamespace(pad_token_id=0), "cpu")
    layers = decoder_layers(model)
    assert len(layers) == 4
    stop, ran, tokens = threading.Event(), [], []
    watches = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(layers)]
    stopper = layers[1].register_forward_hook(lambda *args: stop.set())  # Stop lands while layer 1 reads the prompt
    loaded.generate(list(range(3, 200)), GenerationSettings(max_new_tokens=4), stop,
                    lambda token_id, at_s: tokens.append(token_id))
    assert ran == [0, 1] and tokens == []  # layers 2 and 3 never ran, no token came
    stopper.remove()
    stop.clear()
    ran.clear()
    loaded.generate(list(range(3, 20)), GenerationSettings(max_new_tokens=4), stop,
                    lambda token_id, at_s: tokens.append(token_id))
    assert tokens and ran[:4] == [0, 1, 2, 3]
    assert not any(layer._forward_pre_hooks for layer in layers)  # decoding runs without the checks
    for watch in watches:
        watch.remove()


class _ThreadRecorder(LoadedVariant):
    """A runtime that notes the thread of every call that reads a clock or a memory figure."""

    runtime = "fake"

    def __init__(self):
        super().__init__(SimpleNamespace(id="fake"), None, "cpu", 0, frozenset(), None)
        self.threads: list[str] = []

    def sync(self):
        self.threads.append(threading.current_thread().name)

    @contextmanager
    def track_memory(self):
        self.threads.append(threading.current_thread().name)
        yield SimpleNamespace(result=None)

    def generate(self, prompt_ids, settings, stop, on_token):
        for token_id in range(3):
            time.sleep(0.01)
            on_token(token_id, time.perf_counter())

    def logits(self, ids, prompt_tokens=None):
        raise NotImplementedError

    def bare_token_times(self, prompt_ids, settings):
        raise NotImplementedError

    def free(self):
        pass


def test_every_clock_of_a_run_is_read_on_the_device_thread_not_after_the_reader_drains_it():
    loaded = _ThreadRecorder()
    generation = StreamingGeneration(DeviceThread(), loaded, [1, 2], GenerationSettings(max_new_tokens=3))
    time.sleep(0.5)  # a reader that comes late (a busy server)
    assert [e.token_id for e in generation] == [0, 1, 2]
    latency = generation.tracker.result()
    assert latency.new_tokens == 3 and latency.total_ms < 400  # the run's own time, not the reader's lag
    assert len(loaded.threads) == 3 and all(name.startswith("device") for name in loaded.threads)


def test_a_record_s_total_is_the_run_s_own_time_with_a_slow_reader(remote_arena):
    started, final = time.perf_counter(), None
    for final in remote_arena.compare("Say something.", ["smollm2/moving"], remote_arena.settings(max_new_tokens=20)):
        time.sleep(0.3)  # a slow consumer: each snapshot takes it 0.3 s
    waited_s = time.perf_counter() - started
    [record] = final
    assert record.status == "done" and record.text.endswith(" w18 w19")
    assert 900 < record.total_ms < 1000 * (waited_s - 1.0)  # 20 chunks 50 ms apart; the reader took far longer
