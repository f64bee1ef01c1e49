"""The page in headless Chromium: a comparison runs to the end, Stop stops, the console stays clean."""

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import REPO, free_port, require_clear_answer

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
VARIANTS = ["smollm2/bf16", "smollm2/bnb-int8", "smollm2/bnb-nf4"]


def start_app(log_dir, start_up_s: float = 60, **env_extra):
    """app.py in a subprocess on a free port; yields its URL and stops it afterwards."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), **env_extra}
    log = (log_dir / "app.log").open("w")  # a file: an unread pipe would fill and block
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + start_up_s
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            assert proc.poll() is None, open(log.name).read()
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail(f"the app did not answer within {start_up_s:.0f} s")
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
        wanted = any(label.strip().endswith(f"({v})") for v in variant_ids)  # "family · label (id)"
        if box.is_checked() != wanted:
            box.click()


def test_comparison_in_the_browser(browser, app_url, arena, clear_prompt, tmp_path):
    for variant_id in VARIANTS:
        require_clear_answer(arena, variant_id)
    page, errors = open_page(browser, app_url)
    page.get_by_label("Prompt").fill(clear_prompt)
    choose(page, VARIANTS)
    page.locator("#run").click()
    page.locator("#summary").wait_for(state="visible", timeout=360_000)  # three cold loads on 2 shared cores
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
    for chart in ("#chart-decode", "#chart-ttft", "#chart-weights"):  # charts and answers have names
        assert page.locator(chart).get_attribute("aria-label").startswith("Bar chart: ")
    kl_chart = page.locator("#chart-kl-weights")  # drawn where some variant has a KL against the baseline
    assert kl_chart.count() == 0 or kl_chart.get_attribute("aria-label").startswith("Scatter chart: ")
    assert page.get_by_role("textbox", name="Answer from bf16").count() == 1
    # The System panel refreshes every 2 s: the last variant may have loaded after its latest refresh.
    page.wait_for_function("() => /Loaded variants:.*smollm2\\/bnb-nf4/.test(document.querySelector('#system')"
                           ".innerText)", timeout=10_000)
    downloads = page.locator("#downloads").inner_text().replace("\n", "")  # Gradio splits name and extension
    assert all(name in downloads for name in ("comparison.json", "comparison.csv", "comparison.md"))
    time.sleep(1)  # let the charts draw before the picture
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)  # a test changes no file of the checkout
    assert errors == []


PAGE_TOKENS_JS = """
(column) => [...document.querySelectorAll(`${column} .per-token-kl .kl-token`)].map((el) => ({
  position: Number(el.dataset.position), kl: el.dataset.kl ?? null, nonfinite: el.dataset.nonfinite ?? null,
  text: el.textContent, title: el.title}))
