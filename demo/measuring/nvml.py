"""NVML, initialised once per process: the System panel and the memory sampler read VRAM through it, and neither
may pay nvmlInit/nvmlShutdown (milliseconds, a driver round trip) on every read while a decode is being timed.

Once per process means once per process id: NVML's state is not reset by fork, so a forked worker (ZeroGPU's)
initialises its own. And the GPU read is the one this process's CUDA uses: NVML ignores CUDA_VISIBLE_DEVICES
and numbers every GPU of the host, so on a multi-GPU host (a ZeroGPU worker, a multi-GPU Space) index 0 can be
another process's GPU; `handle` finds this one by its UUID (or by the host index the variable names)."""

from __future__ import annotations

import os
import sys
import threading
from types import ModuleType
from typing import Any, Mapping

_lock = threading.Lock()
_library: dict[int, ModuleType | None] = {}  # process id -> pynvml initialised there, or None (no NVIDIA driver)
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"


def library() -> ModuleType | None:
    """pynvml, initialised on first use in this process and never shut down (the driver releases it when the
    process ends); None where there is no library, driver or device: that answer is kept too, so it is looked
    for once per process."""
    with _lock:
        pid = os.getpid()
        if pid not in _library:
            _library.clear()  # a parent's state, inherited by fork, is not this process's
            _library[pid] = _initialised()
        return _library[pid]


def visible_device(environ: Mapping[str, str] = os.environ) -> tuple[str, Any] | None:
    """The GPU that is this process's CUDA device 0, as NVML can find it: ("uuid", "GPU-…" or "MIG-…") or
    ("index", host index), from CUDA_VISIBLE_DEVICES's first entry; ("index", 0) where it is unset; None where it
    hides every GPU."""
    listed = environ.get(VISIBLE_ENV)
    if listed is None:
        return "index", 0
    first = listed.split(",")[0].strip()
    if not first or first.startswith("-"):
        return None
    if first.startswith(("GPU-", "MIG-")):
        return "uuid", first
    return ("index", int(first)) if first.isdigit() else None


def handle(pynvml: ModuleType) -> Any:
    """NVML's handle of this process's GPU: by the UUID CUDA reports where CUDA is already running here (never
    started for this), else by CUDA_VISIBLE_DEVICES (visible_device). LookupError where it hides every GPU."""
    uuid = _cuda_uuid()
    if uuid is not None:
        return pynvml.nvmlDeviceGetHandleByUUID(uuid)
    device = visible_device()
    if device is None:
        raise LookupError(f"{VISIBLE_ENV} hides every GPU from this process")
    kind, value = device
    return pynvml.nvmlDeviceGetHandleByUUID(value) if kind == "uuid" else pynvml.nvmlDeviceGetHandleByIndex(value)


def _cuda_uuid() -> str | None:
    """Device 0's UUID as CUDA reports it ("GPU-…"), only where torch has started CUDA in this process already."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_initialized():
            return None
        return f"GPU-{torch.cuda.get_device_properties(0).uuid}"
    except Exception:  # an older torch without .uuid, or a device in a bad state: fall back to the variable
        return None


def _initialised() -> ModuleType | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver, no device: all mean "no NVIDIA GPU to read"
        return None
    return pynvml


def used_bytes() -> int:
    """VRAM used on this process's GPU, device-wide (NVML cannot attribute memory to a process in most
    containers)."""
    nvml = library()
    if nvml is None:
        raise RuntimeError("NVML is not available in this process (no NVIDIA driver or device)")
    return int(nvml.nvmlDeviceGetMemoryInfo(handle(nvml)).used)
