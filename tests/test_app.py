"""The app in-process: /compare through gradio_client on three variants, then again from cache."""

import subprocess
import sys

import pytest

from tests.conftest import CLEAR_PROMPT, REPO, free_port, require_clear_answer

VARIANTS = ["smollm2/fp32", "smollm2/bnb-int8", "smollm2/bnb-nf4"]


@pytest.fixture(scope="module")
def app(default_config):
    from demo import ui
    from demo.running.runner import Arena

    port = free_port()
    arena = Arena(default_config)  # a fresh cache: the first call loads cold
    demo = ui.build_demo(arena)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                            **ui.launch_kwargs(demo))
    yield url, arena
    demo.close()


@pytest.fixture(scope="module")
def app_url(app):
    return app[0]


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_compare_endpoint_then_cache(client, arena, clear_prompt):
    for variant_id in VARIANTS:
        require_clear_answer(arena, variant_id)
    first = client.predict(prompt=clear_prompt, variants=VARIANTS, max_new_tokens=16,
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
    second = client.predict(prompt=clear_prompt, variants=VARIANTS, max_new_tokens=16,
                            api_name="/compare")
    for before, after in zip(first, second):
        assert after["cache_hit"] is True and after["load_ms"] < 50
        assert after["text"] == before["text"]  # greedy: the same answer again


def api_cases():
    from tests.test_reliability import BAD_REQUESTS, BAD_SETTINGS

    for prompt, variants, message in BAD_REQUESTS:
        yield {"prompt": prompt, "variants": variants}, message
    for settings, message in BAD_SETTINGS:
        yield {"prompt": "hi", "variants": ["smollm2/bf16"], **settings}, message


def sendable_as_json(value) -> bool:
    import json

    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
        return True
    except (ValueError, UnicodeEncodeError):
        return False


def test_every_bad_request_gets_its_message_then_the_app_still_answers(client, arena):
    from gradio_client.exceptions import AppError

    for kwargs, message in api_cases():
        if not sendable_as_json(kwargs):
            continue  # NaN, lone surrogates: no JSON client sends these (the raw HTTP test below sends one)
        with pytest.raises(AppError) as info:
            client.predict(**kwargs, api_name="/compare")
        assert message in str(info.value), kwargs
        assert "Traceback" not in str(info.value)
    require_clear_answer(arena, "smollm2/bf16")
    [record] = client.predict(prompt=CLEAR_PROMPT, variants=["smollm2/bf16"], max_new_tokens=8, api_name="/compare")
    assert record["status"] == "done" and "Paris" in record["text"]


def test_undecodable_prompt_over_raw_http(app_url):
    """What a hand-written client can send: JSON with an escaped lone surrogate (undecodable bytes)."""
    import json
    import urllib.request

    body = json.dumps({"data": ["caf\udce9", ["smollm2/bf16"], 8, False, 0.7, 0.9, None]}).encode()
    request = urllib.request.Request(f"{app_url}gradio_api/call/compare", body, {"Content-Type": "application/json"})
    event_id = json.load(urllib.request.urlopen(request, timeout=10))["event_id"]
    stream = urllib.request.urlopen(f"{app_url}gradio_api/call/compare/{event_id}", timeout=60).read().decode()
    assert "event: error" in stream and "not valid UTF-8" in stream


def test_only_the_documented_api_is_public_and_no_local_file_is_served(client, app_url):
    import urllib.error
    import urllib.request

    endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert endpoints == {"/compare", "/battle", "/vote"}  # the blind test's two: see tests/test_blind.py
    for path in ("models.yaml", "app.py", "/etc/passwd", "../../etc/passwd", "assets/../models.yaml"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{app_url}gradio_api/file={path}", timeout=10)
        assert info.value.code in (403, 404), path


def test_a_cancelled_request_stops_its_generation(client, app):
    import time

    _, arena = app
    job = client.submit(prompt="Write a long story about a dragon.", variants=["smollm2/bf16"], max_new_tokens=500,
                        api_name="/compare")
    deadline = time.time() + 60
    while time.time() < deadline and not any(o and o[0]["new_tokens"] >= 3 for o in job.outputs()):
        time.sleep(0.1)
    job.cancel()
    # A generation still running would keep the device thread busy for many seconds.
    assert arena.device.submit(lambda: True).result(timeout=2)
    [record] = client.predict(prompt="What is the capital of France?", variants=["smollm2/bf16"], max_new_tokens=8,
                              api_name="/compare")
    assert record["status"] == "done"


def test_broken_models_file_stops_start_up(tmp_path):
    bad = tmp_path / "models.yaml"
    bad.write_text("bases:\n  b: {source: {kind: hub, repo: x/y}}\nvariants:\n  - {id: v, base: b, method: int3}\n")
    out = subprocess.run([sys.executable, "app.py", "--models", str(bad)], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: {bad}: variant 'v': field 'method': unknown method 'int3' " \
                                 "(allowed: fp32, fp16, bf16, bnb-int8, bnb-4bit, gptq, gguf, remote, torchao, hqq, autoround, compressed-tensors, awq)"


# The page's own Run button: three undocumented events, chained as the browser chains them.
RUN_ARGS = (False, 0.7, 0.9, 0)  # do_sample, temperature, top_p, seed


def named_outputs(client, api_name: str, values) -> dict:
    """One event's output values by what they are: {"head": [...], "figures": [...], "summary-table": ...}."""
    fn = next(i for i, e in client.endpoints.items() if e.api_name == api_name)
    endpoint = client.endpoints[fn]
    ids = [cid for cid, kind in zip(endpoint.dependency["outputs"], endpoint.output_component_types)
           if not kind.skip]
    components = {c["id"]: c for c in client.config["components"]}
    named: dict = {}
    for cid, value in zip(ids, values if isinstance(values, (list, tuple)) else [values]):
        props = components[cid]["props"]
        classes = props.get("elem_classes") or []
        name = next((c.removeprefix("variant-") for c in classes if c.startswith("variant-")), None) \
            or props.get("elem_id") or components[cid]["type"]
        named.setdefault(name, []).append(value)
    return named


def run_page(client, *args) -> dict:
    """Press Run: set the columns up, stream them, then the summary; what the page ends up showing."""
    client.predict(*args, api_name="/run_start")
    named = named_outputs(client, "/run", client.predict(*args, api_name="/run"))
    named.update(named_outputs(client, "/run_summary", client.predict(api_name="/run_summary")))
    return named


def test_page_streams_only_the_columns(client):
    """The streaming event carries the columns' headings, answers and figures as plain text (Gradio sends
    only what changed), nothing that would be rebuilt on every update; each column's figures are set when it
    ends and once more with fidelity; the summary comes once, from its own event."""
    job = client.submit("Write a short story about a lighthouse keeper.", ["smollm2/fp32", "smollm2/bf16"], 48,
                        *RUN_ARGS, api_name="/run")
    job.result(timeout=600)
    messages = [named_outputs(client, "/run", values) for values in job.outputs()]
    assert set(messages[0]) == {"head", "text", "figures"}
    # a handler waiting on a cold load yields gr.skip() every half second (so Gradio can notice a client gone):
    # those change nothing and carry nothing
    nothing = {"__type__": "update"}
    messages = [m for m in messages if not all(v == nothing for values in m.values() for v in values)]
    for message in messages:
        assert all(isinstance(v, str) for values in message.values() for v in values), message
    for column in (0, 1):
        figures = [m["figures"][column] for m in messages]
        changes = sum(1 for a, b in zip(figures, figures[1:]) if a != b)
        assert changes <= 2, f"column {column}'s figures changed {changes} times"
        assert "tokens/s" in figures[-1]
    summary = named_outputs(client, "/run_summary", client.predict(api_name="/run_summary"))
    assert summary["summary-table"][0]["data"]
    headers = summary["summary-table"][0]["headers"]
    assert headers.index("KL vs baseline (nats)") == 3 and "energy (J/token)" not in headers  # no energy on a CPU
    assert "chart-kl-weights" in summary  # the size/quality picture beside the bar charts
    for chart in ("chart-decode", "chart-ttft", "chart-weights"):  # each y axis ends on a round tick above its bars
        shown = summary[chart][0]
        tallest = max(row[1] for row in shown["value"]["data"])
        assert shown["y_lim"][0] == 0 and tallest * 1.05 <= shown["y_lim"][1] <= tallest * 2.2, (chart, shown["y_lim"])


def test_status_words_match_between_column_and_summary(client):
    from demo.ui.columns import STATUS_TEXT

    ids = ["smollm2/bf16", "smollm2/gptq-4bit"]  # no GPTQ checkpoint in a fresh cache: "not available"
    named = run_page(client, "What is the capital of France?", ids, 8, *RUN_ARGS)
    table = named["summary-table"][0]
    statuses = [row[table["headers"].index("status")] for row in table["data"]]
    for head, status in zip(named["head"], statuses):
        assert status in STATUS_TEXT.values() or status.startswith(("done", "stopped"))
        assert f"**{status}**" in head
    assert statuses[1] == "not available"


def test_status_text_for_every_stage():
    from demo.ui.columns import status_text

    assert status_text({"status": "waiting", "queue_ahead": 2}) == \
        "waiting for the device: another request is using it (2 requests ahead of this one)"
    assert status_text({"status": "reading", "prompt_tokens": 4321}) == "reading the prompt (4,321 tokens)…"
    assert status_text({"status": "scoring"}) == "scoring fidelity…"
    assert status_text({"status": "done", "truncated": True, "new_tokens": 64}) == "done · cut at 64 tokens"
    assert status_text({"status": "error"}) == "not available"


def test_over_limit_prompt_is_refused_with_the_api_message(client):
    from gradio_client.exceptions import AppError

    long_prompt = "word " * 5000  # 25,000 characters
    messages = []
    for api_name, args in (("/run_start", (long_prompt, ["smollm2/bf16"], 8, *RUN_ARGS)),
                           ("/compare", (long_prompt, ["smollm2/bf16"], 8))):
        with pytest.raises(AppError) as info:
            client.predict(*args, api_name=api_name)
        messages.append(str(info.value))
    assert "the prompt has 25,000 characters; the limit is 20,000" in messages[0]
    assert messages[0] == messages[1]


def test_one_token_answer_has_no_decode_bar(client):
    named = run_page(client, "What is the capital of France?", ["smollm2/bf16", "smollm2/fp32"], 1, *RUN_ARGS)
    assert named["chart-decode"][0]["visible"] is False  # no bar and no "undefined" axis
    assert "No decode rate for bf16, fp32" in named["chart-note"][0]


def test_sampling_controls_follow_the_sample_box(client):
    components = {c["props"].get("label"): c["props"] for c in client.config["components"]}
    for label in ("Temperature", "Top-p", "Seed"):
        assert components[label]["interactive"] is False, label
    assert "max_length" not in components["Prompt"] or components["Prompt"]["max_length"] is None
    assert "20,000 characters" in components["Prompt"]["info"]


def test_system_panel_adds_up(arena):
    from demo.measuring import system
    from demo.ui.system_panel import system_markdown as _system_markdown

    snap = system.snapshot("cpu")
    assert snap.process_uss_mib is not None and 0 < snap.process_uss_mib <= snap.ram_used_mib
    text = _system_markdown(arena)
    assert "(USS)" in text and "not a cap" in text and "file-backed" in text


def test_system_panel_is_a_shared_route(app_url):
    """Every open page polls the panel: it is a plain GET (no Gradio event), rendered once a period for all."""
    import urllib.request

    with urllib.request.urlopen(app_url + "gradio_api/arena/system", timeout=30) as answer:
        first, etag = answer.read().decode(), answer.headers["ETag"]
        assert answer.headers["Content-Type"].startswith("text/html")
    assert "<strong>Loaded variants:</strong>" in first and "<small>USS counts" in first
    assert "Device:" in first and "<br" in first  # one figure a line
    with urllib.request.urlopen(app_url + "gradio_api/arena/system", timeout=30) as again:
        assert again.headers["ETag"] == etag or again.read().decode() != first  # the same body, the same tag


def test_system_panel_view_renders_once_a_period(arena):
    from demo.ui.system_panel import PanelView

    now = [0.0]
    view = PanelView(arena, 1.0, clock=lambda: now[0])
    first = view()
    assert view() is first  # a second viewer within the period: the same rendering
    now[0] += 1.0
    assert view() is not first and b"Loaded variants" in view().body


def test_system_panel_shows_a_models_file_name_as_text_not_html(arena, monkeypatch):
    from demo.ui.system_panel import PanelView

    monkeypatch.setattr(arena.manager, "loaded_ids", lambda: ["<img src=x onerror=alert(1)>"])
    body = PanelView(arena, 1.0)().body.decode()
    assert "<img" not in body and "&lt;img src=x onerror=alert(1)&gt;" in body
    assert "<small>USS counts" in body  # the panel's own note stays HTML


def test_evaluate_table_in_words_and_percentages():
    from demo.evaluate import VariantEvaluation
    from demo.ui.evaluate import HEADERS, table_rows

    row = table_rows([VariantEvaluation("smollm2/bnb-nf4", "smollm2/fp32", perplexity=12.3456, kl_divergence=0.04321,
                                        top1_agreement=0.9123, runs=3, weights_mib=101.2)])[0]
    cells = dict(zip(HEADERS, row))
    assert cells["top1_agreement"] == "91.2%" and cells["perplexity"] == "12.35"
    assert cells["disk_mib"] == "– (quantized at load)" and cells["ttft_ms_p50"] == "–"
    assert all("(" in h or h in ("variant", "compared with", "timed runs") for h in HEADERS.values())


def test_evaluate_table_ends_with_each_baseline_s_noise_floor():
    from demo.evaluate import VariantEvaluation
    from demo.ui.evaluate import HEADERS, table_rows

    floor = {"epsilon": 2 ** -9, "seed": 0, "positions": 9, "non_finite_positions": 0, "kl_mean": 0.000394,
             "kl_median": 0.0002, "kl_p99_9": 0.0108, "kl_max": 0.0125}
    rows = table_rows([VariantEvaluation("b/fp32", "b/fp32", noise_floor=floor),
                       VariantEvaluation("b/nf4", "b/fp32", noise_floor=floor),
                       VariantEvaluation("c/gguf", "c/gguf", noise_floor={"unavailable": "no noise floor: llama.cpp"})])
    assert len(rows) == 5
    b_floor, c_floor = (dict(zip(HEADERS, row)) for row in rows[3:])
    assert b_floor["variant"] == "noise floor (ε = 2⁻⁹) of b/fp32" and b_floor["kl_divergence"] == "0.0004"
    assert b_floor["kl_p99_9"] == "0.0108" and b_floor["top1_agreement"] == ""
    assert c_floor["kl_divergence"] == "no noise floor: llama.cpp"


def test_a_stopped_evaluation_starts_no_further_variant(arena):
    import threading

    from demo import evaluate

    stop = threading.Event()
    stop.set()
    assert evaluate.evaluate(arena, ["smollm2/fp32", "smollm2/bf16"], "Some text.", stop=stop) == []


def test_an_evaluation_takes_every_variant_each_once(arena):
    import threading

    from demo import evaluate
    from demo.errors import InvalidRequest

    stop = threading.Event()
    stop.set()  # checked, then nothing run
    every = list(arena.config.variants)
    assert len(every) > arena.config.limits.max_variants  # one comparison could not hold them all
    assert evaluate.evaluate(arena, every, "Some text.", stop=stop) == []
    with pytest.raises(InvalidRequest, match="listed twice"):
        evaluate.evaluate(arena, ["smollm2/fp32", "smollm2/fp32"], "Some text.", stop=stop)
    with pytest.raises(InvalidRequest, match="unknown variant"):
        evaluate.evaluate(arena, ["smollm2/fp32", "nope"], "Some text.", stop=stop)
    with pytest.raises(InvalidRequest, match="--ctx must be at least 8 tokens, got 1"):  # before any model loads
        evaluate.evaluate(arena, ["smollm2/fp32"], "Some text.", stop=stop, protocol=evaluate.Protocol("llamacpp", 1))


def test_charts_keep_one_colour_per_variant_and_say_what_is_missing(tmp_path):
    from demo.reports import charts

    order = ["b/fp32", "b/bf16", "b/nf4"]
    assert charts.variant_colours(order)["b/nf4"] == charts.variant_colours(order + ["b/x"])["b/nf4"]
    assert charts.short_names(["a/fp32", "b/fp32", "b/nf4"]) == {"a/fp32": "a/fp32", "b/fp32": "b/fp32",
                                                                 "b/nf4": "nf4"}
    rows = [{"variant": "b/fp32", "weights_mib": 500, "perplexity": 10.0, "decode_tokens_per_s_p50": 20.0},
            {"variant": "b/nf4", "weights_mib": 100, "perplexity": 12.0, "decode_tokens_per_s_p50": None}]
    paths = charts.write_charts(rows, tmp_path, order=order)
    assert all(p.stat().st_size > 0 for p in paths.values())


def test_variant_picker_puts_the_baseline_first_and_groups_by_family(default_config):
    from demo.ui.page import variant_choices

    labels, ids = zip(*variant_choices(default_config))
    assert ids[0] == "smollm2/fp32" and set(ids) == set(default_config.variants)
    families = [label.split(" ")[0] for label in labels]
    assert families == sorted(families, key=families.index)  # each family's variants stand together
    assert labels[ids.index("smollm2/gguf-q4_k_m")] == "llama.cpp Q4_K_M (smollm2/gguf-q4_k_m)"


def test_summary_table_numbers_never_round_a_small_divergence_to_zero():
    from demo.ui.summary import number_text

    assert [number_text(v) for v in (0.00101, 0.016, 0.0, 4.93, 2154.2, 7)] == \
        ["0.00101", "0.016", "0.0", "4.9", "2,154", "7"]


def test_the_summary_conditions_give_the_baseline_s_noise_floor():
    from demo.ui.summary import conditions_markdown

    env = {"device_name": "CPU", "torch": "2", "transformers": "5", "bitsandbytes": "0", "gradio": "6"}
    floor = {"epsilon": 2 ** -9, "kl_mean": 0.000394, "kl_max": 0.01}
    records = [{"variant": "b/fp32", "environment": env, "settings": {"max_new_tokens": 8}, "memory_kind": None,
                "fidelity": {"baseline": "b/fp32", "noise_floor": floor}},
               {"variant": "b/nf4", "environment": env, "settings": {}, "memory_kind": None,
                "fidelity": {"baseline": "b/fp32", "noise_floor": floor}}]
    text = conditions_markdown(records)
    assert text.count("noise floor KL 0.000394 nats") == 1 and "KL against `b/fp32`" in text
    records[0]["fidelity"]["noise_floor"] = {"unavailable": "no noise floor: the baseline runs on llama.cpp"}
    assert "no noise floor: the baseline runs on llama.cpp" in conditions_markdown(records)
    folded = conditions_markdown(records, ["energy (J/token)"])
    assert "Not in the table, no variant has a value: energy (J/token)." in folded
    assert "Not in the table" not in text
