"""llama.cpp's own command-line tools, built by `make llama-tools` from the same vendored source as the Python
package (without its AMX backend): llama-imatrix (the importance matrix from calibration text), llama-quantize
(with that matrix) and llama-perplexity (its KL divergence against a base's saved logits, the figure every
published llama.cpp table uses). They run as subprocesses with the machine's threads; their output is read back
from the files and lines they write, never guessed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from demo.artifacts.quantize import QuantizeError

TOOLS_ENV = "ARENA_LLAMA_TOOLS"  # a folder holding the built tools, where they are not in the environment's own
DEFAULT_CTX = 512


def tools_dir() -> Path:
    return Path(os.environ.get(TOOLS_ENV) or Path(sys.prefix) / "llama-tools" / "bin")


def tool(name: str) -> Path:
    path = tools_dir() / name
    if not os.access(path, os.X_OK):
        raise QuantizeError(f"llama.cpp's {name} is not built here: run `make llama-tools` (minutes, once)")
    return path


def available() -> bool:
    return all(os.access(tools_dir() / name, os.X_OK) for name in ("llama-imatrix", "llama-quantize"))


def _run(args: list, what: str) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise QuantizeError(f"{what} failed (exit {done.returncode}): {' / '.join(last)[:300]}")
    return done.stdout + done.stderr


def imatrix(model: Path, text: Path, out: Path, threads: int, ctx: int = DEFAULT_CTX) -> Path:
    """llama-imatrix over the calibration text, in chunks of ctx tokens, written to out (GGUF format)."""
    _run([tool("llama-imatrix"), "-m", model, "-f", text, "-o", out, "-c", ctx, "--no-ppl", "-t", threads],
         "llama-imatrix")
    if not out.is_file():
        raise QuantizeError("llama-imatrix wrote no importance matrix")
    return out


def quantize(src: Path, dst: Path, gguf_type: str, threads: int, matrix: Path | None = None) -> None:
    """llama-quantize src to dst at gguf_type, with the importance matrix where given."""
    args = [tool("llama-quantize"), "--allow-requantize", *(["--imatrix", matrix] if matrix else []), src, dst,
            gguf_type, threads]
    _run(args, "llama-quantize")


@dataclass(frozen=True)
class Kld:
    """llama-perplexity's own KL figures against the saved base logits."""

    mean: float
    uncertainty: float
    p99_9: float | None
    top1: float | None  # "Same top p", as a fraction
    output: str


def save_base_logits(model: Path, text: Path, out: Path, threads: int, ctx: int = DEFAULT_CTX) -> Path:
    """llama-perplexity --kl-divergence-base: the reference model's logits over text, saved for later runs."""
    _run([tool("llama-perplexity"), "-m", model, "-f", text, "-c", ctx, "--kl-divergence-base", out, "-t", threads],
         "llama-perplexity (base logits)")
    return out


def kl_divergence(model: Path, base_logits: Path, threads: int, ctx: int = DEFAULT_CTX) -> Kld:
    """llama-perplexity --kl-divergence of model against the saved base logits (the text is in that file)."""
    output = _run([tool("llama-perplexity"), "-m", model, "-c", ctx, "--kl-divergence-base", base_logits,
                   "--kl-divergence", "-t", threads], "llama-perplexity (KL divergence)")
    mean = re.search(r"Mean\s+KLD:\s+([-\d.eE+]+)\s+±\s+([-\d.eE+]+)", output)
    if mean is None:
        raise QuantizeError("llama-perplexity printed no mean KLD")
    tail = re.search(r"99\.9%\s+KLD:\s+([-\d.eE+]+)", output)
    same = re.search(r"Same top p:\s+([\d.]+)\s+±", output)
    return Kld(float(mean.group(1)), float(mean.group(2)), float(tail.group(1)) if tail else None,
               float(same.group(1)) / 100 if same else None, output)
