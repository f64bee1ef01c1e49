"""vLLM itself, on this CPU (its CPU build, from `make vllm`): `vllm serve` on the bundled checkpoint, started on
127.0.0.1 with an API key, used as a remote variant beside the in-process ones (streaming, top-k fidelity from its
prompt log-probabilities, Stop, a wrong key, a dead server) and by the serving sweep, and stopped with nothing
left behind."""

import json
import os
from pathlib import Path

import pytest
import yaml

from demo.config import load_config
from demo.evaluate import serving
from demo.running import engine_server
from demo.running.runner import Arena
from tests.conftest import CLEAR_PROMPT, REPO, require_clear_answer

pytestmark = pytest.mark.skipif(not engine_server.vllm_available(), reason="vLLM is not installed: make vllm")

KEY_ENV = "ARENA_TEST_VLLM_KEY"
KEY = "sk-planted-vllm-5e1d9a7c3b2f4680"  # must never show up in any output
TIMEOUTS = {"connect": 5, "first_token": 120, "total": 300}
REMOTE = "smollm2/vllm-fp32"


def _vllm_pids() -> list[int]:
    """Processes started as the vLLM environment's Python (the server and the engine core it spawns); its
    interpreter is a link to the one the arena runs on, so the command line tells them apart, not the executable."""
    folder = str(engine_server.vllm_python().parent) + "/"
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    first = f.read().split(b"\0", 1)[0].decode(errors="replace")
            except OSError:
                continue
            if first.startswith(folder):
                found.append(int(name))
    return found


@pytest.fixture(scope="module")
def vllm(default_config, tmp_path_factory):
    from demo.artifacts import sources

    checkpoint = Path(sources.resolve(default_config.bases["smollm2"]).location)
    server = engine_server.vllm_server(checkpoint, "float32", 4, 2048, 2, tmp_path_factory.mktemp("vllm") / "vllm.log",
                                       api_key=KEY)
    os.environ[KEY_ENV] = KEY
    yield server
    server.stop()
    os.environ.pop(KEY_ENV, None)


def _remote(variant_id: str, server, key_env: str = KEY_ENV) -> dict:
    return {"id": variant_id, "base": "smollm2", "method": "remote", "label": variant_id,
            "endpoint": {"url": server.url, "model": server.model, "engine": "vllm", "api_key_env": key_env,
                         "timeouts": TIMEOUTS},
            "quantization": {"scheme": "fp32", "bits": 32, "served_by": "vLLM CPU build, on 127.0.0.1"}}


@pytest.fixture(scope="module")
def vllm_config(vllm, tmp_path_factory):
    data = yaml.safe_load((REPO / "models.yaml").read_text())
    data["variants"] += [_remote(REMOTE, vllm), _remote("smollm2/vllm-wrong-key", vllm, "ARENA_TEST_VLLM_WRONG")]
    path = tmp_path_factory.mktemp("models") / "models.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


@pytest.fixture(scope="module")
def vllm_arena(vllm_config):
    return Arena(vllm_config)


def test_vllm_answers_beside_the_local_baseline_with_top_k_fidelity(vllm_arena):
    require_clear_answer(vllm_arena, "smollm2/fp32", tokens=None)
    ids = ["smollm2/fp32", REMOTE]
    records = {r["variant"]: r for r in vllm_arena.compare_records(CLEAR_PROMPT, ids,
                                                                    vllm_arena.settings(max_new_tokens=16))}
    local, remote = records["smollm2/fp32"], records[REMOTE]
    assert remote["status"] == "done" and "Paris" in remote["text"], remote["error"]
    assert remote["runtime"] == "remote" and remote["stored"]["engine"] == "vllm"
    assert remote["prompt_tokens"] == local["prompt_tokens"] and remote["new_tokens"] == local["new_tokens"]
    assert remote["ttft_ms"] > 0 and remote["decode_tokens_per_s"] > 0
    assert remote["stored"]["timings"] == "measured at the client"
    fid = remote["fidelity"]
    # the same fp32 weights, another engine's kernels: the answer token for token, a top-20 KL bound near zero
    assert fid["kl_lower_bound_top_k"] == 20 and fid["unavailable"] is None
    assert fid["top1_agreement"] == 1.0 and 0 <= fid["kl_divergence"] < 0.01
    assert remote["answer_departs_at_token"] is None
    # vLLM publishes its KV cache's fill, not bytes: no MiB figure is invented
    assert remote["weights_mib"] is None and remote["peak_memory_mib"] is None


