"""Work that waits for the device holds none of Gradio's shared handler threads: an evaluation and a battle run on
threads of their own; the page's handlers check on them every half second (returning their thread between checks)
and the /battle API function awaits its battle on the event loop."""

import asyncio
import inspect
import threading
import time
from types import SimpleNamespace

import gradio as gr
import pytest

from demo.blind.battle import BlindTest
from demo.blind.votes import VoteStore
from demo.errors import InvalidRequest, VariantUnavailable
from demo.running.manager import ModelManager
from demo.running.runner import Arena
from demo.running.turns import Client
from demo.ui import offpool
from demo.ui.blind import BlindTab, endpoints
from demo.ui.evaluate import EvaluateTab

REQUEST = SimpleNamespace(session_hash="visitor", headers={}, client=SimpleNamespace(host="127.0.0.1"))


def test_work_hands_back_its_result_its_error_and_its_news():
    gate = threading.Event()

    def job(report):
        report("half way")
        gate.wait(5)
        return 42

    work = offpool.Work(job, name="test-work")
    assert not work.wait(0.05) and work.news() == (True, "half way") and work.news() == (False, "half way")
    gate.set()
    assert work.wait(5) and work.result() == 42
    failed = offpool.Work(lambda report: (_ for _ in ()).throw(InvalidRequest("bad input")))
    assert failed.wait(5)
    with pytest.raises(InvalidRequest, match="bad input"):
        failed.result()


def test_run_off_pool_leaves_the_event_loop_free():
    gate = threading.Event()

    async def main():
        ticks = 0
        task = asyncio.ensure_future(offpool.run_off_pool(lambda: gate.wait(5) and "done"))
        while ticks < 10:  # the loop keeps running other coroutines while the work waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert not task.done()
        gate.set()
        return await task

    assert asyncio.run(main()) == "done"


@pytest.fixture
def held_device(default_config, tmp_path):
    """An arena whose device turn another client holds, and whose loads fail at once (nothing real runs)."""

    def failing_loader(variant, base):
        raise VariantUnavailable("not available: the test loads nothing")

    arena = Arena(default_config, manager=ModelManager(default_config, failing_loader))
    ticket = arena.turns.join(Client("someone-else"))
    assert arena.turns.holds(ticket)
    released = []

    def release():
        if not released:
            arena.turns.leave(ticket)
            released.append(True)

    yield arena, BlindTest(arena, VoteStore(tmp_path / "votes.sqlite3")), release
    release()


def _next_timed(iterator):
    started = time.perf_counter()
    value = next(iterator)
    return value, time.perf_counter() - started


def test_the_page_battle_returns_its_thread_while_it_waits(held_device):
    arena, blind, release = held_device
    with gr.Blocks():
        tab = BlindTab(arena, blind)
    steps = tab.on_start("Name a colour.", None, REQUEST)
    shown = [_next_timed(steps) for _ in range(3)]  # the turn is someone else's: each check comes back
    assert all(seconds < 1.5 for _, seconds in shown), shown
    assert any(tab.status in value and "1 ahead" in value[tab.status] for value, _ in shown if isinstance(value, dict)
               and tab.status in value)
    release()
    with pytest.raises(gr.Error, match="could not answer"):  # the loads fail: the error is the handler's own
        for _ in steps:
            pass


def test_the_battle_api_awaits_its_battle_on_the_event_loop(held_device):
    arena, blind, release = held_device
    battle, _ = endpoints(blind)
    assert inspect.iscoroutinefunction(battle)

    async def main():
        call = asyncio.ensure_future(battle("Name a colour.", "", REQUEST))
        for _ in range(20):  # a second of the turn held elsewhere: the loop is free the whole time
            await asyncio.sleep(0.05)
        assert not call.done()
        release()
        with pytest.raises(gr.Error, match="could not answer"):
            await asyncio.wait_for(call, 30)

    asyncio.run(main())


def test_the_evaluate_handler_returns_its_thread_and_a_page_gone_stops_it(held_device):
    arena, _, release = held_device
    with gr.Blocks():
        tab = EvaluateTab(arena, [("fp32", "smollm2/fp32"), ("bf16", "smollm2/bf16")])
    steps = tab.on_evaluate(["smollm2/fp32", "smollm2/bf16"], 1, 4, "sliding", REQUEST, progress=lambda *a, **k: None)
    shown = [_next_timed(steps) for _ in range(3)]
    assert all(seconds < 1.5 for _, seconds in shown), shown
    stop = tab.stops["visitor"]
    steps.close()  # the page went away (Gradio closes the generator)
    assert stop.is_set() and "visitor" not in tab.stops
    release()
    evaluations = [t for t in threading.enumerate() if t.name == "evaluate"]
    for thread in evaluations:
        thread.join(30)
        assert not thread.is_alive()  # it ended: no variant after the one it was on
