"""The noise floor: the hook against a hand computation, the figures against numpy, then the bundled model."""

import math

import numpy as np
import pytest
import torch

from demo.measuring import metrics, noise_floor
from tests.conftest import REPO, in_process


class _TupleLayer(torch.nn.Module):
    """A decoder layer of the older kind: (hidden states, something else)."""

    def forward(self, hidden):
        return hidden * 2, "attention weights"


class _TensorLayer(torch.nn.Module):
    def forward(self, hidden):
        return hidden * 2


class _Decoder(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layers = torch.nn.ModuleList([layer])


class _Model(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.decoder = _Decoder(layer)

    def get_decoder(self):
        return self.decoder


class _Loaded:
    """What a baseline of another runtime looks like from here: logits, but no torch module to hook."""

    def __init__(self, runtime: str, model=None):
        self.runtime, self.model = runtime, model

    def logits(self, ids, prompt_tokens=None):
        return torch.zeros(len(ids), 4)

    def run_here(self, fn, *args):
        return fn(self, *args)


@pytest.mark.parametrize("layer, unwrap", [(_TupleLayer(), lambda out: out[0]), (_TensorLayer(), lambda out: out)])
def test_each_layer_output_gets_the_seeded_multiplicative_noise(layer, unwrap):
    model, hidden, eps = _Model(layer), torch.arange(1.0, 13.0).reshape(1, 3, 4), 2.0 ** -9
    with noise_floor.multiplicative_noise(model, eps, seed=7):
        out = layer(hidden)
    z = torch.randn((1, 3, 4), generator=torch.Generator().manual_seed(7))
    assert torch.allclose(unwrap(out), hidden * 2 * (1 + eps * z), rtol=0, atol=1e-6)
    assert not torch.equal(unwrap(out), hidden * 2)
    if isinstance(out, tuple):
        assert out[1] == "attention weights"  # the rest of the tuple passes through
    assert torch.equal(unwrap(layer(hidden)), hidden * 2)  # hook gone


def test_bf16_hidden_states_keep_their_dtype_and_still_get_noise():
    layer = _TensorLayer()
    hidden = torch.full((1, 64, 64), 3.0, dtype=torch.bfloat16)
    with noise_floor.multiplicative_noise(_Model(layer), seed=0):
        out = layer(hidden)
    assert out.dtype == torch.bfloat16
    assert (out != 6.0).any()  # 1 + 2^-9 z computed in bf16 would be 1 for most z


def test_hooks_are_removed_after_an_error():
    layer = _TensorLayer()
    with pytest.raises(RuntimeError, match="inside"):
        with noise_floor.multiplicative_noise(_Model(layer)):
            raise RuntimeError("inside")
    assert not layer._forward_hooks


def test_position_kl_by_hand():
    p = [[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]
    q = [[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]]
    expected = [sum(a * math.log(a / b) for a, b in zip(pr, qr)) for pr, qr in zip(p, q)]
    got = metrics.position_kl_nats(torch.tensor(p).log(), torch.tensor(q).log())
    assert got.tolist() == pytest.approx(expected, abs=1e-6)


def test_summary_against_numpy_with_non_finite_positions_counted():
    values = np.random.default_rng(3).exponential(0.01, size=2001)
    kl = torch.tensor([*values, float("nan"), float("inf")])
    floor = noise_floor.summarise(kl, 2.0 ** -9, seed=5)
    assert (floor.positions, floor.non_finite_positions, floor.seed) == (2001, 2, 5)
    assert floor.kl_mean == pytest.approx(values.mean(), rel=1e-9)
    assert floor.kl_median == pytest.approx(np.median(values), rel=1e-9)
    assert floor.kl_p99_9 == pytest.approx(np.quantile(values, 0.999), rel=1e-9)
    assert floor.kl_max == pytest.approx(values.max(), rel=1e-9)
    assert set(floor.as_dict()) >= {"kl_mean", "kl_p99_9", "epsilon"}


def test_no_finite_position_is_unavailable_not_zero():
    floor = noise_floor.summarise(torch.tensor([float("nan")]), 2.0 ** -9, seed=0)
    assert isinstance(floor, noise_floor.NoiseFloorUnavailable) and "finite" in floor.reason


@pytest.mark.parametrize("loaded, says", [(_Loaded("llama.cpp"), "llama.cpp"), (_Loaded("remote"), "remote"),
                                          (_Loaded("transformers", torch.nn.Linear(2, 2)), "decoder layers")])
def test_a_baseline_without_reachable_layers_has_no_noise_floor(loaded, says):
    scored = [([1, 2, 3], slice(0, 2))]
    for value in (noise_floor.noise_floor(loaded, scored), noise_floor.noisy_logits(loaded, [[1, 2, 3]])):
        assert isinstance(value, noise_floor.NoiseFloorUnavailable)
        assert says in value.reason and value.as_dict() == {"unavailable": value.reason}


# --- the bundled model --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundled(arena):
    """The fp32 baseline and the bf16 variant, ~64 tokens of the evaluation text scored in one window."""
    fp32 = arena.device.call(arena.manager.get, "smollm2/fp32").loaded
    ids = fp32.tokenizer((REPO / "assets" / "evaluation.txt").read_text())["input_ids"][:64]
    scored = [(ids, slice(0, len(ids) - 1))]
    clean = arena.device.call(fp32.logits, ids)
    bf16 = arena.device.call(arena.manager.get, "smollm2/bf16").loaded
    bf16_logits = arena.device.call(bf16.logits, ids)
    bf16_kl = metrics.kl_divergence(metrics.log_probs(clean[:-1]), metrics.log_probs(bf16_logits[:-1]))
    return arena, fp32, ids, scored, clean, bf16_kl


def _floor(bundled, seed):
    arena, fp32, _, scored, _, _ = bundled
    return arena.device.call(noise_floor.noise_floor, fp32, scored, noise_floor.EPSILON, seed)


def test_noise_floor_is_positive_and_below_bf16(bundled):
    floor = _floor(bundled, seed=0)
    bf16_kl = bundled[-1]
    assert isinstance(floor, noise_floor.NoiseFloor), floor
    assert floor.positions == 63 and floor.non_finite_positions == 0
    print(f"noise floor mean {floor.kl_mean:.3g} p99.9 {floor.kl_p99_9:.3g}; bf16 mean {bf16_kl:.3g} nats")
    assert 0 < floor.kl_mean < bf16_kl and math.isfinite(floor.kl_mean)
    assert floor.kl_mean <= floor.kl_p99_9 <= floor.kl_max


def test_same_seed_same_figure_other_seed_another(bundled):
    first, again, other = _floor(bundled, 0), _floor(bundled, 0), _floor(bundled, 1)
    assert first.kl_mean == again.kl_mean and first.kl_max == again.kl_max
    assert other.kl_mean != first.kl_mean


def test_clean_logits_are_untouched_afterwards(bundled):
    from demo.running.runner import Arena

    arena, _, ids, _, clean, _ = bundled
    arena = Arena(in_process(arena.config))  # the hooks are looked for on the model's own layers, here
    fp32 = arena.device.call(arena.manager.get, "smollm2/fp32").loaded
    noisy = arena.device.call(noise_floor.noisy_logits, fp32, [ids])
    assert not torch.equal(noisy[0], clean)
    assert torch.equal(arena.device.call(fp32.logits, ids), clean)
    assert all(not layer._forward_hooks for layer in noise_floor.decoder_layers(fp32.model))


def test_given_clean_log_probs_give_the_same_figure(bundled):
    arena, fp32, _, scored, clean, _ = bundled
    given = [metrics.log_probs(clean[:-1])]
    floor = arena.device.call(noise_floor.noise_floor, fp32, scored, noise_floor.EPSILON, 0, given)
    assert floor.kl_mean == pytest.approx(_floor(bundled, 0).kl_mean, rel=1e-6)
