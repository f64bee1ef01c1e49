"""Memory bandwidth: the machine's, measured once per process by a copy benchmark (STREAM's Copy), and a variant's
achieved figure (gpt-fast's: the bytes its weights occupy times its decode rate), with its share of the machine's.

At batch 1 every decoded token reads every weight once and does little arithmetic per byte read, so decode is
bound by memory bandwidth; the share says how close a runtime gets to what the memory can deliver."""

from __future__ import annotations

import glob
import math
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

import psutil

GB = 1e9  # bandwidth in decimal gigabytes per second, as STREAM and GPU data sheets give it
MIB = 2**20
CPU_BUFFER_MIN_BYTES = 256 * MIB  # per array; STREAM asks for at least 4x the last-level caches, whichever is more
CPU_BUFFER_MAX_BYTES = 1024 * MIB
CUDA_BUFFER_BYTES = 1024 * MIB  # an H100's L2 is 50 MB: 1 GiB per array is read from HBM
BUDGET_S = 1.0  # timed copies stop once this much time has gone (at least MIN_REPEATS are taken)
MIN_REPEATS, MAX_REPEATS = 2, 10


@dataclass(frozen=True)
class Bandwidth:
    """One device's measured memory bandwidth, or why there is none (gb_s None, method says why)."""

    device: str  # "cpu" | "cuda"
    gb_s: float | None  # best of the timed copies: bytes read plus bytes written per second, in 1e9 bytes
    median_gb_s: float | None
    method: str  # how it was measured, in words
    buffer_mib: float | None  # the size of each of the two arrays
    repeats: int  # timed copies (one untimed copy before them faults the pages in)

    def as_dict(self) -> dict:
        return asdict(self)


def copy_gb_s(buffer_bytes: int, seconds: float) -> float:
    """STREAM's Copy count: each copied byte is read once and written once (2 x buffer bytes moved); the read a
    write-allocate cache adds for the destination is not counted, as STREAM does not count it."""
    return 2 * buffer_bytes / seconds / GB


def _timed_copies(copy: Callable[[], float], budget_s: float) -> list[float]:
    """Seconds for each timed call of `copy` (which returns its own duration), until the budget is spent."""
    copy()  # untimed: page faults, first-touch allocation, kernel launch set-up
    seconds, started = [], time.perf_counter()
    while len(seconds) < MIN_REPEATS or (len(seconds) < MAX_REPEATS and time.perf_counter() - started < budget_s):
        seconds.append(copy())
    return seconds


def _figures(device: str, method: str, buffer_bytes: int, seconds: list[float]) -> Bandwidth:
    rates = [copy_gb_s(buffer_bytes, s) for s in seconds if s > 0]
    return Bandwidth(device, max(rates) if rates else None, statistics.median(rates) if rates else None, method,
                     buffer_bytes / MIB, len(seconds))


def last_level_cache_bytes(root: str = "/sys/devices/system/cpu") -> int:
    """The sum of this machine's distinct last-level caches (0 where sysfs does not say)."""
    caches: dict[tuple[int, str], int] = {}
    for index in glob.glob(os.path.join(root, "cpu[0-9]*", "cache", "index[0-9]*")):
        try:
            level = int(_read(os.path.join(index, "level")))
            shared = _read(os.path.join(index, "shared_cpu_list"))
            size = _read(os.path.join(index, "size"))
        except (OSError, ValueError):
            continue
        caches[(level, shared)] = _size_bytes(size)
    if not caches:
        return 0
    top = max(level for level, _ in caches)
    return sum(size for (level, _), size in caches.items() if level == top)


