"""Latency and memory measurements: result dataclasses with units in their names, and their trackers."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import psutil

from demo.measuring import nvml

MIB = 2**20
_STATM = "/proc/self/statm"  # Linux: "size resident shared ..." in pages, the numbers psutil's rss reads


class RssReader:
    """This process's resident set size in bytes, read at the sampler's pace: one pread of /proc/self/statm on a
    descriptor kept open (about 6 us), where psutil opens, reads and parses it on every call (about 34 us, five
    times more of the cores a CPU decode runs on, 200 times a second); psutil where there is no /proc."""

    def __init__(self):
        self._fd: int | None = None  # opened on the first read, closed by close()
        self._statm = os.path.exists(_STATM)
        self._process = None if self._statm else psutil.Process()

    def __call__(self) -> int:
        if self._process is not None:
            return self._process.memory_info().rss
        if self._fd is None:
            self._fd = os.open(_STATM, os.O_RDONLY)
        return int(os.pread(self._fd, 256, 0).split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class Latency:
    new_tokens: int
    ttft_ms: float | None  # start of generate -> first new token
    decode_tokens_per_s: float | None  # (new_tokens - 1) / (last token time - first token time)
    total_ms: float  # start of generate -> end (or -> now, while running)


class LatencyTracker:
    """Timestamps the start, every new token and the end of one generation (perf_counter seconds).

    start(), token() and finish() are called on the thread that runs the generation (their syncs wait for its
    device work); result() may be read from any thread while it runs."""

    def __init__(self, sync: Callable[[], None] | None = None):
        self._sync = sync or (lambda: None)  # torch.cuda.synchronize on CUDA: clocks read after the work
        self.start_s: float | None = None
        self.token_s: list[float] = []
        self.end_s: float | None = None

    def start(self, at_s: float | None = None) -> None:
        self._sync()
        self.start_s = time.perf_counter() if at_s is None else at_s

    def token(self, at_s: float | None = None) -> None:
        self.token_s.append(time.perf_counter() if at_s is None else at_s)

    def finish(self, at_s: float | None = None) -> Latency:
        self._sync()
        self.end_s = time.perf_counter() if at_s is None else at_s
        return self.result()

    def result(self) -> Latency:
        """The figures so far; final once finish() was called."""
        if self.start_s is None:
            raise RuntimeError("LatencyTracker.start() was never called")
        now = self.end_s if self.end_s is not None else time.perf_counter()
        n = len(self.token_s)  # tokens may be appended meanwhile (another thread): read up to n only
        ttft = (self.token_s[0] - self.start_s) * 1e3 if n else None
        span = self.token_s[n - 1] - self.token_s[0] if n >= 2 else 0.0
        decode = (n - 1) / span if span > 0 else None
        return Latency(n, ttft, decode, (now - self.start_s) * 1e3)


@dataclass(frozen=True)
class Memory:
    # "cuda-allocated" (exact, torch's allocator), "cpu-rss" (approximate: mmap, allocator caching) or
    # "nvml-device" (VRAM used on the whole GPU, sampled: for runtimes that allocate outside torch)
    memory_kind: str
    weights_mib: float  # the weights as the runtime stores them (LoadedVariant.weights_bytes), in MiB
    run_peak_mib: float  # peak growth over the pre-run baseline: allocated bytes (CUDA) or sampled RSS (CPU)
    peak_memory_mib: float  # weights_mib + run_peak_mib: this variant's own peak
    peak_reserved_mib: float | None  # CUDA caching allocator's peak reserved growth; None on CPU
    process_rss_mib: float  # whole process after the run (all cached variants included)


class MemoryTracker:
    """Peak memory of one run: torch's CUDA peak stats, or a figure sampled on a background thread
    (process RSS; device-wide NVML VRAM for runtimes such as llama.cpp that allocate outside torch)."""

    def __init__(self, device: str, weights_bytes: int, interval_s: float = 0.005, kind: str | None = None):
        self.device, self.weights_bytes, self.interval_s = device, weights_bytes, interval_s
        self.kind = kind or ("cuda-allocated" if device == "cuda" else "cpu-rss")
        self._rss = RssReader()
        self._read = {"cpu-rss": self._rss, "nvml-device": nvml.used_bytes}.get(self.kind)
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._base = self._peak = 0
        self._base_reserved = self._peak_reserved = 0
        self.result: Memory | None = None  # set by track_memory() on exit

    def start(self) -> None:
        if self.kind == "cuda-allocated":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base, self._base_reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
            return
        self._base = self._peak = self._read()
        self._sampler = threading.Thread(target=self._sample, name="memory-sampler", daemon=True)
        self._sampler.start()

    def stop(self) -> Memory:
        if self.kind == "cuda-allocated":
            import torch

            torch.cuda.synchronize()
            self._peak, self._peak_reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
            reserved = max(0, self._peak_reserved - self._base_reserved) / MIB
            kind = "cuda-allocated"
        else:
            self._stop.set()
            if self._sampler:
                self._sampler.join()
            self._peak = max(self._peak, self._read())
            reserved, kind = None, self.kind
        run_peak = max(0, self._peak - self._base) / MIB
        weights = self.weights_bytes / MIB
        rss = self._rss()
        self._rss.close()
        return Memory(kind, weights, run_peak, weights + run_peak, reserved, rss / MIB)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, self._read())


@contextmanager
def track_memory(device: str, weights_bytes: int, kind: str | None = None) -> Iterator[MemoryTracker]:
    """Measure one run's peak memory; read tracker.result after the block."""
    tracker = MemoryTracker(device, weights_bytes, kind=kind)
    tracker.start()
    try:
        yield tracker
    finally:
        tracker.result = tracker.stop()
