"""What an evaluation feeds each model: the protocol (sliding, llamacpp, trace) applied to the held-out text or the
prompt file, as pieces of token ids whose scored positions line up between a variant and its baseline."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from demo.backends import LoadedVariant
from demo.config import REPO_ROOT
from demo.errors import ArenaError, InvalidRequest
from demo.measuring import metrics, protocols
from demo.running.runner import Arena
from demo.settings import prompt_ids

EVALUATION_FILE = REPO_ROOT / "assets" / "evaluation.txt"
PROMPTS_FILE = REPO_ROOT / "assets" / "blind_prompts.json"  # the blind test's prompts: trace's default
PROTOCOLS = ("sliding", "llamacpp", "trace")
TRACE_ANSWER_TOKENS = 64


@dataclass(frozen=True)
class Protocol:
    """Which protocol scores quality, with its settings."""

    name: str = "sliding"  # one of PROTOCOLS
    ctx: int = protocols.LLAMACPP_CTX  # llamacpp: tokens per chunk (llama.cpp's n_ctx)
    prompts_file: Path = PROMPTS_FILE  # trace: {"prompts": [...]} JSON, or a text file with one prompt a line

    def check(self) -> None:
        if self.name not in PROTOCOLS:
            raise InvalidRequest(f"unknown protocol '{self.name}': choose one of {', '.join(PROTOCOLS)}")
        if self.name == "llamacpp" and self.ctx < protocols.MIN_CTX:  # refused before any model loads
            raise InvalidRequest(f"--ctx must be at least {protocols.MIN_CTX} tokens, got {self.ctx}")
        if self.name == "trace" and not self.prompts_file.is_file():
            raise InvalidRequest(f"prompt file '{self.prompts_file.name}' not found")

    def prompts(self) -> list[str]:
        raw = self.prompts_file.read_text(encoding="utf-8")
        found = json.loads(raw)["prompts"] if self.prompts_file.suffix == ".json" else raw.splitlines()
        found = [p.strip() for p in found if p.strip()]
        if not found:
            raise InvalidRequest(f"prompt file '{self.prompts_file.name}' holds no prompt")
        return found


class Plan:
    """One evaluation's protocol applied to its text or prompts: the pieces each model of a base is fed.

    Under trace, the baseline's answers are generated once per baseline (prepare), through the app's own path,
    before any scoring: generating takes the device's turn itself."""

    def __init__(self, protocol: Protocol, text: str):
        self.protocol, self.text = protocol, text
        self.answers: dict[str, list[tuple[str, str]]] = {}  # baseline id -> [(prompt, its greedy answer)]

    def prepare(self, arena: Arena, baseline_id: str | None) -> None:
        if self.protocol.name != "trace" or baseline_id is None or baseline_id in self.answers:
            return
        settings = arena.settings(max_new_tokens=TRACE_ANSWER_TOKENS)  # greedy: the models file's default
        answers = []
        for prompt in self.protocol.prompts():
            [record] = arena.compare_records(prompt, [baseline_id], settings)
            if record["error"]:
                raise ArenaError(f"the baseline's trace answer failed: {record['error']}")
            answers.append((prompt, record["text"]))
        self.answers[baseline_id] = answers

    def pieces(self, tokenizer, baseline_id: str | None) -> list[protocols.Piece]:
        if self.protocol.name == "llamacpp":
            return protocols.llamacpp(ids_of(tokenizer, self.text), self.protocol.ctx, tokenizer.bos_token_id)
        if self.protocol.name == "trace":
            if baseline_id is None:
                raise InvalidRequest("the trace protocol scores the baseline's answers; this variant has no baseline")
            return [protocols.answer(prompt_ids(tokenizer, prompt), answer_ids_of(tokenizer, answer))
                    for prompt, answer in self.answers[baseline_id] if answer]
        return protocols.sliding(ids_of(tokenizer, self.text))

    def note(self, tokenizer, pieces: list[protocols.Piece]) -> str | None:
        if self.protocol.name == "llamacpp":
            return (f"{len(pieces)} chunks of {self.protocol.ctx} tokens, each starting with BOS = the tokenizer's "
                    f"bos_token {tokenizer.bos_token!r} (id {tokenizer.bos_token_id})")
        if self.protocol.name == "trace":
            return f"{len(pieces)} baseline answers of at most {TRACE_ANSWER_TOKENS} tokens"
        return None


def piece_log_probs(loaded: LoadedVariant, pieces: list[protocols.Piece]) -> list[torch.Tensor]:
    """Per piece: the scored rows' log-probabilities [scored, vocab], float32."""
    # a scored row is predicted as generation predicts it: the tokens before the first one form the prompt
    return [metrics.log_probs(loaded.logits(piece.ids, piece.first_row + 1)[piece.rows]) for piece in pieces]


def ids_of(tokenizer, text: str) -> list[int]:
    return [int(i) for i in tokenizer(text)["input_ids"]]


def answer_ids_of(tokenizer, answer: str) -> list[int]:
    """An answer's text as tokens, as they follow the chat prompt: no special token added."""
    return [int(i) for i in tokenizer(answer, add_special_tokens=False)["input_ids"]]