def cpu_buffer_bytes() -> int:
    """Per array: 4x the last-level caches, at least CPU_BUFFER_MIN_BYTES, at most CPU_BUFFER_MAX_BYTES and an
    eighth of the memory available now (two arrays, so a quarter in all)."""
    wanted = max(CPU_BUFFER_MIN_BYTES, 4 * last_level_cache_bytes())
    return int(max(16 * MIB, min(wanted, CPU_BUFFER_MAX_BYTES, psutil.virtual_memory().available // 8)))


def cpu_bandwidth(buffer_bytes: int | None = None, budget_s: float = BUDGET_S) -> Bandwidth:
    """torch's tensor copy (multi-threaded, the threads the variants decode with) of a buffer several times the
    last-level caches; the best of the timed copies, as STREAM reports."""
    import torch

    size = buffer_bytes or cpu_buffer_bytes()
    src = torch.ones(size, dtype=torch.uint8)
    dst = torch.empty(size, dtype=torch.uint8)

    def copy() -> float:
        started = time.perf_counter()
        dst.copy_(src)
        return time.perf_counter() - started

    seconds = _timed_copies(copy, budget_s)
    method = (f"torch copy_ of a {size / MIB:,.0f} MiB buffer on {torch.get_num_threads()} threads, best of "
              f"{len(seconds)}; read + write bytes counted as STREAM's Copy does")
    return _figures("cpu", method, size, seconds)


def cuda_bandwidth(buffer_bytes: int | None = None, budget_s: float = BUDGET_S) -> Bandwidth:
    """torch's device-to-device copy on GPU 0, timed with CUDA events; the best of the timed copies."""
    import torch

    free, _ = torch.cuda.mem_get_info()
    size = min(buffer_bytes or CUDA_BUFFER_BYTES, free // 4)
    src = torch.ones(size, dtype=torch.uint8, device="cuda")
    dst = torch.empty(size, dtype=torch.uint8, device="cuda")

    def copy() -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    try:
        seconds = _timed_copies(copy, budget_s)
    finally:
        del src, dst
        torch.cuda.empty_cache()
    method = (f"torch device-to-device copy_ of a {size / MIB:,.0f} MiB buffer on {torch.cuda.get_device_name(0)}, "
              f"timed with CUDA events, best of {len(seconds)}; read + write bytes counted as STREAM's Copy does")
    return _figures("cuda", method, size, seconds)


_lock = threading.Lock()
_measured: dict[str, dict] = {}


def machine_bandwidth() -> dict[str, dict]:
    """{"cpu": Bandwidth as a dict, "cuda": ... where there is a GPU}, measured on the first call and kept for the
    process (about a second per device); call it where no timed run is going on (the arena does on its device
    thread, at start-up)."""
    with _lock:
        if not _measured:
            _measured.update(_measure_all())
        return dict(_measured)


def _measure_all() -> dict[str, dict]:
    import torch

    measured = {"cpu": _attempt("cpu", cpu_bandwidth)}
    if torch.cuda.is_available():
        measured["cuda"] = _attempt("cuda", cuda_bandwidth)
    return measured


def _attempt(device: str, measure: Callable[[], Bandwidth]) -> dict:
    try:
        return measure().as_dict()
    except Exception as exc:  # out of memory, a device in a bad state, CUDA only emulated here: said, never a figure
        return Bandwidth(device, None, None, f"not measured: {exc.__class__.__name__}: {str(exc)[:120]}",
                         None, 0).as_dict()


def achieved_gb_s(weights_bytes: float | None, decode_tokens_per_s: float | None) -> float | None:
    """gpt-fast's achieved bandwidth: the weights' bytes read once per decoded token, in 1e9 bytes per second;
    None where either is unknown (never 0 for unknown)."""
    if weights_bytes is None or decode_tokens_per_s is None:
        return None
    value = weights_bytes * decode_tokens_per_s / GB
    return value if math.isfinite(value) and value > 0 else None


def share(achieved: float | None, measured: float | None) -> float | None:
    """The achieved figure as a fraction of the measured one (not clamped: above 1 means weights came partly
    from a cache, not from memory); None where either is unknown."""
    if achieved is None or not measured or not math.isfinite(measured):
        return None
    return achieved / measured


def measured_gb_s(environment: dict, device: str | None) -> float | None:
    """The measured bandwidth of the device a variant ran on, from an environment record; None where there is
    none (a remote engine, a device not measured)."""
    entry = (environment.get("memory_bandwidth") or {}).get(device or "")
    return entry.get("gb_s") if entry else None


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def _size_bytes(text: str) -> int:
    """sysfs cache sizes: "32768K", "1024K", "2M"."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text)
