"""A variant whose runtime runs in a worker process of its own (demo.running.runtime_worker), behind the same
LoadedVariant interface as one in this process: vLLM v1's engine-core client, in small.

Native code can fault, abort, hang or run out of memory on some CPU or GPU (llama.cpp's AMX backend segfaults on
some Intel Xeons). In a worker of its own that ends the worker, never the server: the call that was waiting
raises RuntimeCrashed, which the variant's column, the CLI, Evaluate and the blind test report as that variant's
failure; the cache drops the dead variant (alive() is False) and the next request loads it afresh, unless it
crashed `limits.max_runtime_crashes` times in a row (then it is refused until the app restarts).

What crosses the process boundary is plain data: prompt ids and settings in; token ids with the runtime's own
perf_counter timestamps (CLOCK_MONOTONIC, one clock for every process on the machine), logits and the run's facts
out. A run's memory is tracked in the worker, where its allocations are (its RSS, or its own CUDA peak), and comes
back with the run. The worker is started from one long-lived thread per process, so that the kernel's
parent-death signal (tied to the starting thread) fires only when this process ends.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import statistics
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from demo import backends
from demo.backends import size_estimate
from demo.backends.base import LoadedVariant, OnToken
from demo.config import PROCESS_DEFAULTS, BaseModel, Limits, Variant
from demo.errors import RuntimeCrashed, RuntimeEndedOnStop, VariantUnavailable
from demo.measuring.trackers import Memory
from demo.running.runtime_worker import receive, send
from demo.settings import GenerationSettings

log = logging.getLogger(__name__)
POLL_S = 0.05  # how often a wait for the worker looks at Stop, the worker's life and the deadline
STOP_GRACE_S = 10.0  # after a Stop, how long the runtime may take to reach its next check before it is ended
CLOSE_GRACE_S = 5.0  # how long free() waits for the worker to leave before ending it
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds demo/


class CrashLedger:
    """Crashes in a row per variant: a success clears the count; at `limit` the variant is refused."""

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, str]] = {}  # variant id -> (crashes in a row, the last one's reason)

    def crashed(self, variant_id: str, reason: str) -> None:
        with self._lock:
            count = self._counts.get(variant_id, (0, ""))[0] + 1
            self._counts[variant_id] = (count, reason)

    def succeeded(self, variant_id: str) -> None:
        with self._lock:
            self._counts.pop(variant_id, None)

    def check(self, variant_id: str) -> None:
        with self._lock:
            count, reason = self._counts.get(variant_id, (0, ""))
        if count >= self.limit:
            raise VariantUnavailable(f"refused: its runtime crashed {count} times in a row (last: {reason}); the "
                                     "other variants are unaffected; restart the app once the runtime is fixed")


class ProcessLoader:
    """The model manager's loader and size estimator: a variant with its own process gets a worker, which also
    estimates its size before the load (and is kept for it); any other variant loads and is estimated here."""

    def __init__(self, limits: Limits, in_process: Callable[[Variant, BaseModel], LoadedVariant] = backends.load,
                 defaults: dict[str, str] = PROCESS_DEFAULTS):
        self.stall_s, self.load_s = limits.runtime_stall_s, limits.runtime_load_s
        self.crashes = CrashLedger(limits.max_runtime_crashes)
        self._in_process, self._defaults = in_process, defaults
        self._spare: dict[str, _WorkerHandle] = {}  # variant id -> the worker that estimated it, for its load
        self._spare_lock = threading.Lock()
        # The serving process unpickles each worker's tokenizer: transformers is imported now, before anyone is
        # served, not on the first load (its first import scans every model module, seconds under the GIL).
        import transformers.models.auto  # noqa: F401

    def __call__(self, variant: Variant, base: BaseModel) -> LoadedVariant:
        if not variant.own_process(self._defaults):
            return self._in_process(variant, base)
        self.crashes.check(variant.id)
        return ProcessVariant.start(variant, base, self.stall_s, self.load_s, self.crashes, self._take_spare(variant.id))

    def estimate(self, variant: Variant, base: BaseModel) -> size_estimate.SizeEstimate | None:
        """The variant's weights size before it loads; for one with its own process, computed in the worker that
        will load it (counting the base's parameters may materialise a bundled checkpoint: seconds of work)."""
        if not variant.own_process(self._defaults):
            return size_estimate.estimate(variant, base)
        worker = self._take_spare(variant.id)
        worker = worker if worker is not None and worker.running() else _WorkerHandle.start(variant.runtime)
        try:
            found = worker.ask("estimate", (variant, base), self.load_s)
        except Exception as exc:  # a worker that died here: no estimate, and the load starts a fresh one
            log.info("no size estimate for %s: %s", variant.id, exc)
            worker.end()
            return None
        with self._spare_lock:
            self._spare[variant.id] = worker
        return found

    def discard(self, variant_id: str) -> None:
        """End the worker kept from an estimate whose load will not happen (the variant was refused)."""
        worker = self._take_spare(variant_id)
        if worker is not None:
            worker.end()

    def _take_spare(self, variant_id: str) -> "_WorkerHandle | None":
        with self._spare_lock:
            return self._spare.pop(variant_id, None)


class ProcessVariant(LoadedVariant):
    """A LoadedVariant whose runtime is in a worker process; every call is a request/answer exchange with it."""

    def __init__(self, variant: Variant, worker: "_WorkerHandle", facts: dict[str, Any], stall_s: float,
                 crashes: CrashLedger):
        super().__init__(variant, unpickle_tokenizer(facts["tokenizer"]), facts["device"], facts["weights_bytes"],
                         facts["stop_token_ids"], facts["context_tokens"])
        self.runtime, self.random_weights = facts["runtime"], facts["random_weights"]
        self.full_distributions = facts["full_distributions"]
        self._details, self._memory_kind = facts["details"], facts["memory_kind"]
        self._worker, self._stall_s, self._crashes = worker, stall_s, crashes
        self._run_facts: dict[str, Any] = {}
        self._tracking: _Tracked | None = None  # the track_memory() block a generate() runs in, if any

    @classmethod
    def start(cls, variant: Variant, base: BaseModel, stall_s: float, load_s: float, crashes: CrashLedger,
              worker: "_WorkerHandle | None" = None) -> "ProcessVariant":
        """Load the variant in `worker` (one already started for its size estimate) or in a new one."""
        if worker is None or not worker.running():
            worker = _WorkerHandle.start(variant.runtime)
        try:
            facts = worker.ask("load", (variant, base, torch.get_num_threads()), load_s)
        except RuntimeCrashed as exc:
            crashes.crashed(variant.id, str(exc))
            raise
        except BaseException:
            worker.end()
            raise
        return cls(variant, worker, facts, stall_s, crashes)

    def generate(self, prompt_ids: list[int], settings: GenerationSettings, stop: threading.Event,
                 on_token: OnToken) -> None:
        lags_ms: list[float] = []

        def delivered(token_id: int, at_s: float) -> None:
            lags_ms.append((time.perf_counter() - at_s) * 1e3)
            on_token(token_id, at_s)

        answer = self._ask("generate", (prompt_ids, settings), stop=stop, on_token=delivered)
        self._crashes.succeeded(self.variant.id)  # a run that ended well clears the crashes in a row
        # the runtime's own timestamps time every figure; how late its tokens reached this process is said beside
        self._run_facts = {**answer["facts"], "token_delivery_ms": _delivery(lags_ms)}
        if self._tracking is not None:
            self._tracking.result = answer["memory"]

    def run_facts(self) -> dict[str, Any]:
        return self._run_facts

    def logits(self, ids: list[int], prompt_tokens: int | None = None, first_row: int = 0) -> torch.Tensor:
        return self._ask("logits", (ids, prompt_tokens, first_row))

    def run_here(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._ask("run_here", (fn, args))

    def bare_token_times(self, prompt_ids: list[int], settings: GenerationSettings) -> list[float]:
        return self._ask("bare_token_times", (prompt_ids, settings))

    def generate_batch(self, prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
        return self._ask("generate_batch", (prompts, new_tokens))

    def _ask(self, kind: str, payload: tuple, stop: threading.Event | None = None,
             on_token: OnToken | None = None) -> Any:
        try:
            return self._worker.ask(kind, payload, self._stall_s, stop, on_token)
        except RuntimeCrashed as exc:
            self._crashes.crashed(self.variant.id, str(exc))
            raise

    def alive(self) -> bool:
        return self._worker.running()

    def free(self) -> None:
        self._worker.end()

    def details(self) -> dict[str, Any]:
        return {**self._details, "process": "own"}

    def memory_kind(self) -> str | None:
        return self._memory_kind

    @contextmanager
    def track_memory(self) -> Iterator["_Tracked"]:
        """The figures the worker took around the generate() run in this block: its own RSS or CUDA peak, the
        memory this variant's runtime holds, with nothing of the server in it."""
        self._tracking = tracked = _Tracked()
        try:
            yield tracked
        finally:
            self._tracking = None


class _Tracked:
    """What track_memory() yields: `result` is the worker's Memory of the run (None if the run failed)."""

    result: Memory | None = None


class _WorkerHandle:
    """The worker process and this end of its socket: one request at a time (the device thread's), each with an
    id its answers repeat, so an answer left unread by a process that forked from this one and died is skipped."""

    def __init__(self, process: subprocess.Popen, conn: Connection, runtime: str):
        self.process, self.conn, self.runtime = process, conn, runtime
        self.pid, self._owner = process.pid, os.getpid()
        self._send_lock = threading.Lock()
        self.dead: str | None = None  # why it ended, once it has
        # a variant dropped without free() (an arena nobody holds any more) takes its worker with it
        weakref.finalize(self, _reap, process, self._owner)

    @classmethod
    def start(cls, runtime: str) -> "_WorkerHandle":
        ours, theirs = socket.socketpair()
        try:
            process = launcher().submit(_spawn, theirs.fileno()).result()
        finally:
            theirs.close()
        return cls(process, Connection(ours.detach()), runtime)

    def ask(self, kind: str, payload: tuple, stall_s: float, stop: threading.Event | None = None,
            on_token: OnToken | None = None) -> Any:
        if self.dead is not None:
            raise RuntimeCrashed(self.dead)
        request_id = uuid.uuid4().hex
        self._send((request_id, kind, payload))
        deadline = time.monotonic() + stall_s
        stop_sent_at: float | None = None
        while True:
            if stop is not None and stop.is_set() and stop_sent_at is None:
                self._send((request_id, "stop", ()))
                stop_sent_at = time.monotonic()
            message = self._next(deadline, stop_sent_at, stall_s)
            if message is None:
                continue
            answer_id, what, body = message
            if answer_id != request_id:
                continue
            if what == "tokens":
                deadline = time.monotonic() + stall_s
                for token_id, at_s in body:
                    on_token(token_id, at_s)
            elif what == "result":
                return body
            elif what == "error":
                raise body
            else:  # "out-of-memory": the worker leaves after saying so
                raise self._ended(f"out of memory in {self.runtime}; its process was ended, the other variants "
                                  "are unaffected")

    def _next(self, deadline: float, stop_sent_at: float | None, stall_s: float):
        """The next message, or None after POLL_S of silence; RuntimeCrashed once the worker died or hung."""
        try:
            if self.conn.poll(POLL_S):
                return receive(self.conn)
        except (EOFError, OSError):
            raise self._ended(None) from None
        if not self.running():
            raise self._ended(None)
        now = time.monotonic()
        if stop_sent_at is not None and now - stop_sent_at > STOP_GRACE_S:
            self._ended(f"ended on Stop: {self.runtime} did not reach a check within {STOP_GRACE_S:.0f} s")
            raise RuntimeEndedOnStop(f"stopped: {self.runtime} could not stop within {STOP_GRACE_S:.0f} s (a long "
                                     "prompt being read), so its process was ended; it loads afresh next time")
        if now > deadline:
            raise self._ended(f"hung: {self.runtime} said nothing for {stall_s:.0f} s; its process was ended, the "
                              "other variants are unaffected")
        return None

    def _ended(self, reason: str | None) -> RuntimeCrashed:
        """End the worker if it still runs, and the error that says why it is gone."""
        code = self._stop_process()
        if reason is None:
            how = (f"signal {-code} ({_signal_name(-code)})" if code is not None and code < 0
                   else f"exit code {code}" if code is not None else "its process vanished")
            reason = f"crashed: {how} in {self.runtime}; the other variants are unaffected"
        log.warning("%s runtime (pid %d): %s", self.runtime, self.pid, reason)
        self.dead = reason
        return RuntimeCrashed(reason)

    def _send(self, message: tuple) -> None:
        try:
            with self._send_lock:
                send(self.conn, message)
        except OSError:
            raise self._ended(None) from None

    def running(self) -> bool:
        if self.dead is not None:
            return False
        if os.getpid() == self._owner:
            return self.process.poll() is None
        try:  # a process forked from the owner (a ZeroGPU worker) cannot wait for it: ask /proc
            with open(f"/proc/{self.pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except OSError:
            return False

    def end(self) -> None:
        """Ask the worker to leave, end it if it does not, and close this end; safe to call twice."""
        if self.dead is None and self.running():
            try:
                with self._send_lock:
                    send(self.conn, (uuid.uuid4().hex, "close", ()))
            except OSError:
                pass
        self._stop_process(CLOSE_GRACE_S)
        self.dead = self.dead or "ended"
        self.conn.close()

    def _stop_process(self, grace_s: float = 2.0) -> int | None:
        """Wait up to grace_s for the worker to exit, kill it if need be; its exit code as Popen gives it (None:
        unknown). A process forked from the owner (a ZeroGPU worker) cannot wait for it: it reads the status the
        kernel keeps for the owner to collect."""
        if os.getpid() != self._owner:
            if self.running():
                os.kill(self.pid, signal.SIGKILL)
            return _unreaped_exit_code(self.pid)
        try:
            return self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def unpickle_tokenizer(data: bytes) -> Any:
    """The worker's tokenizer. One whose class comes from a model repository (trust_remote_code) lives in
    transformers' dynamic-modules folder, which the worker put on its import path: put it on this one's too."""
    try:
        return pickle.loads(data)
    except ModuleNotFoundError:
        from transformers.dynamic_module_utils import init_hf_modules

        init_hf_modules()
        return pickle.loads(data)


def _delivery(lags_ms: list[float]) -> dict[str, float] | None:
    """p50 and max of how long tokens took from the runtime's timestamp to this process, in ms."""
    if not lags_ms:
        return None
    return {"p50": round(statistics.median(lags_ms), 3), "max": round(max(lags_ms), 3)}


def _unreaped_exit_code(pid: int) -> int | None:
    """The exit code of a process that ended and was not yet collected by its parent (field 52 of /proc/PID/stat,
    the status as waitpid reports it), as Popen gives it: -signal or the code; None if it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] != "Z" or len(fields) < 50:
        return None
    status = int(fields[49])
    return -(status & 0x7F) if status & 0x7F else (status >> 8) & 0xFF


def _reap(process: subprocess.Popen, owner: int) -> None:
    if os.getpid() == owner and process.poll() is None:
        process.kill()
        process.wait()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


def _spawn(fd: int) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
    # the serving process's own working directory: relative paths in the environment mean the same there
    return subprocess.Popen([sys.executable, "-m", "demo.running.runtime_worker", str(fd), str(os.getpid())],
                            pass_fds=(fd,), stdin=subprocess.DEVNULL, env=env)


_launchers: dict[int, ThreadPoolExecutor] = {}
_launchers_lock = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child has none of its parent's threads (and may have inherited the lock held)."""
    global _launchers_lock
    _launchers_lock = threading.Lock()
    _launchers.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def launcher() -> ThreadPoolExecutor:
    """This process's one thread that starts workers (it lives as long as the process: see die_with_parent)."""
    with _launchers_lock:
        pid = os.getpid()
        if pid not in _launchers:
            _launchers[pid] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runtime-launcher")
        return _launchers[pid]
