"""ModelManager: lazy loading, caching, LRU eviction under a budget, and memory really freed."""

import gc
import threading
import time
import weakref

import pytest
import torch

from demo.config import load_config
from demo.errors import MemoryBudgetExceeded
from demo.backends.transformers import TransformersVariant
from demo.running.manager import ModelManager
from tests.conftest import tiny_causal_lm

MIB = 2**20
CONFIG = """
bases:
  tiny: {source: {kind: local, path: .}}
variants:
  - {id: a, base: tiny, method: fp32}
  - {id: b, base: tiny, method: fp32}
  - {id: c, base: tiny, method: fp32}
"""


class CountingLoader:
    """Builds a real tiny model per load and remembers weak references to check freeing."""

    def __init__(self, delay_s: float = 0.0):
        self.calls: list[str] = []
        self.refs: dict[str, list[weakref.ref]] = {}
        self.delay_s = delay_s

    def __call__(self, variant, base):
        self.calls.append(variant.id)
        time.sleep(self.delay_s)
        model = tiny_causal_lm()
        self.refs.setdefault(variant.id, []).append(weakref.ref(model))
        return TransformersVariant(variant, model, tokenizer=None, device="cpu")


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(CONFIG)
    return load_config(path)


def model_mib():
    return tiny_causal_lm().get_memory_footprint() / MIB


def test_loads_lazily_and_caches(config):
    loader = CountingLoader()
    manager = ModelManager(config, loader, budget_mib=100)
    assert loader.calls == [] and manager.loaded_ids() == []
    first = manager.get("a")
    second = manager.get("a")
    assert loader.calls == ["a"]
    assert not first.cache_hit and second.cache_hit
    assert second.loaded is first.loaded
    assert second.load_ms < first.load_ms


def test_evicts_least_recently_used_and_frees_it(config):
    loader = CountingLoader()
    manager = ModelManager(config, loader, budget_mib=model_mib() * 2.5)  # room for two
    manager.get("a")
    manager.get("b")
    manager.get("a")  # a is now more recent than b
    manager.get("c")
    assert manager.loaded_ids() == ["a", "c"]
    assert loader.refs["b"][0]() is None, "the evicted model is still referenced somewhere"
    assert manager.resident_mib() <= manager.budget_mib
    assert not manager.get("b").cache_hit and loader.calls == ["a", "b", "c", "b"]


def test_explicit_evict_frees_memory(config):
    loader = CountingLoader()
    manager = ModelManager(config, loader, budget_mib=100)
    manager.get("a")
    assert manager.evict("a") and not manager.evict("a")
    gc.collect()
    assert loader.refs["a"][0]() is None
    assert manager.resident_mib() == 0


def test_variant_bigger_than_budget_fails_alone(config):
    manager = ModelManager(config, CountingLoader(), budget_mib=model_mib() / 2)
    with pytest.raises(MemoryBudgetExceeded, match="memory budget"):
        manager.get("a")
    assert manager.loaded_ids() == []


def test_concurrent_gets_load_once(config):
    loader = CountingLoader(delay_s=0.2)
    manager = ModelManager(config, loader, budget_mib=100)
    results = []
    threads = [threading.Thread(target=lambda: results.append(manager.get("a"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loader.calls == ["a"]
    assert len({id(r.loaded) for r in results}) == 1
    assert sum(not r.cache_hit for r in results) == 1


@pytest.mark.gpu
def test_eviction_returns_cuda_memory(config):
    def cuda_loader(variant, base):
        model = tiny_causal_lm(hidden=512, layers=4, vocab=8192).to("cuda")
        return TransformersVariant(variant, model, None, "cuda")

    manager = ModelManager(config, cuda_loader, budget_mib=10_000)
    before = torch.cuda.memory_allocated()
    manager.get("a")
    assert torch.cuda.memory_allocated() > before
    manager.evict("a")
    assert torch.cuda.memory_allocated() == before


@pytest.mark.gpu
def test_failed_load_returns_cuda_memory(config):
    class HalfBuilt:
        def __init__(self):
            self.weights = torch.empty(64 * MIB, dtype=torch.uint8, device="cuda")
            self.me = self  # a reference cycle: only the garbage collector frees it

    def failing_loader(variant, base):
        half_built = HalfBuilt()  # noqa: F841 (held by this frame when the error leaves it)
        raise torch.OutOfMemoryError("CUDA out of memory while loading")

    manager = ModelManager(config, failing_loader, budget_mib=10_000, estimator=lambda v, b: None)
    before = torch.cuda.memory_allocated()
    with pytest.raises(torch.OutOfMemoryError) as caught:
        manager.get("a")
    assert caught.value is not None  # the error and its traceback are still held
    assert torch.cuda.memory_allocated() == before
    assert manager.loaded_ids() == []
