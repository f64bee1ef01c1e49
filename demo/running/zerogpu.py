"""ZeroGPU mode: used by itself when the `spaces` package reports ZeroGPU, and emulated (the same process model on
the CPU, demo.running.gpu_worker) with ARENA_ZEROGPU_EMULATE=1.

At start-up, in the main thread, every variant of the profile is placed (loaded) and, where the serving process
can run it, its rates measured (demo.running.gpu_time); a profile whose weights do not fit the GPU slice is
refused with its sizes. There is no memory budget or eviction: everything stays placed. After start-up the
serving process runs no model code: a request's whole model work (a comparison with its streaming and fidelity,
so a blind battle too, or an evaluation) is one call of one decorated generator, gpu_task, which runs in a
worker process forked from the server. Only plain data crosses: the job (a module-level function, pickled by
name), its arguments, and the snapshots and records it yields. Stop, and a client that leaves, close the
generator, which sets the worker's stop event and ends its generation.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from demo.config import ZEROGPU_PROCESS_DEFAULTS, ArenaConfig
from demo.errors import ArenaError, VariantUnavailable, ZeroGpuError
from demo.measuring.system import environment
from demo.running import gpu_time
from demo.running.device import DeviceThread
from demo.running.manager import ModelManager
from demo.running.runtime_process import ProcessLoader
from demo.running.runner import Arena
from demo.running.variant_run import VariantResult, snapshot
from demo.settings import GenerationSettings

log = logging.getLogger(__name__)
MIB = 2**20
EMULATE_ENV = "ARENA_ZEROGPU_EMULATE"
SLICE_ENV = "ARENA_ZEROGPU_SLICE_MIB"  # the emulation's GPU slice (ZeroGPU's own is read from `spaces`)
CAP_ENV = "ARENA_ZEROGPU_MAX_S"  # the most GPU seconds one request may ask for
DEFAULT_SLICE_MIB = 48 * 1024  # the emulation's: ZeroGPU's `large` size, half an RTX Pro 6000 Blackwell (on ZeroGPU
# itself the slice is spaces' Config.zerogpu_cuda_total_memory, which the platform sets: see _slice_mib)
FACTOR_ENV = "ARENA_ZEROGPU_DURATION_FACTOR"  # the emulation's duration factor (ZeroGPU's own is read from `spaces`)
# The emulation's GPU configuration: spaces' own for the RTX Pro 6000 Blackwell (spaces/zero/configs.json), the GPU
# ZeroGPU runs on today: every duration asked for is counted 1.5 times, and weights over the threshold make the
# Space `xlarge` (a whole card, counted twice, with no factor).
EMULATED_GPU_CONFIG = {"duration_factor": 1.5, "xlarge_threshold": 45097156608}
DEFAULT_CAP_S = {"zerogpu": 120.0, "emulated": 600.0}  # the emulation runs on a CPU, several times slower
EXECUTION = {"zerogpu": "ZeroGPU (a shared GPU slice)", "emulated": "emulated ZeroGPU (a worker process on the CPU)"}


def mode() -> str | None:
    """"emulated" with ARENA_ZEROGPU_EMULATE=1, "zerogpu" where the `spaces` package reports ZeroGPU, else None."""
    if os.environ.get(EMULATE_ENV) == "1":
        return "emulated"
    try:
        from spaces.config import Config
    except ImportError:
        return None
    return "zerogpu" if Config.zero_gpu else None


# Families that cannot be placed at start-up, where ZeroGPU's CUDA is emulated (a tensor "on cuda" stays in host
# memory), and why; each is left out with its reason (its column says it), in the emulation too, so that both modes
# offer the same variants. Checked under the real `spaces` package by `make zerogpu-check`.
NOT_PLACEABLE = {
    "torchao": "torchao quantizes its weights as they load, with the device's own kernels (int4 packs them in a "
               "CUDA-only layout); under ZeroGPU's emulated CUDA at start-up that fails, and quantizing inside the "
               "worker instead would be repeated, inside the visitor's GPU time, by every fresh worker",
}

ASYNC_LOAD_ENV = "HF_DEACTIVATE_ASYNC_LOAD"  # transformers 5: "1" loads a checkpoint without its thread pool


@contextmanager
def placing(mode_name: str = "zerogpu") -> Iterator[None]:
    """What loading under ZeroGPU's emulated CUDA needs, while entered:
    - transformers 5 copies a checkpoint's tensors to their device on a pool of threads of its own. ZeroGPU's patch
      of torch (a TorchFunctionMode, spaces/zero/torch/patching.py) is active only in the thread that imported
      `spaces`, so in those threads real CUDA is reached and placement fails: transformers loads in the calling
      thread instead (its HF_DEACTIVATE_ASYNC_LOAD, made for this case);
    - on ZeroGPU the runtime is told that its device is emulated (demo.backends.transformers.PLACING_ON_ZEROGPU_ENV):
      gptqmodel is asked for kernels that need no build, and no warm-up runs. The emulation runs on a real CPU and
      keeps the normal mode's kernels and warm-up, so that its figures compare with the normal mode's."""
    from demo.backends.transformers import PLACING_ON_ZEROGPU_ENV

    settings = {ASYNC_LOAD_ENV: "1", **({PLACING_ON_ZEROGPU_ENV: "1"} if mode_name == "zerogpu" else {})}
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class Placement:
    """What start-up placed: each variant's load time and weights, or why it could not be placed."""

    load_ms: dict[str, float]
    weights_mib: dict[str, float]
    failed: dict[str, str]  # variant id -> one-line reason (its column says it)
    slice_mib: float


