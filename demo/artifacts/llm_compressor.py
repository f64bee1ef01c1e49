"""compressed-tensors checkpoints made by llm-compressor itself (vLLM's native format: W4A16, W8A8-int8).

llm-compressor pins transformers 5.15-5.17 and compressed-tensors 0.19, older than the arena's, so it lives in an
environment of its own that `make llm-compressor` builds (.venv/llm-compressor); its Python runs
llm_compressor_make.py on the base's checkpoint. The arena's own environment loads the result with plain
`from_pretrained` (transformers' compressed-tensors support, compressed-tensors 0.20), as its users load it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from demo.errors import ArenaError

PYTHON_ENV = "ARENA_LLM_COMPRESSOR_PYTHON"  # the llm-compressor environment's python, where it is elsewhere
MAKER = Path(__file__).with_name("llm_compressor_make.py")


class LlmCompressorError(ArenaError):
    """llm-compressor's environment is missing, or it failed to make the checkpoint."""


def python() -> Path:
    return Path(os.environ.get(PYTHON_ENV) or Path(sys.prefix) / "llm-compressor" / "bin" / "python")


def available() -> bool:
    return os.access(python(), os.X_OK)


def make(location: str, settings: dict, out: Path) -> dict:
    """The compressed-tensors checkpoint of the checkpoint at `location` in `out`; returns what the maker reports
    (scheme, group size, seconds, library versions)."""
    if not available():
        raise LlmCompressorError("llm-compressor is not installed here: run `make llm-compressor` (a few minutes, "
                                 "once; it needs an environment of its own, with an older transformers)")
    done = subprocess.run([str(python()), str(MAKER), location, str(out), settings["scheme"],
                           str(settings.get("group_size", 0))], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise LlmCompressorError(f"llm-compressor failed (exit {done.returncode}): {' / '.join(last)[:300]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
