"""The page in headless Chromium with ARENA_ZEROGPU_EMULATE=1: a comparison streamed from the forked worker, and Stop."""

import time

import pytest

from tests.conftest import require_clear_answer
from tests.test_browser import browser, choose, open_page, start_app  # noqa: F401 (browser is a fixture)
from tests.test_zerogpu import VARIANTS, small_profile

pytestmark = pytest.mark.browser
START_UP_S = 600  # every variant placed and its rates measured before the page is served, on 2 shared cores


@pytest.fixture(scope="module")
def zerogpu_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zerogpu-app")
    yield from start_app(folder, START_UP_S, ARENA_ZEROGPU_EMULATE="1", ARENA_MODELS=str(small_profile(folder)),
                         ARENA_ZEROGPU_MAX_S="3600")


def test_a_streamed_comparison_then_stop_in_emulated_zerogpu(browser, zerogpu_url, arena, clear_prompt):  # noqa: F811
    for variant_id in VARIANTS:
        require_clear_answer(arena, variant_id)
    page, errors = open_page(browser, zerogpu_url)
    assert "Emulated ZeroGPU" in page.locator("#zerogpu-notice").inner_text()
    page.get_by_label("Prompt").fill(clear_prompt)
    choose(page, VARIANTS)
    page.wait_for_function("() => /take about \\d+ s of GPU quota/.test(document.querySelector('#gpu-time')"
                           ".innerText)", timeout=10_000)
    page.locator("#run").click()
    page.locator("#summary").wait_for(state="visible", timeout=300_000)
    for i, variant in enumerate(VARIANTS):
        column = page.locator(f"#variant-{i}")
        assert variant in column.inner_text() and "done" in column.inner_text()
        assert "Paris" in column.locator("textarea").input_value()
        assert "placed at start-up" in column.locator(".variant-figures").first.inner_text()
    assert "Placed at start-up (emulated ZeroGPU" in page.locator("#system").inner_text()

    page.get_by_label("Prompt").fill("Write a very long story about a dragon who learns to cook.")
    page.get_by_text("Generation settings").click()
    slider = page.get_by_label("Max new tokens", exact=False).locator("xpath=..").locator("input[type=number]")
    slider.first.fill("400")
    slider.first.press("Enter")
    page.locator("#run").click()
    first = page.locator("#variant-0")
    first.get_by_text("generating…").wait_for(timeout=120_000)  # streamed from the worker, snapshot by snapshot
    page.wait_for_function("() => document.querySelector('#variant-0 textarea').value.length > 10", timeout=60_000)
    started = time.time()
    page.locator("#stop").click()
    page.locator("#summary").wait_for(state="visible", timeout=30_000)
    assert time.time() - started < 10
    assert "stopped" in first.inner_text() and "stopped" in page.locator("#variant-1").inner_text()
    assert errors == []
