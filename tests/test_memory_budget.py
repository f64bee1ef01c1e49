"""The memory budget holds on a first load: room is made for an estimated size before loading, a variant over
the budget is refused before anything is evicted, and a failed load frees what it allocated."""

import gc
import threading
import time
import weakref

import pytest
import torch

from demo.backends.base import LoadedVariant
from demo.backends.size_estimate import ParameterCount, SizeEstimate, count_parameters, weights_bytes
from demo.config import BaseModel, Source, Variant, auto_budget_mib, load_config
from demo.errors import MemoryBudgetExceeded
from demo.running.manager import LOAD_HEADROOM_FRACTION, ModelManager
from tests.conftest import tiny_causal_lm

MIB = 2**20
CONFIG = """
bases:
  tiny: {source: {kind: local, path: .}}
variants:
  - {id: a, base: tiny, method: fp32}
  - {id: b, base: tiny, method: fp32}
  - {id: c, base: tiny, method: fp32}
  - {id: huge, base: tiny, method: fp32}
"""
SIZES_MIB = {"a": 4, "b": 4, "c": 4, "huge": 12}
BUDGET_MIB = 10.0  # two of a, b, c fit (8 MiB) with room to load a third beside one (4 + 4 x 1.25), not three


class FakeVariant(LoadedVariant):
    """Weights stood for by one real tensor of the variant's size."""

    runtime = "fake"

    def __init__(self, variant, size_mib: float):
        self.weights = torch.zeros(int(size_mib * MIB), dtype=torch.uint8)
        super().__init__(variant, None, "cpu", self.weights.numel(), frozenset(), None)

    def generate(self, *args):
        raise NotImplementedError

    def logits(self, ids, prompt_tokens=None):
        raise NotImplementedError

    def bare_token_times(self, *args):
        raise NotImplementedError

    def free(self):
        self.weights = None


class FakeRuntime:
    """Loads FakeVariants, checking at each load that the resident weights left room for it."""

    def __init__(self, manager_ref=lambda: None):
        self.calls: list[str] = []
        self.manager_ref = manager_ref
        self.resident_at_load: list[float] = []

    def __call__(self, variant, base):
        self.calls.append(variant.id)
        manager = self.manager_ref()
        if manager is not None:
            self.resident_at_load.append(manager.resident_mib())
        return FakeVariant(variant, SIZES_MIB[variant.id])


def sized(variant, base):
    return SizeEstimate(SIZES_MIB[variant.id] * MIB, "the test's sizes")


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(CONFIG)
    return load_config(path)


def manager_with(config, estimator=sized):
    runtime = FakeRuntime()
    manager = ModelManager(config, runtime, budget_mib=BUDGET_MIB, estimator=estimator)
    runtime.manager_ref = weakref.ref(manager)
    return manager, runtime


def test_first_loads_never_land_on_a_full_budget(config):
    manager, runtime = manager_with(config)
    for variant_id in ["a", "b", "c", "a", "b", "c", "b", "a"]:
        manager.get(variant_id)
        assert manager.resident_mib() <= BUDGET_MIB
    for variant_id, resident in zip(runtime.calls, runtime.resident_at_load):
        assert resident + SIZES_MIB[variant_id] * (1 + LOAD_HEADROOM_FRACTION) <= BUDGET_MIB
    assert manager.loaded_ids() == ["b", "a"] and runtime.calls[:3] == ["a", "b", "c"]


def test_without_an_estimate_the_old_way_would_stack_a_first_load_on_the_budget(config):
    manager, runtime = manager_with(config, estimator=lambda variant, base: None)
    manager.get("a"), manager.get("b"), manager.get("c")
    assert runtime.resident_at_load[-1] == 8  # c loaded beside a and b: what the estimate prevents
    assert manager.resident_mib() <= BUDGET_MIB  # evicted after the load


