"""An append-only journal of JSON lines in a folder of the persistent folder, written for object storage.

The journal is a folder of segments, `<UTC time>-<pid>-<random>.jsonl`, read in name order. A process writes
only segments it started itself, and starts a new one past SEGMENT_MAX_BYTES or after a failed write: object
storage rewrites a whole file to append to it, so segments stay small, and a line cut short by a crash (or
by a write that failed) stays the last line of its segment. Each append opens the segment, writes whole
lines, flushes, fsyncs and closes it before it returns (object storage makes a file durable when it is
closed), so an entry whose append returned is on the persistent folder. The first segment also makes the
folder itself, and its name in its parent, durable.

Every entry has an id of its own ("entry"). A write its caller was told failed must never be read back, yet
its bytes may have landed (the write went through and the fsync failed; or the append returned and the
caller's own transaction did not commit): the segment is cut back to where it was where the file system
allows it, and a "void" entry naming the failed entries is written to a new segment. Reading drops every
voided entry, wherever its void is. While a void cannot be written the journal refuses every append (and
logs why): a later write answered "recorded" must not stand beside a refused one that could come back.
Entries from before ids (an older version) read as they are; nothing can void them.

Reading tolerates what a crash leaves: a last line that is not a whole JSON object is "torn" (its append
never returned, so it was never acknowledged) and skipped; any other unreadable line is "damaged", skipped
and named. The journal knows nothing else of what its entries mean (demo.blind.votes does). Paths and
reasons of failed writes go to the log: the errors raised to a caller (and on to a visitor) name neither.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from demo.errors import VoteStoreError

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
SEGMENT_MAX_BYTES = 2**20  # a new segment past this: appending to an object rewrites it whole
FORMAT = 1  # each entry's "format"; a newer one is refused rather than half-understood
VOID = "void"  # the kind of entry that names entries ("entries": their ids) never to be read back
WRITE_FAILED = "the votes journal could not take this write (the server logged why); try again"
REFUSING = ("the votes journal is refusing writes until it can record that an earlier one failed (the server "
            "logged why); try again later")


@dataclass
class JournalRead:
    """Every live entry in order (voids and what they void left out), and what was skipped."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    torn: int = 0  # segments whose last line was cut short
    damaged: list[str] = field(default_factory=list)  # "<segment>:<line>" of other unreadable lines
    voided: int = 0  # entries left out because a void names them (writes whose caller was told they failed)


