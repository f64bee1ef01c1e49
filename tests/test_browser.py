"""The page in headless Chromium: a comparison runs to the end, Stop stops, the console stays clean."""

import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
VARIANTS = ["smollm2/bf16", "smollm2/bnb-int8", "smollm2/bnb-nf4"]


def start_app(log_dir, **env_extra):
    """app.py in a subprocess on a free port; yields its URL and stops it afterwards."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), **env_extra}
    log = (log_dir / "app.log").open("w")  # a file: an unread pipe would fill and block
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            assert proc.poll() is None, open(log.name).read()
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("the app did not answer within 60 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    yield from start_app(tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, url, width=1280, height=800):
    page = browser.new_page(viewport={"width": width, "height": height})
    errors = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.get_by_label("Prompt").wait_for()
    page.locator("#run").wait_for(state="visible", timeout=30_000)
    return page, errors


def choose(page, variant_ids):
    group = page.locator("fieldset, .block").filter(has_text="Variants to compare").first
    for box in group.get_by_role("checkbox").all():
        label = box.evaluate("el => el.closest('label').innerText")
        wanted = any(label.startswith(v + " ") or label == v for v in variant_ids)
        if box.is_checked() != wanted:
            box.click()


def test_comparison_in_the_browser(browser, app_url):
    page, errors = open_page(browser, app_url)
    page.get_by_label("Prompt").fill("What is the capital of France?")
    choose(page, VARIANTS)
    page.locator("#run").click()
    page.locator("#summary").wait_for(state="visible", timeout=180_000)
    columns = [page.locator(f"#variant-{i}") for i in range(len(VARIANTS))]
    for column, variant in zip(columns, VARIANTS):
        assert column.is_visible()
        assert variant in column.inner_text() and "done" in column.inner_text()
        assert "Paris" in column.locator("textarea").input_value()
        figures = column.locator(".variant-figures").first.inner_text()
        for unit in ("ms", "tokens/s", "MiB"):
            assert unit in figures
    assert not page.locator("#variant-3").is_visible()
    summary = page.locator("#summary")
    table = page.locator("#summary-table").inner_text()
    for variant in VARIANTS:
        assert variant in table
    assert summary.locator("canvas, svg").count() >= 3
    assert re.search(r"Loaded variants:.*smollm2/bnb-nf4", page.locator("#system").inner_text())
    downloads = page.locator("#downloads").inner_text().replace("\n", "")  # Gradio splits name and extension
    assert all(name in downloads for name in ("comparison.json", "comparison.csv", "comparison.md"))
    time.sleep(1)  # let the charts draw before the picture
    page.screenshot(path=str(REPO / "assets" / "screenshot.png"), full_page=True)
    assert errors == []


def test_stop_during_a_run(browser, app_url):
    page, errors = open_page(browser, app_url)
    page.get_by_label("Prompt").fill("Write a very long story about a dragon who learns to cook.")
    choose(page, ["smollm2/fp32", "smollm2/bf16"])
    page.get_by_text("Generation settings").click()
    slider = page.get_by_label("Max new tokens", exact=False).locator("xpath=..").locator("input[type=number]")
    slider.first.fill("400")
    slider.first.press("Enter")
    page.locator("#run").click()
    first = page.locator("#variant-0")
    first.get_by_text("generating…").wait_for(timeout=120_000)
    page.wait_for_function("() => document.querySelector('#variant-0 textarea').value.length > 10",
                           timeout=60_000)
    started = time.time()
    page.locator("#stop").click()
    page.locator("#summary").wait_for(state="visible", timeout=30_000)
    assert time.time() - started < 10
    assert "stopped" in first.inner_text()
    assert "stopped" in page.locator("#variant-1").inner_text()
    assert "stopped" in page.locator("#summary-table").inner_text()
    assert errors == []


def test_narrow_screen(browser, app_url):
    page, errors = open_page(browser, app_url, width=390, height=844)
    page.locator("#run").wait_for(state="visible", timeout=30_000)  # Gradio renders blocks progressively
    page.locator("#system").get_by_text("Loaded variants").wait_for(timeout=30_000)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390 + 1, f"the page scrolls sideways on a phone ({width}px wide)"
    assert errors == []


def test_bad_input_shows_its_message(browser, app_url):
    page, errors = open_page(browser, app_url)
    page.get_by_label("Prompt").fill("   ")
    page.locator("#run").click()
    page.get_by_text("the prompt is empty").first.wait_for(timeout=30_000)
    page.get_by_label("Prompt").fill("What is the capital of France?")
    choose(page, [])
    page.locator("#run").click()
    page.get_by_text("no variant chosen").first.wait_for(timeout=30_000)
    assert page.locator("#run").is_enabled()
    # Gradio logs a rejected event to the console as an error; nothing else may appear there.
    assert [e for e in errors if "prompt is empty" not in e and "no variant chosen" not in e] == []


def test_evaluate_tab(browser, app_url):
    page, errors = open_page(browser, app_url)
    page.get_by_role("tab", name="Evaluate").click()
    page.get_by_label("Timed runs per variant", exact=False).locator("xpath=..").locator("input[type=number]").first.fill("1")
    page.locator("#evaluate").click()
    page.locator("#evaluate-status").get_by_text("Done.").wait_for(timeout=300_000)
    table = page.locator("#evaluate-table").inner_text()
    assert "smollm2/fp32" in table and "smollm2/bnb-nf4" in table
    assert page.locator("img[src*='quality_vs_memory']").count() == 1
    assert page.locator("img[src*='speed_vs_memory']").count() == 1
    assert errors == []
