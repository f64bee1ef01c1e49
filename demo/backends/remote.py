"""The remote runtime: a variant served by an engine elsewhere (vLLM, SGLang, TGI, llama.cpp's servers)
through its OpenAI-compatible /v1/completions, compared like a local one.

Only the base model's tokenizer is loaded here: it applies the chat template to make the prompt ids every
variant gets (sent as ids where the engine takes them, else as their text), and reads the answer's text
back into ids for fidelity. Timings are taken at the client, as `vllm bench serve` takes them; memory is
what the engine publishes, with its source, or nothing. Teacher forcing uses the engine's top-k prompt
log-probabilities (completions echo), so the KL divergence is a lower bound (demo.measuring.fidelity_topk).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

from demo.artifacts import sources
from demo.backends.base import LoadedVariant, OnToken
from demo.backends.common import first_line
from demo.backends.remote_http import TOKEN_ID_PROMPTS, EndpointClient
from demo.config import BaseModel, Variant
from demo.errors import EndpointError, VariantUnavailable
from demo.measuring.fidelity_topk import TopLogProbs, Unavailable, known_by_id
from demo.settings import GenerationSettings
from demo.measuring.trackers import Memory

TOP_K = 20  # prompt log-probabilities asked for per position (vLLM's default --max-logprobs is 20)
# Engines whose /v1/completions returns prompt log-probabilities with echo; TGI's and llama-server's do not.
ECHO_ENGINES = ("llamacpp-python", "vllm", "sglang")
# Engines asked to name the echoed tokens by id rather than by text (vLLM's return_tokens_as_token_ids): exact ids,
# no text two tokens share (remote_http sends the flag).
ID_NAMING_ENGINES = ("vllm",)
NOT_REPORTED = "not-reported"
ENGINE_REPORTED = "engine-reported"


class RemoteVariant(LoadedVariant):
    runtime = "remote"
    full_distributions = False

    def __init__(self, variant: Variant, client: EndpointClient, tokenizer: Any, stop_token_ids: frozenset[int],
                 facts: dict[str, Any], engine_adds_bos: bool = False):
        super().__init__(variant, tokenizer, "remote", 0, stop_token_ids, None)  # no weights in this process
        self.client, self._facts, self._last_run = client, facts, {}
        self.engine_adds_bos = engine_adds_bos  # a text prompt gets the engine's own BOS in front
        self._engine_texts: _EngineTexts | None = None
        self._round_trip_ms: float | None = None  # measured just before a run, outside its clock
        self._cancelled = False  # cancel() ended this run's wait: the engine is not asked for its memory after it

    def generate(self, prompt_ids: list[int], settings: GenerationSettings, stop: threading.Event,
                 on_token: OnToken) -> None:
        run = _Run(self.tokenizer, on_token, self._stop_token())
        self._last_run = {}
        run.round_trip_ms, self._round_trip_ms = self._round_trip_ms, None
        try:
            for at_s, chunk in self.client.stream(self.request_prompt(prompt_ids), _sampling(settings), stop):
                run.add(at_s, chunk)
        except EndpointError as exc:
            self.client.reset()  # a broken pooled connection must not fail the next request too
            if stop.is_set():  # the connection was shut down on purpose (cancel): a stopped answer, not a failure
                return
            partial = f"; the answer so far ({run.emitted} tokens) is kept, marked partial" if run.emitted else ""
            raise EndpointError(self._scrub(f"{exc}{partial}")) from None
        finally:
            self._last_run = run.facts()

    def top_log_probs(self, ids: list[int], first: int) -> TopLogProbs | Unavailable:
        engine = self.variant.endpoint.engine
        if engine not in ECHO_ENGINES:
            return Unavailable(f"not available: this engine ({engine}) returns no prompt log-probabilities")
        try:
            answer = self.client.echo_log_probs(self.request_prompt(ids), TOP_K)
        except EndpointError as exc:
            return Unavailable(self._scrub(f"not available: {exc}"))
        if self._engine_texts is None:
            self._engine_texts = _EngineTexts(self.tokenizer)
        return self._engine_texts.read(engine, ids, first, answer, self.tokenizer.bos_token_id)

    def logits(self, ids: list[int], prompt_tokens: int | None = None, first_row: int = 0):
        raise VariantUnavailable("not available: a remote engine gives top-k log-probabilities, not full logits")

    def bare_token_times(self, prompt_ids: list[int], settings: GenerationSettings) -> list[float]:
        times: list[float] = []
        self.generate(prompt_ids, settings, threading.Event(), lambda token_id, at_s: times.append(at_s))
        return times

    def cancel(self) -> None:
        """Shut the engine's connections down: a wait for the first token (or any chunk) ends at once."""
        self._cancelled = True
        self.client.abort()

    def free(self) -> None:
        self.client.close()

    def details(self) -> dict[str, Any]:
        return {"runtime": self.runtime, **self._facts}

    def run_facts(self) -> dict[str, Any]:
        return dict(self._last_run)

    @contextmanager
    def track_memory(self) -> Iterator[Any]:
        """The engine's own memory figures, read after the run; this process's RSS is not the variant's.

        Entered before the run's clock starts, so the network round trip is timed here, on its own."""
        self._cancelled = False
        try:
            self._round_trip_ms = round(self.client.round_trip_ms(), 2)
        except EndpointError as exc:
            self.client.reset()
            raise EndpointError(self._scrub(str(exc))) from None
        holder = SimpleNamespace(result=None)  # read like a MemoryTracker: .result once the block ends
        try:
            yield holder
        finally:
            reading = None if self._cancelled else self.client.memory()  # a stalled engine is not asked again
            if reading is None:
                holder.result = Memory(NOT_REPORTED, None, None, None, None, None)
            else:
                self._last_run["memory_source"] = reading.source
                holder.result = Memory(ENGINE_REPORTED, reading.weights_mib, None, reading.total_mib, None, None)

    def request_prompt(self, ids: list[int]) -> list[int] | str:
        """The prompt as this engine is sent it: the ids themselves, or their text."""
        if self.variant.endpoint.engine in TOKEN_ID_PROMPTS:
            return list(ids)
        return text_prompt(self.tokenizer, ids, self.engine_adds_bos)

    def _stop_token(self) -> int | None:
        eos = self.tokenizer.eos_token_id
        return eos if eos in self.stop_token_ids else min(self.stop_token_ids, default=None)

    def _scrub(self, text: str) -> str:
        return self.client.scrub(text)


