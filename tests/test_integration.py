"""The bundled SmolLM2-135M-Instruct, really loaded and run: fp32 and bitsandbytes variants on CPU."""

import threading

import pytest

from demo.running.runner import Arena
from tests.conftest import CLEAR_PROMPT, require_clear_answer

PROMPT = CLEAR_PROMPT
RECORD_FIELDS = {"variant", "method", "bits", "device", "text", "prompt_tokens", "new_tokens", "ttft_ms",
                 "decode_tokens_per_s", "total_ms", "load_ms", "cache_hit", "weights_mib", "peak_memory_mib",
                 "memory_kind", "error", "environment"}


@pytest.mark.parametrize("variant", ["smollm2/fp32", "smollm2/bnb-int8", "smollm2/bnb-nf4", "smollm2/bnb-fp4"])
def test_variant_answers_coherently(arena, variant):
    require_clear_answer(arena, variant)
    [record] = arena.compare_records(PROMPT, [variant], arena.settings(max_new_tokens=16))
    assert RECORD_FIELDS <= set(record)
    assert record["error"] is None and record["status"] == "done"
    assert "Paris" in record["text"]
    assert record["device"] == "cpu" and record["memory_kind"] == "cpu-rss"
    assert record["prompt_tokens"] > 5 and 1 <= record["new_tokens"] <= 16
    assert record["ttft_ms"] > 0 and record["total_ms"] >= record["ttft_ms"]
    assert record["decode_tokens_per_s"] > 0
    assert record["peak_memory_mib"] >= record["weights_mib"] > 0
    assert record["environment"]["torch"] and record["environment"]["transformers"]


def test_quantized_weights_are_smaller(arena):
    records = {r["variant"]: r for r in arena.compare_records(
        PROMPT, ["smollm2/fp32", "smollm2/bnb-int8", "smollm2/bnb-nf4"], arena.settings(max_new_tokens=2))}
    fp32 = records["smollm2/fp32"]["weights_mib"]
    assert records["smollm2/bnb-int8"]["weights_mib"] < 0.5 * fp32
    assert records["smollm2/bnb-nf4"]["weights_mib"] < 0.35 * fp32


def test_stream_grows_and_is_one_variant_at_a_time(arena):
    snapshots = list(arena.compare(PROMPT, ["smollm2/fp32", "smollm2/bf16"],
                                   arena.settings(max_new_tokens=48)))
    for snap in snapshots:  # never two variants busy at once
        assert sum(r.status in ("loading", "reading", "generating") for r in snap) <= 1
    texts = [s[0].text for s in snapshots if s[0].status == "generating"]
    assert texts == sorted(texts, key=len)
    assert snapshots[-1][0].status == snapshots[-1][1].status == "done"


def test_stop_ends_the_run_and_frees_the_lock(arena):
    stop = threading.Event()
    settings = arena.settings(max_new_tokens=200)
    seen = []
    for snap in arena.compare("Write a long story about a dragon.", ["smollm2/fp32", "smollm2/bf16"], settings, stop):
        seen.append(snap)
        if snap[0].new_tokens >= 3:
            stop.set()
    final = seen[-1]
    assert final[0].status == "stopped" and final[0].new_tokens < 200
    assert final[1].status == "stopped" and final[1].new_tokens == 0
    assert _turn_is_free(arena)  # the device's turn was given back


def test_closing_the_stream_stops_generation(arena):
    stream = arena.compare("Write a long story about a dragon.", ["smollm2/fp32"], arena.settings(max_new_tokens=300))
    for snap in stream:
        if snap[0].new_tokens >= 2:
            break
    stream.close()  # what happens when a client goes away
    assert _turn_is_free(arena)  # the device's turn was given back
    assert arena.device.submit(lambda: True).result(timeout=2)  # the device thread is free again


def test_gpu_only_variant_fails_alone(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from tests.conftest import REPO
    from demo.config import load_config

    text = (REPO / "models.yaml").read_text() + """
  - {id: smollm2/bf16-cuda, base: smollm2, method: bf16, device: cuda}
"""
    (tmp_path / "models.yaml").write_text(text)
    local = Arena(load_config(tmp_path / "models.yaml"))
    require_clear_answer(local, "smollm2/bf16")
    records = local.compare_records(PROMPT, ["smollm2/bf16-cuda", "smollm2/bf16"], local.settings(max_new_tokens=8))
    assert records[0]["status"] == "error" and "needs an NVIDIA GPU" in records[0]["error"]
    assert records[1]["status"] == "done" and "Paris" in records[1]["text"]


def test_sampling_needs_a_seed_and_is_reproducible(arena):
    from demo.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="seed"):
        arena.settings(max_new_tokens=8, do_sample=True)
    settings = arena.settings(max_new_tokens=12, do_sample=True, temperature=1.0, top_p=0.95, seed=7)
    first = arena.compare_records("Name a colour.", ["smollm2/bf16"], settings)[0]["text"]
    second = arena.compare_records("Name a colour.", ["smollm2/bf16"], settings)[0]["text"]
    assert first == second


def test_unreachable_hub_weights_say_not_available(monkeypatch):
    """Offline (HF_HUB_OFFLINE=1 in tests), the GPU profile's Hub variants fail alone with a reason."""
    from tests.conftest import REPO
    from demo.config import load_config

    gpu = Arena(load_config(REPO / "models.gpu.yaml"))
    records = gpu.compare_records("hi", ["smollm2-1.7b/bnb-nf4", "llama3.2-1b/fp16"], gpu.settings(max_new_tokens=4))
    for record in records:
        assert record["status"] == "error"
        assert record["error"].startswith("not available: weights for ")
        assert "could not be reached" in record["error"] and "Traceback" not in record["error"]


def _turn_is_free(arena) -> bool:
    """Whether a newcomer gets the device's turn at once (nobody holds it, nobody waits)."""
    ticket = arena.turns.join()
    try:
        return arena.turns.wait(ticket, 0)
    finally:
        arena.turns.leave(ticket)
