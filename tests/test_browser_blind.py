"""The blind test in headless Chromium: nothing names the variants before the vote, the reveal after it, then
the results view with its chart, table and files."""

import os
from pathlib import Path

import pytest
import yaml

from demo.config import load_config
from tests.conftest import REPO
from tests.test_browser import browser, start_app  # noqa: F401  (browser is a fixture)

pytestmark = pytest.mark.browser
SHOTS = Path(os.environ["BLIND_SHOTS"]) if os.environ.get("BLIND_SHOTS") else None  # pictures, when asked
BLIND = {"max_new_tokens": 6, "variants": ["smollm2/bf16"]}


def shot(page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def blind_app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blind-browser")
    models = folder / "models.yaml"
    data = yaml.safe_load((REPO / "models.yaml").read_text())
    data["blind"] = BLIND
    models.write_text(yaml.safe_dump(data, sort_keys=False))
    yield from start_app(folder, ARENA_MODELS=str(models), ARENA_VOTES_DB=str(folder / "votes.sqlite3"))


def test_blind_vote_reveal_and_results(browser, blind_app):  # noqa: F811
    config = load_config(REPO / "models.yaml")
    names = {v.id for v in config.variants.values()} | {v.label for v in config.variants.values() if v.label}
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(blind_app)
    page.get_by_role("tab", name="Blind test").click()
    page.locator("#blind-start").click()  # no question yet: refused, and the page does not claim to be working
    page.get_by_text("the prompt is empty").first.wait_for(timeout=30_000)
    page.wait_for_function("() => !document.querySelector('#blind-status').innerText.includes('Generating')",
                           timeout=10_000)
    page.locator("#blind-draw").click()
    page.wait_for_function("() => document.querySelector('#blind-prompt textarea').value.length > 0",
                           timeout=10_000)
    page.locator("#blind-start").click()
    page.locator("#blind-a textarea").wait_for(state="visible", timeout=360_000)  # two cold loads, 2 busy cores
    page.locator("#blind-vote-a").wait_for(state="visible")
    assert page.locator("#blind-vote-a").is_enabled()
    tab = page.locator("#blind")
    before = tab.evaluate("el => el.textContent + ' ' + el.innerHTML")
    answers = page.locator("#blind-a textarea").input_value() + page.locator("#blind-b textarea").input_value()
    assert "Answer A" in before and "Answer B" in before and answers  # the search looks at the right place
    leaked = sorted(name for name in names if name in before or name in answers)
    assert leaked == [], f"the page names {leaked} before the vote"
    for word in ("ms", "tokens/s", "MiB"):  # no figure either
        assert f" {word}" not in tab.inner_text(), word

    shot(page, "blind_before_vote")
    page.locator("#blind-vote-a").click()
    reveal = page.locator("#blind-reveal")
    reveal.get_by_text("Revealed").wait_for(timeout=60_000)
    shown = reveal.inner_text()
    assert "smollm2/fp32" in shown and "smollm2/bf16" in shown and "the baseline" in shown
    assert "You voted A is better" in shown and "tokens/s" in shown and "KL" in shown
    assert not page.locator("#blind-vote-a").is_enabled()  # one vote per battle
    shot(page, "blind_reveal")

    page.get_by_role("tab", name="Results").click()
    table = page.locator("#blind-table")
    table.get_by_text("smollm2/bf16").first.wait_for(timeout=60_000)
    assert "1 vote" in page.locator("#blind-summary").inner_text()
    assert "100%" in table.inner_text()  # the one vote preferred one side: 100% of one outcome
    assert page.locator("#blind-chart img").count() == 1
    files = page.locator("#blind-files").inner_text().replace("\n", "")  # Gradio splits name and extension
    assert "blind_results.json" in files and "blind_results.csv" in files
    shot(page, "blind_results")
    assert [e for e in errors if "the prompt is empty" not in e] == []  # Gradio logs a refused event
