"""ZeroGPU's process model without a GPU (ARENA_ZEROGPU_EMULATE=1): emulated_gpu(task) is what `spaces.GPU` makes
of a generator function on a ZeroGPU Space (spaces.zero.wrappers.generator_function_wrapper, spaces 0.51).

- A call forks a worker from the serving process (by then every thread the server starts is running, and none of
  them exists in the worker). `spaces` reuses the previous call's worker only when the device API hands back its
  GPU idle, and otherwise forks a fresh one, which starts cold (on a GPU it first moves every placed weight there).
  The emulation has no device API: workers="fresh" (the default, ARENA_ZEROGPU_WORKERS) forks a fresh worker for
  every call and ends the previous one; workers="reuse" keeps one worker for every call, the best case. One call
  at a time either way (one emulated GPU).
- Arguments go to the worker pickled; each yielded value comes back pickled, in order.
- A caller that closes the generator (Stop, a client gone) sets the worker's stop event; the worker checks it after
  each value the task yields and then closes the task, which ends its generation. The caller waits for the
  worker to end the call, so the next call never overlaps it.
- In the worker, a call of the decorated function runs the task inline, as `spaces` does once forked.
- An exception in the task reaches the caller as an error titled "ZeroGPU worker error" whose message is the
  exception's class name only, as `spaces` raises it (a gradio Error there) (only a gradio Error keeps its words): a task passes its own
  errors back as yielded data.
- A worker that dies ends the call with the same error, "GPU task aborted".
- A worker dies with the serving process (even one ended by SIGTERM or SIGKILL, where multiprocessing's own clean-up
  of daemon children never runs) and first drops the listening sockets it inherited, so a restarted app can bind its
  port and no client waits in a dead server's backlog (demo.running.lifeline).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pickle import PicklingError
from typing import Any, Callable, Iterator

from demo.running import lifeline

log = logging.getLogger(__name__)
_FORK = multiprocessing.get_context("fork")
forked = False  # True in a worker: a decorated call there runs inline
WORKERS_ENV = "ARENA_ZEROGPU_WORKERS"  # "fresh" (default) or "reuse"
WORKER_ERROR = "ZeroGPU worker error"  # the title `spaces` gives the errors of its worker


class WorkerError(Exception):
    """What `spaces` raises for its worker's failures (spaces.zero.gradio.error: a gradio Error titled "ZeroGPU worker
    error"), with the same title and message attributes; not gradio's class itself, since only the page imports
    gradio (demo.running.zerogpu reads any error by its title and message)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.title, self.message = WORKER_ERROR, message


@dataclass
class _Value:
    value: Any


@dataclass
class _Failed:
    error_cls: str


class _End:
    pass


class _Worker:
    """One forked worker process and its three channels: arguments in, results out, a stop event."""

    def __init__(self, serve: Callable):
        self.args = _FORK.SimpleQueue()
        self.results = _FORK.SimpleQueue()
        self.stop = _FORK.Event()
        self.process = _FORK.Process(target=serve, args=(self.args, self.results, self.stop, os.getpid()), daemon=True)
        self.process.start()
        # As spaces' sentinel: a worker that dies hands the caller None, so no call waits forever.
        threading.Thread(target=self._closed_on_exit, daemon=True, name="zerogpu-sentinel").start()

    def _closed_on_exit(self) -> None:
        self.process.join()
        self.results.put(None)

    def close(self) -> None:
        self.process.terminate()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=10)


class EmulatedGpu:
    """The decorated generator: call it like the task; it yields what the task yields in the worker."""

    def __init__(self, task: Callable[..., Iterator], duration: Callable[..., float] | float | None = None,
                 workers: str | None = None):
        self.task, self.duration = task, duration
        self.workers = workers or os.environ.get(WORKERS_ENV) or "fresh"
        if self.workers not in ("fresh", "reuse"):
            raise ValueError(f"{WORKERS_ENV} must be fresh or reuse, not {self.workers!r}")
        self._worker: _Worker | None = None
        self._lock = threading.Lock()  # one emulated GPU: one call at a time
        self.calls = 0  # calls that reached a worker, for the tests and the bench
        self.workers_started = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Iterator:
        if forked:
            yield from self.task(*args, **kwargs)
            return
        # ZeroGPU asks for the duration before anything runs; the emulation has no quota to hold it against.
        if callable(self.duration):
            self.duration(*args, **kwargs)
        with self._lock:
            worker = self._worker
            if worker is not None and self.workers == "fresh":  # its GPU was not handed back idle: a fresh fork
                worker.close()
                worker = self._worker = None
            if worker is None or not worker.process.is_alive():
                worker = self._worker = _Worker(self._serve)
                self.workers_started += 1
            self.calls += 1
            worker.args.put((args, kwargs))  # pickled here: an unpicklable argument fails in the caller
            ended = False
            try:
                while True:
                    item = worker.results.get()
                    if item is None:
                        ended = True
                        self._worker = None
                        raise WorkerError("GPU task aborted")
                    if isinstance(item, _End):
                        ended = True
                        return
                    if isinstance(item, _Failed):  # spaces keeps a worker for reuse only after a call that ended
                        self._drain(worker)
                        ended = True
                        worker.close()
                        self._worker = None
                        raise WorkerError(item.error_cls)
                    try:
                        yield item.value
                    except GeneratorExit:
                        worker.stop.set()
                        raise
            finally:
                if not ended:
                    self._drain(worker)

    def _drain(self, worker: _Worker) -> None:
        """Wait for the worker to end the call (after a stop it closes the task at its next yield)."""
        while True:
            item = worker.results.get()
            if item is None:
                self._worker = None
                return
            if isinstance(item, _End):
                return

    def _serve(self, args_queue, results, stop, parent_pid: int) -> None:
        """The worker's loop: one call at a time, each run in a fresh thread as spaces runs it."""
        global forked
        forked = True
        lifeline.close_listening_sockets()
        # forked from whichever thread made the first call, which may end first: no kernel parent-death signal
        lifeline.die_with_parent(parent_pid, kernel_signal=False)
        while True:
            try:
                args, kwargs = args_queue.get()
            except (EOFError, OSError):
                return
            stop.clear()
            with ThreadPoolExecutor(1) as executor:
                executor.submit(self._iterate, args, kwargs, results, stop).result()
            results.put(_End())

    def _iterate(self, args, kwargs, results, stop) -> None:
        task = self.task(*args, **kwargs)
        while True:
            try:
                value = next(task)
            except StopIteration:
                return
            except Exception as exc:
                log.exception("the ZeroGPU task failed")
                results.put(_Failed(type(exc).__name__))
                return
            if stop.is_set():
                task.close()
                return
            try:
                results.put(_Value(value))
            except (PicklingError, TypeError, AttributeError) as exc:  # pickle says TypeError for a lock
                results.put(_Failed(type(exc).__name__))
                task.close()
                return

    def shutdown(self) -> None:
        """Stop the worker process (tests; the app's worker ends with it, as a daemon)."""
        with self._lock:
            if self._worker is not None:
                self._worker.close()
                self._worker = None


def emulated_gpu(task: Callable[..., Iterator], duration: Callable[..., float] | float | None = None,
                 workers: str | None = None) -> EmulatedGpu:
    return EmulatedGpu(task, duration, workers)
