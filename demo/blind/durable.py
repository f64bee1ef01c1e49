"""Votes that survive the loss of the local disk: the database stays local, a journal of it goes to the
persistent folder (a Space's /data, or $ARENA_DATA_DIR; demo.artifacts.persistent).

SQLite needs a local disk (its WAL and locks cannot be trusted on object storage), and a Space's local disk
is lost at every restart. So where a persistent folder is mounted, `open_store` opens the local database and:

1. where the local database is missing and an older version of the app left one on the persistent folder
   itself (`votes.sqlite3` there), starts from a copy of it (SQLite's backup, never the file's bytes);
2. restores the journal (`votes-journal/` there) into the database: every battle and vote it holds and the
   database lacks, each once (by battle id; a vote's id is its battle's), never one a void names (a write
   whose caller was told it failed), every battle before any vote whatever the order its segments are read
   in, and the address key, so client addresses keep their digests across restarts;
3. appends to the journal whatever the database holds and the journal lacks;
4. from then on writes every battle and vote to the journal inside its transaction, before "recorded", and
   voids it there when the transaction does not commit.

Errors here are the operator's, at start-up: they may name paths, which the visitor's never do.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from demo.artifacts.persistent import on_space_without_storage, persistent_dir
from demo.blind.journal import Journal
from demo.blind.votes import VoteStore
from demo.errors import VoteStoreError

log = logging.getLogger(__name__)

JOURNAL_FOLDER = "votes-journal"
LEGACY_FILE = "votes.sqlite3"  # where an older version kept the database on a Space's /data


def open_store(path: str | os.PathLike, data_dir: Path | None = None) -> VoteStore:
    """The votes database at `path`, kept in step with the journal in `data_dir` (default: the persistent
    folder, if any); a plain database where there is none."""
    path = Path(path)
    data_dir = persistent_dir() if data_dir is None else data_dir
    if data_dir is None:
        if on_space_without_storage():
            log.warning("blind test: votes are kept in %s, on this Space's own disk, which is lost when the Space "
                        "restarts; mount a Storage Bucket at /data to keep them", path)
        return VoteStore(path)
    if path.absolute().is_relative_to(data_dir.absolute()):
        log.warning("blind test: the votes database %s is on the persistent folder, where SQLite's locks may not "
                    "hold; keep it on the local disk (the default) and let the journal carry the votes", path)
    _adopt_legacy(path, data_dir / LEGACY_FILE)
    store = VoteStore(path)
    journal = Journal(data_dir / JOURNAL_FOLDER)
    try:
        read = journal.read()
        restored = store.restore(read.entries)
        missing = store.unjournaled(restored)
        journal.append(*missing)
    except BaseException:
        store.close()
        raise
    store.journal = journal
    log.info("blind test: votes in %s, journaled to %s: %d battles and %d votes restored from it (%d entries "
             "voided: writes that failed), %d entries added to it", path, journal.folder, restored.battles_added,
             restored.votes_added, read.voided, len(missing))
    skipped = {"torn last lines": read.torn, "damaged lines": len(read.damaged), "votes without a battle":
               restored.orphan_votes, "unusable entries": restored.unusable}
    if any(skipped.values()):
        log.warning("blind test: the votes journal %s: skipped %s%s", journal.folder,
                    ", ".join(f"{n} {what}" for what, n in skipped.items() if n),
                    f" (damaged: {', '.join(read.damaged[:5])})" if read.damaged else "")
    if restored.salt_replaced:
        log.warning("blind test: the database's address key differed from the journal's; the journal's is kept")
    return store


def _adopt_legacy(path: Path, legacy: Path) -> None:
    """Start a missing local database from the one an older version kept on the persistent folder."""
    if path.exists() or not legacy.is_file() or path.absolute() == legacy.absolute():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        source = sqlite3.connect(f"{legacy.absolute().as_uri()}?mode=ro", uri=True)
        try:
            target = sqlite3.connect(partial)
            try:
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()
        os.replace(partial, path)
    except (sqlite3.Error, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise VoteStoreError(f"cannot copy the votes database {legacy} to {path}: {exc}") from None
    log.info("blind test: started the local votes database %s from %s, where an older version kept it", path, legacy)


def storage_line(store: VoteStore) -> str:
    """One line for the page: where the votes are kept, and whether they outlive a restart."""
    if store.journal is not None:
        return (f"Votes are kept in `{store.path}` and journaled to `{store.journal.folder}`, "
                "which survives a restart.")
    if on_space_without_storage():
        return (f"Votes are kept in `{store.path}`, on this Space's own disk: a restart loses them "
                "(mount a Storage Bucket at /data to keep them).")
    return f"Votes are kept in `{store.path}`."
