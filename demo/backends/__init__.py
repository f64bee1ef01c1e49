"""How a variant runs: one module per runtime behind one small interface (demo.backends.base.LoadedVariant).

A runtime module provides `load(variant, base) -> LoadedVariant`; a method in demo.config.METHODS names
its runtime. Adding a runtime means adding its module here and its methods there, nothing else.
"""

from __future__ import annotations

import gc
import importlib

from demo.backends.base import LoadedVariant
from demo.config import BaseModel, Variant

RUNTIMES = {"transformers": "demo.backends.transformers", "llama.cpp": "demo.backends.llamacpp",
            "remote": "demo.backends.remote"}

__all__ = ["LoadedVariant", "RUNTIMES", "load", "release_memory"]


def load(variant: Variant, base: BaseModel) -> LoadedVariant:
    """Load one variant with the runtime its method names (imported on first use)."""
    return importlib.import_module(RUNTIMES[variant.runtime]).load(variant, base)


def release_memory() -> None:
    """Return freed memory: collect reference cycles, then empty the CUDA caching allocator."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
