"""The one thread that runs all model work in this process: loads, warm-ups, prompt encoding, generate.

Why one thread: torch's CPU kernels use OpenMP, and every thread that runs torch ops gets its own
OpenMP worker team whose idle workers busy-wait. With two teams on a 2-core machine, decode speed
halved (SmolLM2-135M bf16: 45 -> 23 tokens/s, for every thread, the first one included). Funnelling
all model work through one thread keeps one team, and makes "never two runs on the device at once"
a property of the design rather than of locking discipline.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class DeviceThread:
    """A single worker thread; submit() queues work on it, call() waits for the result."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device")

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future:
        return self._executor.submit(fn, *args, **kwargs)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        """End the thread once its queued work is done (a device thread used once, at start-up)."""
        self._executor.shutdown(wait=True)


_shared: DeviceThread | None = None
_shared_lock = threading.Lock()


def shared_device() -> DeviceThread:
    """The process-wide device thread (created on first use): one per process, like the hardware."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DeviceThread()
        return _shared


def _forget_after_fork() -> None:
    """A forked child has none of its parent's threads: its first shared_device() starts its own."""
    global _shared, _shared_lock
    _shared, _shared_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
