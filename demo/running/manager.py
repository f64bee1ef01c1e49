"""ModelManager: loads variants lazily, caches them, keeps them within a memory budget by LRU eviction.

Before a load it makes room for the variant's size, measured when it has loaded before, else estimated
(demo.backends.size_estimate), plus LOAD_HEADROOM_FRACTION of it for what a load and its first runs hold
beside the weights (activations, the KV cache, a layer being quantized). A variant whose size exceeds the
budget is refused before anything is evicted. A failed load frees whatever it allocated.

A load (seconds to minutes) runs outside the manager's lock. While it runs, the variant is marked loading: a
second request for it waits for that load's result instead of loading it again, and the room made for it (its
size plus headroom) stays reserved, so a load beside it makes room for both or waits for it to finish. Readers
(the System panel, every open page every 2 s) never wait for the lock: they read a snapshot the manager
replaces, under the lock, on every change.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from demo import backends
from demo.backends import LoadedVariant, size_estimate
from demo.running.runtime_process import ProcessLoader
from demo.config import ArenaConfig, BaseModel, Variant
from demo.errors import MemoryBudgetExceeded

log = logging.getLogger(__name__)
MIB = 2**20

LOAD_HEADROOM_FRACTION = 0.25  # room made beyond an incoming variant's weights: activations, KV cache, load spikes

Loader = Callable[[Variant, BaseModel], LoadedVariant]
Estimator = Callable[[Variant, BaseModel], "size_estimate.SizeEstimate | None"]


@dataclass(frozen=True)
class Acquired:
    loaded: LoadedVariant
    cache_hit: bool
    load_ms: float  # cold: the full load; warm: the cache lookup


class _Loading:
    """One load in flight: the room reserved for it, and its outcome for the requests that wait on it."""

    def __init__(self, reserved_mib: float):
        self.reserved_mib = reserved_mib
        self.done = threading.Event()
        self.error: BaseException | None = None


class ModelManager:
    """The one shared object: a lock-guarded LRU cache of loaded variants under a budget in MiB."""

    def __init__(self, config: ArenaConfig, loader: Loader | None = None, budget_mib: float | None = None,
                 estimator: Estimator | None = None):
        # the default loader gives variants with `process: own` a worker process (demo.running.runtime_process),
        # which also estimates their size; any other loader, the estimate in this process
        self._config = config
        self._loader = ProcessLoader(config.limits) if loader is None else loader
        self._estimator = estimator or getattr(self._loader, "estimate", size_estimate.estimate)
        self.budget_mib = config.memory_budget_mib if budget_mib is None else budget_mib
        self._cache: OrderedDict[str, LoadedVariant] = OrderedDict()  # least recently used first
        self._sizes_mib: dict[str, float] = {}  # measured footprints, used to make room before a reload
        self._estimates: dict[str, size_estimate.SizeEstimate | None] = {}  # before a first load, computed once
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # notified whenever a load ends
        self._loading: dict[str, _Loading] = {}  # variant id -> its load in flight (outside the lock)
        # (loaded ids least recently used first, their weights in MiB): replaced whole on every change, read
        # without the lock (one attribute read is atomic)
        self._view: tuple[tuple[str, ...], float] = ((), 0.0)

    def _publish(self) -> None:
        """Replace the readers' snapshot with the cache as it is now (called under the lock)."""
        self._view = (tuple(self._cache), sum(m.weights_bytes for m in self._cache.values()) / MIB)

    def get(self, variant_id: str) -> Acquired:
        """The loaded variant, from cache or loaded now (evicting least recently used ones to fit). A request for a
        variant another request is loading waits for that load and shares its result (or its error)."""
        start = time.perf_counter()
        variant = self._config.variants[variant_id]
        while True:
            with self._lock:
                if variant_id in self._cache and not self._cache[variant_id].alive():
                    self.evict(variant_id)  # its own process died (demo.running.runtime_process): load it afresh
                if variant_id in self._cache:
                    self._cache.move_to_end(variant_id)
                    self._publish()
                    return Acquired(self._cache[variant_id], True, (time.perf_counter() - start) * 1e3)
                pending = self._loading.get(variant_id)
                if pending is None:
                    size_mib, how = self._expected_mib(variant)
                    if size_mib > self.budget_mib:  # refused before evicting anything
                        getattr(self._loader, "discard", lambda _: None)(variant_id)  # a worker kept for the load
                        raise self._over_budget(size_mib, how)
                    reserve_mib = size_mib * (1 + LOAD_HEADROOM_FRACTION)
                    if self._make_room(reserve_mib, keep=None) or not self._loading:
                        pending = self._loading[variant_id] = _Loading(reserve_mib)
                        break
                    self._changed.wait()  # loads in flight hold the room this one needs: wait for one to end
                    continue
            pending.done.wait()  # outside the lock: another request loads this variant
            if pending.error is not None:
                raise pending.error
        loaded = self._load_reserved(variant, pending)
        return Acquired(loaded, False, (time.perf_counter() - start) * 1e3)

    def _load_reserved(self, variant: Variant, pending: _Loading) -> LoadedVariant:
        """Load outside the lock into the room reserved for it; then cache it, or refuse it if it turned out
        over the budget. Whoever waits on `pending` gets the same outcome."""
        try:
            loaded = self._load(variant)
        except BaseException as exc:
            self._settle(variant.id, pending, None, exc)
            raise
        size = loaded.weights_bytes / MIB
        if size > self.budget_mib:
            loaded.free()
            del loaded
            self._free()
            error = self._over_budget(size, "measured")
            self._settle(variant.id, pending, None, error, size)
            raise error
        self._settle(variant.id, pending, loaded, None, size)
        return loaded

    def _settle(self, variant_id: str, pending: _Loading, loaded: LoadedVariant | None,
                error: BaseException | None, size_mib: float | None = None) -> None:
        """End a load: its reserve is released, the variant cached (or not), and its waiters woken."""
        with self._lock:
            del self._loading[variant_id]
            if size_mib is not None:
                self._sizes_mib[variant_id] = size_mib
            if loaded is not None:
                self._cache[variant_id] = loaded
            self._publish()
            if loaded is not None:
                self._make_room(0.0, keep=variant_id)
            self._changed.notify_all()
        pending.error = error
        pending.done.set()

    def expected_mib(self, variant_id: str) -> float:
        """The size a get() makes room for: measured once loaded, else estimated, else 0 (unknown)."""
        with self._lock:
            return self._expected_mib(self._config.variants[variant_id])[0]

    def _expected_mib(self, variant: Variant) -> tuple[float, str]:
        if variant.id in self._sizes_mib:
            return self._sizes_mib[variant.id], "measured"
        if variant.id not in self._estimates:
            self._estimates[variant.id] = self._estimator(variant, self._config.bases[variant.base])
        found = self._estimates[variant.id]
        if found is None:
            return 0.0, "size unknown before loading"
        return found.bytes / MIB, f"estimated from {found.how}"

    def _over_budget(self, size_mib: float, how: str) -> MemoryBudgetExceeded:
        return MemoryBudgetExceeded(f"needs {size_mib:.0f} MiB of weights but the memory budget is "
                                    f"{self.budget_mib:.0f} MiB ({how})")

    def _load(self, variant: Variant) -> LoadedVariant:
        """The loader's result; on any failure, whatever the load allocated is freed before the error goes on."""
        try:
            return self._loader(variant, self._config.bases[variant.base])
        except BaseException as exc:
            # the traceback keeps the loader's frames, and their locals (a half-built model), alive
            traceback.clear_frames(exc.__traceback__)
            self._free()
            raise

    def evict(self, variant_id: str) -> bool:
        """Drop a variant and free its memory; False if it was not loaded."""
        with self._lock:
            loaded = self._cache.pop(variant_id, None)
            if loaded is None:
                return False
            log.info("evicting %s (%.0f MiB)", variant_id, loaded.weights_bytes / MIB)
            self._publish()
            loaded.free()
            del loaded
            self._free()
            return True

    def clear(self) -> None:
        with self._lock:
            for variant_id in list(self._cache):
                self.evict(variant_id)

    def loaded_ids(self) -> list[str]:
        """Loaded variant ids, least recently used first: at once, even while a load holds the lock."""
        return list(self._view[0])

    def resident_mib(self) -> float:
        """The loaded variants' weights in MiB: at once, even while a load holds the lock."""
        return self._view[1]

    def _make_room(self, incoming_mib: float, keep: str | None) -> bool:
        """Evict least recently used variants (never `keep`) until the resident weights, the room reserved for
        loads in flight and `incoming_mib` fit the budget; False if they cannot. While loads are in flight and
        evicting everything would not be enough, nothing is evicted: waiting for a load to end is better."""
        reserved = sum(p.reserved_mib for p in self._loading.values())
        needed = reserved + incoming_mib
        if self._loading:
            kept = self._cache[keep].weights_bytes / MIB if keep in self._cache else 0.0
            if kept + needed > self.budget_mib:
                return False
        while self._cache and self.resident_mib() + needed > self.budget_mib:
            victim = next(iter(self._cache))
            if victim == keep:
                break
            self.evict(victim)
        return self.resident_mib() + needed <= self.budget_mib

    @staticmethod
    def _free() -> None:
        backends.release_memory()
