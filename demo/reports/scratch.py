"""Where the page writes the files it offers (comparison cards, blind-test results, evaluation outputs): one
folder per process under the system's temp folder, swept on each new write, so a long-running app keeps a
handful of folders instead of one per comparison, vote and refresh.

Gradio copies every file a handler returns into its own cache before the response is sent, so a folder is
needed only until its handler has returned; `MIN_AGE_S` leaves slow concurrent handlers time to finish."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

KEEP = 8  # newest folders always kept
MIN_AGE_S = 60.0  # an older folder beyond KEEP has long been copied by Gradio: removed


class ScratchSpace:
    """Fresh folders under `root`; each new one sweeps away the oldest past `keep` that are older than
    `min_age_s` (by modification time)."""

    def __init__(self, root: Path, keep: int = KEEP, min_age_s: float = MIN_AGE_S,
                 clock: Callable[[], float] = time.time):
        self.root, self.keep, self.min_age_s, self._clock = Path(root), keep, min_age_s, clock
        self._lock = threading.Lock()

    def folder(self, prefix: str) -> Path:
        """A new empty folder, named `prefix` and a random tail."""
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            self._sweep()
            return Path(tempfile.mkdtemp(prefix=prefix, dir=self.root))

    def _sweep(self) -> None:
        folders = sorted((p for p in self.root.iterdir() if p.is_dir()), key=_modified_s, reverse=True)
        now = self._clock()
        for old in folders[self.keep:]:
            if now - _modified_s(old) >= self.min_age_s:
                shutil.rmtree(old, ignore_errors=True)  # a file still being read elsewhere: gone next sweep

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _modified_s(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed by another sweep meanwhile
        return 0.0


_process_space: list[ScratchSpace] = []
_process_lock = threading.Lock()


def process_space() -> ScratchSpace:
    """This process's scratch space (quantization-arena-<pid> in the temp folder), removed when it exits."""
    with _process_lock:
        if not _process_space:
            space = ScratchSpace(Path(tempfile.gettempdir()) / f"quantization-arena-{os.getpid()}")
            atexit.register(space.remove)
            _process_space.append(space)
        return _process_space[0]


def folder(prefix: str) -> Path:
    """A fresh folder in this process's scratch space."""
    return process_space().folder(prefix)
