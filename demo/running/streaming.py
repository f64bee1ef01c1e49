"""Streaming one variant's generation off the device thread: token events as the runtime hands them over."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from demo.running.device import DeviceThread
from demo.settings import GenerationSettings

if TYPE_CHECKING:
    from demo.backends.base import LoadedVariant


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    at_s: float  # perf_counter when the runtime handed the token over (after any device sync)


_DONE = object()


class StreamingGeneration:
    """Runs one variant's generate() as a job on the device thread; iterate to receive TokenEvents.

    started_s is read on the device thread just before generation starts, so time spent waiting for
    the device is not counted. Setting stop (or close()) ends the generation after the current token;
    close() waits for the job so the device is free afterwards.
    """

    def __init__(self, device: DeviceThread, loaded: LoadedVariant, ids: list[int], settings: GenerationSettings,
                 stop: threading.Event | None = None):
        self.stop = stop or threading.Event()
        self.started_s: float | None = None
        self.error: BaseException | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._loaded, self._ids, self._settings = loaded, ids, settings
        self._started = threading.Event()
        self._job = device.submit(self._run)
        self._started.wait()

    def _run(self) -> None:
        try:
            self.started_s = time.perf_counter()
            self._started.set()
            if not self.stop.is_set():
                self._loaded.generate(self._ids, self._settings, self.stop,
                                      lambda token_id, at_s: self._events.put(TokenEvent(token_id, at_s)))
        except BaseException as exc:  # handed to the reader: OOM and kernel errors belong to this variant
            self.error = exc
        finally:
            self._started.set()
            self._events.put(_DONE)

    def __iter__(self) -> Iterator[TokenEvent]:
        while (event := self._events.get()) is not _DONE:
            yield event
        self._job.result()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.stop.set()
        self._job.result()
