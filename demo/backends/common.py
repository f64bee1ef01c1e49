"""What every runtime needs alike: the device a variant runs on, package checks, short error texts."""

from __future__ import annotations

import importlib.util

from demo.config import Variant
from demo.errors import VariantUnavailable


def package_available(package: str) -> bool:
    """Whether a runtime's package is installed (checked without importing it)."""
    return importlib.util.find_spec(package) is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pick_device(variant: Variant) -> str:
    """The device a variant runs on; raises VariantUnavailable when it needs a GPU and none exists."""
    has_cuda = cuda_available()
    if variant.device == "cuda" and not has_cuda:
        raise VariantUnavailable("not available: this variant needs an NVIDIA GPU and none was found")
    if variant.device == "cpu":
        return "cpu"
    return "cuda" if has_cuda else "cpu"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:200]