class _ServingDevice:
    """The serving process's stand-in for the device thread: after start-up it runs no model code."""

    def submit(self, fn, *args, **kwargs):
        raise ZeroGpuError("on ZeroGPU the serving process runs no model code: this is not offered here")

    call = submit


class ZeroGpuArena(Arena):
    """An Arena whose model work runs in the ZeroGPU worker; everything else (validation, admission, turns, the
    page) is the Arena's own."""

    def __init__(self, config: ArenaConfig, mode_name: str, manager: ModelManager, placement: Placement,
                 timer: gpu_time.GpuTime):
        super().__init__(config, manager, device=_ServingDevice())  # type: ignore[arg-type]
        self.mode, self.placement = mode_name, placement
        self.execution = EXECUTION[mode_name]
        self.gpu_time = timer
        self._gpu = _decorated(mode_name)

    @classmethod
    def start(cls, config: ArenaConfig, mode_name: str, cap_s: float | None = None) -> "ZeroGpuArena":
        """Place every variant in this (the main) thread and measure its rates; refuses a profile that does not
        fit the slice (ZeroGpuError, with the sizes)."""
        # no budget, no eviction: everything stays placed; transformers variants in this process (see
        # ZEROGPU_PROCESS_DEFAULTS), a GGUF runtime in a process of its own
        manager = ModelManager(config, ProcessLoader(config.limits, defaults=ZEROGPU_PROCESS_DEFAULTS),
                               budget_mib=math.inf)
        slice_mib = _slice_mib(mode_name)
        _check_fits(config, manager, slice_mib, "estimated")  # the variants it will try to place
        load_ms, failed = {}, {}
        with placing(mode_name):
            for variant_id in config.variants:
                method = config.variants[variant_id].method
                if method in NOT_PLACEABLE:
                    failed[variant_id] = f"not offered on ZeroGPU: {NOT_PLACEABLE[method]}"
                    log.warning("ZeroGPU: %s not placed: %s", variant_id, failed[variant_id])
                    continue
                try:
                    entry = manager.get(variant_id)
                except Exception as exc:  # a variant that cannot load leaves the others placed; its column says why
                    failed[variant_id] = _one_line(exc)
                    log.warning("ZeroGPU: %s not placed: %s", variant_id, failed[variant_id])
                    continue
                load_ms[variant_id] = entry.load_ms
                log.info("ZeroGPU: %s placed in %.1f s: %.0f MiB of weights on %s", variant_id, entry.load_ms / 1e3,
                         entry.loaded.weights_bytes / MIB, placed_on(entry.loaded))
        weights = {v: manager.get(v).loaded.weights_bytes / MIB for v in load_ms}
        _refuse_if_over(weights, slice_mib, "measured")
        rates = {}
        if mode_name == "emulated":  # on ZeroGPU the serving process's CUDA is emulated: the worker measures
            rates = _measured_rates(manager, list(load_ms))
        cap = cap_s if cap_s is not None else float(os.environ.get(CAP_ENV) or DEFAULT_CAP_S[mode_name])
        gpu = gpu_configuration(mode_name)
        placed_mib = sum(weights.values())
        threshold = gpu["xlarge_threshold"]
        timer = gpu_time.GpuTime(config, rates, cap, duration_factor=gpu["duration_factor"], placed_mib=placed_mib,
                                 xlarge=_spaces_gpu_is_xlarge if mode_name == "zerogpu"
                                 else threshold is not None and placed_mib * MIB > threshold)
        arena = cls(config, mode_name, manager, Placement(load_ms, weights, failed, slice_mib), timer)
        global _PLACED
        _PLACED = arena  # what a forked worker finds (see gpu_task)
        return arena

    def environment(self) -> dict[str, Any]:
        """The serving process's own environment until a worker has answered (then the worker's, see _work): read
        here, not on the device, which the serving process does not have; no bandwidth benchmark (that is model-side
        work, measured in the worker)."""
        if "environment" not in self._facts:
            self._facts["environment"] = environment()
        return self._facts["environment"]

    # --- the request's checks, in the serving process ---------------------------------------------------

    def validate(self, prompt: str, variant_ids: list[str], settings: GenerationSettings | None = None) -> None:
        super().validate(prompt, variant_ids)
        if settings is not None:
            self.gpu_time.check(self.compare_gpu_s(variant_ids, settings, prompt))

    def compare_gpu_s(self, variant_ids: list[str], settings: GenerationSettings, prompt: str | None = None) -> float:
        """What a comparison asks ZeroGPU for: its placed variants' work (one not placed runs nothing there)."""
        placed = [v for v in variant_ids if v not in self.placement.failed]
        return self.gpu_time.compare_s(placed, settings, prompt)

    def compare(self, prompt: str, variant_ids: list[str], settings: GenerationSettings, *args, **kwargs):
        self.validate(prompt, variant_ids, settings)  # refused here, before anything runs or waits
        return super().compare(prompt, variant_ids, settings, *args, **kwargs)

    # --- the work, in the worker ----------------------------------------------------------------------------

    def _work(self, prompt: str, results: list[VariantResult], settings: GenerationSettings,
              stop: threading.Event) -> Iterator[list[VariantResult]]:
        seconds = self.compare_gpu_s([r.variant for r in results], settings, prompt)
        stream = self._in_worker(compare_job, (prompt, [r.variant for r in results], settings), seconds)
        try:
            for shown in stream:
                results[:] = shown
                yield snapshot(results)
                if stop.is_set():
                    break
        finally:
            stream.close()  # sets the worker's stop event when the run is not over; waits until the worker ended
        if stop.is_set():  # the worker's last snapshot never came: what was shown is what there is
            for result in results:
                if result.status == "scoring":
                    result.status = "done"
                elif not result.finished:
                    result.status = "stopped"
        else:
            self.gpu_time.observe([r.to_record() for r in results])
        worker_env = next((r.environment for r in results if "zerogpu" in r.environment), None)
        if worker_env is not None:  # the System panel names the worker's device, not the server's (emulated) one
            self._facts["environment"] = {k: v for k, v in worker_env.items() if k != "zerogpu"}

    def run_job(self, job, *args, gpu_seconds: float | None = None) -> Iterator:
        """A whole job (an evaluation) in the worker, in the device's turn; refused first if over the cap."""
        seconds = gpu_seconds if gpu_seconds is not None else self.gpu_time.minimum_s()
        self.gpu_time.check(seconds, "evaluation")

        def held() -> Iterator:
            with self.exclusive():
                yield from self._in_worker(job, args, seconds)

        return held()

    def _in_worker(self, job, args: tuple, seconds: float) -> Iterator:
        stream = self._gpu(job, args, time.time(), seconds)
        try:
            for item in stream:
                if isinstance(item, _Raised):
                    raise item.rebuilt()
                yield item
        except ArenaError:
            raise
        except Exception as exc:  # `spaces` (or its emulation) raises titled errors: a quota, a queue, its worker
            if not _from_spaces_titled(exc):
                raise
            raise _from_spaces(exc) from exc
        finally:
            stream.close()  # closed early (Stop, a client gone): the worker's stop event is set


