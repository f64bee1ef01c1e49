"""attn_implementation as a per-variant setting: validated in models.yaml, passed to from_pretrained, and
recorded as the implementation the loaded model really uses; flash attention refused where it cannot run."""

import json

import pytest
import yaml

from demo.reports import card
from demo.config import load_config
from demo.errors import ConfigError
from demo.running.runner import Arena
from tests.conftest import CLEAR_PROMPT, REPO, require_clear_answer

PROMPT = CLEAR_PROMPT


def config_with(tmp_path, extra: list[dict]):
    data = yaml.safe_load((REPO / "models.yaml").read_text())
    data["variants"] = [v for v in data["variants"] if v["id"] == "smollm2/fp32"] + extra
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


@pytest.mark.parametrize("entry, message", [
    ({"method": "fp32", "attn_implementation": "flash"}, "must be one of eager, sdpa, flex_attention"),
    ({"method": "gguf", "settings": {"type": "Q8_0"}, "attn_implementation": "eager"},
     "applies to transformers variants only, not to method 'gguf'"),
])
def test_attention_is_checked_in_the_config(tmp_path, entry, message):
    with pytest.raises(ConfigError, match=message) as caught:
        config_with(tmp_path, [{"id": "smollm2/x", "base": "smollm2", **entry}])
    assert caught.value.field == "attn_implementation" and caught.value.variant == "smollm2/x"


def test_the_record_and_card_state_the_implementation_used_and_flash_fails_in_its_column(tmp_path):
    config = config_with(tmp_path, [
        {"id": "smollm2/fp32-eager", "base": "smollm2", "method": "fp32", "attn_implementation": "eager"},
        {"id": "smollm2/fp32-flash", "base": "smollm2", "method": "fp32", "attn_implementation": "flash_attention_2",
         "device": "cpu"}])
    arena = Arena(config)
    require_clear_answer(arena, "smollm2/fp32-eager")
    ids = ["smollm2/fp32", "smollm2/fp32-eager", "smollm2/fp32-flash"]
    records = {r["variant"]: r for r in arena.compare_records(PROMPT, ids, arena.settings(max_new_tokens=10))}
    baseline, eager, flash = (records[i] for i in ids)
    assert baseline["stored"]["attn_implementation"] == "sdpa"  # transformers' default, read back
    assert eager["status"] == "done" and "Paris" in eager["text"] and eager["stored"]["attn_implementation"] == "eager"
    assert eager["fidelity"]["kl_divergence"] < 1e-6  # the same weights: only the kernel differs
    assert flash["status"] == "error"
    assert flash["error"] == ("not available: flash_attention_2 needs an NVIDIA GPU (this variant runs on the CPU "
                              "here)")
    md = card.markdown_card(list(records.values()))
    assert "Attention implementation, as loaded: sdpa: smollm2/fp32; eager: smollm2/fp32-eager." in md
    assert json.loads(json.dumps(eager))["stored"]["attn_implementation"] == "eager"  # the exported record has it
