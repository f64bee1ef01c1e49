"""An append-only journal of JSON lines in a folder of the persistent folder, written for object storage.

The journal is a folder of segments, `<UTC time>-<pid>-<random>.jsonl`, read in name order. A process writes
only segments it started itself, and starts a new one past SEGMENT_MAX_BYTES or after a failed write: object
storage rewrites a whole file to append to it, so segments stay small, and a line cut short by a crash (or
by a write that failed) stays the last line of its segment. Each append opens the segment, writes whole
lines, flushes, fsyncs and closes it before it returns (object storage makes a file durable when it is
closed), so an entry whose append returned is on the persistent folder.

Reading tolerates what a crash leaves: a last line that is not a whole JSON object is "torn" (its append
never returned, so it was never acknowledged) and skipped; any other unreadable line is "damaged", skipped
and named. The journal knows nothing of what its entries mean (demo.blind.votes does).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from demo.errors import VoteStoreError

SUFFIX = ".jsonl"
SEGMENT_MAX_BYTES = 2**20  # a new segment past this: appending to an object rewrites it whole
FORMAT = 1  # each entry's "format"; a newer one is refused rather than half-understood


@dataclass
class JournalRead:
    """Every readable entry in order, and what was skipped."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    torn: int = 0  # segments whose last line was cut short
    damaged: list[str] = field(default_factory=list)  # "<segment>:<line>" of other unreadable lines


class Journal:
    """One process's appends to a journal folder, and reading the whole folder back."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._segment: Path | None = None
        self._segment_bytes = 0

    def append(self, *entries: dict[str, Any]) -> None:
        """Write `entries` as whole lines and make them durable before returning; VoteStoreError if not."""
        if not entries:
            return
        data = b"".join(encode(entry) for entry in entries)
        with self._lock:
            segment, fresh = self._segment_for(len(data))
            try:
                if fresh:
                    self.folder.mkdir(parents=True, exist_ok=True)
                with open(segment, "ab") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                self._segment = None  # whatever part of `data` landed stays the last line of that segment
                raise VoteStoreError(f"cannot write the votes journal {segment}: {exc.strerror or exc}") from None
            if fresh:
                _fsync_folder(self.folder)
            self._segment, self._segment_bytes = segment, self._segment_bytes + len(data)

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
        """Every entry of every segment, in order; torn last lines and damaged lines skipped and counted."""
        read = JournalRead()
        for segment in self.segments():
            try:
                lines = segment.read_bytes().split(b"\n")
            except OSError as exc:
                raise VoteStoreError(f"cannot read the votes journal {segment}: {exc.strerror or exc}") from None
            last = lines.pop()  # b"" when the segment ends with a whole line
            for number, line in enumerate(lines, 1):
                entry = decode(line, segment)
                if entry is not None:
                    read.entries.append(entry)
                elif line.strip():
                    read.damaged.append(f"{segment.name}:{number}")
            if last.strip():
                entry = decode(last, segment)
                if entry is None:
                    read.torn += 1
                else:  # complete but for its newline: its append may not have returned, yet it is whole
                    read.entries.append(entry)
        return read


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


def _fsync_folder(folder: Path) -> None:
    """Make a new segment's name durable where the file system allows it (object storage mounts may not)."""
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
