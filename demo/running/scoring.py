"""Fidelity scoring after a comparison's answers: per base model, where each variant's own answer departs from
the baseline's, and the baseline's answer teacher-forced through each variant (demo.measuring.fidelity)."""

from __future__ import annotations

import logging
import threading
from typing import Iterator

from demo.config import ArenaConfig
from demo.measuring import fidelity
from demo.running.device import DeviceThread
from demo.running.manager import ModelManager
from demo.running.variant_run import VariantResult, snapshot
from demo.settings import decode_whole

log = logging.getLogger(__name__)


class FidelityScorer:
    """Scores the finished variants of one comparison against their baselines, on the device thread."""

    def __init__(self, config: ArenaConfig, device: DeviceThread, manager: ModelManager):
        self.config, self.device, self.manager = config, device, manager

    def add_fidelity(self, results: list[VariantResult], prompt: str, generated: dict[str, list[int]],
                     stop: threading.Event) -> Iterator[list[VariantResult]]:
        """Per base model: where each variant's own answer departs from the baseline's, then the baseline's
        answer teacher-forced through each variant (see demo.measuring.fidelity)."""
        bases = {base.id: base for base in (self.config.base_of(r.variant) for r in results)}
        for base in bases.values():
            if base.random_weights:  # nothing to score: each record's random_weights says why
                continue
            group = [r for r in results if self.config.variants[r.variant].base == base.id]
            reference = next((r for r in group if r.variant == base.baseline and r.status == "done"), None)
            answer = generated.get(base.baseline or "")
            if reference is None or not answer:
                continue
            reference.fidelity = fidelity.of_baseline(base.baseline, len(answer)).as_dict()
            scored = [r for r in group if r is not reference and r.status == "done"]
            for result in scored:
                result.status = "scoring"
            yield snapshot(results)
            try:
                baseline_lp = self.device.call(self._answer_log_probs, base.baseline, prompt, answer)
                floor = self.device.call(self._noise_floor, base.baseline, prompt, answer, baseline_lp)
                # new dicts, never changed in place: a snapshot already handed on (to another thread) shares the old
                reference.fidelity = {**reference.fidelity, "noise_floor": floor}
                for result in scored:
                    if stop.is_set():
                        break
                    result.fidelity, result.answer_departs_at_char = self.device.call(
                        self._score, result.variant, base.baseline, baseline_lp, prompt, answer,
                        generated[result.variant])
                    result.answer_departs_at_token = fidelity.first_difference(generated[result.variant], answer)
                    result.fidelity = {**result.fidelity, "noise_floor": floor}
            except Exception:  # fidelity is extra information: a failure leaves it null, the run stands
                log.exception("fidelity against %s failed", base.baseline)
            finally:
                for result in scored:
                    result.status = "done"

    def _answer_log_probs(self, variant_id: str, prompt: str, answer: list[int]):
        return fidelity.answer_log_probs(self.manager.get(variant_id).loaded, prompt, answer)

    def _noise_floor(self, variant_id: str, prompt: str, answer: list[int], baseline_lp) -> dict:
        return fidelity.answer_noise_floor(self.manager.get(variant_id).loaded, prompt, answer, baseline_lp)

    def _score(self, variant_id: str, baseline_id: str, baseline_lp, prompt: str, answer: list[int],
               tokens: list[int]) -> tuple[dict, int | None]:
        """One variant's teacher-forced figures and its own answer's departure (character): one device job,
        so the variant is acquired (and, if it was evicted meanwhile, loaded) on the device thread."""
        loaded = self.manager.get(variant_id).loaded
        variant_lp = fidelity.answer_log_probs(loaded, prompt, answer)
        scored = fidelity.compare(baseline_id, baseline_lp, variant_lp, answer, loaded.tokenizer.decode).as_dict()
        departs = fidelity.departure_char(lambda ids: decode_whole(loaded.tokenizer, ids), tokens, answer)
        return scored, departs
