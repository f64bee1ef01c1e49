"""Talking to one remote endpoint over HTTP: reachability and round trip, the streamed answer, prompt
log-probabilities (echo), and the memory figures an engine publishes. Timeouts come from the models file.

Failures become EndpointError with one line that names what went wrong, never the key: the key travels
only in the Authorization header, which no message, record or log line includes. TLS is verified
(httpx's default, never switched off).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Iterator

import httpx

from demo.backends import remote_stream
from demo.backends.remote_stream import Chunk
from demo.config import Endpoint
from demo.errors import EndpointError, VariantUnavailable

# Engines that take the prompt as token ids in /v1/completions; the others get the ids decoded to text
# (special tokens kept), which they tokenize themselves: llama-cpp-python's server accepts only strings.
TOKEN_ID_PROMPTS = ("vllm", "sglang", "llamacpp")
# Sampling switched off beyond temperature / top-p, as in the local runtimes (llama.cpp's servers default
# to top-k 40, min-p 0.05 and, in llama-cpp-python, a repeat penalty of 1.1).
_PLAIN_SAMPLING = {"llamacpp": {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0},
                   "llamacpp-python": {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0},
                   "vllm": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0},
                   "sglang": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}}
# vLLM and SGLang stream usage counts only when asked (vLLM: on every chunk with continuous_usage_stats).
_USAGE = {"vllm": {"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
          "sglang": {"stream_options": {"include_usage": True}},
          "llamacpp": {"stream_options": {"include_usage": True}}}


# vLLM names the echoed tokens by id when asked (exact, where token texts can be shared or special); the reader is
# demo.backends.remote (ID_NAMING_ENGINES).
_ECHO_BY_ID = {"vllm": {"return_tokens_as_token_ids": True}}


@dataclass(frozen=True)
class EngineMemory:
    weights_mib: float | None
    total_mib: float | None  # weights + KV cache reserved, where the engine says
    source: str  # where the figure came from, shown with it


class EndpointClient:
    """One endpoint of the models file; the URL never comes from a request."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        headers, self._key = {}, None
        if endpoint.api_key_env:
            key = os.environ.get(endpoint.api_key_env)
            if not key:
                raise VariantUnavailable(f"not available: the environment variable {endpoint.api_key_env} (this "
                                         "endpoint's key) is not set")
            headers["Authorization"], self._key = f"Bearer {key}", key
        self._headers = headers
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()  # this client's open connections
        self._http = self._client()
        self.root = re.sub(r"/v1$", "", endpoint.url)  # engine extras (/metrics, /get_server_info) live there

    def _client(self) -> httpx.Client:
        timeout = httpx.Timeout(self.endpoint.total_timeout_s, connect=self.endpoint.connect_timeout_s,
                                read=self.endpoint.first_token_timeout_s)
        return httpx.Client(headers=self._headers, timeout=timeout, follow_redirects=False,
                            event_hooks={"request": [self._traced]})

    def _traced(self, request: httpx.Request) -> None:
        request.extensions["trace"] = self._trace  # httpcore's trace extension: see each new connection

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            sock = info["return_value"].get_extra_info("socket")
            if sock is not None:
                self._sockets.add(sock)

    def abort(self) -> None:
        """End every wait on this endpoint now, from any thread: its connections are shut down, so a read
        blocked on an engine that sends nothing (not even headers) returns at once with the connection closed.
        Closing a socket would not wake a read blocked in another thread; shutting it down does."""
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed or shut down
                pass

    def close(self) -> None:
        self._http.close()

    def reset(self) -> None:
        """A fresh connection pool: after a failure, a stale kept-alive connection must not fail the next run."""
        self._http.close()
        self._http = self._client()

    def scrub(self, text: str) -> str:
        """Text with the key blanked out, in case an engine echoes it back in an error."""
        return text.replace(self._key, "***") if self._key else text

    def round_trip_ms(self) -> float:
        """One small request timed at the client: GET /models (TGI: /health), which also checks the endpoint
        is up and, where it lists models, that it serves this variant's model."""
        start = time.perf_counter()
        if self.endpoint.engine == "tgi":
            self._request("GET", f"{self.root}/health")
            return (time.perf_counter() - start) * 1e3
        listed = self._request("GET", f"{self.endpoint.url}/models")
        elapsed_ms = (time.perf_counter() - start) * 1e3
        try:
            served = [m["id"] for m in listed.json().get("data", [])]
        except (ValueError, AttributeError, KeyError, TypeError):
            raise EndpointError("the endpoint's /models answer is not the OpenAI model list") from None
        if served and self.endpoint.model not in served:
            raise EndpointError(f"the endpoint does not serve model '{self.endpoint.model}' "
                                f"(it serves: {', '.join(map(str, served[:5]))})")
        return elapsed_ms

    def stream(self, prompt: list[int] | str, body: dict[str, Any], stop: threading.Event) -> Iterator[tuple[float, Chunk]]:
        """The answer's chunks with their arrival time (perf_counter seconds) at the client, until [DONE].

        Setting stop closes the connection after the current chunk (the engine sees the client go away);
        abort() from another thread ends a wait for a chunk (or for the headers) at once.
        """
        deadline = time.perf_counter() + self.endpoint.total_timeout_s
        request = {"model": self.endpoint.model, "prompt": prompt, "stream": True, **body,
                   **_PLAIN_SAMPLING.get(self.endpoint.engine, {}), **_USAGE.get(self.endpoint.engine, {})}
        finished = False
        with self._guard("answer"):
            with self._http.stream("POST", f"{self.endpoint.url}/completions", json=request) as response:
                _check_status(response, read=True)
                if stop.is_set():  # stopped while the request went out: an abort() may have come before it
                    return
                for payload in remote_stream.events(response.iter_lines()):
                    now = time.perf_counter()
                    if payload is None:
                        return
                    parsed = remote_stream.chunk(payload)
                    finished = finished or parsed.finish_reason is not None
                    yield now, parsed
                    if stop.is_set():
                        return
                    if now > deadline:
                        raise EndpointError(f"timed out: the answer took longer than {self.endpoint.total_timeout_s:g} s "
                                            "(endpoint.timeouts.total)")
        if not finished:
            raise EndpointError("stream cut mid-answer: the connection closed before the answer ended")

    def echo_log_probs(self, prompt: list[int] | str, top_k: int) -> dict[str, Any]:
        """The prompt's own log-probabilities (completions with echo): OpenAI's legacy `logprobs` object
        (tokens, token_logprobs, top_logprobs as token text -> logprob) and the usage counts."""
        request = {"model": self.endpoint.model, "prompt": prompt, "max_tokens": 1, "echo": True,
                   "logprobs": top_k, "temperature": 0.0, **_PLAIN_SAMPLING.get(self.endpoint.engine, {}),
                   **_ECHO_BY_ID.get(self.endpoint.engine, {})}
        with self._guard("prompt log-probabilities"):
            answer = self._request("POST", f"{self.endpoint.url}/completions", json=request, total=True)
        try:
            payload = answer.json()
            return {"logprobs": payload["choices"][0]["logprobs"], "usage": payload.get("usage") or {}}
        except (ValueError, KeyError, IndexError, TypeError):
            raise EndpointError("the echo answer carries no logprobs") from None

    def text_tokens(self, text: str) -> list[int] | None:
        """How the engine tokenizes a text prompt, where it says: llama-cpp-python's /extras/tokenize tokenizes
        as its completions do (its own BOS included where the GGUF asks for one); None elsewhere or on failure."""
        if self.endpoint.engine != "llamacpp-python":
            return None
        try:
            tokens = self._request("POST", f"{self.root}/extras/tokenize",
                                   json={"model": self.endpoint.model, "input": text}).json()["tokens"]
        except (EndpointError, ValueError, KeyError, TypeError):
            return None
        return [int(t) for t in tokens] if isinstance(tokens, list) else None

    def memory(self) -> EngineMemory | None:
        """What the engine publishes about its memory, with the source; None where it publishes nothing."""
        reader = {"llamacpp": self._llamacpp_memory, "sglang": self._sglang_memory, "vllm": self._vllm_memory}
        if self.endpoint.engine not in reader:
            return None
        try:
            return reader[self.endpoint.engine]()
        except (EndpointError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            return None  # an engine version without the figure: "not reported", never a guess

    def _llamacpp_memory(self) -> EngineMemory | None:
        models = self._request("GET", f"{self.endpoint.url}/models").json()["data"]
        size = next(m.get("meta", {}).get("size") for m in models if m.get("id") == self.endpoint.model)
        return EngineMemory(size / 2**20, None, "llama-server /v1/models meta.size (the model's weights)") if size else None

    def _sglang_memory(self) -> EngineMemory | None:
        usage = self._request("GET", f"{self.root}/get_server_info").json()["memory_usage"]
        weight, kv = float(usage["weight"]) * 1024, float(usage["kvcache"]) * 1024  # GB as SGLang reports
        return EngineMemory(weight, weight + kv, "SGLang /get_server_info memory_usage (weights + KV cache)")

    def _vllm_memory(self) -> EngineMemory | None:
        text = self._request("GET", f"{self.root}/metrics").text
        match = re.search(r"^vllm:kv_cache_usage_perc\{[^}]*\} ([0-9.eE+-]+)$", text, re.M)
        if match is None:
            return None
        # vLLM publishes the KV cache's fill, not bytes: no MiB figure is made up from it.
        return EngineMemory(None, None, f"vLLM /metrics: KV cache {100 * float(match.group(1)):.1f}% in use "
                                        "(no byte figures published)")

    def _request(self, method: str, url: str, total: bool = False, **kwargs) -> httpx.Response:
        timeout = self.endpoint.total_timeout_s if total else None
        with self._guard("request"):
            response = self._http.request(method, url, **({"timeout": timeout} if timeout else {}), **kwargs)
        _check_status(response)
        return response

    def _guard(self, what: str):
        return _translated(self.endpoint, what)


class _translated:
    """Turns httpx's exceptions into one-line EndpointErrors (no URL credentials, no headers, no trace)."""

    def __init__(self, endpoint: Endpoint, what: str):
        self.endpoint, self.what = endpoint, what

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, EndpointError) or not isinstance(exc, httpx.HTTPError):
            return False
        timeouts = self.endpoint
        if isinstance(exc, httpx.ConnectTimeout):
            message = f"timed out connecting after {timeouts.connect_timeout_s:g} s (endpoint.timeouts.connect)"
        elif isinstance(exc, httpx.ReadTimeout):
            message = (f"timed out: the endpoint sent nothing for {timeouts.first_token_timeout_s:g} s "
                       "(endpoint.timeouts.first_token)")
        elif isinstance(exc, httpx.TimeoutException):
            message = f"timed out ({exc.__class__.__name__})"
        elif isinstance(exc, httpx.ConnectError):
            message = f"endpoint unreachable: {_reason(exc)}"
        elif isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
            message = f"stream cut mid-answer: {_reason(exc)}"
        else:
            message = f"request failed: {exc.__class__.__name__}"
        # The error reaches the page and the card: the address only where the models file declares it public.
        raise EndpointError(f"{message} ({self.what} from {self.endpoint.where()})") from None


def _check_status(response: httpx.Response, read: bool = False) -> None:
    if response.status_code < 400:
        return
    if read:
        response.read()
    detail = ""
    try:
        body = response.json()
        error = body.get("error") or body.get("detail") or body.get("message") if isinstance(body, dict) else None
        detail = remote_stream._error_text(error) if error else ""
    except ValueError:
        pass
    raise EndpointError(f"the endpoint answered HTTP {response.status_code} {response.reason_phrase}"
                        + (f": {detail}" if detail else ""))


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return (text or exc.__class__.__name__)[:120]
