"""compare(prompt, variants, settings) -> a stream of per-variant results, one variant at a time.

Arena puts the parts together: the request is checked (requests), admitted and given its turn on the device
(turns), each variant is run and its record filled (variant_run), then the answers are scored against
their baselines (scoring). Every torch call runs on the one device thread (device).
"""

from __future__ import annotations

import copy
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from demo.artifacts.synthetic import random_weights
from demo.config import ArenaConfig
from demo.errors import Busy
from demo.measuring.system import environment
from demo.running import requests
from demo.running.device import DeviceThread, shared_device
from demo.running.manager import ModelManager
from demo.running.scoring import FidelityScorer
from demo.running.turns import LOCAL, Admission, Client, Ticket, Turns
from demo.running.variant_run import VariantResult, VariantRunner, snapshot
from demo.settings import GenerationSettings

__all__ = ["Arena", "Client", "VariantResult"]

WAIT_POLL_S = 0.5  # how often a request waiting for its turn reports its place in line (and returns to its caller)


class Arena:
    """Runs comparisons: validates requests, then each variant in turn, one comparison at a time.

    Every model run is admitted (a place among limits.max_pending, within its client's share) and takes its turn on
    the device round-robin across clients. An arena runs for one client: `for_client` gives the same arena (device,
    turns, admission, models) for another; this one's is the command line's, "local".
    """

    def __init__(self, config: ArenaConfig, manager: ModelManager | None = None, device: DeviceThread | None = None):
        self.config = config
        self.manager = manager or ModelManager(config)
        self.device = device or shared_device()  # every torch call runs there (see demo.running.device)
        # Held for a comparison's whole load + run + scoring, round-robin across clients (see Turns).
        self.turns = Turns()
        self.admission = Admission(config.limits.max_pending, config.limits.max_pending_per_client)
        self.client: Client = LOCAL
        self._admitted = False  # True in the arena `admitted()` yields: its requests hold that one place
        self._runner = VariantRunner(self.device, self.manager)
        self._scorer = FidelityScorer(config, self.device, self.manager)
        self._facts: dict[str, Any] = {}  # shared with the arenas for_client makes: computed once per process
        self.gpu_time = None  # ZeroGPU only: what a request will ask for (demo.running.gpu_time.GpuTime)

    def environment(self) -> dict[str, Any]:
        if "environment" not in self._facts:  # on the device thread: the bandwidth benchmark never overlaps a timed run
            self._facts["environment"] = self.device.call(environment, measure_bandwidth=True)
        return self._facts["environment"]

    def settings(self, max_new_tokens: int | None = None, do_sample: bool = False, temperature: float | None = None,
                 top_p: float | None = None, seed: int | None = None) -> GenerationSettings:
        """Settings with models.yaml defaults filled in, validated against its limits."""
        return requests.checked_settings(self.config, max_new_tokens, do_sample, temperature, top_p, seed)

    def validate(self, prompt: str, variant_ids: list[str], settings: GenerationSettings | None = None) -> None:
        """Reject a request that is not runnable, with a message that says what is allowed (with its settings,
        ZeroGPU also refuses one that would ask for more GPU time than its cap)."""
        requests.check_request(self.config, prompt, variant_ids)

    def run_job(self, job, *args, gpu_seconds: float | None = None) -> Iterator:
        """A request's model work that is not a comparison (an evaluation): job(arena, *args) yields plain data.
        Here it runs in this process; ZeroGPU runs it whole in a worker process (gpu_seconds is its ask)."""
        return job(self, *args)

    def compare(self, prompt: str, variant_ids: list[str], settings: GenerationSettings,
                stop: threading.Event | None = None) -> Iterator[list[VariantResult]]:
        """Yield snapshots of every variant's result as they change; the last snapshot is final."""
        self.validate(prompt, variant_ids)
        with self.admitted() as arena:
            yield from arena._compare(prompt, variant_ids, settings, stop or threading.Event())

    def compare_records(self, prompt: str, variant_ids: list[str], settings: GenerationSettings) -> list[dict]:
        """The final records of a comparison, as the CLI and the /compare endpoint return them."""
        final: list[VariantResult] = []
        for final in self.compare(prompt, variant_ids, settings):
            pass
        return [r.to_record() for r in final]

    def for_client(self, client: Client) -> Arena:
        """This arena as `client` uses it: the same device, turns, admission and models; its requests count
        against the client's share and take the client's turns."""
        bound = copy.copy(self)
        bound.client, bound._admitted = client, False
        return bound

    @contextmanager
    def admitted(self) -> Iterator[Arena]:
        """One place for a series of model runs (an evaluation, a battle and its retries): the arena it yields
        runs them all in that place, each still taking its own turn. Busy at once when there is none."""
        if self._admitted:
            yield self
            return
        with self.admission.place(self.client):
            bound = copy.copy(self)
            bound._admitted = True
            yield bound

    @contextmanager
    def device_turn(self, stop: threading.Event | None = None) -> Iterator[Iterator[int]]:
        """Admit this client's model work that is not a comparison (quantizing, evaluation scoring) and join the
        line for the device. Yields the wait: an iterator of how many turns are ahead, every WAIT_POLL_S, that
        ends when the turn comes, so a handler can report it and return to Gradio between checks. Busy when
        there is no place, or when `stop` is set before the turn comes."""
        with self.admitted():
            ticket = self.turns.join(self.client)
            try:
                yield self._device_wait(ticket, stop)
            finally:
                self.turns.leave(ticket)

    @contextmanager
    def exclusive(self, stop: threading.Event | None = None) -> Iterator[None]:
        """Hold the device's turn for model work that is not a comparison, so it never lands inside a
        comparison's measurement window; waits here (the command line, an evaluation already running)."""
        with self.device_turn(stop) as wait:
            for _ in wait:
                pass
            yield

    def _device_wait(self, ticket: Ticket, stop: threading.Event | None) -> Iterator[int]:
        yield from self._waiting(ticket, stop or threading.Event())
        if not self.turns.holds(ticket):
            raise Busy("stopped while waiting for the device")

    def _waiting(self, ticket: Ticket, stop: threading.Event) -> Iterator[int]:
        """How many turns are ahead of ticket, every WAIT_POLL_S until it holds the turn or stop is set."""
        while not self.turns.wait(ticket, WAIT_POLL_S):
            if stop.is_set():
                return
            yield self.turns.ahead(ticket)

    def _compare(self, prompt: str, variant_ids: list[str], settings: GenerationSettings,
                 stop: threading.Event) -> Iterator[list[VariantResult]]:
        results = self._new_results(prompt, variant_ids, settings)
        yield snapshot(results)
        ticket = self.turns.join(self.client)
        try:
            yield from self._wait_for_turn(ticket, results, stop)
            yield from self._work(prompt, results, settings, stop)
        finally:
            self.turns.leave(ticket)
        yield snapshot(results)

    def _work(self, prompt: str, results: list[VariantResult], settings: GenerationSettings,
              stop: threading.Event) -> Iterator[list[VariantResult]]:
        """A comparison's model work, in its turn: each variant's run, then the fidelity scoring. The seam where
        ZeroGPU (demo.running.zerogpu) hands the work to a worker process instead."""
        generated: dict[str, list[int]] = {}  # variant id -> its new token ids
        for result in results:
            if stop.is_set():
                result.status = "stopped"
                continue
            for _ in self._runner.run(result, prompt, settings, stop, generated):
                yield snapshot(results)
        if not stop.is_set():
            yield from self._scorer.add_fidelity(results, prompt, generated, stop)

    def _new_results(self, prompt: str, variant_ids: list[str], settings: GenerationSettings) -> list[VariantResult]:
        env, described = self.environment(), settings.describe()
        variants = [self.config.variants[i] for i in variant_ids]
        return [VariantResult(v.id, v.method, v.bits, dict(v.settings), v.base, self.config.bases[v.base].label,
                              v.runtime, prompt=prompt, settings=described, environment=env,
                              random_weights=random_weights(self.config.bases[v.base])) for v in variants]

    def _wait_for_turn(self, ticket: Ticket, results: list[VariantResult],
                       stop: threading.Event) -> Iterator[list[VariantResult]]:
        """Say each variant's place in line until the turn comes (or the comparison is stopped)."""
        for ahead in self._waiting(ticket, stop):
            for result in results:
                result.status, result.queue_ahead = "waiting", ahead
            yield snapshot(results)
        for result in results:
            result.status, result.queue_ahead = "queued", None
