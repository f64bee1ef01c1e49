"""What the page writes per request stays bounded: a public arena runs for months on a fixed disk.

Per request the page writes files to offer (a comparison's card, an evaluation's results and charts, the
blind results) into the arena's scratch space (demo.reports.scratch: a few folders, swept on each write), and
Gradio copies each into its own cache (GRADIO_TEMP_DIR, one folder per file, named by its hash) to serve it,
where it stays until the server stops. Gradio's own `delete_cache` schedule is not used: its sweep iterates
each set of copies itself while request threads add to it (a "Set changed size during iteration" ends its
schedule task for good), it leaves the folders behind, and with it 546 files were still there after 100
comparisons here. So `lifespan(page, limits)`
sweeps instead, every `sweep_every_s`: the copies this page made that are `limits.files_kept_s` old (a
downloadable card lasts that long), then the folders Gradio made for them once empty; at shutdown, all of
them. `remove_abandoned_scratch()`, at start-up, removes the scratch spaces of arena processes that ended
without removing theirs (killed, or a machine reset).

What stays is what `files_kept_s` of requests write: the default hour, and a one-variant comparison's card
takes about 20 KB of disk (three files of 1 to 4 KB, each in a folder of Gradio's).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable

from demo.config import Limits

log = logging.getLogger(__name__)

GRADIO_FOLDER = re.compile(r"[0-9a-f]{64}$")  # the folder Gradio makes for each file it serves: its hash
SCRATCH_NAME = re.compile(r"quantization-arena-(\d+)$")  # demo.reports.scratch.process_space's folder


def sweep_every_s(limits: Limits) -> int:
    """How often the cache is swept: a quarter of the time files are kept, at most every 5 minutes."""
    return max(1, min(300, int(limits.files_kept_s // 4)))


def remove_expired_copies(page, older_than_s: float, clock: Callable[[], float] = time.time) -> int:
    """Remove the copies `page` (a gr.Blocks) made in Gradio's cache that are `older_than_s` old (by ctime, which
    Gradio refreshes when it hands a copy out again), except those a component keeps; how many."""
    keep: set[str] = set()
    for component in list(page.blocks.values()):
        keep |= set(getattr(component, "keep_in_cache", ()))
    removed, now = 0, clock()
    for copies in list(page.temp_file_sets):
        for path in list(copies):  # a copy of the set taken at once: requests add to it meanwhile
            if path in keep:
                continue
            try:
                if now - os.lstat(path).st_ctime < older_than_s:
                    continue
                os.remove(path)
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove %s from Gradio's cache: %s", path, exc)
                continue
            copies.discard(path)
    return removed


def remove_empty_folders(root: Path, older_than_s: float, clock: Callable[[], float] = time.time) -> int:
    """Remove the empty folders Gradio made for files (named by a hash) directly in `root`, its cache, that have
    not changed for `older_than_s`; how many. The age spares a folder Gradio has just made and is about to write
    into, and os.rmdir refuses one that is not empty, so a file is never lost. (A folder's time changes when its
    file is removed: it goes `older_than_s` after its file.)"""
    removed = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    now = clock()
    for entry in entries:
        try:
            if (GRADIO_FOLDER.match(entry.name) and entry.is_dir(follow_symlinks=False)
                    and now - entry.stat().st_mtime >= older_than_s):
                os.rmdir(entry.path)
                removed += 1
        except OSError:  # not empty, or gone meanwhile
            continue
    return removed


def sweep(page, older_than_s: float) -> tuple[int, int]:
    """One sweep: (copies removed, folders removed)."""
    return remove_expired_copies(page, older_than_s), remove_empty_folders(Path(page.GRADIO_CACHE), older_than_s)


def lifespan(page, limits: Limits):
    """A lifespan for the server (FastAPI's `lifespan`, which Gradio chains with its own): sweeps `page`'s
    copies in Gradio's cache every sweep_every_s, and all of them when the server stops."""
    every_s, kept_s = sweep_every_s(limits), limits.files_kept_s

    async def sweeping() -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await asyncio.to_thread(sweep, page, kept_s)
            except Exception:  # a sweep that fails is logged, and the next one runs all the same
                log.exception("sweeping Gradio's cache failed")

    @asynccontextmanager
    async def handler(app) -> AsyncIterator[None]:
        task = asyncio.create_task(sweeping())
        try:
            yield
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            await asyncio.to_thread(sweep, page, 0.0)

    return handler


def remove_abandoned_scratch(temp_dir: str | os.PathLike | None = None) -> list[Path]:
    """Remove the scratch spaces (quantization-arena-<pid>) whose process is gone; the ones removed."""
    root = Path(temp_dir or tempfile.gettempdir())
    removed = []
    try:
        candidates = [p for p in root.iterdir() if SCRATCH_NAME.match(p.name) and p.is_dir()]
    except OSError:
        return removed
    for folder in candidates:
        pid = int(SCRATCH_NAME.match(folder.name).group(1))
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        log.info("removed %d scratch folders left by arena processes that have ended", len(removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
