"""The streamed answer of an OpenAI-compatible /v1/completions endpoint: server-sent events into chunks.

Every engine the arena talks to (vLLM, SGLang, TGI, llama.cpp's servers) streams `data: {json}` events
ending with `data: [DONE]`; they differ in what a chunk carries besides text (usage counts, logprobs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from demo.errors import EndpointError


@dataclass(frozen=True)
class Chunk:
    """One streamed event of the answer."""

    text: str
    logprob_tokens: int | None  # tokens this chunk carries by its logprob entries; None: not sent
    completion_tokens: int | None  # the engine's usage count of answer tokens so far; None: not sent
    finish_reason: str | None  # "stop", "length", ... on the last chunk of the answer


def events(lines: Iterable[str]) -> Iterator[dict[str, Any] | None]:
    """Each event's JSON payload, then None for `[DONE]`; comments (keep-alive pings) and other fields skipped."""
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
            continue
        if line.strip() or not data:  # `event:`, `id:`, `: ping` lines, or a blank line with nothing pending
            continue
        payload, data = "\n".join(data), []
        if payload.strip() == "[DONE]":
            yield None
            return
        yield _decode(payload)
    if data:  # a last event without its blank line
        payload = "\n".join(data)
        yield None if payload.strip() == "[DONE]" else _decode(payload)


def chunk(payload: dict[str, Any]) -> Chunk:
    """One completions chunk; an error event or a shape no engine sends raises EndpointError."""
    if not isinstance(payload, dict):
        raise EndpointError("malformed stream: an event is not a JSON object")
    if "error" in payload:
        raise EndpointError(f"the engine reported an error mid-answer: {_error_text(payload['error'])}")
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
    count = usage.get("completion_tokens")
    choices = payload.get("choices")
    if not isinstance(choices, list):
        raise EndpointError("malformed stream: an event has no 'choices' list")
    if not choices:  # vLLM's and SGLang's usage-only last chunk
        return Chunk("", None, count if isinstance(count, int) else None, None)
    choice = choices[0]
    text = choice.get("text") if isinstance(choice, dict) else None
    if not isinstance(text, str):
        raise EndpointError("malformed stream: a choice has no 'text' (is this a /v1/completions endpoint?)")
    logprobs = choice.get("logprobs")
    tokens = logprobs.get("tokens") if isinstance(logprobs, dict) else None
    return Chunk(text, len(tokens) if isinstance(tokens, list) else None,
                 count if isinstance(count, int) else None, choice.get("finish_reason"))


def _decode(payload: str) -> dict[str, Any]:
    try:
        return json.loads(payload)
    except ValueError:
        raise EndpointError(f"malformed stream: an event is not JSON ({_clip(payload)!r})") from None


def _error_text(error: Any) -> str:
    message = error.get("message") if isinstance(error, dict) else error
    return _clip(str(message))


def _clip(text: str, limit: int = 80) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "…"
