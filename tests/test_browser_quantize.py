"""Quantize now, in the browser: a GPTQ variant with no checkpoint yet offers it, makes it, then runs."""

import pytest

from tests.conftest import tiny_models_file
from tests.test_browser import browser, choose, open_page, start_app  # noqa: F401 (fixtures)

pytest.importorskip("gptqmodel", reason="GPTQ needs gptqmodel (installed by make install)")
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory, default_config):
    root = tmp_path_factory.mktemp("tiny-app")
    tiny_models_file(root, default_config, """
{id: tiny/fp32, base: tiny, method: fp32}
{id: tiny/gptq, base: tiny, method: gptq, settings: {bits: 4, group_size: 64}}""", hidden=128)
    yield from start_app(root, ARENA_MODELS=str(root / "models.yaml"), ARENA_CACHE_DIR=str(root / "cache"))


def test_quantize_now(browser, tiny_app):  # noqa: F811
    page, errors = open_page(browser, tiny_app)
    page.get_by_label("Prompt").fill("Hello")
    choose(page, ["tiny/fp32", "tiny/gptq"])
    page.locator("#run").click()
    page.locator("#summary").wait_for(state="visible", timeout=120_000)
    column = page.locator("#variant-1")
    assert "not quantized yet" in column.locator("textarea").input_value()
    assert "about 1.5 minutes" in column.locator(".prose.quantize-note").inner_text()  # explained beside the button
    button = column.get_by_role("button", name="Quantize now")
    button.click()
    column.locator(".prose.quantize-note").get_by_text("Quantized in").wait_for(timeout=300_000)
    assert not button.is_visible()
    page.locator("#run").click()
    page.wait_for_function("() => document.querySelector('#variant-1').innerText.includes('done')", timeout=120_000)
    assert "4-bit" in column.inner_text() and "tokens/s" in column.inner_text()
    assert errors == []