def test_stop_cancels_the_vllm_stream_and_the_next_request_works(vllm_arena):
    import threading

    stop = threading.Event()
    final = None
    for final in vllm_arena.compare("Count from one to two hundred, one number per line.", [REMOTE],
                                    vllm_arena.settings(max_new_tokens=300), stop):
        if final[0].text:
            stop.set()
    assert final[0].status == "stopped" and final[0].new_tokens < 300
    [again] = vllm_arena.compare_records(CLEAR_PROMPT, [REMOTE], vllm_arena.settings(max_new_tokens=8))
    assert again["status"] == "done" and "Paris" in again["text"], again["error"]


def test_a_wrong_key_is_http_401_in_its_own_column_and_never_leaks(vllm_arena, monkeypatch, caplog):
    monkeypatch.setenv("ARENA_TEST_VLLM_WRONG", "sk-wrong-" + KEY[::-1])
    ids = ["smollm2/vllm-wrong-key", REMOTE]
    records = {r["variant"]: r for r in vllm_arena.compare_records(CLEAR_PROMPT, ids,
                                                                    vllm_arena.settings(max_new_tokens=4))}
    assert "HTTP 401" in records["smollm2/vllm-wrong-key"]["error"]
    assert records[REMOTE]["status"] == "done"
    dumped = json.dumps(list(records.values())) + caplog.text
    assert KEY not in dumped and KEY[::-1] not in dumped


def test_the_serving_sweep_sends_vllm_requests_at_once(vllm_arena, vllm_config):
    from demo.backends.remote_http import EndpointClient
    from demo.evaluate.serving_requests import concurrent_streams

    rows = serving.sweep(vllm_arena, [REMOTE], serving.ServingPlan((1, 4), 6, 1))
    assert [(r.concurrency, r.error) for r in rows] == [(1, None), (4, None)]
    assert rows[0].served_by.startswith("vllm") and all(r.total_tokens_per_s > 0 for r in rows)
    tokenizer = vllm_arena.device.call(vllm_arena.manager.get, REMOTE).loaded.tokenizer
    from demo.settings import prompt_ids

    prompts = [prompt_ids(tokenizer, t) for t in serving.ServingPlan().prompts()[:4]]
    client = EndpointClient(vllm_config.variants[REMOTE].endpoint)
    try:
        run = concurrent_streams(client, prompts, 8)
    finally:
        client.close()
    assert [len(r["stamps"]) for r in run["requests"]] == [8] * 4  # ignore_eos: each answer its full length
    assert max(r["stamps"][0] for r in run["requests"]) < min(r["stamps"][-1] for r in run["requests"])


def test_a_dead_vllm_fails_its_own_column_and_the_others_finish(vllm, vllm_arena):
    """Last in the module: the engine is killed, the next request's column says so, the local one is done."""
    vllm.stop()
    records = {r["variant"]: r for r in vllm_arena.compare_records(CLEAR_PROMPT, ["smollm2/fp32", REMOTE],
                                                                    vllm_arena.settings(max_new_tokens=4))}
    assert records["smollm2/fp32"]["status"] == "done"
    assert records[REMOTE]["status"] == "error" and "endpoint unreachable" in records[REMOTE]["error"]
    assert _vllm_pids() == []


def test_the_sweep_serves_transformers_weights_on_its_own_vllm(arena):
    rows = serving.sweep(arena, ["smollm2/bf16"], serving.ServingPlan((1, 2), 4, 1, engine="vllm"))
    assert [(r.concurrency, r.error) for r in rows] == [(1, None), (2, None)]
    assert rows[0].served_by.startswith("vLLM 0.32")
    assert _vllm_pids() == []
    refused = serving.sweep(arena, ["smollm2/torchao-int8"], serving.ServingPlan((1,), 4, 1, engine="vllm"))
    assert "quantizes at load" in refused[0].error
