"""The serving sweep (python -m demo.evaluate --protocol serving): batched greedy answers against one-at-a-time ones,
the sweep's rows and files on the bundled model, and llama.cpp's own server started, used with concurrent requests
and stopped with nothing left behind. No figure here is a speed target: those are `make bench`'s."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from demo.artifacts import llama_tools
from demo.artifacts.quantize import quantize_variant
from demo.backends.remote_http import EndpointClient
from demo.errors import InvalidRequest
from demo.evaluate import serving
from demo.evaluate.serving_outputs import serving_conditions, write_serving_outputs
from demo.evaluate.serving_requests import concurrent_streams
from demo.running import engine_server
from demo.running.runner import Arena
from demo.settings import GenerationSettings, prompt_ids
from tests.conftest import REPO

Q8 = "smollm2/gguf-q8_0"
TIE_NATS = 0.01  # a step where the single pass's best two logits are closer than this may tip either way


def _plan(**kw) -> serving.ServingPlan:
    return serving.ServingPlan(**{"concurrency": (1, 2), "new_tokens": 6, "rounds": 1, **kw})


@pytest.mark.parametrize("change, message", [
    ({"concurrency": ()}, "at least one concurrency level"),
    ({"concurrency": (4, 2)}, "smallest first"),
    ({"concurrency": (0, 2)}, "from 1 to"),
    ({"concurrency": (1, 64)}, "from 1 to"),
    ({"new_tokens": 1}, "new tokens"),
    ({"rounds": 0}, "rounds"),
    ({"prompts_file": Path("no-such-file.json")}, "not found"),
])
def test_a_bad_plan_is_refused_before_any_model_loads(change, message):
    with pytest.raises(InvalidRequest, match=message):
        _plan(**change).check()


def test_level_figures_read_each_requests_own_clock():
    # two requests sent at 0.0: tokens at 0.5, 0.6, 0.7 and 1.0, 1.2, 1.4
    run = {"started_s": 0.0, "requests": [{"sent_s": 0.0, "stamps": [0.5, 0.6, 0.7]},
                                          {"sent_s": 0.0, "stamps": [1.0, 1.2, 1.4]}]}
    figures = serving.level_figures([run])
    assert figures["total_tokens_per_s"] == pytest.approx(6 / 1.4, abs=0.01)
    assert figures["per_request_tokens_per_s"] == pytest.approx((10 + 5) / 2, abs=0.01)  # 2/0.2 and 2/0.4
    assert figures["ttft_p50_ms"] == pytest.approx(750, rel=1e-3)
    assert figures["itl_p50_ms"] == pytest.approx(150, rel=1e-3)  # gaps 100, 100, 200, 200


def test_users_per_machine_is_the_largest_level_meeting_both_bounds():
    plan = _plan(concurrency=(1, 2, 4))
    rows = [serving.ServingRow("a", 1, per_request_tokens_per_s=30, ttft_p95_ms=100),
            serving.ServingRow("a", 2, per_request_tokens_per_s=12, ttft_p95_ms=900),
            serving.ServingRow("a", 4, per_request_tokens_per_s=6, ttft_p95_ms=900),
            serving.ServingRow("b", 1, per_request_tokens_per_s=5, ttft_p95_ms=100)]
    assert serving.users_per_machine(rows, plan) == {"a": 2, "b": None}


def test_batched_greedy_answers_equal_one_at_a_time_answers(arena):
    """One generate() call for four prompts of different lengths (left padding, attention masks) gives each prompt
    the answer it gets alone, up to the first step where the answer alone is a near tie (which a batch's different
    arithmetic may tip)."""
    loaded = arena.device.call(arena.manager.get, "smollm2/fp32").loaded
    texts = serving.ServingPlan().prompts()[:4]
    ids = [prompt_ids(loaded.tokenizer, t) for t in texts]
    assert len({len(i) for i in ids}) == 4  # lengths differ: the batch pads
    batch = arena.device.call(loaded.generate_batch, ids, 12)
    assert [len(r["tokens"]) == len(r["stamps"]) == 12 for r in batch["requests"]] == [True] * 4
    compared = 0
    for prompt, answer in zip(ids, batch["requests"]):
        alone: list[int] = []
        arena.device.call(loaded.generate, prompt, GenerationSettings(max_new_tokens=12), threading.Event(),
                          lambda token, at_s: alone.append(token))
        logits = arena.device.call(loaded.logits, prompt + answer["tokens"])[len(prompt) - 1:]
        for step, (mine, theirs) in enumerate(zip(answer["tokens"], alone)):
            if theirs in loaded.stop_token_ids:
                break  # alone it ends here; the batch bans stop tokens until its length
            top2 = logits[step].topk(2).values
            if float(top2[0] - top2[1]) < TIE_NATS:
                break  # a near tie: either token is a greedy answer
            assert mine == theirs, f"{texts[ids.index(prompt)][:30]!r}: step {step} differs"
            compared += 1
    assert compared >= 20


def test_the_sweep_rows_and_files_on_the_bundled_model(arena, tmp_path):
    plan = _plan()
    rows = serving.sweep(arena, ["smollm2/fp32"], plan)
    assert [(r.variant, r.concurrency, r.error) for r in rows] == [("smollm2/fp32", 1, None), ("smollm2/fp32", 2, None)]
    for row in rows:
        assert row.served_by.startswith("transformers generate()")
        assert row.rounds == 1 and row.total_tokens_per_s > 0 and row.per_request_tokens_per_s > 0
        assert 0 < row.ttft_p50_ms <= row.ttft_p95_ms and 0 < row.itl_p50_ms <= row.itl_p95_ms
    assert rows[0].total_vs_lowest is None and rows[1].total_vs_lowest["low"] is None  # one round: no interval
    paths = write_serving_outputs(rows, plan, arena.environment(), tmp_path, serving_conditions(plan, 1.0))
    data = json.loads(paths["json"].read_text())
    assert {"variant", "concurrency", "total_tokens_per_s", "per_request_tokens_per_s", "ttft_p50_ms", "ttft_p95_ms",
            "itl_p50_ms", "itl_p95_ms"} <= set(data["rows"][0])
    assert data["conditions"]["protocol"] == "serving" and "smollm2/fp32" in data["users_per_machine"]
    assert "Users per machine" in paths["markdown"].read_text()
    assert paths["serving_chart"].stat().st_size > 10_000
    assert paths["csv"].read_text().splitlines()[0].startswith("variant,concurrency,")


def test_the_command_line_refuses_bad_levels_and_runs_a_sweep(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    bad = subprocess.run([sys.executable, "-m", "demo.evaluate", "--protocol", "serving", "--concurrency", "1,x",
                          "--variants", "smollm2/fp32"], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "--concurrency must be whole numbers" in bad.stderr
    done = subprocess.run([sys.executable, "-m", "demo.evaluate", "--protocol", "serving", "--concurrency", "1,2",
                           "--rounds", "1", "--max-new-tokens", "4", "--variants", "smollm2/fp32", "--out",
                           str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["concurrency"], r["error"]) for r in rows] == [(1, None), (2, None)]


# --- llama.cpp's own server --------------------------------------------------------------------------------

needs_server = pytest.mark.skipif(not os.access(llama_tools.tools_dir() / "llama-server", os.X_OK),
                                  reason="llama-server is not built: make llama-tools")


def _engine_pids(binary: Path) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/exe") == str(binary):
                    pids.append(int(name))
            except OSError:
                pass
    return pids


@needs_server
def test_llama_server_serves_requests_at_once_and_stops_with_nothing_left(default_config, tmp_path):
    gguf = quantize_variant(default_config, Q8) / "model.gguf"
    binary = llama_tools.tool("llama-server").resolve()
    from transformers import AutoTokenizer

    from demo.artifacts import sources

    tok = AutoTokenizer.from_pretrained(sources.resolve(default_config.bases["smollm2"]).location)
    prompts = [prompt_ids(tok, t) for t in serving.ServingPlan().prompts()[:3]]
    server = engine_server.llama_server(gguf, 3, 512, torch.get_num_threads(), tmp_path / "server.log")
    try:
        assert server.alive() and server.url.startswith("http://127.0.0.1:")
        client = EndpointClient(server.endpoint())
        run = concurrent_streams(client, prompts, 8)
        client.close()
    finally:
        code = server.stop()
    assert [len(r["stamps"]) for r in run["requests"]] == [8, 8, 8]  # ignore_eos: every answer its full length
    # in flight at once: every request's first token came before any request's last
    assert max(r["stamps"][0] for r in run["requests"]) < min(r["stamps"][-1] for r in run["requests"])
    assert code is not None and not server.alive()
    assert _engine_pids(binary) == []


@needs_server
def test_the_sweep_serves_a_gguf_variant_on_llama_server(arena):
    binary = llama_tools.tool("llama-server").resolve()
    quantize_variant(arena.config, Q8)
    rows = serving.sweep(arena, [Q8], _plan(concurrency=(1, 3)))
    assert [(r.concurrency, r.error) for r in rows] == [(1, None), (3, None)]
    assert all(r.served_by.startswith("llama-server (3 slots") for r in rows)
    assert all(r.total_tokens_per_s > 0 and r.ttft_p95_ms > 0 for r in rows)
    assert _engine_pids(binary) == []


def test_a_missing_gguf_file_is_that_variants_error_and_the_others_run(tmp_path, default_config):
    import dataclasses

    from demo.config import Source

    broken = dataclasses.replace(default_config.variants[Q8], id="smollm2/gguf-missing",
                                 checkpoint=Source("local", path=tmp_path / "absent.gguf"))
    config = dataclasses.replace(default_config, variants={**default_config.variants, broken.id: broken})
    rows = serving.sweep(Arena(config), [broken.id, "smollm2/fp32"], _plan(concurrency=(1,)))
    assert "not found" in rows[0].error and rows[1].error is None


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, default_config):
    from tests.conftest import tiny_models_file

    return tiny_models_file(tmp_path_factory.mktemp("serving"), default_config, """
{id: tiny/fp32, base: tiny, method: fp32}
{id: tiny/bf16, base: tiny, method: bf16}
""")


def test_the_evaluate_tab_runs_the_sweep_and_shows_its_rows_and_chart(tiny_config):
    """The tab's serving choice on a tiny random model: a row per variant and level in words, the chart, the files;
    a bad level list is the page's error line."""
    import asyncio
    from types import SimpleNamespace

    import gradio as gr

    from demo.config import load_config
    from demo.ui import serving_view
    from demo.ui.evaluate import EvaluateTab

    request = SimpleNamespace(session_hash="visitor", headers={}, client=SimpleNamespace(host="127.0.0.1"))
    arena = Arena(load_config(tiny_config))
    with gr.Blocks():
        tab = EvaluateTab(arena, [("fp32", "tiny/fp32"), ("bf16", "tiny/bf16")])

    async def last(*args):
        final = None
        async for update in tab.on_evaluate(*args):
            final = update
        return final

    final = asyncio.run(last(["tiny/bf16", "tiny/fp32"], 1, 8, "serving", request, None, "1,3"))
    assert final[tab.status].startswith("**Done.** **Users per machine:**")
    table = final[tab.table]
    assert list(table.columns) == list(serving_view.HEADERS.values())
    assert table.iloc[:, 0].tolist() == ["tiny/fp32", "tiny/fp32", "tiny/bf16", "tiny/bf16"]
    assert table.iloc[:, 1].tolist() == ["1", "3", "1", "3"]
    assert final[tab.quality_chart]["value"].endswith("serving_per_user_vs_total.png")
    assert [p.rsplit("/", 1)[-1] for p in final[tab.files]] == ["results.json", "results.csv", "results.md"]
    with pytest.raises(gr.Error, match="whole numbers separated by commas"):
        asyncio.run(last(["tiny/fp32"], 1, 8, "serving", request, None, "1;2"))
