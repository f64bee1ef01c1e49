"""Streaming one variant's generation off the device thread: token events as the runtime hands them over, and
every clock, memory and energy figure of the run read on the device thread itself."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from demo.errors import EndpointError, RuntimeEndedOnStop
from demo.measuring.energy import Energy, track_energy
from demo.measuring.trackers import LatencyTracker, Memory
from demo.running.device import DeviceThread
from demo.settings import GenerationSettings

if TYPE_CHECKING:
    from demo.backends.base import LoadedVariant

POLL_S = 0.05  # how often a reader that has no new token looks at the stop event


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    at_s: float  # perf_counter when the runtime handed the token over (after any device sync)


_DONE = object()


class _Stop(threading.Event):
    """What the runtime checks: set by close(), or the comparison's own stop event (read at every check, so a
    Stop reaches the runtime at its next check, not when the reader next gets a token)."""

    def __init__(self, outer: threading.Event | None):
        super().__init__()
        self._outer = outer

    def is_set(self) -> bool:
        return super().is_set() or (self._outer is not None and self._outer.is_set())


class StreamingGeneration:
    """Runs one variant's generate() as a job on the device thread; iterate to receive TokenEvents.

    Every figure is taken on the device thread, inside the job: memory tracking around it, the latency
    tracker's start and end (each after a device sync) around generate(), and the runtime's own token times,
    so waiting for the device and the reader's lag count in none of them. The reader only reads `tracker`.

    Stop (the `stop` event given, or close()) reaches the runtime at its next check; a reader waiting for a
    token while stop is set also asks the runtime to end a blocking wait (LoadedVariant.cancel: a remote
    engine's connection is shut down). close() never waits for the device: a stream closed on Gradio's event
    loop must not hold it, and the device thread runs jobs in order, so the next one starts once this ends.
    """

    def __init__(self, device: DeviceThread, loaded: LoadedVariant, ids: list[int], settings: GenerationSettings,
                 stop: threading.Event | None = None):
        self.stop = _Stop(stop)
        self.tracker = LatencyTracker(loaded.sync)
        self.memory: Memory | None = None  # the run's memory figures, once the job has ended without error
        self.energy: Energy | None = None  # its energy, likewise (demo.measuring.energy)
        self.error: BaseException | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._loaded, self._ids, self._settings = loaded, ids, settings
        self._job = device.submit(self._run)

    @property
    def finished(self) -> bool:
        return self._job.done()

    def _run(self) -> None:
        try:
            with self._loaded.track_memory() as memory, track_energy(self._loaded.device) as energy:
                self._generate()
            self.memory, self.energy = memory.result, energy.result
        # a connection shut down by cancel() after a Stop, or a runtime ended because it could not stop in time:
        # stopped, not failed
        except (EndpointError, RuntimeEndedOnStop) as exc:
            if not self.stop.is_set():
                self.error = exc
        except BaseException as exc:  # handed to the reader: OOM and kernel errors belong to this variant
            self.error = exc
        finally:
            self._events.put(_DONE)

    def _generate(self) -> None:
        self.tracker.start()  # after a device sync
        try:
            if not self.stop.is_set():
                self._loaded.generate(self._ids, self._settings, self.stop, self._on_token)
            self.tracker.finish()  # after a device sync
        finally:
            if self.tracker.end_s is None:  # a failed run: its end is the failure, no sync after a device error
                self.tracker.end_s = time.perf_counter()

    def _on_token(self, token_id: int, at_s: float) -> None:
        self.tracker.token(at_s)
        self._events.put(TokenEvent(token_id, at_s))

    def __iter__(self) -> Iterator[TokenEvent]:
        while True:
            try:
                event = self._events.get(timeout=POLL_S)
            except queue.Empty:
                if self.stop.is_set():
                    self._loaded.cancel()  # again on each poll: a connection opened after the last one is cut too
                continue
            if event is _DONE:
                break
            yield event
        self._job.result()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Stop the run at the runtime's next check and end any wait it is blocked in; returns at once."""
        self.stop.set()
        if not self.finished:
            self._loaded.cancel()