"""


def test_per_token_kl_in_the_page_matches_the_api(browser, app_url, arena, clear_prompt):
    """The KLs the page shades the baseline's answer by are the /compare record's, position by position."""
    from gradio_client import Client

    variants = ["smollm2/fp32", "smollm2/bf16"]
    require_clear_answer(arena, "smollm2/bf16")
    job = Client(app_url, verbose=False).submit(prompt=clear_prompt, variants=variants, max_new_tokens=8,
                                                api_name="/compare")
    api = {r["variant"]: r for r in job.result(timeout=300)}
    page, errors = open_page(browser, app_url)
    page.get_by_label("Prompt").fill(clear_prompt)
    choose(page, variants)
    page.get_by_text("Generation settings").click()
    slider = page.get_by_label("Max new tokens", exact=False).locator("xpath=..").locator("input[type=number]")
    slider.first.fill("8")
    slider.first.press("Enter")
    page.locator("#run").click()
    page.locator("#summary").wait_for(state="visible", timeout=300_000)
    # compared only where both runs answered with the same tokens (greedy on one machine: they should)
    assert page.locator("#variant-0 textarea").input_value() == api["smollm2/fp32"]["text"]
    strays = page.locator("#variant-1 .per-token-kl")
    strays.locator("summary").click()
    assert strays.get_by_text("The worst positions").is_visible()
    shown = page.evaluate(PAGE_TOKENS_JS, "#variant-1")
    expected = api["smollm2/bf16"]["fidelity"]["per_token"]
    assert [t["position"] for t in shown] == [t["position"] for t in expected] == list(range(len(expected)))
    assert len(expected) == api["smollm2/fp32"]["new_tokens"] > 0
    for seen, token in zip(shown, expected):
        visible = "".join({"\n": "↵\n", "\r": "␍", "\t": "⇥\t"}.get(c, c) for c in token["token"]) or "∅"
        assert seen["text"] == visible
        if token["kl_nats"] is None:
            assert seen["kl"] is None and seen["nonfinite"] == token["kl_nonfinite"]
        else:
            assert float(seen["kl"]) == pytest.approx(token["kl_nats"], rel=1e-3, abs=1e-6)
            assert f"KL {float(seen['kl']):.3g} nats" in seen["title"]
    assert page.locator("#variant-0 .per-token-kl").count() == 0  # the baseline has no view of itself
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
    page.wait_for_function("() => document.querySelector('#evaluate').disabled", timeout=10_000)
    assert page.locator("#evaluate-stop").is_enabled()  # Run is off and Stop is on while it runs
    page.locator("#evaluate-status").get_by_text("Done.").wait_for(timeout=300_000)
    table = page.locator("#evaluate-table").inner_text()
    assert "smollm2/fp32" in table and "smollm2/bnb-nf4" in table
    assert page.locator("img[src*='quality_vs_memory']").count() == 1
    assert page.locator("img[src*='speed_vs_memory']").count() == 1
    assert "%" in table and "quantized at load" in table  # agreement as a percentage, an empty cell explained
    assert "noise floor (ε = 2⁻⁹) of smollm2/fp32" in table  # the line under which a KL is noise
    for chart in ("kl_vs_size", "kl_per_token"):  # the KL tail against size, and per token
        assert page.locator(f"img[src*='{chart}']").count() == 1, chart
    # Run comes back and Stop goes off in the event after the results (a separate update from the server)
    page.wait_for_function("() => !document.querySelector('#evaluate').disabled"
                           " && document.querySelector('#evaluate-stop').disabled", timeout=30_000)
    assert errors == []


def test_over_limit_prompt_is_refused_not_cut(browser, app_url):
    page, errors = open_page(browser, app_url)
    box = page.get_by_label("Prompt")
    box.fill("word " * 5000)  # a 25,000-character paste
    assert len(box.input_value()) == 25_000  # kept whole: nothing cut silently
    page.locator("#prompt-count").get_by_text("25,000 / 20,000 characters").wait_for(timeout=10_000)
    box.press("Control+Enter")  # the shortcut runs, and the run is refused with the API's message
    page.get_by_text("the prompt has 25,000 characters; the limit is 20,000").first.wait_for(timeout=30_000)
    assert not page.locator("#variant-0").is_visible()
    assert page.locator("#run").is_enabled()
    assert [e for e in errors if "the limit is 20,000" not in e] == []


def runner_reports_waiting() -> bool:
    from dataclasses import fields

    from demo.running.runner import VariantResult

    return "queue_ahead" in {f.name for f in fields(VariantResult)}


@pytest.mark.skipif(not runner_reports_waiting(), reason="the runner does not report a waiting status yet")
def test_a_comparison_behind_another_says_it_is_waiting(browser, app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    other = client.submit(prompt="Write a very long story about a dragon.", variants=["smollm2/fp32"],
                          max_new_tokens=400, api_name="/compare")
    deadline = time.time() + 120
    while time.time() < deadline and not any(o and o[0]["new_tokens"] >= 1 for o in other.outputs()):
        time.sleep(0.2)
    page, errors = open_page(browser, app_url)
    page.get_by_label("Prompt").fill("What is the capital of France?")
    choose(page, ["smollm2/bf16"])
    page.locator("#run").click()
    column = page.locator("#variant-0")
    column.get_by_text("waiting for the device: another request is using it").wait_for(timeout=30_000)
    assert "generating" not in column.inner_text()
    other.cancel()
    column.get_by_text("done").wait_for(timeout=120_000)
    assert errors == []


CONTRAST_JS = """
(selectors) => {
  const parse = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = (rgb) => rgb.slice(0, 3).map((v) => {
    v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
  }).reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c;
    }
    return [255, 255, 255];
  };
  const out = {};
  for (const [name, selector] of Object.entries(selectors)) {
    const el = document.querySelector(selector);
    if (!el) { out[name] = null; continue; }
    const [a, b] = [lum(parse(getComputedStyle(el).color)), lum(background(el))].sort((x, y) => y - x);
    out[name] = Math.round((a + 0.05) / (b + 0.05) * 100) / 100;
  }
  return out;
}
"""


def test_text_contrast_and_focus_ring(browser, app_url):
    """WCAG AA: at least 4.5:1 for the named text; a checked box shows where the keyboard focus is."""
    page, errors = open_page(browser, app_url)
    page.locator("#system").get_by_text("Loaded variants").wait_for(timeout=30_000)
    ratios = page.evaluate(CONTRAST_JS, {
        "label": "#prompt [data-testid='block-info']",
        "hint": "#prompt .info-text",
        "count": "#prompt-count .prose",
        "run button": "#run",
        "checked box": "fieldset label.selected span",
        "system note": "#system small",
        "footer": "footer button, footer a",
    })
    assert all(ratio is not None and ratio >= 4.5 for ratio in ratios.values()), ratios
    checked = page.locator("fieldset label.selected input").first
    checked.focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")  # keyboard focus, so :focus-visible applies
    outline = page.evaluate("() => { const s = getComputedStyle(document.activeElement); "
                            "return [s.outlineStyle, parseFloat(s.outlineWidth)]; }")
    assert outline[0] != "none" and outline[1] >= 2, outline
    assert errors == []


def test_evaluate_tab_serving_sweep(browser, app_url, tmp_path):
    """The serving sweep as a visitor runs it: the protocol chosen, two levels, one timed run; the rows in words,
    the per-user against total chart, the users-per-machine line."""
    page, errors = open_page(browser, app_url, width=1440, height=900)
    page.get_by_role("tab", name="Evaluate").click()
    page.get_by_label("Timed runs per variant", exact=False).locator("xpath=..").locator("input[type=number]").first.fill("1")
    page.get_by_label("New tokens per timed run", exact=False).locator("xpath=..").locator("input[type=number]").first.fill("8")
    page.locator("#evaluate-protocol").get_by_text("serving sweep", exact=False).click()
    page.locator("#evaluate-levels textarea, #evaluate-levels input").first.fill("1,2")
    page.locator("#evaluate").click()
    page.locator("#evaluate-status").get_by_text("Done.").wait_for(timeout=300_000)
    assert "Users per machine" in page.locator("#evaluate-status").inner_text()
    table = page.locator("#evaluate-table").inner_text()
    assert "requests at once" in table and "transformers generate()" in table and "smollm2/bnb-nf4" in table
    assert page.locator("img[src*='serving_per_user_vs_total']").count() == 1
    page.screenshot(path=str(tmp_path / "serving.png"), full_page=True)
    assert errors == []
