"""Memory bandwidth: the machine's, measured once per process by a copy benchmark (STREAM's Copy), and a variant's
achieved figure (the bytes one decode step reads times its decode rate), with its share of the machine's.

At batch 1 every decoded token reads every weight once and does little arithmetic per byte read, so decode is
bound by memory bandwidth; the share says how close a runtime gets to what the memory can deliver.

What a step reads (StepBytes, step_bytes): the weights it actually reads, which are the weights stored less an
input embedding table that is not tied to the output head (a step reads one row of that table, not all of it),
plus the KV cache at the step's context (every earlier token's keys and values, in every layer). gpt-fast's
simpler figure, the bytes the weights occupy times the rate, is achieved_gb_s."""

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
    None where either is unknown (never 0 for unknown). It leaves out the KV cache and counts an untied input
    embedding table whole: achieved_gb_s_of(step_bytes(...)) counts what a step reads."""
    if weights_bytes is None or decode_tokens_per_s is None:
        return None
    value = weights_bytes * decode_tokens_per_s / GB
    return value if math.isfinite(value) and value > 0 else None


@dataclass(frozen=True)
class StepBytes:
    """The bytes one decode step reads from memory, in its two parts."""

    weights_read: int  # the weights stored, less an untied input embedding table
    kv_read: int  # the KV cache at context_tokens: every attended token's keys and values, in every layer
    context_tokens: float = 0.0  # the tokens whose keys and values kv_read counts (a mean over a run's steps)
    input_table_left_out: int = 0  # the untied input embedding table's bytes, not in weights_read

    @property
    def total(self) -> int:
        return self.weights_read + self.kv_read

    def as_dict(self) -> dict:
        """{weights, kv, total, context_tokens, input_table_left_out}: bytes, and tokens for the context."""
        return {"weights": self.weights_read, "kv": self.kv_read, "total": self.total,
                "context_tokens": self.context_tokens, "input_table_left_out": self.input_table_left_out}


def step_bytes(weights_bytes: int, embedding_table_bytes: int, tied_embeddings: bool, kv_bytes_per_token: float,
               context_tokens: float) -> StepBytes:
    """What one decode step reads at a context of `context_tokens` tokens.

    weights: `weights_bytes` (every stored tensor once, as the records count them) less the input embedding table
    where it is not tied to the output head: the step looks up one row of that table (hidden size x its element
    bytes: 8 KiB of Llama-3.1-8B's 1,002 MiB bf16 table, under two millionths of the step), left out as
    negligible, while the head is read whole. A tied table is the head: read whole, counted once, nothing
    subtracted. kv: `kv_bytes_per_token` (kv_cache.bytes_per_token) x `context_tokens`, rounded to a byte."""
    if weights_bytes < 0 or embedding_table_bytes < 0 or kv_bytes_per_token < 0 or context_tokens < 0:
        raise ValueError("bytes and tokens are never negative")
    left_out = 0 if tied_embeddings else embedding_table_bytes
    if left_out > weights_bytes:
        raise ValueError(f"an embedding table of {embedding_table_bytes:,} bytes is larger than the weights "
                         f"({weights_bytes:,} bytes) it is part of")
    return StepBytes(weights_bytes - left_out, round(kv_bytes_per_token * context_tokens), context_tokens, left_out)


def mean_context_tokens(prompt_tokens: int | None, new_tokens: int | None) -> float | None:
    """The mean number of tokens whose keys and values a run's timed decode steps read: prompt_tokens + new_tokens / 2.

    The decode rate is (new_tokens - 1) over the time from the first new token to the last (LatencyTracker): the
    first token comes from the prompt's forward pass, and each of the new_tokens - 1 steps after it feeds new
    token j (1 to new_tokens - 1) and reads the keys and values of prompt_tokens + j tokens (the prompt_tokens +
    j - 1 already cached and its own, written into the cache and read back by attention). Their mean is
    prompt_tokens + new_tokens / 2. None where there is no decode step (fewer than two new tokens) or a count is
    unknown."""
    if prompt_tokens is None or new_tokens is None or new_tokens < 2 or prompt_tokens < 0:
        return None
    return prompt_tokens + new_tokens / 2


def achieved_gb_s_of(step: StepBytes | None, decode_tokens_per_s: float | None) -> float | None:
    """The achieved bandwidth: the bytes a step reads (weights and KV cache) x decode steps per second, in 1e9
    bytes per second; None where either is unknown (never 0 for unknown)."""
    if step is None or decode_tokens_per_s is None:
        return None
    value = step.total * decode_tokens_per_s / GB
    return value if math.isfinite(value) and value > 0 else None


def input_embedding_bytes(model) -> int:
    """The bytes a transformers model's input embedding table (model.get_input_embeddings()) stores: its
    parameters and buffers, a tensor subclass (torchao's quantized weights) by the inner tensors it holds, each
    stored tensor once. Usually an unquantized table: vocabulary x hidden size x the dtype's bytes."""
    module = model.get_input_embeddings()
    seen: set[tuple[str, int, int]] = set()
    return sum(_stored_bytes(t, seen) for t in [*module.parameters(), *module.buffers()])


def embeddings_tied(model) -> bool:
    """Whether a transformers model's input embedding table is its output head: the two weights are one stored
    tensor (so the records count it once). The config's tie_word_embeddings says whether the model was made so;
    where a loader gave the head its own copy (a quantized head, say), both are stored and this says False."""
    head = model.get_output_embeddings()
    if head is None:
        return False
    table, weight = model.get_input_embeddings().weight, head.weight
    if table is weight:
        return True
    try:
        return (table.device == weight.device and table.data_ptr() == weight.data_ptr()
                and table.data_ptr() != 0 and table.shape == weight.shape)
    except (RuntimeError, NotImplementedError):  # a subclass with no single storage: not the same tensor
        return False


def _stored_bytes(tensor, seen: set[tuple[str, int, int]]) -> int:
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return sum(_stored_bytes(getattr(tensor, name), seen) for name in names)
    size = tensor.numel() * tensor.element_size()
    key = (str(tensor.device), tensor.data_ptr(), size)
    if size == 0 or key in seen:
        return 0
    seen.add(key)
    return size


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
