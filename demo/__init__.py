"""Quantization Arena: one prompt, several quantized variants of one LLM, side by side."""

__version__ = "0.1.0"