class _Run:
    """One streamed answer: turns chunks into base-tokenizer token callbacks and keeps the engine's counts."""

    def __init__(self, tokenizer: Any, on_token: OnToken, stop_token: int | None):
        self.tokenizer, self.on_token, self.stop_token = tokenizer, on_token, stop_token
        self.emitted, self.logprob_tokens, self.usage_tokens = 0, None, None
        self.first_s = self.last_s = None
        self.finish_reason: str | None = None
        self.round_trip_ms: float | None = None

    def add(self, at_s: float, chunk) -> None:
        carries = bool(chunk.text) or bool(chunk.logprob_tokens)
        if carries:
            self.first_s = self.first_s or at_s
            self.last_s = at_s
        if chunk.logprob_tokens is not None:
            self.logprob_tokens = (self.logprob_tokens or 0) + chunk.logprob_tokens
        if chunk.completion_tokens is not None:
            self.usage_tokens = chunk.completion_tokens
        # Each chunk's text as base-tokenizer ids, handed over at the chunk's arrival: its text round-trips
        # exactly, and the first token's time is the first chunk that carries one.
        for token_id in self.tokenizer.encode(chunk.text, add_special_tokens=False) if chunk.text else ():
            self._emit(token_id, at_s)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
            if chunk.finish_reason == "stop" and self.stop_token is not None:
                self._emit(self.stop_token, at_s)  # the end-of-answer token, counted as the local runtimes do

    def _emit(self, token_id: int, at_s: float) -> None:
        self.on_token(int(token_id), at_s)
        self.emitted += 1

    def facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"timings": "measured at the client", "network_round_trip_ms": self.round_trip_ms,
                                 "finish_reason": self.finish_reason}
        if self.finish_reason is not None:
            facts["truncated"] = self.finish_reason == "length"
        counted = ("usage", self.usage_tokens) if self.usage_tokens is not None else (
            ("logprob entries", self.logprob_tokens) if self.logprob_tokens is not None else (None, None))
        facts["tokens_counted_by"] = counted[0] or "base tokenizer"
        if counted[0] is not None:
            span = (self.last_s - self.first_s) if self.first_s is not None else 0.0
            facts["new_tokens"] = counted[1]
            facts["decode_tokens_per_s"] = (counted[1] - 1) / span if span > 0 and counted[1] > 1 else None
        return facts


