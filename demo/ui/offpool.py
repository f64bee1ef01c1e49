"""Long model work run on a thread of its own, awaited on the event loop, so the handler that asked for it holds
none of Gradio's shared threads while it waits for the device.

Gradio runs every sync handler (and every plain route) on one pool of 40 threads. A sync handler that waited
for an evaluation (minutes) or a battle (two generations, behind everyone else's turns) held one of them the
whole time, and so did one that polled (it sleeps in its thread between polls). The handlers that start such
work are async: the work runs on its own thread, and the handler awaits it on the event loop, reading its
news as it comes. How many such threads exist at once is bounded by the arena's admission: work that finds no
place is refused at once and its thread ends.

The thread runs in a copy of the handler's context variables (Gradio's request context, through which a
ZeroGPU Space finds the visitor whose GPU quota a run is charged to). Gradio notices a client that has gone
only between the values a handler yields, and then closes the handler: so handlers yield now and then even
with nothing new to show (Pace), and a closed or cancelled handler sets the work's `stop` event; work that
reads it ends early.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from concurrent.futures import Future
from typing import Any, AsyncIterator, Callable, Generic, TypeVar

T = TypeVar("T")
POLL_S = 0.5  # how often a handler that shows progress reads the work's news


class Work(Generic[T]):
    """fn(work) started at once on a daemon thread named `name`: fn calls work.report(news) to say how it is
    going and reads work.stop (set when whoever awaited it has gone)."""

    def __init__(self, fn: Callable[[Work], T], name: str = "work"):
        self.stop = threading.Event()
        self._future: Future = Future()
        self._lock = threading.Lock()
        self._latest: Any = None
        self._changed = False
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(self._run, fn), daemon=True, name=name).start()

    def _run(self, fn: Callable[[Work], T]) -> None:
        if not self._future.set_running_or_notify_cancel():
            return
        try:
            self._future.set_result(fn(self))
        except BaseException as exc:  # handed to whoever waits: the handler raises it as its own
            self._future.set_exception(exc)

    def report(self, news: Any) -> None:
        with self._lock:
            self._latest, self._changed = news, True

    def news(self) -> tuple[bool, Any]:
        """(whether anything was reported since the last call, the latest report)."""
        with self._lock:
            changed, self._changed = self._changed, False
            return changed, self._latest

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> T:
        """The work's result, or its exception raised here (waits for it: not for the event loop)."""
        return self._future.result()

    async def outcome(self) -> T:
        """result(), awaited on the event loop; a cancelled await sets `stop` (the work runs on to its end)."""
        try:
            waiting = asyncio.wrap_future(self._future)
            waiting.add_done_callback(_retrieved)
            return await asyncio.shield(waiting)
        except asyncio.CancelledError:
            self.stop.set()
            raise

    async def updates(self, every_s: float = POLL_S) -> AsyncIterator[tuple[bool, Any]]:
        """(whether the news changed, the latest news) every `every_s` until the work ends, and once more at its
        end; then outcome() has its result at once. Gradio notices a client that has gone only between the values
        a handler yields (it never cancels a running handler), so a handler yields something now and then even
        when nothing changed (gr.skip()); closing the handler sets `stop`."""
        waiting = asyncio.wrap_future(self._future)
        waiting.add_done_callback(_retrieved)  # its error is raised by outcome(), not logged as never retrieved
        try:
            while True:
                finished, _ = await asyncio.wait({waiting}, timeout=every_s)
                yield self.news()
                if finished:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            self.stop.set()
            raise


def _retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class Pace:
    """Whether a handler with nothing new to show should still yield (gr.skip()), so that Gradio can notice a
    client that has gone: at most once per `every_s`."""

    def __init__(self, every_s: float = POLL_S, clock: Callable[[], float] = time.monotonic):
        self.every_s, self._clock, self._last = every_s, clock, clock()

    def sent(self) -> None:
        self._last = self._clock()

    def due(self) -> bool:
        if self._clock() - self._last >= self.every_s:
            self._last = self._clock()
            return True
        return False
