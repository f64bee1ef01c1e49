"""Generation settings, prompt token ids, and streaming one variant's generation off the device thread."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from demo.device import DeviceThread

if TYPE_CHECKING:
    from demo.backends.base import LoadedVariant


@dataclass(frozen=True)
class GenerationSettings:
    """The same settings go to every variant; greedy unless do_sample with an explicit seed."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int | None = None

    def describe(self) -> dict[str, Any]:
        """The settings as recorded with results: sampling parameters only where they apply."""
        if not self.do_sample:
            return {"decoding": "greedy", "max_new_tokens": self.max_new_tokens}
        return {"decoding": "sample", "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "seed": self.seed}


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    at_s: float  # perf_counter when the runtime handed the token over (after any device sync)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids for a prompt, through the chat template when the model has one.

    Always the base model's own tokenizer, whatever runtime runs the variant, so every variant gets
    exactly the same ids and the baseline's answer can be teacher-forced through any of them.
    """
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    return [int(i) for i in ids]


def decode_whole(tokenizer, token_ids: list[int]) -> str:
    """The text of token_ids without a trailing partial character.

    A character split across tokens (an emoji, say) decodes to U+FFFD until its last token arrives;
    an answer cut there must not end in a broken character, so the incomplete tail is left out.
    """
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    for drop in range(1, min(4, len(token_ids)) + 1):  # a UTF-8 character spans at most 4 byte tokens
        if not text.endswith("\ufffd"):
            break
        text = tokenizer.decode(token_ids[:-drop], skip_special_tokens=True)
    return text


_DONE = object()


class StreamingGeneration:
    """Runs one variant's generate() as a job on the device thread; iterate to receive TokenEvents.

    started_s is read on the device thread just before generation starts, so time spent waiting for
    the device is not counted. Setting stop (or close()) ends the generation after the current token;
    close() waits for the job so the device is free afterwards.
    """

    def __init__(self, device: DeviceThread, loaded: LoadedVariant, ids: list[int], settings: GenerationSettings,
                 stop: threading.Event | None = None):
        self.stop = stop or threading.Event()
        self.started_s: float | None = None
        self.error: BaseException | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._loaded, self._ids, self._settings = loaded, ids, settings
        self._started = threading.Event()
        self._job = device.submit(self._run)
        self._started.wait()

    def _run(self) -> None:
        try:
            self.started_s = time.perf_counter()
            self._started.set()
            if not self.stop.is_set():
                self._loaded.generate(self._ids, self._settings, self.stop,
                                      lambda token_id, at_s: self._events.put(TokenEvent(token_id, at_s)))
        except BaseException as exc:  # handed to the reader: OOM and kernel errors belong to this variant
            self.error = exc
        finally:
            self._started.set()
            self._events.put(_DONE)

    def __iter__(self) -> Iterator[TokenEvent]:
        while (event := self._events.get()) is not _DONE:
            yield event
        self._job.result()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.stop.set()
        self._job.result()
