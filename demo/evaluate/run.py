"""The evaluation itself: each chosen variant's quality, then its speed and memory; a variant that fails keeps its
row with the reason and the others go on."""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterator

from tqdm.auto import tqdm

from demo.errors import ArenaError, InvalidRequest
from demo.evaluate import quality, speed
from demo.evaluate.plan import Plan, Protocol
from demo.evaluate.records import VariantEvaluation
from demo.running.runner import Arena
from demo.running.variant_run import describe_failure, is_oom

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]


def evaluate(arena: Arena, variant_ids: list[str], text: str, runs: int = 5, max_new_tokens: int = 64,
             progress: Progress | None = None, stop: threading.Event | None = None,
             protocol: Protocol | None = None) -> list[VariantEvaluation]:
    """Evaluate each variant; a variant that fails gets its error and the others go on.

    Once `stop` is set, the variants not yet started are left out: the result holds those finished. The model
    work is one job (evaluation_steps) that the arena runs: here, or whole in a ZeroGPU worker."""
    check_variants(arena, variant_ids)
    protocol = protocol or Protocol()
    protocol.check()
    if runs < 1:
        raise InvalidRequest(f"runs must be at least 1, got {runs}")
    if protocol.name != "trace" and not text.strip():
        raise InvalidRequest("the evaluation text is empty")
    settings = arena.settings(max_new_tokens=max_new_tokens)
    report = progress or (lambda fraction, message: None)
    placed = [v for v in variant_ids if v not in getattr(getattr(arena, "placement", None), "failed", {})]
    seconds = (arena.gpu_time.evaluation_s(placed, runs, max_new_tokens, len(text))  # one not placed runs nothing
               if arena.gpu_time is not None else None)
    results: list[VariantEvaluation] = []
    if stop is not None and stop.is_set():
        report(1.0, "done")
        return results
    steps = arena.run_job(evaluation_steps, list(variant_ids), text, runs, settings, protocol, gpu_seconds=seconds)
    try:
        for step in steps:
            if isinstance(step, VariantEvaluation):
                results.append(step)
                if stop is not None and stop.is_set():
                    break  # the next variant is not started
            else:
                report(*step)
    finally:
        steps.close()
    report(1.0, "done")
    return results


def evaluation_steps(arena: Arena, variant_ids: list[str], text: str, runs: int, settings,
                     protocol: Protocol) -> Iterator[tuple[float, str] | VariantEvaluation]:
    """The evaluation's model work, variant after variant: yields (fraction, message) progress and each finished
    row (plain data: in ZeroGPU mode they cross from the worker by pickle)."""
    plan, baselines = Plan(protocol, text), {}  # baseline variant id -> its reference (see quality.measure)
    bar = tqdm(variant_ids, desc="Evaluating variants", unit="variant")
    for index, variant_id in enumerate(bar):
        bar.set_postfix_str(variant_id)
        result = VariantEvaluation(variant_id, arena.config.base_of(variant_id).baseline, protocol=protocol.name)
        try:
            yield index / len(variant_ids), f"{variant_id}: quality ({protocol.name})"
            quality.measure(arena, result, plan, baselines)
            yield (index + 0.5) / len(variant_ids), f"{variant_id}: speed"
            speed.measure(arena, result, settings, runs)
            result.disk_mib = speed.disk_mib(arena, variant_id)
        except ArenaError as exc:
            result.error = str(exc)
        except Exception as exc:  # out of memory, a kernel error: this variant's row says so, the others stand
            log.exception("evaluating %s failed", variant_id)
            result.error = describe_failure("evaluating", exc)
            if is_oom(exc):
                arena.device.call(arena.manager.evict, variant_id)
        yield result


def check_variants(arena: Arena, variant_ids: list[str]) -> None:
    """Known ids, each once. Each variant runs in a comparison of its own, so a comparison's limit on how many
    variants it holds does not apply: every default variant can be evaluated in one go."""
    arena.validate(speed.SPEED_PROMPT, list(variant_ids[:1]))  # an empty choice is refused with its usual line
    if len(set(variant_ids)) != len(variant_ids):
        raise InvalidRequest("the same variant is listed twice; list each variant once")
    for variant_id in variant_ids:
        arena.validate(speed.SPEED_PROMPT, [variant_id])


def sweep_rows(steps: Iterator, row_type: type, progress=None, ends_early: Callable[[object], bool] = lambda row: False
               ) -> list:
    """A sweep's rows (depth, serving) from its job's steps, which are rows of row_type and (fraction, message)
    progress: progress is reported as it comes, and the sweep ends after a row for which ends_early is true (a
    Stop, checked where the sweep may end)."""
    report = progress or (lambda fraction, message: None)
    rows: list = []
    try:
        for step in steps:
            if isinstance(step, row_type):
                rows.append(step)
                if ends_early(step):
                    break
            else:
                report(*step)
    finally:
        steps.close()
    report(1.0, "done")
    return rows
