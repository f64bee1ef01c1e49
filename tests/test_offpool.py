"""Work that waits for the device holds none of Gradio's shared handler threads: an evaluation and a battle run on
threads of their own (in the caller's context), and the page's handlers and the /battle API function are async and
await them on the event loop; a client gone stops its work."""

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

    def job(work):
        work.report("half way")
        gate.wait(5)
        return 42

    work = offpool.Work(job, name="test-work")
    time.sleep(0.05)
    assert not work.done() and work.news() == (True, "half way") and work.news() == (False, "half way")
    gate.set()
    assert work.result() == 42
    failed = offpool.Work(lambda work: (_ for _ in ()).throw(InvalidRequest("bad input")))
    with pytest.raises(InvalidRequest, match="bad input"):
        failed.result()


def test_work_runs_in_the_callers_context():
    """Gradio's request context goes with the work (a ZeroGPU Space charges a run to the visitor through it)."""
    import contextvars

    visitor = contextvars.ContextVar("visitor", default=None)
    visitor.set("someone")
    assert offpool.Work(lambda work: visitor.get()).result() == "someone"


def test_awaiting_work_leaves_the_event_loop_free_and_a_cancelled_wait_sets_stop():
    gate = threading.Event()
    stops = []

    def job(work):
        stops.append(work.stop)
        return gate.wait(5) and "done"

    async def main():
        task = asyncio.ensure_future(offpool.Work(job).outcome())
        for _ in range(10):  # the loop keeps running other coroutines while the work waits
            await asyncio.sleep(0.01)
        assert not task.done()
        gate.set()
        assert await task == "done"
        gate.clear()
        task = asyncio.ensure_future(offpool.Work(job).outcome())
        await asyncio.sleep(0.05)
        task.cancel()  # its client has gone
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stops[-1].is_set()
        gate.set()

    asyncio.run(main())


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


async def _collect(agen, into: list, stamps: list):
    async for value in agen:
        into.append(value)
        stamps.append(time.perf_counter())


def test_the_page_battle_awaits_its_battle_and_says_its_place_in_line(held_device):
    arena, blind, release = held_device
    with gr.Blocks():
        tab = BlindTab(arena, blind)
    assert inspect.isasyncgenfunction(tab.on_start)

    async def main():
        shown, stamps = [], []
        task = asyncio.ensure_future(_collect(tab.on_start("Name a colour.", None, REQUEST), shown, stamps))
        started = time.perf_counter()
        while len(shown) < 4 and time.perf_counter() - started < 5:
            await asyncio.sleep(0.05)  # the loop is free while the battle waits for someone else's turn
        said = [(value, at) for value, at in zip(shown, stamps) if tab.status in value]
        assert said and "1 ahead" in said[0][0][tab.status] and said[0][1] - started < 4
        assert gr.skip() in shown and max(b - a for a, b in zip(stamps, stamps[1:])) < 1.0  # a value now and then
        release()
        with pytest.raises(gr.Error, match="could not answer"):  # the loads fail: the error is the handler's own
            await asyncio.wait_for(task, 30)

    asyncio.run(main())


def test_a_page_gone_takes_its_battle_out_of_the_line(held_device):
    """Gradio notices a gone client between two values its handler yields, and closes the handler."""
    arena, blind, release = held_device
    with gr.Blocks():
        tab = BlindTab(arena, blind)

    async def main():
        steps = tab.on_start("Name a colour.", None, REQUEST)
        await asyncio.wait_for(steps.__anext__(), 2)
        assert arena.turns.waiting() == 1
        await steps.aclose()
        deadline = time.perf_counter() + 3
        while arena.turns.waiting() and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        assert arena.turns.waiting() == 0  # out of the line while the turn is still someone else's

    asyncio.run(main())
    assert blind.store.counts()[0] == 0  # no battle issued


def test_the_battle_api_streams_its_place_in_line_then_the_battle(held_device):
    arena, blind, release = held_device
    battle, _ = endpoints(blind)
    assert inspect.isasyncgenfunction(battle)

    async def main():
        stream = battle("Name a colour.", "", REQUEST)
        assert await asyncio.wait_for(stream.__anext__(), 5) == {"ahead": 1}
        started = time.perf_counter()
        assert await asyncio.wait_for(stream.__anext__(), 2) == {"ahead": 1}  # again: a gone client is noticed
        assert time.perf_counter() - started < 1.0
        release()
        with pytest.raises(gr.Error, match="could not answer"):
            async for _ in stream:
                pass

    asyncio.run(main())


def test_the_evaluate_handler_awaits_its_evaluation_and_a_page_gone_stops_it(held_device):
    arena, _, release = held_device
    with gr.Blocks():
        tab = EvaluateTab(arena, [("fp32", "smollm2/fp32"), ("bf16", "smollm2/bf16")])
    assert inspect.isasyncgenfunction(tab.on_evaluate)

    async def main():
        steps = tab.on_evaluate(["smollm2/fp32", "smollm2/bf16"], 1, 4, "sliding", REQUEST)
        started = time.perf_counter()
        first = await asyncio.wait_for(steps.__anext__(), 2)  # a value now and then while it waits: its status
        assert "Evaluating" in first[tab.status] and time.perf_counter() - started < 1.0
        [stop] = tab.stops.events("visitor")
        await steps.aclose()  # the page went away
        assert stop.is_set() and tab.stops.running_count("visitor") == 0

    asyncio.run(main())
    release()
    for thread in [t for t in threading.enumerate() if t.name == "evaluate"]:
        thread.join(30)
        assert not thread.is_alive()  # it ended: no variant after the one it was on


def test_a_comparison_waiting_its_turn_holds_no_thread_and_a_client_gone_leaves_the_line(held_device):
    """The /compare API function (and the Compare tab's handler, built the same way) is an async generator: it
    reads the comparison's snapshots on the event loop while the comparison runs on a thread of its own."""
    from demo.ui.compare import CompareTab, compare_endpoint

    arena, _, release = held_device
    compare = compare_endpoint(arena)
    assert inspect.isasyncgenfunction(compare) and inspect.isasyncgenfunction(CompareTab.on_run)
    assert inspect.isasyncgenfunction(CompareTab.on_quantize)

    async def main():
        stream = compare("Name a colour.", ["smollm2/fp32"], 4, request=REQUEST)
        first = await asyncio.wait_for(stream.__anext__(), 5)
        assert first[0]["variant"] == "smollm2/fp32"
        deadline = time.perf_counter() + 3
        while arena.turns.waiting() == 0 and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)  # the loop is free while the comparison waits for someone else's turn
        assert arena.turns.waiting() == 1
        await stream.aclose()  # Gradio closes a gone client's stream
        deadline = time.perf_counter() + 3
        while arena.turns.waiting() and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        assert arena.turns.waiting() == 0  # out of the line while the turn is still someone else's

    asyncio.run(main())
