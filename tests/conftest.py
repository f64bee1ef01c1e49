"""Shared fixtures: an offline environment kept inside the run's own temporary folder, the real default
config, a tiny model built in-process, and a guard that the run left the machine as it found it."""

import atexit
import gc
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.pop("ARENA_MODELS", None)
os.environ.pop("ARENA_INJECT_FAULT", None)  # tests that inject a runtime fault set it for their own processes
# Every process the run starts (apps, forked workers, runtime workers) inherits this tag; one still alive at the end
# that is no longer a descendant of the run has outlived it (see _orphans).
RUN_TAG = f"ARENA_TEST_RUN_TAG={uuid.uuid4().hex}"
os.environ["ARENA_TEST_RUN_TAG"] = RUN_TAG.split("=", 1)[1]
os.environ.pop("ARENA_MEMORY_BUDGET_MIB", None)
# The persistent folder is never the real /data: a test that wants one names a temporary folder in ARENA_DATA_DIR.
for _variable in ("ARENA_DATA_DIR", "ARENA_VOTES_DB", "SPACE_ID"):
    os.environ.pop(_variable, None)

# Everything the run writes lives in one temporary folder, removed at exit: the arena's cache (the
# materialized bundled model, quantized test checkpoints), the app's download folders, and every library
# cache or browser profile that would otherwise land under $HOME or /tmp. Subprocesses inherit it.
# ARENA_TEST_CACHE_DIR keeps the arena's cache between runs on a developer's machine (the suite never
# needs it: a fresh run makes everything it uses).
RUN_ENV = "ARENA_TEST_RUN_DIR"


def _checkout_status() -> str | None:
    """`git status` of the checkout (tracked and untracked files, ignored ones left out), where git is there; run
    with the user's own HOME, so git reads the same settings (safe.directory, say) at the start and the end."""
    env = {**os.environ, "HOME": os.environ.get("ARENA_TEST_REAL_HOME", os.environ.get("HOME", ""))}
    env.pop("XDG_CONFIG_HOME", None)
    try:
        return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


_CHECKOUT_AT_START: str | None = None  # set where the run starts, below
if os.environ.get(RUN_ENV):  # imported again, as tests.conftest, by a test module: the same run, the same folder
    RUN_DIR = Path(os.environ[RUN_ENV])
else:
    _CHECKOUT_AT_START = _checkout_status()
    RUN_DIR = Path(tempfile.mkdtemp(prefix="arena-tests-"))
    atexit.register(shutil.rmtree, RUN_DIR, ignore_errors=True)
    os.environ[RUN_ENV] = str(RUN_DIR)
    os.environ["ARENA_TEST_REAL_HOME"] = os.environ.get("HOME", "")
    os.environ["ARENA_CACHE_DIR"] = os.environ.get("ARENA_TEST_CACHE_DIR") or str(RUN_DIR / "arena-cache")
    for variable, folder in {"HOME": "home", "TMPDIR": "tmp", "XDG_CACHE_HOME": "home/.cache",
                             "XDG_CONFIG_HOME": "home/.config", "XDG_DATA_HOME": "home/.local/share",
                             "HF_HOME": "huggingface", "MPLCONFIGDIR": "matplotlib",
                             "TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton",
                             "GPTQMODEL_TORCH_EXTENSIONS_DIR": "gptqmodel-extensions", "GPTQMODEL_CACHE_DIR": "gptqmodel",
                             "GRADIO_TEMP_DIR": "gradio"}.items():
        (RUN_DIR / folder).mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(RUN_DIR / folder)
tempfile.tempdir = os.environ["TMPDIR"]  # this process already read the old one

import torch  # noqa: E402

from demo.config import load_config  # noqa: E402

# Device nodes a careless test could replace with a regular file (a library that writes by rename onto
# /dev/full does exactly that), and the checkout's own files: checked at the end of every run.
GUARDED_DEVICES = ("/dev/null", "/dev/full", "/dev/zero")


def _is_character_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


_DEVICES_AT_START = {path: _is_character_device(path) for path in GUARDED_DEVICES}


def _tagged_pids() -> dict[int, int]:
    """pid -> parent pid of every other process that carries this run's tag."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as environ:
                if RUN_TAG.encode() not in environ.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/stat") as stat_file:
                fields = stat_file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X"):
            found[int(name)] = int(fields[1])
    return found


def _orphans(wait_s: float = 10.0) -> list[int]:
    """Processes the run started that no longer descend from it (their parent died and left them running), after
    giving them wait_s to notice and leave; they are then ended. A child of this process still alive ends with it
    (every worker the arena starts dies with its parent)."""
    gc.collect()  # runtime workers of arenas no test holds any more are ended when collected
    deadline = time.monotonic() + wait_s
    while True:
        tagged = _tagged_pids()
        orphans = [pid for pid in tagged if not _descends(pid, tagged)]
        if not orphans or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    for pid in orphans:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    return orphans


def _descends(pid: int, parents: dict[int, int]) -> bool:
    seen = set()
    while pid in parents and pid not in seen:
        seen.add(pid)
        pid = parents[pid]
    return pid == os.getpid()


def pytest_sessionfinish(session, exitstatus):
    problems = [f"{p} is no longer a character device" for p, was in _DEVICES_AT_START.items()
                if was and not _is_character_device(p)]
    orphans = _orphans()
    if orphans:
        problems.append(f"processes started by the run outlived their parent: pids {orphans} (ended now)")
    checkout = _checkout_status()
    if _CHECKOUT_AT_START is not None and checkout is not None and checkout != _CHECKOUT_AT_START:
        changed = set(checkout.splitlines()) ^ set(_CHECKOUT_AT_START.splitlines())
        problems.append(f"files of the checkout changed: {', '.join(sorted(changed))}")
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"ERROR: the test run changed the machine: {'; '.join(problems)}", red=True, bold=True)
        if session.exitstatus == pytest.ExitCode.OK:  # an interrupted or empty run keeps its own code
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is false)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def in_process(config):
    """The config with every local variant's runtime in this process (`process: shared`): for tests that reach
    into a runtime's own objects (its torch model) or patch its code, which a worker process would not see."""
    import dataclasses

    return dataclasses.replace(config, variants={
        vid: v if v.runtime == "remote" else dataclasses.replace(v, process="shared")
        for vid, v in config.variants.items()})


