"""The app in-process: /compare through gradio_client on three variants, then again from cache."""

import subprocess
import sys

import pytest

from tests.conftest import REPO, free_port

VARIANTS = ["smollm2/fp32", "smollm2/bnb-int8", "smollm2/bnb-nf4"]


@pytest.fixture(scope="module")
def app_url(default_config):
    from demo import ui
    from demo.runner import Arena

    port = free_port()
    demo = ui.build_demo(Arena(default_config))  # a fresh cache: the first call loads cold
    demo.queue(max_size=ui.QUEUE_MAX_SIZE)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                            **ui.launch_kwargs())
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_compare_endpoint_then_cache(client):
    first = client.predict(prompt="What is the capital of France?", variants=VARIANTS, max_new_tokens=16,
                           api_name="/compare")
    assert [r["variant"] for r in first] == VARIANTS
    for record in first:
        assert record["error"] is None and record["status"] == "done"
        assert "Paris" in record["text"]
        assert record["cache_hit"] is False and record["load_ms"] > 0
        assert record["ttft_ms"] > 0 and record["decode_tokens_per_s"] > 0 and record["total_ms"] > 0
        assert record["weights_mib"] > 0 and record["peak_memory_mib"] >= record["weights_mib"]
        assert record["memory_kind"] == "cpu-rss" and record["bits"] in (32, 8, 4)
        assert record["prompt_tokens"] > 0 and record["new_tokens"] > 0
        assert record["environment"]["gradio"]
    second = client.predict(prompt="What is the capital of France?", variants=VARIANTS, max_new_tokens=16,
                            api_name="/compare")
    for before, after in zip(first, second):
        assert after["cache_hit"] is True and after["load_ms"] < 50
        assert after["text"] == before["text"]  # greedy: the same answer again


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": "", "variants": ["smollm2/fp32"]}, "prompt is empty"),
    ({"prompt": "hi", "variants": ["../../etc/passwd"]}, "unknown variant"),
    ({"prompt": "hi", "variants": []}, "no variant chosen"),
    ({"prompt": "hi", "variants": ["smollm2/fp32"], "max_new_tokens": 513}, "between 1 and 512"),
    ({"prompt": "hi", "variants": ["smollm2/fp32"], "temperature": 9.0}, "temperature"),
])
def test_bad_requests_get_a_clear_error(client, kwargs, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(**kwargs, api_name="/compare")


def test_broken_models_file_stops_start_up(tmp_path):
    bad = tmp_path / "models.yaml"
    bad.write_text("bases:\n  b: {source: {kind: hub, repo: x/y}}\nvariants:\n  - {id: v, base: b, method: int3}\n")
    out = subprocess.run([sys.executable, "app.py", "--models", str(bad)], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: {bad}: variant 'v': field 'method': unknown method 'int3' " \
                                 "(allowed: fp32, fp16, bf16, bnb-int8, bnb-4bit)"
