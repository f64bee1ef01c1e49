"""NVML, initialised once per process: the System panel and the memory sampler read VRAM through it, and neither
may pay nvmlInit/nvmlShutdown (milliseconds, a driver round trip) on every read while a decode is being timed."""

from __future__ import annotations

import threading
from types import ModuleType

_lock = threading.Lock()
_library: list[ModuleType | None] = []  # empty until the first call; then [pynvml] or [None] (no NVIDIA driver)


def library() -> ModuleType | None:
    """pynvml, initialised on first use and never shut down (the driver releases it when the process ends);
    None where there is no library, driver or device: that answer is kept too, so it is looked for once."""
    with _lock:
        if not _library:
            _library.append(_initialised())
        return _library[0]


def _initialised() -> ModuleType | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver, no device: all mean "no NVIDIA GPU to read"
        return None
    return pynvml


def used_bytes() -> int:
    """VRAM used on GPU 0, device-wide (NVML cannot attribute memory to a process in most containers)."""
    nvml = library()
    if nvml is None:
        raise RuntimeError("NVML is not available in this process (no NVIDIA driver or device)")
    return int(nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(0)).used)