def _from_spaces_titled(exc: BaseException) -> bool:
    """Whether an error is one of `spaces`' gradio Errors (or the emulation's same-shaped one): a title and a message.
    Read by shape, since only the page imports gradio."""
    return isinstance(getattr(exc, "message", None), str) and isinstance(getattr(exc, "title", None), str)


def _from_spaces(exc) -> ZeroGpuError:
    """A gradio Error of `spaces` as the arena's own error, with its title and its words as they are (its quota
    messages, "GPU task aborted"). A worker's failure says only its exception's class there: where to look is added."""
    from demo.running.gpu_worker import WORKER_ERROR

    title = getattr(exc, "title", "Error")
    words = f"{title}: {exc.message}" if title and title != "Error" else exc.message
    if title == WORKER_ERROR and exc.message != "GPU task aborted":  # an exception's class: spaces printed the rest
        words += " (in ZeroGPU's worker process; the app's log has its traceback)"
    return ZeroGpuError(words)


def _spaces_gpu_is_xlarge() -> bool:
    """Whether `spaces` made this Space xlarge: it decides at launch(), when the packed tensors pass its threshold."""
    from spaces.zero import default_gpu_size

    return default_gpu_size() == "xlarge"


def gpu_configuration(mode_name: str) -> dict:
    """The GPU's duration factor and xlarge threshold: `spaces`' own configuration for the GPU it runs on (its
    default where it cannot tell), or the emulation's (EMULATED_GPU_CONFIG, the factor overridable)."""
    if mode_name == "zerogpu":
        from spaces.zero.config import get_config

        return dict(get_config())
    factor = os.environ.get(FACTOR_ENV)
    return {**EMULATED_GPU_CONFIG, **({"duration_factor": float(factor)} if factor else {})}


