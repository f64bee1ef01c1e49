"""models.yaml validation: each bad case stops with one message naming the file, the variant and the field."""

import textwrap

import pytest

from demo.config import METHODS, load_config
from demo.errors import ConfigError

GOOD = """
bases:
  tiny:
    source: {kind: hub, repo: org/tiny}
    baseline: tiny/fp32
variants:
  - {id: tiny/fp32, base: tiny, method: fp32}
  - id: tiny/nf4
    base: tiny
    method: bnb-4bit
    settings: {bnb_4bit_quant_type: nf4, bnb_4bit_use_double_quant: true, bnb_4bit_compute_dtype: bfloat16}
"""


def write(tmp_path, text, name="models.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_shipped_files_are_valid(default_config):
    from tests.conftest import REPO

    assert list(default_config.variants) == ["smollm2/fp32", "smollm2/bf16", "smollm2/bf16-kv-fp8", "smollm2/bf16-kv-int4",
                                             "smollm2/bnb-int8", "smollm2/bnb-nf4",
                                             "smollm2/bnb-fp4", "smollm2/gptq-4bit", "smollm2/awq-4bit",
                                             "smollm2/gguf-q8_0", "smollm2/gguf-q8_0-kv-q8_0",
                                             "smollm2/gguf-q8_0-kv-q4_0", "smollm2/gguf-q4_k_m", "smollm2/gguf-f32",
                                             "smollm2/gguf-q4_k_m-imat", "smollm2/gguf-iq4_xs-imat",
                                             "smollm2/gguf-iq3_xxs-imat", "smollm2/gguf-iq2_xs-imat",
                                             "smollm2/torchao-int8", "smollm2/torchao-int4", "smollm2/torchao-fp8",
                                             "smollm2/autoround-4bit", "smollm2/ct-w4a16", "smollm2/ct-w8a8",
                                             "smollm2/hqq-4bit"]
    assert default_config.variants["smollm2/gptq-4bit"].settings["bits"] == 4
    nf4 = default_config.variants["smollm2/bnb-nf4"]
    assert nf4.settings == {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                            "bnb_4bit_compute_dtype": "bfloat16"}
    gpu = load_config(REPO / "models.gpu.yaml")
    assert {v.base for v in gpu.variants.values()} == {"smollm2-1.7b", "llama3.2-1b"}
    assert {v.method for v in gpu.variants.values()} == {"fp16", "bnb-int8", "bnb-4bit", "gptq"}
    assert gpu.variants["llama3.2-1b/gptq-4bit"].checkpoint.repo == "rautaditya/llama-3.2-1b-4bit-gptq"


def test_good_file_parses(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.variants["tiny/nf4"].bits == 4 and config.variants["tiny/fp32"].bits == 32
    assert config.base_of("tiny/nf4").source.repo == "org/tiny"


BAD = {
    "syntax": ("bases: [unclosed\n", None, None, "YAML syntax error at line"),
    "unknown method": (GOOD.replace("method: fp32", "method: bnb-3bit"), "tiny/fp32", "method", "unknown method 'bnb-3bit'"),
    "missing field": (GOOD.replace(", method: fp32", ""), "tiny/fp32", "method", "is required"),
    "duplicate id": (GOOD.replace("id: tiny/nf4", "id: tiny/fp32"), "tiny/fp32", "id", "duplicate variant id"),
    "bad value": (GOOD.replace("quant_type: nf4", "quant_type: nf5"), "tiny/nf4", "settings.bnb_4bit_quant_type",
                  "must be one of nf4, fp4, got 'nf5'"),
    "wrong type": (GOOD.replace("double_quant: true", "double_quant: 3"), "tiny/nf4",
                   "settings.bnb_4bit_use_double_quant", "must be bool"),
    "unknown setting": (GOOD.replace("double_quant: true", "double_quant: true, bits: 3"), "tiny/nf4", "settings.bits",
                        "unknown setting"),
    "required setting": (GOOD.replace("bnb_4bit_quant_type: nf4, ", ""), "tiny/nf4", "settings.bnb_4bit_quant_type",
                         "is required"),
    "unknown base": (GOOD.replace("{id: tiny/fp32, base: tiny", "{id: tiny/fp32, base: huge"), "tiny/fp32", "base",
                     "unknown base 'huge'"),
    "unknown field": (GOOD.replace("method: fp32}", "method: fp32, colour: red}"), "tiny/fp32", "colour", "unknown field"),
    "bad device": (GOOD.replace("method: fp32}", "method: fp32, device: tpu}"), "tiny/fp32", "device", "must be one of"),
    "bad source": (GOOD.replace("kind: hub", "kind: ftp"), None, "bases.tiny.source.kind", "unknown source kind"),
    "baseline missing": (GOOD.replace("baseline: tiny/fp32", "baseline: tiny/fp64"), None, "bases.tiny.baseline",
                         "not a variant id"),
    "bad budget": (GOOD + "memory_budget_mib: -5\n", None, "memory_budget_mib", "positive number of MiB"),
    "bad limit": (GOOD + "limits: {max_new_tokens: 0}\n", None, "limits.max_new_tokens", "must be positive"),
    "no share per client": (GOOD + "limits: {max_pending_per_client: 0}\n", None, "limits.max_pending_per_client",
                            "must be positive"),
    "share over the places": (GOOD + "limits: {max_pending: 4, max_pending_per_client: 5}\n", None,
                              "limits.max_pending_per_client", "must be at most limits.max_pending (4)"),
    "default over limit": (GOOD + "limits: {max_new_tokens: 10}\ngeneration: {max_new_tokens: 20}\n", None,
                           "generation.max_new_tokens", "between 1 and"),
    "not a mapping": ("- just a list\n", None, None, "top level must be a mapping"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_names_file_variant_and_field(tmp_path, case):
    text, variant, field, message = BAD[case]
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert str(path) in str(error) and message in str(error)
    assert error.variant == variant and error.field == field
    if variant:
        assert f"variant '{variant}'" in str(error)
    if field:
        assert f"field '{field}'" in str(error)
    assert "\n" not in str(error)


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(binary)


def test_budget_env_overrides_and_is_validated(tmp_path, monkeypatch):
    path = write(tmp_path, GOOD)
    monkeypatch.setenv("ARENA_MEMORY_BUDGET_MIB", "123")
    assert load_config(path).memory_budget_mib == 123
    monkeypatch.setenv("ARENA_MEMORY_BUDGET_MIB", "lots")
    with pytest.raises(ConfigError, match=r"\$ARENA_MEMORY_BUDGET_MIB"):
        load_config(path)


def test_models_env_picks_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ARENA_MODELS", str(write(tmp_path, GOOD, "other.yaml")))
    assert list(load_config().variants) == ["tiny/fp32", "tiny/nf4"]


def test_every_method_has_bits_or_a_bits_setting():
    for method in METHODS.values():
        # gguf: from its type; torchao, compressed-tensors: from their scheme; hqq: its own nbits; remote: the declared
        # `quantization:` block
        assert method.bits or "bits" in method.allowed or method.name in ("gguf", "torchao", "compressed-tensors",
                                                                          "hqq", "remote")
    from demo.config import TORCHAO_SCHEMES

    assert set(METHODS["torchao"].allowed["scheme"]) == set(TORCHAO_SCHEMES)  # each scheme names its bits


def test_gguf_variants_take_a_type_and_a_file(tmp_path):
    from demo.config import GGUF_TYPES

    text = GOOD + """  - {id: tiny/q4, base: tiny, method: gguf, settings: {type: Q4_K_M}}
  - {id: tiny/own, base: tiny, method: gguf, settings: {type: Q8_0}, checkpoint: {kind: local, path: f.gguf}}
"""
    config = load_config(write(tmp_path, text))
    q4 = config.variants["tiny/q4"]
    assert q4.bits == GGUF_TYPES["Q4_K_M"] == 4 and q4.runtime == "llama.cpp"
    assert q4.settings["n_ctx"] == 2048 and q4.file_settings == {"type": "Q4_K_M"}
    assert config.variants["tiny/own"].checkpoint.path == (tmp_path / "f.gguf").resolve()
    bad = GOOD + "  - {id: tiny/bad, base: tiny, method: gguf, settings: {type: Q4_K_X}}\n"
    with pytest.raises(ConfigError, match="tiny/bad.*settings.type.*must be one of"):
        load_config(write(tmp_path, bad))
    hub = GOOD + "  - {id: tiny/hub, base: tiny, method: gguf, settings: {type: Q8_0}, checkpoint: {kind: hub, repo: a/b}}\n"
    with pytest.raises(ConfigError, match="checkpoint.file.*required"):
        load_config(write(tmp_path, hub))


def test_space_profile_follows_the_hardware(monkeypatch):
    from demo import config

    monkeypatch.delenv("ARENA_MODELS", raising=False)
    monkeypatch.setattr(config, "_has_nvidia_gpu", lambda: True)
    assert config.models_path() == config.DEFAULT_MODELS_FILE  # not on a Space: the offline default
    monkeypatch.setenv("SPACE_ID", "someone/quantization-arena")
    assert config.models_path() == config.GPU_MODELS_FILE  # a GPU Space
    monkeypatch.setattr(config, "_has_nvidia_gpu", lambda: False)
    assert config.models_path() == config.DEFAULT_MODELS_FILE  # a CPU Space
    monkeypatch.setenv("ARENA_MODELS", "mine.yaml")
    assert config.models_path() == config.Path("mine.yaml")  # an explicit choice wins


def test_bundled_model_falls_back_to_the_hub_where_the_package_is_absent():
    from demo.artifacts import sources
    from demo.config import Source

    missing = Source("bundled-gguf", package="no_such_package_here", file="x.gguf", fallback_repo="org/model")
    weights = sources.resolve_source(missing)
    assert weights.location == "org/model" and weights.is_hub
