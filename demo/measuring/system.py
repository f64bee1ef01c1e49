"""The machine we run on: the environment record saved with every result, and live system figures."""

from __future__ import annotations

import importlib.metadata
import platform
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

import psutil

from demo.measuring import bandwidth, nvml

MIB = 2**20
_PACKAGES = ("torch", "transformers", "accelerate", "bitsandbytes", "torchao", "gptqmodel", "llama_cpp_python",
             "gradio")
# The CPU features that decide which kernels run (and so which near-tie tokens tip which way): named in every record.
_CPU_FEATURES = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                 "amx_int8")


@dataclass(frozen=True)
class GpuFigures:
    name: str
    driver: str
    used_mib: float  # device-wide: NVML cannot attribute memory to a process inside most containers
    total_mib: float


def gpu_figures() -> GpuFigures | None:
    """NVML figures for this process's GPU (nvml.handle), or None where there is no NVIDIA driver or none visible."""
    pynvml = nvml.library()  # initialised once per process, never shut down per read
    if pynvml is None:
        return None
    try:
        handle = nvml.handle(pynvml)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name, driver = pynvml.nvmlDeviceGetName(handle), pynvml.nvmlSystemGetDriverVersion()
        return GpuFigures(_text(name), _text(driver), info.used / MIB, info.total / MIB)
    except Exception:  # a device gone or in a bad state: nothing to report this time
        return None


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU: {_cpu_model()} ({psutil.cpu_count(logical=True)} threads, torch uses {torch.get_num_threads()})"


def environment(measure_bandwidth: bool = False) -> dict:
    """Device, driver and library versions: recorded with every result so numbers keep their conditions; with
    `measure_bandwidth`, the memory bandwidth this process measured (once, about a second per device: see
    demo.measuring.bandwidth; call it where no timed run is going on)."""
    import torch

    gpu = gpu_figures()
    env = {
        "device_name": device_name(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "driver": gpu.driver if gpu else None,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "ram_total_mib": round(psutil.virtual_memory().total / MIB),
        "cpu_features": cpu_features(),
    }
    env.update({name: _version(name) for name in _PACKAGES})
    if measure_bandwidth:
        env["memory_bandwidth"] = bandwidth.machine_bandwidth()
    return env


@dataclass(frozen=True)
class SystemSnapshot:
    device: str
    process_rss_mib: float  # resident pages, file-backed mapped ones included (mmapped weights, libraries)
    process_uss_mib: float | None  # pages only this process holds: what would be freed if it exited
    ram_used_mib: float  # machine-wide total minus available: page cache the OS can drop is not counted
    ram_total_mib: float
    gpu: GpuFigures | None
    # the processes this one started (each variant's runtime in its own, a ZeroGPU worker): how many, and the pages
    # only they hold (USS, summed; None where a platform has no USS)
    worker_processes: int = 0
    workers_uss_mib: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def snapshot(device: str | None = None) -> SystemSnapshot:
    vm = psutil.virtual_memory()
    process = psutil.Process()
    try:  # reads /proc/<pid>/smaps_rollup: about 2 ms, cheap enough for a panel refreshed every 2 s
        full = process.memory_full_info()
        rss, uss = full.rss, full.uss
    except (psutil.AccessDenied, AttributeError):  # platforms without USS
        rss, uss = process.memory_info().rss, None
    workers, workers_uss = _workers(process)
    return SystemSnapshot(device or device_name(), rss / MIB, None if uss is None else uss / MIB,
                          (vm.total - vm.available) / MIB, vm.total / MIB, gpu_figures(), workers, workers_uss)


def _workers(process: psutil.Process) -> tuple[int, float | None]:
    """How many processes this one started are alive, and their USS in MiB (about 2 ms each, like our own)."""
    count, uss = 0, 0.0
    for child in process.children(recursive=True):
        try:
            uss += child.memory_full_info().uss
            count += 1
        except psutil.NoSuchProcess:
            continue
        except (psutil.AccessDenied, AttributeError):
            return len(process.children(recursive=True)), None
    return count, uss / MIB


class SharedSnapshot:
    """One snapshot for every viewer, taken again only once it is `max_age_s` old: ten open pages cost what one
    does (smaps and NVML read once per period, not once per viewer per period)."""

    def __init__(self, max_age_s: float, take: Callable[[str | None], SystemSnapshot] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.max_age_s, self._take, self._clock = max_age_s, take or snapshot, clock
        self._lock = threading.Lock()
        self._taken_at: float | None = None
        self._latest: SystemSnapshot | None = None

    def get(self, device: str | None = None) -> SystemSnapshot:
        with self._lock:  # a viewer arriving while another measures waits and shares its figures
            now = self._clock()
            if self._latest is None or now - self._taken_at >= self.max_age_s:
                self._latest, self._taken_at = self._take(device), now
            return self._latest


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_features() -> list[str]:
    """Which of _CPU_FEATURES this CPU has (its flags in /proc/cpuinfo); [] where that file is not there."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return []
    return [name for name in _CPU_FEATURES if name in flags]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
