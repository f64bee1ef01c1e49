"""llama.cpp's own tools, built from the vendored source (make llama-tools): GGUF variants made with an importance
matrix, and the arena's llama.cpp-protocol KL held against llama-perplexity's own on the same files and text."""

import math

import pytest

from demo.artifacts import llama_tools
from demo.config import load_config
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not llama_tools.available(), reason="llama.cpp's tools are not built: make llama-tools")
pytest.importorskip("llama_cpp", reason="GGUF variants need llama-cpp-python (built by make install)")


@pytest.fixture(scope="module")
def made(default_config):
    from demo.artifacts.quantize import quantize_variant

    return {vid: quantize_variant(default_config, vid) for vid in ("smollm2/gguf-q4_k_m", "smollm2/gguf-q4_k_m-imat",
                                                                   "smollm2/gguf-iq2_xs-imat")}


def test_an_importance_matrix_changes_the_file_and_is_recorded(made):
    import json

    plain = (made["smollm2/gguf-q4_k_m"] / "model.gguf").read_bytes()
    matrixed = (made["smollm2/gguf-q4_k_m-imat"] / "model.gguf").read_bytes()
    meta = json.loads((made["smollm2/gguf-q4_k_m-imat"] / "quantize.json").read_text())
    plain_meta = json.loads((made["smollm2/gguf-q4_k_m"] / "quantize.json").read_text())
    # the same tensor types (the file adds the matrix's own metadata keys), other rounding
    assert meta["stored"]["tensor_types"] == plain_meta["stored"]["tensor_types"]
    assert abs(len(plain) - len(matrixed)) < 4096 and plain != matrixed
    assert meta["settings"] == {"type": "Q4_K_M", "imatrix": True}
    assert "llama-imatrix over assets/calibration.txt" in meta["imatrix"]
    iq2 = json.loads((made["smollm2/gguf-iq2_xs-imat"] / "quantize.json").read_text())
    assert iq2["stored"]["tensor_types"]  # read back from the file: what llama.cpp really stored


def test_an_imatrix_type_without_a_matrix_is_refused(tmp_path):
    from demo.errors import ConfigError

    (tmp_path / "models.yaml").write_text("bases:\n  b: {source: {kind: local, path: .}}\nvariants:\n"
                                          "  - {id: b/iq2, base: b, method: gguf, settings: {type: IQ2_XS}}\n")
    with pytest.raises(ConfigError, match="IQ2_XS needs an importance matrix"):
        load_config(tmp_path / "models.yaml")


def test_an_imatrix_variant_loads_and_answers(made, arena):
    [record] = arena.compare_records("Name the capital of France.", ["smollm2/gguf-iq2_xs-imat"],
                                     arena.settings(max_new_tokens=4))
    assert record["error"] is None and record["new_tokens"] >= 1
    assert record["kernel"]["kind"] == "native"


def test_the_arenas_kl_agrees_with_llama_perplexity(tmp_path, default_config):
    """Same files, same text, same 512-token chunks with BOS first and the second half scored: the arena's
    llamacpp protocol against llama.cpp's F32 file, and llama-perplexity --kl-divergence against that file's saved
    logits, agree within their stated uncertainty for two types."""
    from demo.artifacts.quantize import quantize_variant
    from demo.evaluate import Protocol, evaluate
    from demo.running.runner import Arena

    text = REPO / "assets" / "evaluation.txt"
    models = tmp_path / "models.yaml"
    models.write_text((REPO / "models.yaml").read_text().replace("baseline: smollm2/fp32", "baseline: smollm2/gguf-f32"))
    config = load_config(models)
    files = {vid: quantize_variant(config, vid) / "model.gguf"
             for vid in ("smollm2/gguf-f32", "smollm2/gguf-q8_0", "smollm2/gguf-q4_k_m")}
    arena = Arena(config)
    rows = {r.variant: r for r in evaluate(arena, list(files), text.read_text(), runs=1, max_new_tokens=2,
                                           protocol=Protocol("llamacpp", 512))}
    threads = 2
    base = llama_tools.save_base_logits(files["smollm2/gguf-f32"], text, tmp_path / "base.kld", threads)
    for vid in ("smollm2/gguf-q8_0", "smollm2/gguf-q4_k_m"):
        ours, theirs = rows[vid].kl, llama_tools.kl_divergence(files[vid], base, threads)
        assert rows[vid].error is None and theirs.mean > 0
        bound = 2 * math.hypot(ours["mean_uncertainty"], theirs.uncertainty)
        assert abs(ours["mean"] - theirs.mean) <= bound, (vid, ours["mean"], theirs.mean, bound)
