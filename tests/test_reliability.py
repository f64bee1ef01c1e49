"""Bad input gets one clear message everywhere; a failing variant fails alone; the arena stays up."""

import subprocess
import sys
import threading
import time

import pytest
import torch

from demo.backends import transformers as transformers_backend
from demo.config import load_config
from demo.errors import Busy, InvalidRequest
from demo.backends import load as load_variant
from demo.running.manager import ModelManager
from demo.running.runner import Arena
from tests.conftest import CLEAR_PROMPT, REPO, in_process, require_clear_answer

PROMPT = CLEAR_PROMPT


def make_config(tmp_path, extra=""):
    path = tmp_path / "models.yaml"
    path.write_text((REPO / "models.yaml").read_text() + extra)
    return load_config(path)


# ---- bad input: the arena's own checks (the page, /compare and the CLI all call these) ----

BAD_SETTINGS = [
    ({"max_new_tokens": 0}, "max_new_tokens must be a whole number from 1 to 512, got 0"),
    ({"max_new_tokens": -5}, "from 1 to 512, got -5"),
    ({"max_new_tokens": 513}, "from 1 to 512, got 513"),
    ({"max_new_tokens": "ten"}, "max_new_tokens must be a whole number"),
    ({"max_new_tokens": 3.5}, "max_new_tokens must be a whole number"),
    ({"temperature": 0}, "temperature must be a number in (0, 2]"),
    ({"temperature": 2.5}, "temperature must be a number in (0, 2]"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"temperature": float("nan")}, "temperature must be a number"),
    ({"top_p": 0}, "top_p must be a number in (0, 1]"),
    ({"top_p": 1.5}, "top_p must be a number in (0, 1]"),
    ({"do_sample": True, "seed": 1.5}, "seed must be a whole number"),
    ({"do_sample": True, "seed": "abc"}, "seed must be a whole number"),
    ({"do_sample": True, "seed": -1}, "seed must be a whole number"),
    ({"do_sample": True}, "sampling needs an explicit seed"),
    ({"do_sample": "yes"}, "do_sample must be true or false"),
]

BAD_REQUESTS = [
    ("", ["smollm2/fp32"], "the prompt is empty"),
    ("  \n\t ", ["smollm2/fp32"], "the prompt is empty"),
    ("a\x00b", ["smollm2/fp32"], "control character (U+0000)"),
    ("bell\x07", ["smollm2/fp32"], "control character (U+0007)"),
    ("caf\udce9", ["smollm2/fp32"], "not valid UTF-8"),
    ("x" * 5_000_000, ["smollm2/fp32"], "the prompt has 5,000,000 characters; the limit is 20,000"),
    (123, ["smollm2/fp32"], "the prompt must be text"),
    ("hi", [], "no variant chosen"),
    ("hi", "smollm2/fp32", "variants must be a list of variant ids"),
    ("hi", [1, 2], "variants must be a list of variant ids"),
    ("hi", ["smollm2/fp64"], "unknown variant id(s): smollm2/fp64"),
    ("hi", ["HuggingFaceTB/SmolLM2-1.7B-Instruct"], "unknown variant id(s)"),
    ("hi", ["../../models.yaml"], "unknown variant id(s)"),
    ("hi", ["smollm2/fp32", "smollm2/fp32"], "the same variant is listed twice"),
]


