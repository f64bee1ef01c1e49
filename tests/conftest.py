"""Shared fixtures: offline environment, the real default config, and a tiny model built in-process."""

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# One materialized copy of the bundled model for every test run on this machine.
os.environ.setdefault("ARENA_CACHE_DIR", str(REPO / ".cache"))
os.environ.pop("ARENA_MODELS", None)
os.environ.pop("ARENA_MEMORY_BUDGET_MIB", None)

import torch  # noqa: E402

from demo.config import load_config  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is false)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def default_config():
    return load_config(REPO / "models.yaml")


@pytest.fixture(scope="session")
def arena(default_config):
    """One real Arena over the bundled model, shared so each variant loads once per session."""
    from demo.runner import Arena

    return Arena(default_config)


def free_port() -> int:
    """A loopback port nobody is listening on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_causal_lm(hidden: int = 64, layers: int = 2, vocab: int = 512):
    """A real (random) Llama of known size, built in milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=vocab,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()