@dataclass
class _Raised:
    """A typed error from the worker, carried as data (its class and words): ZeroGPU passes only gradio's errors
    through with their words, so the arena's own (busy, invalid request) would reach the page as a class name."""

    kind: type
    message: str

    def rebuilt(self) -> ArenaError:
        error = self.kind.__new__(self.kind)
        Exception.__init__(error, self.message)
        return error


# --- what runs in the worker ---------------------------------------------------------------------------------

_PLACED: ZeroGpuArena | None = None  # set at start-up, before any fork: a worker inherits it
_WORKER: "WorkerArena | None" = None  # the worker's own Arena, made on its first call


class WorkerArena(Arena):
    """The worker's Arena over the placed variants, with its own device thread (the server's does not exist in
    a forked process); its records' environment is read here, where the GPU is, with the call's ZeroGPU facts."""

    def __init__(self, placed: ZeroGpuArena):
        super().__init__(placed.config, _PlacedOnly(placed.manager, placed.placement.failed),  # type: ignore[arg-type]
                         device=DeviceThread())
        self.placed, self.facts = placed, {}

    def environment(self) -> dict[str, Any]:
        return {**super().environment(), "zerogpu": dict(self.facts)}


class _PlacedOnly:
    """The placed variants' manager as the worker uses it: a variant that was not placed at start-up is unavailable,
    with the reason its placement failed (its column says it; a battle draws another), never loaded in the worker."""

    def __init__(self, manager: ModelManager, failed: dict[str, str]):
        self._manager, self._failed = manager, failed

    def get(self, variant_id: str):
        if variant_id in self._failed:
            raise VariantUnavailable(f"not placed when the app started: {self._failed[variant_id]}")
        return self._manager.get(variant_id)

    def __getattr__(self, name: str):
        return getattr(self._manager, name)


