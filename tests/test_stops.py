"""Stop stops every running request of the session that presses it: a request that ends takes out its own
stop event only, never a newer one's (two evaluations from one session each stop)."""

import asyncio
import threading
from types import SimpleNamespace

import gradio as gr

from demo.ui.stops import Stops


def test_a_request_that_ends_leaves_the_others_of_its_session_stoppable():
    stops = Stops()
    with stops.running("s") as first:
        with stops.running("s") as second, stops.running("other") as theirs:
            pass  # "other" ends here
        # the second ended before the first: the first is still registered
        assert stops.stop("s") == 1 and first.is_set() and not second.is_set() and not theirs.is_set()
    assert stops.running_count("s") == 0 and stops.stop("s") == 0  # memory follows the running requests


def test_two_evaluations_from_one_session_each_stop(arena, monkeypatch):
    """The first evaluation of a session ends; Stop still reaches the second (the Evaluate tab forgot it)."""
    from demo.ui import evaluate as evaluate_tab

    started: list[threading.Event] = []

    def evaluation(arena, variant_ids, text, runs, max_new_tokens, progress=None, stop=None, protocol=None):
        started.append(stop)
        stop.wait(60)  # a long evaluation that honours Stop
        return []

    monkeypatch.setattr(evaluate_tab.evaluate, "evaluate", evaluation)
    with gr.Blocks():
        tab = evaluate_tab.EvaluateTab(arena, [("smollm2/fp32", "smollm2/fp32")])
    request = SimpleNamespace(session_hash="one-page", headers={}, client=None)

    async def updates(gen):
        return [update async for update in gen]

    async def scenario():
        first = asyncio.ensure_future(updates(tab.on_evaluate(["smollm2/fp32"], 1, 4, None, request)))
        second = asyncio.ensure_future(updates(tab.on_evaluate(["smollm2/fp32"], 1, 4, None, request)))
        while len(started) < 2:
            await asyncio.sleep(0.05)
        started[0].set()  # the first ends on its own
        await asyncio.wait_for(first, 30)
        tab.on_stop(request)  # Stop on the page: the second must stop
        done = await asyncio.wait_for(second, 30)
        return done

    done = asyncio.run(scenario())
    assert started[1].is_set()
    assert "Stopped" in str(done[-1])