@pytest.mark.parametrize("kwargs, message", BAD_SETTINGS)
def test_bad_settings(arena, kwargs, message):
    with pytest.raises(InvalidRequest) as info:
        arena.settings(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("prompt, variants, message", BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_bad_requests(arena, prompt, variants, message):
    with pytest.raises(InvalidRequest) as info:
        list(arena.compare(prompt, variants, arena.settings(max_new_tokens=4)))
    assert message in str(info.value)
    assert len(str(info.value)) < 400


def test_tabs_newlines_and_unicode_are_fine(arena):
    [record] = arena.compare_records("Bonjour !\tQuelle est la capitale\r\nde la France ? 日本", ["smollm2/bf16"],
                                     arena.settings(max_new_tokens=4))
    assert record["status"] == "done"


def test_more_variants_than_the_limit(tmp_path):
    local = Arena(make_config(tmp_path, "limits: {max_variants: 2}\n"))
    with pytest.raises(InvalidRequest, match="3 variants chosen; the limit is 2"):
        list(local.compare("hi", ["smollm2/fp32", "smollm2/bf16", "smollm2/bnb-nf4"], local.settings()))


def test_prompt_longer_than_the_context_is_refused_with_the_limit(tmp_path):
    local = Arena(make_config(tmp_path, "limits: {max_prompt_chars: 100000}\n"))
    records = local.compare_records("word " * 9000, ["smollm2/bf16"], local.settings(max_new_tokens=16))
    assert records[0]["status"] == "error"
    assert "exceeds this variant's context of 8,192 tokens" in records[0]["error"]
    ok = local.compare_records(PROMPT, ["smollm2/bf16"], local.settings(max_new_tokens=4))
    assert ok[0]["status"] == "done"


def test_cli_rejects_control_characters_and_huge_prompts():
    for prompt, message in [("a\x01b", "control character"), ("y" * 30000, "the limit is 20,000")]:
        out = subprocess.run([sys.executable, "-m", "demo", "compare", "--prompt", prompt, "--variants",
                              "smollm2/fp32"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1


# ---- a failing variant fails alone ----

def test_missing_backend_fails_alone(arena, monkeypatch):
    monkeypatch.setattr(transformers_backend, "package_available", lambda package: package != "bitsandbytes")
    require_clear_answer(arena, "smollm2/bf16")
    # a fresh cache, so the bitsandbytes variant really goes through loading, in this (patched) process
    local = Arena(in_process(arena.config))
    records = local.compare_records(PROMPT, ["smollm2/bnb-nf4", "smollm2/bf16"], local.settings(max_new_tokens=8))
    assert records[0]["status"] == "error"
    assert records[0]["error"] == "not available: the 'bitsandbytes' package is not installed"
    assert records[1]["status"] == "done" and "Paris" in records[1]["text"]


class FlakyLoader:
    """The real loader, with a failure injected while loading or after a few forward passes."""

    def __init__(self, fail_variant, when, exc):
        self.fail_variant, self.when, self.exc, self.calls = fail_variant, when, exc, 0

    def __call__(self, variant, base):
        if variant.id == self.fail_variant and self.when == "loading":
            raise self.exc
        loaded = load_variant(variant, base)
        if variant.id == self.fail_variant and self.when == "generating":
            forward = loaded.model.forward

            def failing_forward(*args, **kwargs):
                self.calls += 1
                if self.calls >= 3:
                    raise self.exc
                return forward(*args, **kwargs)

            loaded.model.forward = failing_forward
        return loaded


@pytest.mark.parametrize("when", ["loading", "generating"])
@pytest.mark.parametrize("exc", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
                                 MemoryError()], ids=["cuda-oom", "cpu-oom"])
def test_out_of_memory_fails_alone_and_frees(arena, default_config, when, exc):
    for variant_id in ("smollm2/bf16", "smollm2/bnb-nf4"):
        require_clear_answer(arena, variant_id)
    loader = FlakyLoader("smollm2/bf16", when, exc)
    manager = ModelManager(default_config, loader)
    local = Arena(default_config, manager)
    records = local.compare_records(PROMPT, ["smollm2/bf16", "smollm2/bnb-nf4"], local.settings(max_new_tokens=8))
    assert records[0]["status"] == "error"
    assert records[0]["error"].startswith(f"out of memory while {when}")
    assert "smollm2/bf16" not in manager.loaded_ids()  # its memory was let go
    assert records[1]["status"] == "done" and "Paris" in records[1]["text"]
    loader.fail_variant = None  # the condition passes: the next request works
    again = local.compare_records(PROMPT, ["smollm2/bf16"], local.settings(max_new_tokens=8))
    assert again[0]["status"] == "done" and "Paris" in again[0]["text"]


def test_unexpected_failure_message_has_no_trace_or_path(default_config):
    loader = FlakyLoader("smollm2/bf16", "loading", RuntimeError("kernel failed in /root/secret/dir/kernels.py\nmore"))
    local = Arena(default_config, ModelManager(default_config, loader))
    [record] = local.compare_records(PROMPT, ["smollm2/bf16"], local.settings(max_new_tokens=4))
    assert record["error"] == "failed while loading: RuntimeError: kernel failed in <path>"


def test_variant_bigger_than_the_budget_fails_alone(default_config):
    local = Arena(default_config, ModelManager(default_config, budget_mib=200))
    records = local.compare_records(PROMPT, ["smollm2/fp32", "smollm2/bnb-nf4"], local.settings(max_new_tokens=8))
    assert records[0]["status"] == "error"
    assert records[0]["error"] == ("needs 513 MiB of weights but the memory budget is 200 MiB "
                                   "(estimated from 134,515,072 parameters at fp32)")  # refused before loading
    assert records[1]["status"] == "done"
    assert local.manager.resident_mib() <= 200


def test_stop_takes_effect_within_a_second(arena):
    stop = threading.Event()
    stopped_at = None
    for snap in arena.compare("Write a long story about a dragon.", ["smollm2/fp32"], arena.settings(max_new_tokens=400),
                              stop):
        if snap[0].new_tokens >= 3 and stopped_at is None:
            stopped_at = time.perf_counter()
            stop.set()
    assert snap[0].status == "stopped"
    assert time.perf_counter() - stopped_at < 1.0


# ---- many users ----

def test_busy_when_the_arena_is_full(tmp_path):
    local = Arena(make_config(tmp_path, "limits: {max_pending: 1}\n"))
    first = local.compare(PROMPT, ["smollm2/bf16"], local.settings(max_new_tokens=4))
    next(first)  # admitted and running
    with pytest.raises(Busy, match="busy: the device already has 1 request running or waiting; try again"):
        next(local.compare(PROMPT, ["smollm2/bf16"], local.settings(max_new_tokens=4)))
    list(first)  # finishes and leaves
    assert local.compare_records(PROMPT, ["smollm2/bf16"], local.settings(max_new_tokens=4))[0]["status"] == "done"


def test_concurrent_requests_get_their_own_results(arena):
    prompts = ["What is the capital of France?", "Name a colour.", "Count to five."]
    variants, settings = ["smollm2/bf16", "smollm2/bnb-nf4"], arena.settings(max_new_tokens=12)
    alone = {p: [r["text"] for r in arena.compare_records(p, variants, settings)] for p in prompts}
    assert len({tuple(texts) for texts in alone.values()}) == len(prompts)  # distinct answers, so mixing would show
    together = {}

    def ask(prompt):
        together[prompt] = arena.compare_records(prompt, variants, settings)

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for prompt, records in together.items():  # greedy: the same answer as when run alone
        assert [r["prompt"] for r in records] == [prompt, prompt]
        assert [r["text"] for r in records] == alone[prompt]


# ---- nothing runs that models.yaml does not name ----

def test_remote_code_is_off_unless_the_models_file_says_so(default_config, monkeypatch, tmp_path):
    import transformers

    seen = {}

    class Refuse(Exception):
        pass

    def capture(location, **kwargs):
        seen.update(kwargs)
        raise Refuse

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", capture)
    with pytest.raises(Refuse):
        load_variant(default_config.variants["smollm2/bf16"], default_config.bases["smollm2"])
    assert seen["trust_remote_code"] is False
    allowed = make_config(tmp_path, "").bases["smollm2"]
    assert allowed.trust_remote_code is False


# ---- start-up with a broken models file ----

BROKEN = {
    "syntax": ("bases: [oops\n", "YAML syntax error"),
    "unknown method": ("bases: {b: {source: {kind: hub, repo: x/y}}}\nvariants: [{id: v, base: b, method: int3}]\n",
                       "variant 'v': field 'method': unknown method 'int3'"),
    "missing field": ("bases: {b: {source: {kind: hub, repo: x/y}}}\nvariants: [{id: v, base: b}]\n",
                      "variant 'v': field 'method': is required"),
    "duplicate id": ("bases: {b: {source: {kind: hub, repo: x/y}}}\nvariants: [{id: v, base: b, method: fp16}, "
                     "{id: v, base: b, method: bf16}]\n", "variant 'v': field 'id': duplicate variant id"),
    "bad value": ("bases: {b: {source: {kind: hub, repo: x/y}}}\nvariants: [{id: v, base: b, method: bnb-4bit, "
                  "settings: {bnb_4bit_quant_type: nf5}}]\n", "field 'settings.bnb_4bit_quant_type': must be one of"),
    "unreadable": (None, "cannot read file"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_models_file_stops_start_up(tmp_path, case):
    text, message = BROKEN[case]
    path = tmp_path / "models.yaml"
    if text is None:
        path.mkdir()  # a folder where the file should be
    else:
        path.write_text(text)
    out = subprocess.run([sys.executable, "app.py", "--models", str(path)], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and message in lines[0]
