"""The noise floor of KL divergence, i.e. the floor of a bf16-rounding-scale perturbation: the KL of the
baseline against itself rerun with Gaussian multiplicative noise of about one bf16 rounding's size after every
decoder layer.

After every decoder layer the hidden states h become h * (1 + ε·z), z ~ N(0, 1) drawn independently for each
element, ε = 2^-9 (exllamav3's qbench does the same with the same ε). So each element of each layer's output
gets a relative perturbation with standard deviation 2^-9, normal (unbounded: |ε·z| exceeds 2^-8 for about
4.6 % of elements). For scale: bf16 keeps 8 significant bits (7 stored), so rounding to nearest has a unit
roundoff u = 2^-8 (machine epsilon 2^-7): a relative error of at most 2^-8, and about 0.85 · 2^-9 in root mean
square for values spread over many binades. ε = 2^-9 is half the unit roundoff, about 1.2 times the RMS
relative error of one bf16 rounding.

What it is not: it is not bf16 inference (a bf16 model rounds its weights and every operation's result, not only
the residual stream once per layer, and shows several times this KL), and not a different kernel's error
(fp32 weights through another runtime's kernels can sit far below it). KL(clean baseline || noisy baseline) at
the evaluation's own positions says how far one rounding-sized perturbation per layer moves the answer's
distributions: a variant at or under it differs from the baseline by no more than that perturbation does.

Only a transformers baseline has decoder layers the arena can reach; any other runtime (llama.cpp, a remote
engine) gets a NoiseFloorUnavailable with its reason, never a 0. Like LoadedVariant.logits, the functions
that run the model must be called on the device thread (demo.running.device).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import torch

from demo.measuring import metrics

# The standard deviation of the relative (multiplicative) Gaussian noise: half bf16's unit roundoff u = 2^-8
# (8 significant bits, 7 stored; machine epsilon 2^-7), about 1.2 times one bf16 rounding's RMS relative error.
EPSILON = 2.0 ** -9
DEFAULT_SEED = 0

ScoredWindow = tuple[list[int], slice]  # (the window's token ids, the rows of its logits that are scored)


@dataclass(frozen=True)
class NoiseFloorUnavailable:
    """The baseline cannot be rerun with noise (not a transformers model); the reason is shown instead."""

    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"unavailable": self.reason}


@dataclass(frozen=True)
class NoiseFloor:
    """KL(clean || noisy baseline) over the scored positions, in nats."""

    epsilon: float
    seed: int
    positions: int  # positions with a finite KL, the ones summarised
    non_finite_positions: int  # left out of every figure, counted here
    kl_mean: float
    kl_median: float
    kl_p99_9: float
    kl_max: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decoder_layers(model: Any) -> torch.nn.ModuleList | None:
    """The decoder layers of a transformers causal LM (model.model.layers for Llama and its kin), or None."""
    get_decoder = getattr(model, "get_decoder", None)
    if get_decoder is None:
        return None
    layers = getattr(get_decoder(), "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) and len(layers) else None


def _unavailable(loaded: Any) -> NoiseFloorUnavailable | None:
    runtime = getattr(loaded, "runtime", "") or type(loaded).__name__
    model = getattr(loaded, "model", None)
    if runtime != "transformers" or model is None:
        return NoiseFloorUnavailable(f"no noise floor: the baseline runs on {runtime}, whose decoder layers "
                                     "cannot be reached (only a transformers baseline can be rerun with noise)")
    if decoder_layers(model) is None:
        return NoiseFloorUnavailable(f"no noise floor: {type(model).__name__} has no list of decoder layers "
                                     "to add noise after")
    return None


@contextmanager
def multiplicative_noise(model: Any, epsilon: float = EPSILON, seed: int = DEFAULT_SEED) -> Iterator[None]:
    """Inside the block, each decoder layer's output h becomes h * (1 + epsilon * z), z standard normal for
    each element (a relative perturbation of standard deviation epsilon), computed in float32 and cast back to
    h's dtype; the hooks are removed on leaving, error or not. z is drawn on the CPU from one generator seeded
    once, so a run is reproducible and the same on any device."""
    layers = decoder_layers(model)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no decoder layers to add noise after")
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def noisy(hidden: torch.Tensor) -> torch.Tensor:
        z = torch.randn(hidden.shape, generator=generator, dtype=torch.float32)
        # in float32: in bf16, 1 + 2^-9·z would round back to 1 for most z (the bf16 numbers next to 1 are
        # 1 - 2^-8 and 1 + 2^-7). The cast back to a bf16 hidden state leaves most elements as they were and
        # moves the rest by a whole bf16 step, so the perturbation's RMS stays about 2^-9; fp32 and fp16 keep it
        # as drawn
        return (hidden.float() * (1 + epsilon * z).to(hidden.device)).to(hidden.dtype)

    def hook(module, args, output):
        # transformers 5 decoder layers return the hidden states; older ones (and some models) a tuple
        # whose first element they are
        if isinstance(output, tuple):
            return (noisy(output[0]), *output[1:])
        return noisy(output)

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def noisy_logits(loaded: Any, ids_list: Sequence[list[int]], epsilon: float = EPSILON,
                 seed: int = DEFAULT_SEED) -> list[torch.Tensor] | NoiseFloorUnavailable:
    """loaded.logits(ids) for each ids in ids_list, with noise after every decoder layer: float32
    [len(ids), vocab] on the CPU each, row i predicting token i + 1. Window i's noise is seeded with seed + i, and
    each window is one request to the runtime (in its own process: each within its deadline, one window's logits
    crossing at a time)."""
    noisy = []
    for index, ids in enumerate(ids_list):
        logits = loaded.run_here(_noisy_logits_here, list(ids), epsilon, seed + index)
        if isinstance(logits, NoiseFloorUnavailable):
            return logits
        noisy.append(logits)
    return noisy


def _noisy_logits_here(loaded: Any, ids: list[int], epsilon: float, seed: int) -> torch.Tensor | NoiseFloorUnavailable:
    """One window's noisy logits where the runtime runs: its model's layers are reachable only there."""
    unavailable = _unavailable(loaded)
    if unavailable is not None:
        return unavailable
    with multiplicative_noise(loaded.model, epsilon, seed):
        return loaded.logits(ids)


def summarise(kl: torch.Tensor, epsilon: float, seed: int) -> NoiseFloor | NoiseFloorUnavailable:
    """The noise floor's figures from its per-position KL; non-finite positions are counted and left out."""
    finite = kl[torch.isfinite(kl)].double()
    if finite.numel() == 0:
        return NoiseFloorUnavailable(f"no noise floor: none of its {kl.numel()} positions has a finite KL")
    return NoiseFloor(epsilon=epsilon, seed=seed, positions=finite.numel(),
                      non_finite_positions=kl.numel() - finite.numel(), kl_mean=float(finite.mean()),
                      kl_median=float(torch.quantile(finite, 0.5)), kl_p99_9=float(torch.quantile(finite, 0.999)),
                      kl_max=float(finite.max()))


def noise_floor(loaded: Any, scored: Sequence[ScoredWindow], epsilon: float = EPSILON, seed: int = DEFAULT_SEED,
                clean_log_probs: Sequence[torch.Tensor] | None = None) -> NoiseFloor | NoiseFloorUnavailable:
    """The baseline's noise floor over the positions the evaluation scores: `scored` holds each window's ids
    and the rows of its logits that are scored; `clean_log_probs`, where the caller has them already, the
    baseline's log-probabilities at those rows (else they are computed here, without noise)."""
    if not scored:
        return NoiseFloorUnavailable("no noise floor: no positions to score")
    if clean_log_probs is None:
        clean_log_probs = [torch.log_softmax(loaded.logits(list(ids))[rows].float(), -1) for ids, rows in scored]
    noisy = noisy_logits(loaded, [ids for ids, _ in scored], epsilon, seed)
    if isinstance(noisy, NoiseFloorUnavailable):
        return noisy
    kl = torch.cat([metrics.position_kl_nats(clean, torch.log_softmax(logits[rows].float(), -1))
                    for clean, logits, (_, rows) in zip(clean_log_probs, noisy, scored)])
    return summarise(kl, epsilon, seed)
