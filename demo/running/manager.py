"""ModelManager: loads variants lazily, caches them, keeps them within a memory budget by LRU eviction."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from demo import backends
from demo.backends import LoadedVariant
from demo.config import ArenaConfig, BaseModel, Variant
from demo.errors import MemoryBudgetExceeded

log = logging.getLogger(__name__)
MIB = 2**20

Loader = Callable[[Variant, BaseModel], LoadedVariant]


@dataclass(frozen=True)
class Acquired:
    loaded: LoadedVariant
    cache_hit: bool
    load_ms: float  # cold: the full load; warm: the cache lookup


class ModelManager:
    """The one shared object: a lock-guarded LRU cache of loaded variants under a budget in MiB."""

    def __init__(self, config: ArenaConfig, loader: Loader = backends.load, budget_mib: float | None = None):
        self._config, self._loader = config, loader
        self.budget_mib = config.memory_budget_mib if budget_mib is None else budget_mib
        self._cache: OrderedDict[str, LoadedVariant] = OrderedDict()  # least recently used first
        self._sizes_mib: dict[str, float] = {}  # measured footprints, used to make room before a reload
        self._lock = threading.RLock()

    def get(self, variant_id: str) -> Acquired:
        """The loaded variant, from cache or loaded now (evicting least recently used ones to fit)."""
        start = time.perf_counter()
        with self._lock:
            if variant_id in self._cache:
                self._cache.move_to_end(variant_id)
                return Acquired(self._cache[variant_id], True, (time.perf_counter() - start) * 1e3)
            variant = self._config.variants[variant_id]
            self._make_room(self._sizes_mib.get(variant_id, 0.0), keep=None)
            loaded = self._loader(variant, self._config.bases[variant.base])
            size = loaded.weights_bytes / MIB
            self._sizes_mib[variant_id] = size
            if size > self.budget_mib:
                loaded.free()
                del loaded
                self._free()
                raise MemoryBudgetExceeded(
                    f"needs {size:.0f} MiB of weights but the memory budget is {self.budget_mib:.0f} MiB"
                )
            self._cache[variant_id] = loaded
            self._make_room(0.0, keep=variant_id)
            return Acquired(loaded, False, (time.perf_counter() - start) * 1e3)

    def evict(self, variant_id: str) -> bool:
        """Drop a variant and free its memory; False if it was not loaded."""
        with self._lock:
            loaded = self._cache.pop(variant_id, None)
            if loaded is None:
                return False
            log.info("evicting %s (%.0f MiB)", variant_id, loaded.weights_bytes / MIB)
            loaded.free()
            del loaded
            self._free()
            return True

    def clear(self) -> None:
        with self._lock:
            for variant_id in list(self._cache):
                self.evict(variant_id)

    def loaded_ids(self) -> list[str]:
        """Loaded variant ids, least recently used first."""
        with self._lock:
            return list(self._cache)

    def resident_mib(self) -> float:
        with self._lock:
            return sum(m.weights_bytes for m in self._cache.values()) / MIB

    def _make_room(self, incoming_mib: float, keep: str | None) -> None:
        while self._cache and self.resident_mib() + incoming_mib > self.budget_mib:
            victim = next(iter(self._cache))
            if victim == keep:
                break
            self.evict(victim)

    @staticmethod
    def _free() -> None:
        backends.release_memory()