def test_an_estimated_over_budget_variant_is_refused_before_anything_is_evicted(config):
    manager, runtime = manager_with(config)
    manager.get("a"), manager.get("b")
    refusal = r"needs 12 MiB of weights but the memory budget is 10 MiB \(estimated from the test's sizes\)"
    with pytest.raises(MemoryBudgetExceeded, match=refusal):
        manager.get("huge")
    assert manager.loaded_ids() == ["a", "b"] and "huge" not in runtime.calls


def test_a_measured_over_budget_variant_is_refused_at_once_the_second_time(config):
    manager, runtime = manager_with(config, estimator=lambda variant, base: None)
    with pytest.raises(MemoryBudgetExceeded):  # unknown size: loads, is measured, then refused
        manager.get("huge")
    assert manager.loaded_ids() == []
    manager.get("a"), manager.get("b")
    calls = list(runtime.calls)
    with pytest.raises(MemoryBudgetExceeded, match=r"needs 12 MiB of weights but .* is 10 MiB \(measured\)"):
        manager.get("huge")
    assert runtime.calls == calls and manager.loaded_ids() == ["a", "b"]


def test_a_measured_size_replaces_the_estimate(config):
    manager, _ = manager_with(config, estimator=lambda v, b: SizeEstimate(9 * MIB, "a high guess"))
    assert manager.expected_mib("a") == 9
    manager.get("a")
    assert manager.expected_mib("a") == pytest.approx(4)


class Cycle:
    """A half-built model: its memory comes back only through the garbage collector."""

    def __init__(self):
        self.weights = torch.zeros(16 * MIB, dtype=torch.uint8)
        self.me = self


def test_a_failed_load_frees_what_it_allocated_and_leaves_the_cache_as_it_was(config):
    refs = []

    def failing(variant, base):
        if variant.id != "c":
            return FakeVariant(variant, SIZES_MIB[variant.id])
        half_built = Cycle()
        refs.append(weakref.ref(half_built.weights))
        raise torch.OutOfMemoryError("out of memory while loading")

    manager = ModelManager(config, failing, budget_mib=BUDGET_MIB, estimator=sized)
    manager.get("a")
    before = (manager.loaded_ids(), manager.resident_mib())
    with pytest.raises(torch.OutOfMemoryError) as caught:
        manager.get("c")
    assert caught.value is not None  # the error (and its traceback) is still held here
    assert refs[0]() is None, "the failed load's tensor is still alive"
    assert (manager.loaded_ids(), manager.resident_mib()) == before
    with pytest.raises(torch.OutOfMemoryError):  # a retry fails the same way, and frees again
        manager.get("c")
    assert refs[1]() is None


def test_estimate_arithmetic_on_hand_counts():
    count = ParameterCount(linear=1_000_000, linear_rows=1000, other=200_000, dtype_bytes=4)

    def variant(method, settings=None, dtype=None):
        return Variant("v", "b", method, settings or {}, "", "auto", dtype)

    assert weights_bytes(count, variant("fp32")) == 1_200_000 * 4
    assert weights_bytes(count, variant("bf16")) == 1_200_000 * 2
    assert weights_bytes(count, variant("bnb-int8")) == 1_000_000 + 1000 * 4 + 200_000 * 4
    assert weights_bytes(count, variant("bnb-int8", dtype="float16")) == 1_000_000 + 4000 + 200_000 * 2
    nf4 = variant("bnb-4bit", {"bnb_4bit_quant_type": "nf4"})
    assert weights_bytes(count, nf4) == 500_000 + 1_000_000 // 64 * 4 + 200_000 * 4
    int4 = variant("torchao", {"scheme": "int4_weight_only", "group_size": 128})
    assert weights_bytes(count, int4) == 500_000 + 62_500 + 1000 * 8 + 200_000 * 2
    int8 = variant("torchao", {"scheme": "int8_weight_only"})
    assert weights_bytes(count, int8) == 1_000_000 + 1000 * 8 + 200_000 * 2
    gptq = variant("gptq", {"bits": 4, "group_size": 128})
    assert weights_bytes(count, gptq) == 500_000 + 62_500 + 4000 + 200_000 * 4
    q4 = variant("gguf", {"type": "Q4_K_M"})
    assert weights_bytes(count, q4) == 625_000 + 200_000 * 2