class Journal:
    """One process's appends to a journal folder, and reading the whole folder back."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._segment: Path | None = None
        self._segment_bytes = 0
        self._unvoided: list[str] = []  # ids of failed writes whose void is not yet written: appends refused

    def append(self, *entries: dict[str, Any]) -> list[str]:
        """Write `entries` as whole lines, each with an entry id (its own "entry", else a new one), and make them
        durable before returning their ids. VoteStoreError if not, and then none of them will be read back."""
        if not entries:
            return []
        stamped = [_stamped(entry) for entry in entries]
        data = b"".join(encode(entry) for entry in stamped)
        with self._lock:
            self._write_voids()
            try:
                self._write(data)
            except OSError as exc:
                log.error("blind test: cannot write to the votes journal %s: %s", self.folder, exc.strerror or exc)
                self._fail([entry["entry"] for entry in stamped])
                raise VoteStoreError(WRITE_FAILED) from None
        return [entry["entry"] for entry in stamped]

    def void(self, ids: Iterable[str]) -> None:
        """Entries whose append returned but whose caller was told the write failed (its transaction rolled back):
        never to be read back. Raises nothing: a void that cannot be written makes the journal refuse appends."""
        with self._lock:
            self._fail(list(ids))

    def _fail(self, ids: list[str]) -> None:
        self._unvoided += ids
        try:
            self._write_voids()
        except VoteStoreError:
            pass  # logged; the caller raises its own error, and the next append tries the void again

    def _write_voids(self) -> None:
        """Write the void of every failed write not yet voided, in a segment of its own (the last one may end in
        a torn line, which the void must not join); VoteStoreError while it cannot."""
        if not self._unvoided:
            return
        self._segment = None
        try:
            self._write(encode({"entry": secrets.token_hex(8), "kind": VOID, "entries": self._unvoided}))
        except OSError as exc:
            log.error("blind test: could not void entries %s in the votes journal %s (%s), whose caller was told they "
                      "failed: refusing every write to it until the void is written, or the entries could come back "
                      "at the next start", ", ".join(self._unvoided), self.folder, exc.strerror or exc)
            raise VoteStoreError(REFUSING) from None
        log.warning("blind test: voided entries %s in the votes journal %s: their writes failed",
                    ", ".join(self._unvoided), self.folder)
        self._unvoided = []

    def _write(self, data: bytes) -> None:
        """Append `data` to this process's segment and make it durable; on OSError, nothing of it is left where
        the file system allows cutting the segment back, and that segment is abandoned either way."""
        segment, fresh = self._segment_for(len(data))
        start = self._segment_bytes
        try:
            if fresh:
                _make_folder(self.folder)
            with open(segment, "ab") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            self._abandon(segment, start)
            raise
        if fresh:
            _fsync_folder(self.folder)
        self._segment, self._segment_bytes = segment, start + len(data)

    def _abandon(self, segment: Path, start: int) -> None:
        """After a failed write: cut `segment` back to its `start` bytes (best effort: the failed entries' void is
        what keeps them out), and append nothing more to it (whatever is left stays its last line)."""
        self._segment = None
        try:
            if start == 0:
                segment.unlink(missing_ok=True)
            else:
                os.truncate(segment, start)
        except OSError as exc:
            log.warning("blind test: cannot cut the votes journal segment %s back after a failed write (%s); its "
                        "void keeps it out", segment, exc.strerror or exc)

    def _segment_for(self, size: int) -> tuple[Path, bool]:
        """The segment to append `size` bytes to, and whether it is a new one."""
        if self._segment is not None and self._segment_bytes + size <= SEGMENT_MAX_BYTES:
            return self._segment, False
        self._segment_bytes = 0
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        return self.folder / f"{stamp}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}", True

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob(f"*{SUFFIX}")) if self.folder.is_dir() else []

    def read(self) -> JournalRead:
        """Every live entry of every segment, in order; torn last lines and damaged lines skipped and counted,
        voided entries and voids left out."""
        read = JournalRead()
        everything: list[dict[str, Any]] = []
        for segment in self.segments():
            try:
                lines = segment.read_bytes().split(b"\n")
            except OSError as exc:
                raise VoteStoreError(f"cannot read the votes journal {segment}: {exc.strerror or exc}") from None
            last = lines.pop()  # b"" when the segment ends with a whole line
            for number, line in enumerate(lines, 1):
                entry = decode(line, segment)
                if entry is not None:
                    everything.append(entry)
                elif line.strip():
                    read.damaged.append(f"{segment.name}:{number}")
            if last.strip():
                entry = decode(last, segment)
                if entry is None:
                    read.torn += 1
                else:  # complete but for its newline: its append may not have returned, yet it is whole
                    everything.append(entry)
        read.entries, read.voided = live(everything)
        return read


def live(entries: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """`entries` less the voids and every entry a void names, wherever the void is (a void is written after what
    it voids, but segments are read in file-name order, which another process's clock decides); and how many
    entries were voided."""
    entries = list(entries)
    voided = {entry_id for void in entries if void.get("kind") == VOID and isinstance(void.get("entries"), list)
              for entry_id in void["entries"] if isinstance(entry_id, str)}
    kept = [entry for entry in entries if entry.get("kind") != VOID and entry.get("entry") not in voided]
    return kept, sum(entry.get("kind") != VOID for entry in entries) - len(kept)


def _stamped(entry: dict[str, Any]) -> dict[str, Any]:
    """`entry` with its id first: its own "entry" where it has one, else a new one."""
    return {"entry": entry.get("entry") or secrets.token_hex(8), **{k: v for k, v in entry.items() if k != "entry"}}


def encode(entry: dict[str, Any]) -> bytes:
    return (json.dumps({"format": FORMAT, **entry}, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def decode(line: bytes, segment: Path) -> dict[str, Any] | None:
    """One line's entry, or None when it is not a JSON object; a newer format is refused."""
    try:
        entry = json.loads(line)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
        return None
    if not isinstance(entry, dict):
        return None
    if not isinstance(entry.get("format"), int) or entry["format"] > FORMAT:
        raise VoteStoreError(f"the votes journal {segment} has an entry of format {entry.get('format')!r}; this "
                             f"version of the app reads format {FORMAT}")
    return entry


def _make_folder(folder: Path) -> None:
    """Make `folder` and its missing parents, each one's name made durable in its parent (as a segment's is)."""
    missing = []
    while not folder.is_dir() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    if missing:
        missing[0].mkdir(parents=True, exist_ok=True)
    for made in reversed(missing):
        _fsync_folder(made.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a new name in `folder` durable where the file system allows it (object storage mounts may not)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
