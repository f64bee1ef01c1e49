"""AutoRound checkpoints made by Intel's auto-round library itself, in its own format.

AutoRound tunes each block's rounding (and its scales' ranges) by signed gradient descent against the block's
full-precision output on calibration text, then packs the weights in a GPTQ-compatible layout
(`packing_format: auto_round:auto_gptq`). Users load such a checkpoint with plain
`AutoModelForCausalLM.from_pretrained` once auto-round is installed (transformers' AutoRoundQuantizer), which picks
the best inference kernel the machine has: on a CPU, the AutoRound kernel library (auto-round-lib) where installed,
else a torch fallback that dequantizes on every call. The arena loads it that same way.

Calibration: auto-round keeps only samples at least `seqlen` tokens long, so the calibration text is cut into
windows of that many tokens (plus a few, as decoding and encoding again may merge tokens), not the few-sentence
samples GPTQ and AWQ take.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

from demo.errors import ArenaError

WINDOW_SLACK_TOKENS = 8


class AutoRoundError(ArenaError):
    """The calibration text cannot give auto-round a single sample, or the library wrote no checkpoint."""


def calibration_windows(text: str, tokenizer, seqlen: int) -> list[str]:
    """The text cut into consecutive windows of seqlen + WINDOW_SLACK_TOKENS tokens, as text."""
    ids = tokenizer(text)["input_ids"]
    size = seqlen + WINDOW_SLACK_TOKENS
    windows = [tokenizer.decode(ids[i:i + size]) for i in range(0, len(ids) - size + 1, size)]
    if not windows:
        raise AutoRoundError(f"the calibration text has {len(ids):,} tokens, fewer than one sample of seqlen "
                             f"{seqlen} (+{WINDOW_SLACK_TOKENS}): give a longer text or a smaller seqlen")
    return windows


def make(location: str, settings: dict, calibration: Path, tokenizer, out: Path, device: str) -> list[str]:
    """Quantize the checkpoint at `location` with AutoRound into `out` (auto-round's own format); returns the
    calibration samples used."""
    import torch
    from transformers import AutoModelForCausalLM

    samples = calibration_windows(calibration.read_text(encoding="utf-8"), tokenizer, settings["seqlen"])
    with contextlib.redirect_stdout(sys.stderr):  # auto-round prints; stdout is kept for results
        from auto_round import AutoRound

        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
        rounder = AutoRound(model, tokenizer=tokenizer, scheme=f"W{settings['bits']}A16", bits=settings["bits"],
                            group_size=settings["group_size"], sym=settings["sym"], iters=settings["iters"],
                            dataset=samples, nsamples=len(samples), seqlen=settings["seqlen"],
                            batch_size=min(8, len(samples)), device_map=device, enable_torch_compile=False)
        written = out / "auto-round-output"
        rounder.quantize_and_save(str(written), format="auto_round")
    _move_up(written, out)
    return samples


def _move_up(written: Path, out: Path) -> None:
    """auto-round writes into a subfolder it names after the model and scheme: its files go to `out` itself."""
    configs = sorted(written.rglob("config.json"))
    if len(configs) != 1:
        raise AutoRoundError(f"auto-round wrote {len(configs)} checkpoints under {written}, expected one")
    for item in configs[0].parent.iterdir():
        shutil.move(str(item), out / item.name)
    shutil.rmtree(written)