def test_parameters_are_counted_on_the_meta_device_as_a_real_model_has_them(tmp_path):
    model = tiny_causal_lm()
    model.save_pretrained(tmp_path)
    base = BaseModel("tiny", "tiny", Source("local", path=tmp_path))
    count = count_parameters(base)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]
    assert count.linear == sum(m.weight.numel() for m in linear)
    assert count.linear_rows == sum(m.weight.shape[0] for m in linear)
    held = [*model.parameters(), *model.buffers()]
    assert count.linear + count.other == sum(t.numel() for t in held)
    assert count.dtype_bytes == 4
    fp32 = Variant("tiny/fp32", "tiny", "fp32", {}, "", "auto", None)
    assert weights_bytes(count, fp32) == model.get_memory_footprint()


def test_auto_budget_follows_the_device_memory():
    assert auto_budget_mib(16_384) == 16_384 * 0.75 - 1024  # a 16 GB T4: 11,264 MiB
    assert auto_budget_mib(81_920) == 81_920 * 0.75 - 1024
    assert auto_budget_mib(2048) == 512  # a small card keeps a quarter, never a negative budget
    assert auto_budget_mib(None) == 4096  # no GPU


def test_auto_in_the_models_file_reads_the_device(tmp_path, monkeypatch):
    import demo.config as config_module

    path = tmp_path / "models.yaml"
    path.write_text("memory_budget_mib: auto\n" + CONFIG)
    monkeypatch.setattr(config_module, "_gpu_total_mib", lambda: 15_360.0)
    assert load_config(path).memory_budget_mib == 15_360 * 0.75 - 1024
    monkeypatch.setattr(config_module, "_gpu_total_mib", lambda: None)
    assert load_config(path).memory_budget_mib == 4096
    path.write_text("memory_budget_mib: 3000\n" + CONFIG)
    monkeypatch.setattr(config_module, "_gpu_total_mib", lambda: 15_360.0)
    assert load_config(path).memory_budget_mib == 3000  # a number in the file is kept


