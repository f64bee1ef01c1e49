"""AWQ checkpoints made with gptqmodel (AutoAWQ is archived; transformers 5 loads AWQ through gptqmodel).

transformers cannot make an AWQ checkpoint itself (its AWQ quantizer only loads), so demo.quantize calls
gptqmodel directly: activation-aware scales searched on the calibration text, 4-bit GEMM-format weights
saved with their config, which transformers then loads on the CPU (gptqmodel's torch kernel) or a GPU.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

# gptqmodel sizes its CPU thread pool at half the cores, but its model loader asks for 2 workers: on a
# 2-core machine (one worker) quantizing stops with "requests 2 workers but parent 'cpu' only has 1".
# Read once, when gptqmodel first builds its pool.
_CPU_WORKERS_ENV = "GPTQMODEL_CPU_WORKERS"


def ensure_cpu_workers() -> None:
    """Give gptqmodel at least the 2 CPU workers it needs; call before it first quantizes or loads."""
    if os.environ.get(_CPU_WORKERS_ENV) is None and (os.cpu_count() or 1) < 4:
        os.environ[_CPU_WORKERS_ENV] = "2"


def gptqmodel_config(settings: dict):
    """gptqmodel's AWQConfig for the variant's settings (GEMM format: the one transformers loads)."""
    from gptqmodel.quantization.config import AWQConfig, FORMAT

    # AWQ's zero point is asymmetric quantization: gptqmodel spells it sym=False
    return AWQConfig(bits=settings.get("bits", 4), group_size=settings["group_size"],
                     sym=not settings.get("zero_point", True), format=FORMAT.GEMM)


def make(location: str, settings: dict, samples: list[str], out: Path, device: str) -> None:
    """Quantize the checkpoint at `location` with AWQ on `samples` and save it (weights, config, tokenizer)."""
    ensure_cpu_workers()
    from gptqmodel import BACKEND, GPTQModel

    # On the CPU the GEMM format packs through gptqmodel's torch kernel (its default asks for CUDA).
    backend = BACKEND.AWQ_TORCH if device == "cpu" else BACKEND.AUTO
    with contextlib.redirect_stdout(sys.stderr):  # gptqmodel logs to stdout; keep stdout for results
        model = GPTQModel.load(location, gptqmodel_config(settings), device=device)
        model.quantize(samples, batch_size=1, backend=backend)
        model.save(str(out))
