"""The app's start-up under the real `spaces` package's ZeroGPU mode, on this machine, as on a ZeroGPU Space.

A ZeroGPU Space sets SPACES_ZERO_GPU=true and SPACES_ZERO_DEVICE_API_URL (the service that hands out GPUs) and
installs torch itself (a CUDA build of a version ZeroGPU lists). This check runs `python app.py` so, in the
environment `make space-check` installs (the torch ZeroGPU would choose, tests/space_install.py), with a stand-in
for the device API on a loopback port. What then runs is the package's own code, not the arena's emulation:

- `import spaces` patches torch in the importing (main) thread: CUDA is emulated there (`torch.cuda.is_available()`
  is True, a tensor moved to "cuda" stays in host memory and says `cuda:0`);
- the arena places every variant of the offline default profile (models.yaml) at start-up under that patch; the
  log names each placed variant with the device its weights report, and each refused one with its reason;
- gradio's launch() runs ZeroGPU's start-up: the placed tensors are packed to disk and the start-up is reported
  to the device API;
- one comparison through /compare: the package asks the device API for a GPU with the duration the arena computed
  (times the GPU's duration factor), forks a worker and starts real CUDA in it. There is no GPU here, so the worker
  fails there: the check asserts that the failure is that one, that the GPU was released as failed, and that the
  page's answer says so.

What it cannot show: anything after the worker's real CUDA start (moving the packed weights to a GPU, a kernel,
a figure measured on a GPU), nor the profile a ZeroGPU Space serves by default (models.gpu.yaml, whose weights come
from the Hub). `make gpu-check` runs the families on CUDA on a machine with a GPU.

    python tests/zerogpu_check.py [--venv DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
import space_install  # noqa: E402  (this folder's sibling script: the Space's environment and its helpers)
from space_install import REPO, STAMP, CheckFailed  # noqa: E402

PROFILE = REPO / "models.yaml"  # the offline default: the GPU profile's weights come from the Hub
PROMPT = "Name the capital of France in one short sentence."
VARIANTS = ["smollm2/fp32", "smollm2/bnb-nf4"]
START_TIMEOUT_S = 900.0  # every variant of the profile is placed (several quantize at load) before the page serves
GPU_UUID = "GPU-00000000-0000-0000-0000-000000000000"
PLACED = re.compile(r"ZeroGPU: (\S+) placed in [\d.]+ s: ([\d.]+) MiB of weights on (\S+)")
REFUSED = re.compile(r"ZeroGPU: (\S+) not placed: (.*)")
# Refusals a real ZeroGPU Space gives too, for this repository as it is: what a Space does not install, and the
# checkpoints a Space has only when they are made first (python -m demo.quantize) and shipped with it.
EXPECTED_REFUSALS = {
    "llama-cpp-python is not installed": "GGUF: llama-cpp-python is not in requirements.txt (docs/spaces.md)",
    "not quantized yet": "a checkpoint made beforehand by python -m demo.quantize, not made in a fresh Space",
    "not offered on ZeroGPU": "a family the arena leaves out on ZeroGPU (demo.running.zerogpu.NOT_PLACEABLE)",
}


class DeviceApi(ThreadingHTTPServer):
    """ZeroGPU's device API as `spaces` calls it (spaces/zero/api.py): the start-up report, a GPU scheduled at
    once (never an idle worker to reuse), the worker's pid allowed, the GPU released. Every call is recorded."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.calls: list[tuple[str, dict[str, str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def called(self, path: str) -> list[dict[str, str]]:
        return [params for p, params in self.calls if p == path]


