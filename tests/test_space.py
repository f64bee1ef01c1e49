"""On a Hugging Face Space (SPACE_ID set) the page offers only what can work there: GGUF columns without
llama-cpp-python say how a Space gets it, Quantize now is off unless the models file turns it on, and every
package the app imports is one requirements.txt installs (a Space installs nothing else)."""

import asyncio
import ast
import importlib.metadata
import re
import sys
from types import SimpleNamespace

import gradio as gr
import pytest

from demo.artifacts import gguf
from demo.config import load_config
from demo.errors import ConfigError, NotQuantized, VariantUnavailable
from demo.ui import columns, compare
from tests.conftest import REPO
from tests.test_config import GOOD, write

SPACE = "someone/quantization-arena"


@pytest.fixture
def on_space(monkeypatch):
    monkeypatch.setenv("SPACE_ID", SPACE)


@pytest.fixture
def off_space(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)


# ---- Quantize now ----

def test_quantize_now_is_offered_off_a_space_whatever_the_file_says(tmp_path, off_space):
    assert load_config(write(tmp_path, GOOD)).quantize_now_offered()
    assert load_config(write(tmp_path, GOOD + "quantize_now_on_space: false\n")).quantize_now_offered()


def test_quantize_now_is_off_on_a_space_unless_the_file_turns_it_on(tmp_path, on_space):
    config = load_config(write(tmp_path, GOOD))
    assert config.quantize_now_on_space is False and not config.quantize_now_offered()
    assert load_config(write(tmp_path, GOOD + "quantize_now_on_space: true\n")).quantize_now_offered()


def test_quantize_now_on_space_must_be_true_or_false(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, GOOD + "quantize_now_on_space: yes please\n"))
    assert caught.value.field == "quantize_now_on_space" and "must be bool" in str(caught.value)


def not_quantized_message(default_config, monkeypatch, tmp_path) -> str:
    """The real message of a variant whose checkpoint was never made (an empty cache)."""
    from demo.backends.transformers import weights_for

    monkeypatch.setenv("ARENA_CACHE_DIR", str(tmp_path / "empty-cache"))
    variant = default_config.variants["smollm2/awq-4bit"]
    with pytest.raises(NotQuantized) as caught:
        weights_for(variant, default_config.bases[variant.base])
    return str(caught.value)


def test_a_space_column_does_not_say_press_quantize_now(default_config, monkeypatch, tmp_path, on_space):
    rec = {"variant": "smollm2/awq-4bit", "method": "awq", "status": "error", "text": "",
           "error": not_quantized_message(default_config, monkeypatch, tmp_path)}
    assert columns.wants_quantize(rec)
    assert "press Quantize now" in columns.answer_text(rec, quantize_offered=True)
    shown = columns.answer_text(rec, quantize_offered=False)
    assert "Quantize now" not in shown
    assert shown.startswith("Not available — not quantized yet: run `python -m demo.quantize --variant "
                            "smollm2/awq-4bit` (takes minutes on a CPU)")
    view = columns.ColumnsView(SimpleNamespace(config=default_config), 1)  # what the streaming column is given
    assert view.quantize_offered is False
    assert "quantize_now_on_space: true" in compare.quantize_note(rec, offered=False)
    assert compare.quantize_note(rec, offered=True) == compare.QUANTIZE_NOTE


def test_quantize_now_called_directly_on_a_space_is_refused(default_config, on_space):
    tab = SimpleNamespace(config=default_config)
    with pytest.raises(gr.Error, match="Quantize now is off on this Space"):  # an async generator: its first step
        asyncio.run(compare.CompareTab.on_quantize(tab, 0, ["smollm2/awq-4bit"]).__anext__())


# ---- GGUF without llama-cpp-python ----

def test_gguf_without_llama_cpp_says_how_a_space_gets_it(monkeypatch, on_space):
    monkeypatch.setattr(gguf, "llama_cpp_available", lambda: False)
    with pytest.raises(VariantUnavailable) as caught:
        gguf.require_llama_cpp()
    message = str(caught.value)
    assert "make install" not in message and "requirements.txt" in message and "docs/spaces.md" in message
    line = re.search(r"`(llama-cpp-python[^`]*)`", message).group(1)
    assert re.fullmatch(r"llama-cpp-python==\d+\.\d+\.\d+", line)
    assert line in (REPO / "requirements-gguf.txt").read_text().splitlines()  # the version make install builds