def test_forty_panel_reads_answer_at_once_while_a_cold_load_holds_the_manager(config):
    """Every open page's System panel reads the loaded variants every 2 s; a load holds the manager's lock for
    seconds to minutes, and no reader may wait for it."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    loading, release = threading.Event(), threading.Event()
    manager, runtime = manager_with(config)
    manager.get("a")

    def slow(variant, base):
        loading.set()
        release.wait(10)  # a cold load of several seconds
        return runtime(variant, base)

    manager._loader = slow
    loader = threading.Thread(target=manager.get, args=("b",))
    loader.start()
    try:
        assert loading.wait(5)

        def read(_):
            started = time.perf_counter()
            figures = manager.loaded_ids(), manager.resident_mib()
            return time.perf_counter() - started, figures

        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(read, range(40)))
        assert max(seconds for seconds, _ in answers) < 1.0
        assert all(figures == (["a"], 4.0) for _, figures in answers)  # as it is until the load finishes
    finally:
        release.set()
        loader.join(10)
    assert manager.loaded_ids() == ["a", "b"] and manager.resident_mib() == 8.0


class Gated:
    """Wraps a loader: a load of a gated variant starts, says so, then waits for the test to let it finish."""

    def __init__(self, inner, gated: set[str], error: BaseException | None = None):
        self.inner, self.gated, self.error = inner, gated, error
        self.started = {v: threading.Event() for v in gated}
        self.release = threading.Event()
        self.log: list[str] = []  # "start x" / "end x", in order

    def __call__(self, variant, base):
        self.log.append(f"start {variant.id}")
        if variant.id in self.gated:
            self.started[variant.id].set()
            self.release.wait(10)
            if self.error is not None:
                self.log.append(f"end {variant.id}")
                raise self.error
        loaded = self.inner(variant, base)
        self.log.append(f"end {variant.id}")
        return loaded


def _in_thread(fn, *args):
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def _answers_at_once(fn, *args):
    started = time.perf_counter()
    value = fn(*args)
    assert time.perf_counter() - started < 1.0, f"{fn.__name__} waited for the load in flight"
    return value


def test_a_load_in_flight_holds_no_lock_and_a_second_request_shares_it(config):
    manager, runtime = manager_with(config)
    gate = Gated(runtime, {"b"})
    manager._loader = gate
    manager.get("a")
    first, first_out = _in_thread(manager.get, "b")
    try:
        assert gate.started["b"].wait(5)
        second, second_out = _in_thread(manager.get, "b")
        assert _answers_at_once(manager.get, "a").cache_hit  # another variant, cached: no wait
        assert _answers_at_once(manager.expected_mib, "c") == 4
        assert _answers_at_once(manager.loaded_ids) == ["a"]
        assert second.is_alive()  # waits for the first request's load, does not start its own
    finally:
        gate.release.set()
        first.join(10), second.join(10)
    assert gate.log.count("start b") == 1
    assert second_out["value"].loaded is first_out["value"].loaded
    assert not first_out["value"].cache_hit and second_out["value"].cache_hit
    assert manager.loaded_ids() == ["a", "b"] and manager.resident_mib() == 8


def test_a_failed_load_fails_every_request_that_waited_for_it_and_a_retry_loads_again(config):
    manager, runtime = manager_with(config)
    gate = Gated(runtime, {"b"}, error=torch.OutOfMemoryError("out of memory while loading"))
    manager._loader = gate
    first, first_out = _in_thread(manager.get, "b")
    assert gate.started["b"].wait(5)
    second, second_out = _in_thread(manager.get, "b")
    gate.release.set()
    first.join(10), second.join(10)
    assert isinstance(first_out["error"], torch.OutOfMemoryError)
    assert isinstance(second_out["error"], torch.OutOfMemoryError)
    assert gate.log == ["start b", "end b"] and manager.loaded_ids() == []
    gate.error = None
    assert not manager.get("b").cache_hit and manager.loaded_ids() == ["b"]


def test_the_room_reserved_for_a_load_in_flight_counts_against_the_budget(config):
    # b in flight reserves 4 x 1.25 = 5 MiB; with a resident (4), c (5 more) fits only once a is evicted
    manager, runtime = manager_with(config)
    gate = Gated(runtime, {"b"})
    manager._loader = gate
    manager.get("a")
    first, _ = _in_thread(manager.get, "b")
    try:
        assert gate.started["b"].wait(5)
        assert _answers_at_once(manager.get, "c").cache_hit is False  # loads beside b, in the room a left
        assert manager.loaded_ids() == ["c"]
    finally:
        gate.release.set()
        first.join(10)
    # a alone; c once a left; b's weights land beside c's 4 MiB (b reserved 5 while a was resident: 9 MiB)
    assert runtime.resident_at_load == [0.0, 0.0, 4.0]
    assert manager.loaded_ids() == ["c", "b"] and manager.resident_mib() <= BUDGET_MIB


def test_a_load_that_does_not_fit_beside_one_in_flight_waits_for_it(config):
    # estimated at 6 MiB each, a load reserves 7.5 of the 10 MiB: two cannot be in flight at once
    manager, runtime = manager_with(config, estimator=lambda v, b: SizeEstimate(6 * MIB, "a high guess"))
    gate = Gated(runtime, {"a"})
    manager._loader = gate
    first, _ = _in_thread(manager.get, "a")
    assert gate.started["a"].wait(5)
    second, second_out = _in_thread(manager.get, "b")
    time.sleep(0.3)
    assert gate.log == ["start a"] and second.is_alive()  # b waits for a's load to end
    gate.release.set()
    first.join(10), second.join(10)
    assert gate.log == ["start a", "end a", "start b", "end b"]
    assert not second_out["value"].cache_hit and manager.resident_mib() <= BUDGET_MIB
