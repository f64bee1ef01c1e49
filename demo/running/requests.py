"""What a comparison request may ask for: the prompt, the variant ids and the generation settings, each
refused with a message that says what is allowed (InvalidRequest)."""

from __future__ import annotations

import math
import re
from typing import Any

from demo.config import ArenaConfig
from demo.errors import InvalidRequest
from demo.settings import GenerationSettings

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls and DEL, but tab, LF and CR
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # how undecodable bytes reach a str (surrogateescape, JSON)


def checked_settings(config: ArenaConfig, max_new_tokens: int | None = None, do_sample: bool = False,
                     temperature: float | None = None, top_p: float | None = None,
                     seed: int | None = None) -> GenerationSettings:
    """Settings with models.yaml defaults filled in, validated against its limits."""
    defaults, limit = config.generation, config.limits.max_new_tokens
    max_new_tokens = defaults.max_new_tokens if max_new_tokens is None else max_new_tokens
    temperature = defaults.temperature if temperature is None else temperature
    top_p = defaults.top_p if top_p is None else top_p
    if not isinstance(do_sample, bool):
        raise InvalidRequest(f"do_sample must be true or false, got {short(do_sample)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise InvalidRequest(f"max_new_tokens must be a whole number from 1 to {limit}, got {short(max_new_tokens)}")
    if not 1 <= max_new_tokens <= limit:
        raise InvalidRequest(f"max_new_tokens must be a whole number from 1 to {limit}, got {max_new_tokens}")
    if not _number_in(temperature, 0.0, 2.0, low_open=True):
        raise InvalidRequest(f"temperature must be a number in (0, 2], got {short(temperature)}")
    if not _number_in(top_p, 0.0, 1.0, low_open=True):
        raise InvalidRequest(f"top_p must be a number in (0, 1], got {short(top_p)}")
    # 2**32 - 1 is llama.cpp's "pick a random seed": the highest seed every runtime honours is one less
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32 - 1):
        raise InvalidRequest(f"seed must be a whole number from 0 to {2**32 - 2}, got {short(seed)}")
    if do_sample and seed is None:
        raise InvalidRequest("sampling needs an explicit seed, so that every variant draws the same way")
    return GenerationSettings(max_new_tokens, do_sample, float(temperature), float(top_p), seed)


def check_request(config: ArenaConfig, prompt: str, variant_ids: list[str]) -> None:
    """Reject a request that is not runnable, with a message that says what is allowed."""
    validate_prompt(prompt, config.limits.max_prompt_chars)
    if not isinstance(variant_ids, (list, tuple)) or not all(isinstance(v, str) for v in variant_ids):
        raise InvalidRequest(f"variants must be a list of variant ids, got {short(variant_ids)}")
    if not variant_ids:
        raise InvalidRequest("no variant chosen: tick at least one")
    unknown = [v for v in variant_ids if v not in config.variants]
    if unknown:
        raise InvalidRequest(f"unknown variant id(s): {', '.join(short(v) for v in unknown)}; "
                             f"known: {known_ids(list(config.variants))}")
    if len(set(variant_ids)) != len(variant_ids):
        raise InvalidRequest("the same variant is listed twice; list each variant once")
    if len(variant_ids) > config.limits.max_variants:
        raise InvalidRequest(f"{len(variant_ids)} variants chosen; the limit is {config.limits.max_variants}")


KNOWN_IDS_SHOWN = 8  # an error line stays short: the first ones, then where the whole list is


def known_ids(variant_ids: list[str]) -> str:
    """The models file's ids for an error line: all of a short list, else the first few and how to see the rest."""
    if len(variant_ids) <= KNOWN_IDS_SHOWN:
        return ", ".join(variant_ids)
    return (f"{', '.join(variant_ids[:KNOWN_IDS_SHOWN])} and {len(variant_ids) - KNOWN_IDS_SHOWN} more "
            "(python -m demo compare --list)")


def validate_prompt(prompt: Any, max_chars: int) -> None:
    if not isinstance(prompt, str):
        raise InvalidRequest(f"the prompt must be text, got {type(prompt).__name__}")
    if len(prompt) > max_chars:  # first: a several-MB prompt is rejected before any scan of it
        raise InvalidRequest(f"the prompt has {len(prompt):,} characters; the limit is {max_chars:,}")
    if not prompt.strip():
        raise InvalidRequest("the prompt is empty: type a question or pick an example")
    if _SURROGATE.search(prompt):
        raise InvalidRequest("the prompt is not valid UTF-8 text (it contains undecodable bytes)")
    if match := _CONTROL.search(prompt):
        raise InvalidRequest(f"the prompt contains a control character (U+{ord(match.group()):04X}); "
                             "only printable text, tabs and line breaks are allowed")


def short(value: Any, limit: int = 60) -> str:
    """A value as a message quotes it: at most `limit` characters."""
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "…"


def _number_in(value: Any, low: float, high: float, low_open: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (low < value if low_open else low <= value) and value <= high
