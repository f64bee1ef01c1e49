"""Faults injected into a runtime's own worker process, to test what no machine at hand reproduces (llama.cpp's
AMX fault, a kernel that aborts, a hang, memory running out).

Set ARENA_INJECT_FAULT to `<variant id>=<fault>@<when>`, several separated by commas, where fault is one of
segv (a real SIGSEGV: a read of address 0), abort (C's abort(): SIGABRT), hang (blocks forever without the GIL,
as native code does), oom (allocates until an address-space limit set just above the process's size is hit)
and when is `load` or `token<N>` (after the N-th new token of every generation). Only worker processes read it
(demo.running.runtime_worker); the serving process never faults itself.
"""

from __future__ import annotations

import ctypes
import os
import resource
import threading
from dataclasses import dataclass

ENV = "ARENA_INJECT_FAULT"
KINDS = ("segv", "abort", "hang", "oom")


@dataclass(frozen=True)
class Fault:
    kind: str
    at_token: int | None  # None: at load


def planned(variant_id: str, spec: str | None = None) -> Fault | None:
    """The fault ARENA_INJECT_FAULT plans for this variant, or None."""
    spec = os.environ.get(ENV, "") if spec is None else spec
    for item in filter(None, (part.strip() for part in spec.split(","))):
        target, _, what = item.rpartition("=")
        kind, _, when = what.partition("@")
        if kind not in KINDS or not (when == "load" or when.startswith("token")):
            raise ValueError(f"{ENV}: '{item}' is not <variant>=<{'|'.join(KINDS)}>@<load|tokenN>")
        if target == variant_id:
            return Fault(kind, None if when == "load" else int(when[len("token"):]))
    return None


def trigger(kind: str) -> None:
    """Do what a faulting runtime does to its process."""
    if kind == "segv":
        ctypes.string_at(0)
    elif kind == "abort":
        os.abort()
    elif kind == "hang":
        threading.Event().wait()
    elif kind == "oom":
        _exhaust_memory()


def _exhaust_memory() -> None:
    """Cap the address space at 64 MiB above what the process maps now, then allocate until refused."""
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = mapped + 64 * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    held = []
    while True:
        held.append(bytearray(8 * 2**20))
