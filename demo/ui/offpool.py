"""Long model work run on a thread of its own, so the handler that asked for it holds none of Gradio's shared
handler threads while it waits for the device.

Gradio runs every sync handler (and every plain route) on one pool of 40 threads. A handler that waited inside
for an evaluation (minutes) or a battle (two generations, behind everyone else's turns) held one of them the
whole time. Here the work runs on its own thread; a page handler is a generator that checks on it every
POLL_S and yields what changed (returning its thread to Gradio between checks), and an API function awaits it
on the event loop (holding no thread at all). How many such threads exist at once is bounded by the arena's
admission: work that finds no place is refused at once and its thread ends.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")
POLL_S = 0.5  # how often a page handler checks on its work (and may say how it is going)


class Work(Generic[T]):
    """fn(report, *args) started at once on a daemon thread named `name`; fn calls report(news) to say how it is
    going, and the waiting handler reads it with news()."""

    def __init__(self, fn: Callable[..., T], *args: Any, name: str = "work"):
        self._future: Future = Future()
        self._lock = threading.Lock()
        self._latest: Any = None
        self._changed = False
        threading.Thread(target=self._run, args=(fn, args), daemon=True, name=name).start()

    def _run(self, fn: Callable[..., T], args: tuple) -> None:
        try:
            self._future.set_result(fn(self.report, *args))
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

    def wait(self, timeout_s: float = POLL_S) -> bool:
        """True once the work has ended (done or failed), else False after timeout_s."""
        try:
            self._future.exception(timeout=timeout_s)
        except TimeoutError:
            return False
        return True

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> T:
        """The work's result, or its exception raised here."""
        return self._future.result()

    async def outcome(self) -> T:
        """result(), awaited on the event loop."""
        return await asyncio.wrap_future(self._future)


async def run_off_pool(fn: Callable[..., T], *args: Any, name: str = "work") -> T:
    """fn(*args) on a thread of its own, awaited: for API functions (async, so Gradio gives them no thread)."""
    return await Work(lambda report: fn(*args), name=name).outcome()