@pytest.fixture(scope="session")
def default_config():
    return load_config(REPO / "models.yaml")


@pytest.fixture(scope="session")
def arena(default_config):
    """One real Arena over the bundled model, shared so each variant loads once per session."""
    from demo.running.runner import Arena

    return Arena(default_config)


def free_port() -> int:
    """A loopback port nobody is listening on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_causal_lm(hidden: int = 64, layers: int = 2, vocab: int = 512):
    """A real (random) Llama of known size, built in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=vocab,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def tiny_models_file(folder, config, variants: str, extra: str = "", hidden: int = 64, layers: int = 2):
    """A tiny random Llama with the bundled model's tokenizer saved under folder/base, and folder/models.yaml
    with a base `tiny` over it (baseline tiny/fp32), the `variants` lines given (YAML flow mappings, one a
    line) and any `extra` top-level YAML; returns the models file."""
    from transformers import AutoTokenizer

    from demo.artifacts import sources

    tokenizer = AutoTokenizer.from_pretrained(sources.resolve(config.bases["smollm2"]).location)
    tiny_causal_lm(hidden=hidden, layers=layers, vocab=len(tokenizer)).save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    path = folder / "models.yaml"
    path.write_text(f"bases:\n  tiny: {{source: {{kind: local, path: {folder / 'base'}}}, baseline: tiny/fp32}}\n"
                    "variants:\n" + "".join(f"  - {line}\n" for line in variants.strip().splitlines()) + extra)
    return path


# --- answers that do not tip on a near tie ---------------------------------------------------------------
# Tests that assert on generated text use this prompt: under the baseline every token of its answer ("The
# capital of France is Paris.") wins by at least 1 nat on AVX2 and AVX-512 CPUs (the greedy margins are
# measured, not assumed: require_clear_answer), where "What is the capital of France?" opens on a 0.08-nat
# tie that llama.cpp's Q8_0 tips to "L'Étoile..." on some CPUs. A quantized variant's first token is
# checked too: a tip there changes the whole answer; a near tie later (4-bit AWQ leads by 0.38 nats at
# " France") changes a word or two.
CLEAR_PROMPT = "Name the capital of France."
CLEAR_MARGIN_NATS = 0.5


def greedy_margins(arena, variant_id: str, prompt: str, tokens: int | None, max_tokens: int = 12):
    """The variant's greedy answer, token by token, with each token's lead over the runner-up (nats): its first
    `tokens` tokens, or (None) the whole answer up to a stop token or max_tokens."""
    from demo.settings import prompt_ids

    loaded = arena.device.call(arena.manager.get, variant_id).loaded
    ids = arena.device.call(prompt_ids, loaded.tokenizer, prompt)
    answer, margins = [], []
    while len(answer) < (tokens or max_tokens):
        row = torch.log_softmax(arena.device.call(loaded.logits, ids + answer)[-1].float(), -1)
        best = row.topk(2)
        answer.append(int(best.indices[0]))
        margins.append(round(float(best.values[0] - best.values[1]), 2))
        if answer[-1] in loaded.stop_token_ids:
            break
    return loaded.tokenizer.decode(answer, skip_special_tokens=True), margins


def require_clear_answer(arena, variant_id: str = "smollm2/fp32", prompt: str = CLEAR_PROMPT,
                         tokens: int | None = 1) -> None:
    """Precondition of a test that asserts on generated text: every token of the baseline's answer, and the first
    `tokens` tokens of the variant's (None: all), win clearly on this machine, so the assertion is about the
    arena, not a CPU's rounding."""
    baseline = arena.config.base_of(variant_id).baseline
    if baseline not in (None, variant_id):
        require_clear_answer(arena, baseline, prompt, tokens=None)
    text, margins = greedy_margins(arena, variant_id, prompt, tokens)
    if min(margins) < CLEAR_MARGIN_NATS:
        pytest.fail(f"precondition: no clear first token on this machine: {variant_id} answers {prompt!r} with "
                    f"{text!r}, leads {margins} nats (each needs >= {CLEAR_MARGIN_NATS})", pytrace=False)


@pytest.fixture(scope="session")
def clear_prompt(arena):
    """CLEAR_PROMPT, once every token of its baseline answer is checked to win clearly on this machine."""
    require_clear_answer(arena, tokens=None)
    return CLEAR_PROMPT