def gpu_task(job, args: tuple, sent_at_s: float, gpu_seconds: float) -> Iterator:
    """The one decorated generator: job(worker arena, *args), its typed errors handed back as data."""
    global _WORKER
    cold = _WORKER is None
    if cold:
        if _PLACED is None:
            raise ZeroGpuError("no variants were placed at start-up")
        _WORKER = WorkerArena(_PLACED)
    placed = _WORKER.placed
    _WORKER.facts = {"execution": placed.execution, "worker_pid": os.getpid(), "worker": "cold" if cold else "warm",
                     "handoff_ms": round((time.time() - sent_at_s) * 1e3, 1), "gpu_seconds_asked": gpu_seconds,
                     "slice_mib": round(placed.placement.slice_mib), "placed_at_startup_ms": placed.placement.load_ms}
    try:
        yield from job(_WORKER, *args)
    except ArenaError as exc:
        yield _Raised(type(exc), str(exc))


def gpu_duration(job, args: tuple, sent_at_s: float, gpu_seconds: float) -> float:
    """ZeroGPU's duration callable: the seconds computed (and checked against the cap) before the call."""
    return gpu_seconds


def compare_job(arena: Arena, prompt: str, variant_ids: list[str], settings: GenerationSettings) -> Iterator:
    """A comparison's model work in the worker, inline: every variant's streamed answer, then fidelity."""
    results = arena._new_results(prompt, variant_ids, settings)
    yield snapshot(results)
    yield from arena._work(prompt, results, settings, threading.Event())  # the worker's stop closes this generator
    yield snapshot(results)


def _decorated(mode_name: str):
    if mode_name == "zerogpu":
        import spaces

        return spaces.GPU(duration=gpu_duration)(gpu_task)
    from demo.running.gpu_worker import emulated_gpu

    return emulated_gpu(gpu_task, duration=gpu_duration)


# --- start-up checks -------------------------------------------------------------------------------------------

def _measured_rates(manager: ModelManager, variant_ids: list[str]) -> dict[str, gpu_time.Rates]:
    """Each placed variant's rates, on a device thread of its own that ends before the app serves (torch in the
    main thread ran several times slower here than on a fresh thread, as the worker runs it)."""
    device, rates = DeviceThread(), {}
    try:
        for variant_id in variant_ids:
            try:
                rates[variant_id] = device.call(gpu_time.measure, manager.get(variant_id).loaded)
            except Exception as exc:
                log.warning("ZeroGPU: rates of %s not measured (%s); assumed", variant_id, _one_line(exc))
    finally:
        device.close()
    return rates


def _slice_mib(mode_name: str) -> float:
    if mode_name == "zerogpu":
        from spaces.config import Config

        return Config.zerogpu_cuda_total_memory / MIB
    return float(os.environ.get(SLICE_ENV) or DEFAULT_SLICE_MIB)


def _check_fits(config: ArenaConfig, manager: ModelManager, slice_mib: float, how: str) -> None:
    _refuse_if_over({v: manager.expected_mib(v) for v, variant in config.variants.items()
                     if variant.method not in NOT_PLACEABLE}, slice_mib, how)


def _refuse_if_over(sizes_mib: dict[str, float], slice_mib: float, how: str) -> None:
    total = sum(sizes_mib.values())
    if total > slice_mib:
        listed = ", ".join(f"{v} {mib:,.0f} MiB" for v, mib in sizes_mib.items())
        raise ZeroGpuError(f"this profile's weights ({how}) take {total:,.0f} MiB but the ZeroGPU slice has "
                           f"{slice_mib:,.0f} MiB; every variant is placed at start-up there, so choose a smaller "
                           f"profile ({listed})")


def placed_on(loaded) -> str:
    """Where a placed variant's weights say they are: a parameter's device (under ZeroGPU's patched torch, "cuda:0"
    for a tensor that is really in host memory), else the device its runtime chose."""
    model = getattr(loaded, "model", None)
    try:
        return str(next(model.parameters()).device)
    except (AttributeError, StopIteration, TypeError):
        return str(loaded.device)


def _one_line(exc: BaseException) -> str:
    from demo.running.variant_run import describe_failure

    return str(exc).splitlines()[0][:200] if isinstance(exc, ArenaError) and str(exc) else describe_failure("loading", exc)
