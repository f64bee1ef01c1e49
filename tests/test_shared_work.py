"""Work beside a timed run: the blind test's statistics once per new vote, charts one at a time, the page's
temporary folders swept, NVML initialised once per process, the System panel's figures shared by its viewers."""

import sys
import threading
import time
import types
from types import SimpleNamespace

import pytest

from demo.blind import battle as battle_module
from demo.blind import vote_chart
from demo.blind.battle import BlindTest
from demo.blind.ratings import summarize
from demo.blind.votes import Outcome, VoteStore
from demo.measuring import nvml, system, trackers
from demo.reports import card, drawing, scratch
from test_blind import battle


class FakeNvml(types.ModuleType):
    """pynvml as far as the app uses it, counting calls; `broken` makes nvmlInit fail (no driver)."""

    def __init__(self, broken=False):
        super().__init__("pynvml")
        self.calls = {"init": 0, "shutdown": 0, "memory": 0}
        self.broken = broken

    def nvmlInit(self):
        self.calls["init"] += 1
        if self.broken:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.calls["shutdown"] += 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetMemoryInfo(self, handle):
        self.calls["memory"] += 1
        return SimpleNamespace(used=3 * 2**30, total=80 * 2**30)

    def nvmlDeviceGetName(self, handle):
        return b"Fake GPU"

    def nvmlSystemGetDriverVersion(self):
        return "555.1"


@pytest.fixture
def fake_nvml(monkeypatch):
    def install(broken=False):
        fake = FakeNvml(broken)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        monkeypatch.setattr(nvml, "_library", {})  # this process has not looked for NVML yet
        # which GPU is this process's is test_nvml's concern: here device 0, whatever an earlier test left behind
        monkeypatch.delenv(nvml.VISIBLE_ENV, raising=False)
        monkeypatch.setattr(nvml, "_cuda_uuid", lambda: None)
        return fake
    return install


def test_nvml_is_initialised_once_per_process_and_never_shut_down_per_read(fake_nvml):
    fake = fake_nvml()
    for _ in range(5):
        figures = system.gpu_figures()
    assert figures == system.GpuFigures("Fake GPU", "555.1", 3 * 1024, 80 * 1024)
    tracker = trackers.MemoryTracker("cuda", 0, interval_s=0.001, kind="nvml-device")
    tracker.start()
    time.sleep(0.05)
    tracker.stop()
    assert fake.calls["memory"] > 7  # the sampler read it many times...
    assert fake.calls["init"] == 1 and fake.calls["shutdown"] == 0  # ...with one initialisation in all


def test_a_process_without_nvml_looks_for_it_once(fake_nvml):
    fake = fake_nvml(broken=True)
    assert [system.gpu_figures() for _ in range(4)] == [None] * 4
    assert fake.calls["init"] == 1


def test_the_cpu_memory_sampler_never_touches_nvml(fake_nvml):
    fake = fake_nvml()
    tracker = trackers.MemoryTracker("cpu", 0, interval_s=0.001)
    tracker.start()
    time.sleep(0.02)
    assert tracker.stop().memory_kind == "cpu-rss"
    assert fake.calls == {"init": 0, "shutdown": 0, "memory": 0}


def test_the_system_panel_figures_are_taken_once_per_period_for_every_viewer():
    taken, now = [], [100.0]
    shared = system.SharedSnapshot(2.0, take=lambda device: taken.append(device) or f"snapshot {len(taken)}",
                                   clock=lambda: now[0])
    assert {shared.get("cpu") for _ in range(10)} == {"snapshot 1"}  # ten viewers, one reading
    now[0] += 1.9
    assert shared.get("cpu") == "snapshot 1"
    now[0] += 0.1
    assert shared.get("cpu") == "snapshot 2" and len(taken) == 2


def test_blind_statistics_are_computed_once_per_new_vote(tmp_path, default_config, monkeypatch):
    computed = []
    monkeypatch.setattr(battle_module.ratings, "summarize",
                        lambda outcomes: computed.append(len(outcomes)) or summarize(outcomes))
    store = VoteStore(tmp_path / "votes.sqlite3")
    blind = BlindTest(SimpleNamespace(config=default_config), store)
    store.add_battle(battle("b1"))
    store.vote("b1", "a", "s1")
    first = [blind.results() for _ in range(5)]
    assert computed == [1] and all(r is first[0] for r in first)
    store.add_battle(battle("b2"))  # a battle without a vote changes nothing
    assert blind.results() is first[0] and computed == [1]
    store.vote("b2", "tie", "s1")
    assert blind.results()["votes"] == 2 and computed == [1, 2]


def test_the_vote_chart_waits_for_another_chart_being_drawn(tmp_path):
    outcomes = [Outcome("s", "s/fp32", "s/bf16", "s/fp32", "a", "bf16", "fp32")]
    path = tmp_path / "chart.png"
    with drawing.LOCK:  # another chart is being drawn
        worker = threading.Thread(target=vote_chart.write_chart, args=(summarize(outcomes), path))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and not path.exists()
    worker.join(30)
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_fifty_comparisons_leave_a_handful_of_folders(arena, tmp_path):
    records = arena.compare_records("Hello", ["smollm2/fp32"], arena.settings(max_new_tokens=3))
    now = [time.time()]
    space = scratch.ScratchSpace(tmp_path / "scratch", clock=lambda: now[0])
    for _ in range(50):
        paths = card.write(records, space.folder("comparison-"))
        assert paths["json"].is_file()
        now[0] += 5  # a comparison takes seconds: the folders before it have long been copied by Gradio
    left = list((tmp_path / "scratch").iterdir())
    assert len(left) <= scratch.KEEP + 3, len(left)


def test_a_folder_still_being_served_is_never_swept(tmp_path):
    space = scratch.ScratchSpace(tmp_path / "scratch", keep=2)  # the real clock: every folder is seconds old
    folders = [space.folder("blind-results-") for _ in range(6)]
    assert all(f.is_dir() for f in folders)


def test_the_page_writes_into_one_swept_folder_per_process():
    first, second = scratch.folder("comparison-"), scratch.folder("evaluate-")
    assert first.parent == second.parent == scratch.process_space().root