class _EngineTexts:
    """Token texts the way llama.cpp-style engines write them in top_logprobs (special tokens empty, broken
    UTF-8 dropped), and the way back: text -> id where exactly one id reads so."""

    def __init__(self, tokenizer: Any):
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=True)
        self.texts = [t.replace("\ufffd", "") for t in texts]
        ids: dict[str, int | None] = {}
        for token_id, text in enumerate(self.texts):
            ids[text] = None if text in ids else token_id  # None: the text names several ids
        self.ids = ids

    def text_of(self, token_id: int) -> str:
        return self.texts[token_id] if 0 <= token_id < len(self.texts) else ""

    def read(self, engine: str, ids: list[int], first: int, answer: dict, bos: int | None) -> TopLogProbs | Unavailable:
        """Positions first..len(ids)-1 from an echo answer, after checking the engine saw the same tokens."""
        logprobs, usage = answer["logprobs"], answer["usage"]
        if usage.get("prompt_tokens") not in (None, len(ids)):
            return Unavailable(f"not available: the engine read the teacher-forced text as {usage['prompt_tokens']} "
                               f"tokens, the base tokenizer as {len(ids)}")
        entries = _entry_positions(engine, ids, bos)
        tokens, top = logprobs.get("tokens") or [], logprobs.get("top_logprobs") or []
        forced = logprobs.get("token_logprobs") or []
        by_id = engine in ID_NAMING_ENGINES
        name_of, id_of = (_id_name, _named_id) if by_id else (self.text_of, self.ids.get)
        by_position: dict[int, int] = {}
        for entry, (described, predicted) in enumerate(entries[:len(tokens)]):
            if name_of(described) != tokens[entry] and (by_id or "\ufffd" not in self.text_of(described)):
                return Unavailable(f"not available: the engine tokenized the teacher-forced text differently "
                                   f"from the base tokenizer (token {described!r})")
            by_position[predicted] = entry
        positions = range(first, len(ids))
        missing = [p for p in positions if p not in by_position or not top[by_position[p]]]
        if missing:
            return Unavailable(f"not available: the engine returned no log-probabilities for position {missing[0]}")
        known, top1_text, top1_id, forced_lp = [], [], [], []
        for position in positions:
            entry = by_position[position]
            table = top[entry]
            best = max(table, key=table.get)
            known.append({id_of(name): lp for name, lp in table.items() if id_of(name) is not None} if by_id
                         else known_by_id(table, self.ids))
            top1_id.append(id_of(best))
            top1_text.append(self.text_of(top1_id[-1]) if by_id and top1_id[-1] is not None else best)
            same = entries[entry][0] == ids[position]  # the entry describes the token it predicts
            forced_lp.append(forced[entry] if same else known[-1].get(ids[position]))
        return TopLogProbs(known, top1_text, top1_id, forced_lp, TOP_K, self.text_of)


def _entry_positions(engine: str, ids: list[int], bos: int | None) -> list[tuple[int, int]]:
    """Per echo entry: (the token id it names, the position whose prediction its top_logprobs hold).

    OpenAI's convention (vLLM, SGLang): entry i names token i and holds its prediction (entry 0, the first token,
    holds none). llama-cpp-python
    (0.3.x, read from its llama.py) drops a leading BOS, skips every BOS entry, and its rows are the
    distributions *after* each kept token's predecessor only when the sequence began with BOS; without a
    leading BOS, entry i names token i but holds the prediction of token i + 1.
    """
    if engine != "llamacpp-python":
        return [(token, i) for i, token in enumerate(ids)]
    offset = 1 if ids and bos is not None and ids[0] == bos else 0
    kept = ids[offset:]
    return [(token, idx + 1) for idx, token in enumerate(kept) if token != bos and idx + 1 < len(ids)]


