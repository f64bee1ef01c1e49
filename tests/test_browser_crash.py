"""A GGUF runtime that segfaults in the served app (python app.py, headless Chromium and /compare): its column says so
in one line, the others finish, the summary marks it, and the same server answers the next request."""

import pytest

from demo.artifacts.quantize import quantize_variant
from demo.running import faults
from tests.test_browser import browser, choose, open_page, start_app  # noqa: F401 (browser is a fixture)

pytestmark = pytest.mark.browser
FP32, Q8, Q4 = "smollm2/fp32", "smollm2/gguf-q8_0", "smollm2/gguf-q4_k_m"
VARIANTS = [FP32, Q8, Q4]


@pytest.fixture(scope="module")
def crashing_app(tmp_path_factory, default_config):
    for variant_id in (Q8, Q4):
        quantize_variant(default_config, variant_id)
    yield from start_app(tmp_path_factory.mktemp("crash-app"), 120, **{faults.ENV: f"{Q8}=segv@token3"})


def test_a_crashing_runtime_in_the_page_and_through_compare(browser, crashing_app, tmp_path):  # noqa: F811
    from gradio_client import Client

    page, errors = open_page(browser, crashing_app)
    page.get_by_label("Prompt").fill("Name the capital of France.")
    choose(page, VARIANTS)
    page.locator("#run").click()
    page.locator("#summary").wait_for(state="visible", timeout=360_000)
    column = page.locator("#variant-1")
    assert Q8 in column.inner_text() and "crashed" in column.inner_text()
    assert "crashed: signal 11 (SIGSEGV) in llama.cpp; the other variants are unaffected" in \
        column.locator("textarea").input_value()
    for i in (0, 2):
        column = page.locator(f"#variant-{i}")
        assert "done" in column.inner_text() and "Paris" in column.locator("textarea").input_value()
    assert "crashed" in page.locator("#summary-table").inner_text()
    page.screenshot(path=str(tmp_path / "crash.png"), full_page=True)

    # the same server, a moment later: the crashed variant is loaded afresh (and crashes again, as injected)
    records = Client(crashing_app, verbose=False).predict(prompt="Name the capital of France.", variants=VARIANTS,
                                                          max_new_tokens=8, api_name="/compare")
    by_id = {r["variant"]: r for r in records}
    assert by_id[Q8]["status"] == "error" and by_id[Q8]["error"].startswith("crashed: signal 11")
    assert by_id[Q8]["cache_hit"] is not True
    assert by_id[FP32]["status"] == "done" and by_id[Q4]["status"] == "done"
    assert errors == []
