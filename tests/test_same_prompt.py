"""Every variant gets the base model's prompt ids: a pre-made checkpoint runs with the base's tokenizer, chat
template and stop ids (or is refused, naming how its vocabulary differs), and an engine sent text never reads
a second BOS."""

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from demo.artifacts import sources
from demo.backends import remote
from demo.backends import transformers as runtime
from demo.config import Source
from demo.errors import VariantUnavailable
from demo.settings import prompt_ids

PROMPT = "Name the capital of France."
OTHER_TEMPLATE = ("{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}### assistant:{% endif %}")


@pytest.fixture(scope="module")
def base_folder(default_config):
    return sources.resolve(default_config.bases["smollm2"]).location


def checkpoint_copy(base_folder, folder):
    """The bundled model's files, as a pre-made checkpoint folder of its own."""
    shutil.copytree(base_folder, folder)
    return folder


def checkpoint_variant(default_config, folder):
    return dataclasses.replace(default_config.variants["smollm2/awq-4bit"], id="smollm2/awq-premade",
                               checkpoint=Source(kind="local", path=folder))


def test_a_checkpoint_with_its_own_template_and_stops_runs_with_the_base_ones(default_config, base_folder, tmp_path):
    from transformers import AutoTokenizer

    folder = checkpoint_copy(base_folder, tmp_path / "premade")
    (folder / "chat_template.jinja").unlink()
    config_file = folder / "tokenizer_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "chat_template": OTHER_TEMPLATE}))
    generation_file = folder / "generation_config.json"
    generation_file.write_text(json.dumps({**json.loads(generation_file.read_text()), "eos_token_id": 0}))
    base_ids = prompt_ids(AutoTokenizer.from_pretrained(base_folder), PROMPT)
    assert prompt_ids(AutoTokenizer.from_pretrained(folder), PROMPT) != base_ids  # the checkpoint's own differ

    variant = checkpoint_variant(default_config, folder)
    loaded = runtime.load(variant, default_config.bases["smollm2"])
    assert prompt_ids(loaded.tokenizer, PROMPT) == base_ids
    base_eos = json.loads((Path(base_folder) / "generation_config.json").read_text())["eos_token_id"]
    assert loaded.stop_token_ids == frozenset([base_eos]) and 0 not in loaded.stop_token_ids
    assert "chat template differs" in loaded.details()["tokenizer"]
    loaded.free()


def test_a_checkpoint_with_another_vocabulary_is_refused_naming_the_difference(default_config, base_folder, tmp_path):
    from transformers import AutoTokenizer

    folder = checkpoint_copy(base_folder, tmp_path / "other-vocab")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    size = len(tokenizer)
    tokenizer.add_tokens(["<tool_call_x>", "<tool_call_y>"])
    tokenizer.save_pretrained(folder)
    variant = checkpoint_variant(default_config, folder)
    with pytest.raises(VariantUnavailable) as refused:
        runtime.load(variant, default_config.bases["smollm2"])
    assert str(refused.value) == (f"not available: checkpoint other-vocab's tokenizer differs from base "
                                  f"SmolLM2-135M-Instruct's: vocab {size + 2:,} vs {size:,}")


def test_a_vocabulary_of_the_same_size_with_moved_ids_is_refused():
    base = SimpleNamespace(get_vocab=lambda: {"a": 0, "b": 1, "c": 2})
    own = SimpleNamespace(get_vocab=lambda: {"a": 0, "b": 2, "c": 1})
    with pytest.raises(VariantUnavailable, match=r"differs from base B's: 2 tokens differ \(first: 'b' is id 2 in "
                                                 r"the checkpoint, id 1 in the base\)"):
        runtime.check_same_vocabulary(own, base, "checkpoint X", "B")
    runtime.check_same_vocabulary(base, base, "checkpoint X", "B")  # the same vocabulary passes


@pytest.mark.parametrize("adds_bos", [True, False])
def test_text_sent_to_an_engine_reads_back_as_the_prompt_ids_with_one_bos(base_folder, adds_bos):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    ids = prompt_ids(tokenizer, PROMPT)
    bos = tokenizer.bos_token_id
    assert ids[0] == bos  # SmolLM2's template opens with <|im_start|>, which is also its BOS
    text = remote.text_prompt(tokenizer, ids, adds_bos)
    engine_reads = ([bos] if adds_bos else []) + tokenizer(text, add_special_tokens=False)["input_ids"]
    assert engine_reads == ids
    assert engine_reads[:2] != [bos, bos]


def test_whether_the_engine_adds_a_bos_comes_from_it_where_it_says(base_folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    bos = tokenizer.bos_token_id
    says = lambda tokens: SimpleNamespace(text_tokens=lambda text: tokens)  # noqa: E731
    assert remote.engine_adds_bos(says([bos, 64]), tokenizer) is True
    assert remote.engine_adds_bos(says([64]), tokenizer) is False
    # an engine that does not say: as the base tokenizer does on plain text (SmolLM2's adds none)
    assert remote.engine_adds_bos(says(None), tokenizer) is (tokenizer("a")["input_ids"][:1] == [bos])
