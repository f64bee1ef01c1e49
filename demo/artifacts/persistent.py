"""The persistent folder: where files that must outlive the machine's own disk go.

On a Hugging Face Space the local disk is lost at every restart, while a Storage Bucket mounted at `/data`
survives. That bucket is object storage: files written and closed there persist, but SQLite's WAL and locks
cannot be trusted on it, so the votes database stays on the local disk and only an append-only journal of
it goes here (demo.blind.journal), with the quantized checkpoints made on the Space (demo.artifacts.cache).

$ARENA_DATA_DIR names the folder anywhere (the tests point it at a temporary folder); otherwise `/data` is
used on a Space (SPACE_ID set) where it exists and is writable; elsewhere there is none.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "ARENA_DATA_DIR"
SPACE_DATA = Path("/data")  # where Hugging Face mounts a Space's Storage Bucket


def persistent_dir() -> Path | None:
    """$ARENA_DATA_DIR, else /data on a Hugging Face Space where it is mounted and writable, else None."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    on_space = bool(os.environ.get("SPACE_ID"))
    if on_space and SPACE_DATA.is_dir() and os.access(SPACE_DATA, os.W_OK):
        return SPACE_DATA
    return None


def on_space_without_storage() -> bool:
    """A Space with no persistent folder: everything it writes is lost at its next restart."""
    return bool(os.environ.get("SPACE_ID")) and persistent_dir() is None