def _id_name(token_id: int) -> str:
    """A token as an engine asked for ids names it (vLLM's return_tokens_as_token_ids)."""
    return f"token_id:{token_id}"


def _named_id(name: str) -> int | None:
    head, _, number = name.partition(":")
    return int(number) if head == "token_id" and number.isdigit() else None


def text_prompt(tokenizer: Any, ids: list[int], engine_adds_bos: bool) -> str:
    """The prompt ids as the text an engine that tokenizes for itself is sent, so that it reads exactly ids.

    Special tokens stay as their text (the engine parses them back). An engine that puts its own BOS in
    front of a text prompt (llama-cpp-python where the GGUF asks for one, TGI where the tokenizer does)
    would read a templated prompt that already opens with the BOS as two BOS: that leading BOS is left to
    the engine. SmolLM2's template opens with <|im_start|>, its BOS text, and its GGUF adds none: kept."""
    bos = tokenizer.bos_token_id
    if engine_adds_bos and bos is not None and ids[:1] == [bos]:
        ids = ids[1:]
    return tokenizer.decode(ids, skip_special_tokens=False)


def engine_adds_bos(client: EndpointClient, tokenizer: Any) -> bool:
    """Whether the engine puts a BOS in front of a text prompt: as its own tokenizer endpoint shows where it has
    one (llama-cpp-python), else as the base tokenizer does on plain text (what TGI runs)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    probe = "a"
    tokens = client.text_tokens(probe)
    if tokens is None:
        tokens = tokenizer(probe)["input_ids"]
    return tokens[:1] == [bos]


def _sampling(settings: GenerationSettings) -> dict[str, Any]:
    if not settings.do_sample:
        return {"max_tokens": settings.max_new_tokens, "temperature": 0.0, "top_p": 1.0}
    return {"max_tokens": settings.max_new_tokens, "temperature": settings.temperature, "top_p": settings.top_p,
            "seed": settings.seed}


def _tokenizer_location(base: BaseModel) -> tuple[str, str | None]:
    """The base's tokenizer: a remote-only base names a local folder holding just the tokenizer files, or a
    Hub repository; weights are never loaded."""
    source = base.source
    if source.kind == "local" and isinstance(source.path, Path) and source.path.is_dir():
        return str(source.path), None
    weights = sources.resolve(base)
    return weights.location, weights.revision


def load(variant: Variant, base: BaseModel) -> RemoteVariant:
    """Load the base tokenizer, check the endpoint answers and serves the model, and record what it is."""
    from transformers import AutoTokenizer, GenerationConfig

    location, revision = _tokenizer_location(base)
    common = {"revision": revision, "trust_remote_code": base.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **common)
    except (OSError, ValueError) as exc:
        raise VariantUnavailable(f"not available: the tokenizer of '{base.label}' could not be read "
                                 f"({first_line(exc)})") from None
    try:
        eos = GenerationConfig.from_pretrained(location, **common).eos_token_id
    except OSError:  # a tokenizer-only folder: the tokenizer's own end token
        eos = tokenizer.eos_token_id
    stop_ids = frozenset(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    client = EndpointClient(variant.endpoint)
    try:
        round_trip_ms = client.round_trip_ms()
    except EndpointError as exc:
        client.close()
        raise EndpointError(client.scrub(f"not available: {exc}")) from None
    endpoint = variant.endpoint
    facts = {"engine": endpoint.engine, "served_model": endpoint.model,
             **({"endpoint": endpoint.url} if endpoint.public_url else {}),  # the address only where declared public
             "declared_quantization": dict(variant.declared or {}), "timings": "measured at the client",
             "network_round_trip_ms": round(round_trip_ms, 2), "loaded_here": "the base tokenizer only"}
    if endpoint.engine in TOKEN_ID_PROMPTS:
        return RemoteVariant(variant, client, tokenizer, stop_ids, facts)
    adds_bos = engine_adds_bos(client, tokenizer)
    facts["prompt_sent_as"] = "text, its leading BOS left to the engine" if adds_bos else "text"
    return RemoteVariant(variant, client, tokenizer, stop_ids, facts, adds_bos)
