"""One variant's runtime in a process of its own: `python -m demo.running.runtime_worker FD PARENT_PID`.

Started by demo.running.runtime_process with one end of a socket pair as descriptor FD. It loads the variant with
its runtime's backend (in this process), then serves requests one at a time: generate (tokens with the runtime's
own timestamps, sent in batches at most every SEND_INTERVAL_S; the run's memory tracked here, where the runtime's allocations are), logits, bare
token times, and a module-level function run with the loaded variant (LoadedVariant.run_here). Messages are tuples
(request id, kind, payload), sent with plain pickle (never multiprocessing's own pickler, which would hand torch
tensors over as shared-memory handles). A reader thread takes "stop" out of turn, so a Stop reaches the runtime at its next
check while it generates. The process ends when the parent closes its end, when the parent dies (demo.running
.lifeline), on "close", or after running out of memory (a runtime that did is not trusted with the next request).
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger("demo.running.runtime_worker")
SEND_INTERVAL_S = 0.05  # generated tokens are sent at most this often, the first at once


class _Inbox:
    """Requests in arrival order, each with a stop event of its own: "stop" sets its request's event at once, and
    any newer request sets every earlier one's. The asking side sends one request at a time and waits for its
    answer, so a newer request means the earlier asker is gone (a ZeroGPU worker that died mid-run, say): its run
    ends at its next check instead of holding the runtime for the newcomer."""

    def __init__(self, conn: Connection):
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self._stops: dict[str, threading.Event] = {}  # request id -> its stop event, while it may still run
        self._lock = threading.Lock()
        threading.Thread(target=self._read, args=(conn,), daemon=True, name="runtime-inbox").start()

    def stop_event(self, request_id: str) -> threading.Event:
        with self._lock:
            return self._stops.setdefault(request_id, threading.Event())

    def done(self, request_id: str) -> None:
        with self._lock:
            self._stops.pop(request_id, None)

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                message = receive(conn)
            except (EOFError, OSError):  # the parent closed its end or died: nothing will ask any more
                os._exit(0)
            if message[1] == "stop":
                self.stop_event(message[0]).set()
                continue
            with self._lock:
                for event in self._stops.values():
                    event.set()
            self.stop_event(message[0])
            self.requests.put(message)


class _Worker:
    def __init__(self, conn: Connection, inbox: _Inbox):
        self.conn, self.inbox = conn, inbox
        self.loaded = None
        self.fault = None

    def serve(self) -> None:
        while True:
            request_id, kind, payload = self.inbox.requests.get()
            if kind == "close":
                return
            try:
                send(self.conn, (request_id, "result", getattr(self, "_" + kind)(request_id, *payload)))
            except MemoryError:
                send(self.conn, (request_id, "out-of-memory", None))
                return
            except BaseException as exc:  # the runtime's own error: the parent raises it in the variant's column
                log.debug("request %s failed", kind, exc_info=True)
                send(self.conn, (request_id, "error", _portable(exc)))
            finally:
                self.inbox.done(request_id)

    def _load(self, request_id: str, variant, base, threads: int) -> dict[str, Any]:
        import torch

        from demo import backends
        from demo.running import faults

        torch.set_num_threads(threads)  # as many as the serving process would have used
        self.fault = faults.planned(variant.id)
        if self.fault is not None and self.fault.at_token is None:
            faults.trigger(self.fault.kind)
        loaded = self.loaded = backends.load(variant, base)
        return {"runtime": loaded.runtime, "device": loaded.device, "weights_bytes": loaded.weights_bytes,
                "stop_token_ids": loaded.stop_token_ids, "context_tokens": loaded.context_tokens,
                "random_weights": loaded.random_weights, "full_distributions": loaded.full_distributions,
                "details": loaded.details(), "memory_kind": loaded.memory_kind(),
                "tokenizer": pickle.dumps(loaded.tokenizer)}  # unpickled apart (runtime_process.unpickle_tokenizer)

    def _generate(self, request_id: str, ids: list[int], settings) -> dict[str, Any]:
        count, pending, sent_at = 0, [], None
        fault_at = self.fault.at_token if self.fault is not None else None

        def on_token(token_id: int, at_s: float) -> None:
            # Tokens go out in batches, the first at once and then at most every SEND_INTERVAL_S: each carries the
            # runtime's own timestamp, so batching changes no figure, and the server, which shows a column at most
            # every 0.1 s, wakes 20 times a second instead of once a token (on 2 cores each wake-up took its
            # share of the decode away).
            nonlocal count, sent_at
            pending.append((token_id, at_s))
            if sent_at is None or at_s - sent_at >= SEND_INTERVAL_S:
                send(self.conn, (request_id, "tokens", list(pending)))
                pending.clear()
                sent_at = at_s
            count += 1
            if count == fault_at:
                from demo.running import faults

                faults.trigger(self.fault.kind)

        try:
            with self.loaded.track_memory() as memory:
                self.loaded.generate(ids, settings, self.inbox.stop_event(request_id), on_token)
        finally:
            if pending:  # the run's last tokens, and those before an error
                send(self.conn, (request_id, "tokens", list(pending)))
        return {"facts": self.loaded.run_facts(), "memory": memory.result}

    def _estimate(self, request_id: str, variant, base):
        """The variant's weights size before its load (demo.backends.size_estimate): reading the base's config may
        mean materialising a bundled checkpoint first, seconds of work that must not hold the serving process."""
        from demo.backends import size_estimate

        return size_estimate.estimate(variant, base)

    def _logits(self, request_id: str, ids: list[int], prompt_tokens: int | None = None, first_row: int = 0):
        return self.loaded.logits(ids, prompt_tokens, first_row)

    def _run_here(self, request_id: str, fn, args: tuple):
        return fn(self.loaded, *args)

    def _bare_token_times(self, request_id: str, ids: list[int], settings) -> list[float]:
        return self.loaded.bare_token_times(ids, settings)

    def _generate_batch(self, request_id: str, prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
        return self.loaded.generate_batch(prompts, new_tokens)


def send(conn: Connection, message: tuple) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(conn: Connection) -> tuple:
    return pickle.loads(conn.recv_bytes())


def _portable(exc: BaseException) -> BaseException:
    """The error itself where it survives pickling (every ArenaError does), else a RuntimeError with its words."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc.with_traceback(None)
    except Exception:
        return RuntimeError(f"{exc.__class__.__name__}: {exc}")


def main(argv: list[str]) -> None:
    from demo.running import lifeline

    fd, parent_pid = int(argv[1]), int(argv[2])
    lifeline.die_with_parent(parent_pid, kernel_signal=True)
    logging.basicConfig(level=os.environ.get("ARENA_LOG_LEVEL", "WARNING"))
    conn = Connection(fd)
    _Worker(conn, _Inbox(conn)).serve()
    conn.close()
    os._exit(0)  # no interpreter teardown: a runtime's native destructors are not run at exit


if __name__ == "__main__":
    main(sys.argv)