def test_gguf_without_llama_cpp_off_a_space_names_make_install(monkeypatch, off_space):
    monkeypatch.setattr(gguf, "llama_cpp_available", lambda: False)
    with pytest.raises(VariantUnavailable, match=r"^not available: llama-cpp-python is not installed "
                                                 r"\(make install builds it\)$"):
        gguf.require_llama_cpp()


# ---- what a Space installs ----

# Imported only where installed (the column says how to get it otherwise): module -> (distribution, its file).
OPTIONAL = {"llama_cpp": ("llama-cpp-python", "requirements-gguf.txt"),
            "llmcompressor": ("llmcompressor", "requirements-llm-compressor.txt")}  # its own environment's


def requirement_names(path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[\s<>=!~\[;]", line, maxsplit=1)[0])
    return names


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports() -> dict[str, list[str]]:
    """Top-level module -> the files of demo/ (and app.py) that import it, at any depth."""
    found: dict[str, list[str]] = {}
    for path in sorted([*(REPO / "demo").rglob("*.py"), REPO / "app.py"]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top != "demo" and top not in sys.stdlib_module_names:
                    found.setdefault(top, []).append(str(path.relative_to(REPO)))
    return found


def test_every_package_the_app_imports_is_named_in_requirements():
    """Named, not merely pulled in by another package: a dependency's dependency can go away in its next release."""
    required = {canonical(n) for n in requirement_names(REPO / "requirements.txt")}
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, files in third_party_imports().items():
        if module in OPTIONAL:
            distribution, where = OPTIONAL[module]
            assert distribution in requirement_names(REPO / where)
            continue
        names = {canonical(d) for d in distributions.get(module, [module])}
        if not names & required:
            missing.append(f"{module} ({', '.join(sorted(names))}), imported by {files[0]}")
    assert not missing, "not in requirements.txt: " + "; ".join(missing)


def test_the_space_installs_the_gradio_that_requirements_pins():
    """A Space adds gradio at the front matter's sdk_version to requirements.txt: two different pins cannot install."""
    from tests.space_install import sdk_version

    pins = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()
            if line.startswith("gradio")]
    assert pins == [f"gradio=={sdk_version()}"]


def test_the_space_check_fails_loudly_on_a_column_that_did_not_run():
    from tests import space_install

    done = {"status": "done", "error": None, "text": "Paris.", "new_tokens": 3, "decode_tokens_per_s": 9.0}
    gguf_advice = {"variant": space_install.GGUF_VARIANT, "status": "error",
                   "error": "not available: llama-cpp-python is not installed (on a Space, add … requirements.txt …)"}
    good = [*({**done, "variant": v} for v in space_install.VARIANTS), gguf_advice]
    space_install.check_records(good, on_space=True)
    with pytest.raises(space_install.CheckFailed, match="make install"):
        space_install.check_records(good, on_space=False)  # off a Space the column must name make install
    broken = [{**good[0], "status": "error", "error": "not available: no module named bitsandbytes"}, *good[1:]]
    with pytest.raises(space_install.CheckFailed, match="did not run"):
        space_install.check_records(broken, on_space=True)
    with pytest.raises(space_install.CheckFailed, match="answered for"):
        space_install.check_records(good[1:], on_space=True)


def test_requirements_admit_a_torch_zerogpu_offers_and_the_local_build():
    """ZeroGPU installs torch itself, from its own list: a requirements.txt that admits none of its versions fails to
    build there ("No candidate PyTorch version found for ZeroGPU"). make install pins this machine's CPU build on
    top of requirements.txt (requirements-local.txt): the range must admit that too."""
    from packaging.specifiers import SpecifierSet

    from tests.space_install import ZEROGPU_TORCH, torch_requirement, zerogpu_torch

    assert zerogpu_torch() in ZEROGPU_TORCH
    local = next(line.split("==")[1].strip() for line in (REPO / "requirements-local.txt").read_text().splitlines()
                 if line.startswith("torch=="))
    assert SpecifierSet(torch_requirement()).contains(local)
