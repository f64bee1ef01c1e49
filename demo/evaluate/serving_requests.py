"""N requests in flight at once against an OpenAI-compatible endpoint (llama.cpp's server started by the sweep, or
a remote variant's engine): each on a thread of its own, all sent together, each streamed token timed where it
arrives, as `vllm bench serve` and guidellm time them at the client."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from demo.backends.remote_http import EndpointClient
from demo.errors import EndpointError

# Greedy, every answer exactly max_tokens long (serving benchmarks' ignore_eos), and on llama.cpp's server no
# prompt cache reused between requests: each round sends the same prompts again.
_BODY = {"temperature": 0.0, "top_p": 1.0, "ignore_eos": True}
_ENGINE_BODY = {"llamacpp": {"cache_prompt": False}}


def concurrent_streams(client: EndpointClient, prompts: list[Any], new_tokens: int) -> dict[str, Any]:
    """Every prompt sent at once; {"started_s", "requests": [{"sent_s", "stamps", "tokens"}]} in the prompts' order,
    each token's arrival time in `stamps` (a chunk that carries k tokens counts k at its arrival). A failed request
    raises EndpointError after the others have ended."""
    body = {"max_tokens": new_tokens, **_BODY, **_ENGINE_BODY.get(client.endpoint.engine, {})}
    gate = threading.Barrier(len(prompts))
    stop = threading.Event()

    def one(prompt: Any) -> dict[str, Any]:
        gate.wait()
        sent_s = time.perf_counter()
        stamps: list[float] = []
        counted, reported = 0, None
        for at_s, chunk in client.stream(prompt, body, stop):
            if chunk.completion_tokens is not None:  # vLLM's running usage count: exact
                reported = chunk.completion_tokens
            carried = (reported - counted if reported is not None and chunk.text
                       else chunk.logprob_tokens or (1 if chunk.text else 0))
            stamps += [at_s] * max(carried, 0)
            counted = len(stamps)
        if reported is not None and reported > len(stamps) and stamps:  # text held back and sent with a later token
            stamps += [stamps[-1]] * (reported - len(stamps))
        return {"sent_s": sent_s, "stamps": stamps, "tokens": len(stamps)}

    started_s = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(prompts), thread_name_prefix="serving-request") as pool:
        futures = [pool.submit(one, prompt) for prompt in prompts]
        errors = [f.exception() for f in futures]
    failed = [e for e in errors if e is not None]
    if failed:
        first = failed[0]
        raise first if isinstance(first, EndpointError) else EndpointError(f"a request failed: {first}")
    return {"started_s": started_s, "requests": [f.result() for f in futures]}
