"""Streaming generation of one loaded variant: per-token timestamps and a stop event."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from demo.device import DeviceThread


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

    def generate_kwargs(self) -> dict[str, Any]:
        if not self.do_sample:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False, "temperature": None, "top_p": None,
                    "top_k": None}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": None}


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    at_s: float  # perf_counter when generate handed the token over (after the device sync in .cpu())


def encode_prompt(tokenizer, prompt: str, device: str) -> dict[str, torch.Tensor]:
    """Token ids for a prompt, through the chat template when the model has one."""
    if getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_dict=True, return_tensors="pt")
    else:
        enc = tokenizer(prompt, return_tensors="pt")
    return {key: value.to(device) for key, value in enc.items() if key in ("input_ids", "attention_mask")}


class _TimestampStreamer(BaseStreamer):
    """Receives each new token from generate() and timestamps it; decoding happens on the reader's side."""

    def __init__(self, events: queue.SimpleQueue):
        self._events, self._prompt_seen = events, False

    def put(self, value: torch.Tensor) -> None:
        at_s = time.perf_counter()
        if not self._prompt_seen:  # generate() first pushes the prompt ids
            self._prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            self._events.put(TokenEvent(int(token_id), at_s))

    def end(self) -> None:
        pass


class _StopOnEvent(StoppingCriteria):
    def __init__(self, stop: threading.Event):
        self._stop = stop

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self._stop.is_set(), dtype=torch.bool, device=input_ids.device)


_DONE = object()


class StreamingGeneration:
    """Runs model.generate as one job on the device thread; iterate to receive TokenEvents as they come.

    started_s is read on the device thread just before generate() is called, so time spent waiting
    for the device is not counted. Setting stop (or close()) ends the generation after the current
    token; close() waits for the job so the device is free afterwards.
    """

    def __init__(self, device: DeviceThread, model, inputs: dict[str, torch.Tensor], settings: GenerationSettings,
                 pad_token_id: int, stop: threading.Event | None = None):
        self.stop = stop or threading.Event()
        self.started_s: float | None = None
        self.error: BaseException | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._kwargs = {**inputs, **settings.generate_kwargs(), "pad_token_id": pad_token_id,
                        "streamer": _TimestampStreamer(self._events),
                        "stopping_criteria": StoppingCriteriaList([_StopOnEvent(self.stop)])}
        self._model, self._seed = model, settings.seed if settings.do_sample else None
        self._started = threading.Event()
        self._job = device.submit(self._run)
        self._started.wait()

    def _run(self) -> None:
        try:
            if self._seed is not None:
                torch.manual_seed(self._seed)
            self.started_s = time.perf_counter()
            self._started.set()
            if not self.stop.is_set():
                with torch.inference_mode():
                    self._model.generate(**self._kwargs)
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
