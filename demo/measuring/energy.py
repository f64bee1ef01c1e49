"""Energy of one run, read from the machine's own counters, never estimated: NVML's total-energy counter on an
NVIDIA GPU, RAPL's package counters (/sys/class/powercap) on a CPU; where neither is there, it says so."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from demo.measuring import nvml

POWERCAP = Path("/sys/class/powercap")
NOT_EXPOSED = "not exposed by this machine"
# A top-level RAPL zone (one per CPU package), not a subzone ("intel-rapl:0:0", the cores or DRAM inside it, which
# the package figure already counts). AMD's RAPL appears under the same names.
_PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")


@dataclass(frozen=True)
class Energy:
    energy_joules: float | None  # over the run, device- or package-wide; None where not read
    source: str  # what was read, or why nothing was


class RaplCounter:
    """The package zones' energy_uj counters, each wrapping at its max_energy_range_uj."""

    def __init__(self, zones: list[Path]):
        self.zones = zones
        self.ranges_uj = [int((zone / "max_energy_range_uj").read_text()) for zone in zones]
        names = [(zone / "name").read_text().strip() for zone in zones]
        self.source = f"RAPL {' + '.join(names)} (whole CPU package: every process on it)"

    def read(self) -> list[int]:
        return [int((zone / "energy_uj").read_text()) for zone in self.zones]

    def joules(self, start: list[int], end: list[int]) -> float:
        return sum((e - s) % r for s, e, r in zip(start, end, self.ranges_uj)) / 1e6  # a wrapped counter stays right


class NvmlCounter:
    """This process's GPU's total energy since the driver loaded, in millijoules (Volta and later)."""

    source = "NVML total energy, this process's GPU (device-wide)"

    def __init__(self, library):
        self._nvml = library
        self._handle = nvml.handle(library)
        self.read()  # raises where the GPU has no energy counter (before Volta)

    def read(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def joules(self, start: int, end: int) -> float:
        return (end - start) / 1e3


def rapl_counter(root: Path = POWERCAP) -> RaplCounter | str:
    """The package zones under `root`, or why they cannot be read."""
    zones = sorted(p for p in root.glob("intel-rapl:*") if _PACKAGE_ZONE.match(p.name)) if root.is_dir() else []
    zones = [z for z in zones if (z / "name").is_file() and (z / "name").read_text().startswith("package")]
    if not zones:
        return NOT_EXPOSED
    try:
        counter = RaplCounter(zones)
        counter.read()
    except PermissionError:
        return "RAPL present but not readable by this process (energy_uj is root-only on most kernels)"
    except (OSError, ValueError) as exc:
        return f"RAPL present but unreadable: {exc.__class__.__name__}"
    return counter


def nvml_counter() -> NvmlCounter | str:
    library = nvml.library()
    if library is None:
        return NOT_EXPOSED
    try:
        return NvmlCounter(library)
    except Exception:  # NVMLError_NotSupported before Volta, a device gone
        return "not exposed by this GPU (NVML has no total-energy counter for it)"


def counter_for(device: str | None, powercap: Path = POWERCAP) -> RaplCounter | NvmlCounter | str:
    """The counter for the device a variant runs on, or why there is none."""
    if device == "cuda":
        return nvml_counter()
    if device == "cpu":
        return rapl_counter(powercap)
    return f"not measured on {device or 'this device'} (its energy is not this machine's to read)"


class EnergyTracker:
    def __init__(self, device: str | None, powercap: Path = POWERCAP):
        self.counter = counter_for(device, powercap)
        self._start = None
        self.result: Energy | None = None

    def start(self) -> None:
        if not isinstance(self.counter, str):
            self._start = self.counter.read()

    def stop(self) -> Energy:
        if isinstance(self.counter, str):
            return Energy(None, self.counter)
        try:
            return Energy(self.counter.joules(self._start, self.counter.read()), self.counter.source)
        except Exception as exc:  # a zone or device gone mid-run: no figure for this run, and the run keeps its others
            return Energy(None, f"{self.counter.source}: unreadable at the end of the run ({exc.__class__.__name__})")


@contextmanager
def track_energy(device: str | None, powercap: Path = POWERCAP) -> Iterator[EnergyTracker]:
    """Energy over the block; read tracker.result after it."""
    tracker = EnergyTracker(device, powercap)
    tracker.start()
    try:
        yield tracker
    finally:
        tracker.result = tracker.stop()


def joules_per_token(energy: Energy, new_tokens: int) -> float | None:
    if energy.energy_joules is None or new_tokens <= 0:
        return None
    return energy.energy_joules / new_tokens