class _Handler(BaseHTTPRequestHandler):
    server: DeviceApi

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        url = urlparse(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.server.calls.append((url.path, params))
        if url.path == "/schedule":
            body = json.dumps({"idle": False, "nvidiaIndex": 0, "nvidiaUUID": GPU_UUID,
                               "allowToken": f"token-{len(self.server.calls)}"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200 if url.path in ("/startup-report", "/allow", "/release") else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def environment_ready(venv: Path) -> Path:
    """The Space's environment: the one make space-check left if it was installed from what is here now, else
    installed afresh."""
    python = venv / "bin" / "python"
    stamp = venv / STAMP
    if python.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == space_install.installed_from():
        print(f"zerogpu-check: reusing {venv} (installed by make space-check from this requirements.txt)", flush=True)
        return python
    return space_install.install(venv)


def placement(log_text: str) -> tuple[dict[str, tuple[float, str]], dict[str, str]]:
    placed = {m.group(1): (float(m.group(2)), m.group(3)) for m in PLACED.finditer(log_text)}
    refused = {m.group(1): m.group(2).strip() for m in REFUSED.finditer(log_text)}
    return placed, refused


def check_placement(log_text: str) -> None:
    variants = re.findall(r"^\s*-\s*\{?id:\s*([^,\s}]+)", PROFILE.read_text(encoding="utf-8"), re.MULTILINE)
    placed, refused = placement(log_text)
    print(f"zerogpu-check: {len(placed)} of {len(variants)} variants placed under the package's patched torch:",
          flush=True)
    for variant in variants:
        if variant in placed:
            mib, device = placed[variant]
            print(f"  placed   {variant}: {mib:,.0f} MiB on {device}", flush=True)
        elif variant in refused:
            print(f"  refused  {variant}: {refused[variant]}", flush=True)
        else:
            raise CheckFailed(f"the log says nothing of {variant}: neither placed nor refused")
    wrong = {v: d for v, (_, d) in placed.items() if d != "cuda:0"}
    if wrong:
        raise CheckFailed(f"placed, but not on ZeroGPU's emulated CUDA device: {wrong}")
    unexplained = {v: r for v, r in refused.items() if not any(k in r for k in EXPECTED_REFUSALS)}
    if unexplained:
        raise CheckFailed("refused for a reason a ZeroGPU Space would not give: " +
                          "; ".join(f"{v}: {r}" for v, r in unexplained.items()))
    for needed in VARIANTS:
        if needed not in placed:
            raise CheckFailed(f"{needed} was not placed, so no comparison can be asked for")


def check_start_up(api: DeviceApi, log_text: str) -> None:
    if not api.called("/startup-report"):
        raise CheckFailed("ZeroGPU's start-up (packing, then the report to the device API) did not run at launch()")
    packed = re.findall(r"ZeroGPU tensors packing[^\n\r]*", log_text)
    print(f"zerogpu-check: launch() ran ZeroGPU's start-up: tensors packed ({packed[-1].strip() if packed else '?'}),"
          f" start-up reported to the device API", flush=True)


def ask_for_comparison(python: Path, url: str, env: dict[str, str]) -> str:
    """One comparison through /compare, by gradio_client from the Space's environment: it must fail (no GPU here);
    what the client is told."""
    print(f"zerogpu-check: /compare {', '.join(VARIANTS)}", flush=True)
    done = subprocess.run([str(python), "-c", space_install.CLIENT, url, PROMPT, json.dumps(VARIANTS), "8"],
                          env=env, text=True, capture_output=True, timeout=space_install.COMPARE_TIMEOUT_S)
    if done.returncode == 0:
        raise CheckFailed(f"a comparison finished on a machine with no GPU: {done.stdout[-2000:]}")
    return (done.stderr.strip().splitlines() or [""])[-1]


def check_comparison(api: DeviceApi, told: str, log_text: str) -> None:
    """The request reached ZeroGPU: a GPU was scheduled for the duration the arena computed, a worker was forked
    and allowed, real CUDA failed there (no GPU), the GPU was released as failed, and the client was told so."""
    schedules = api.called("/schedule")
    if not schedules:
        raise CheckFailed("the comparison never asked the device API for a GPU")
    seconds = int(schedules[-1].get("durationSeconds", 0))
    if seconds <= 0:
        raise CheckFailed(f"the GPU was asked for without a duration: {schedules[-1]}")
    print(f"zerogpu-check: /schedule asked for {seconds} s of GPU time (the arena's duration x the GPU's factor)",
          flush=True)
    if not api.called("/allow"):
        raise CheckFailed("no worker was allowed: the package's worker never started")
    released = api.called("/release")
    if not released or released[-1].get("fail") not in ("True", "true"):
        raise CheckFailed(f"the GPU was not released as failed: {released}")
    if "ZeroGPU worker error" not in told:
        raise CheckFailed(f"the client was not told that ZeroGPU's worker failed: {told!r}")
    cuda = re.search(r"^\w*Error: .*(?:NVIDIA|CUDA|driver).*$", log_text, re.MULTILINE)
    if cuda is None:
        raise CheckFailed("the app's log does not show the worker's failure at real CUDA")
    print(f"zerogpu-check: the worker failed at real CUDA, as it must without a GPU: {cuda.group(0)[:160]}",
          flush=True)
    print(f"zerogpu-check: the client was told: {told[:240]}", flush=True)


def run(python: Path, keep_log: Path | None = None, cache: Path | None = None) -> None:
    api = DeviceApi()
    threading.Thread(target=api.serve_forever, daemon=True, name="device-api").start()
    env = {"SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": api.url, "ARENA_MODELS": str(PROFILE),
           "PYTHONUNBUFFERED": "1"}  # the worker's traceback, printed by `spaces`, reaches the log at once
    if cache is not None:  # checkpoints made beforehand (python -m demo.quantize), as a Space would ship them
        env["ARENA_CACHE_DIR"] = str(cache)
    print(f"zerogpu-check: SPACES_ZERO_GPU=true, ZeroGPU's device API stood in for on {api.url}", flush=True)
    try:
        with space_install.app_serving(python, "zerogpu-check", env, START_TIMEOUT_S, keep_log) as (url, env, log):
            check_placement(log.read_text())
            check_start_up(api, log.read_text())
            told = ask_for_comparison(python, url, env)
            time.sleep(1.0)  # the worker's traceback and the release reach the log and the device API
            check_comparison(api, told, log.read_text())
    finally:
        api.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=REPO / ".space-venv", help="the Space's environment")
    parser.add_argument("--log", type=Path, help="keep the app's log there")
    parser.add_argument("--cache", type=Path, help="the arena's cache folder, with the checkpoints made beforehand "
                        "(GPTQ, AWQ, ...: python -m demo.quantize with ARENA_CACHE_DIR set), so that they are placed "
                        "too (by default a fresh folder: they are refused, not quantized yet)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        run(environment_ready(args.venv), args.log, args.cache)
    except CheckFailed as exc:
        print(f"zerogpu-check FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"zerogpu-check passed in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
