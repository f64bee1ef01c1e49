"""Blind-test battles and their votes in SQLite: each battle stored when issued, its one vote attached later.

The app only ever inserts: triggers in the database refuse any UPDATE or DELETE of a battle or a vote, and
a vote's primary key is its battle's id, so a second vote for one battle cannot be written. WAL mode lets
`python -m demo votes` read while the app writes. Sessions are stored as a SHA-256 digest: enough to check
that a vote comes from the session its battle was issued to, without keeping the session id itself. Client
addresses are stored as an HMAC-SHA256 under a random key kept in the database (address_salt): enough to tell
one address's battles apart from another's, without the address itself, nor a table of every IPv4 digest.

Schema version 2 added each battle's sampling seed and address digest; a version-1 database is migrated on
opening for writing (the new columns are null for its battles), and read as it is when opened read-only.

With a journal (demo.blind.journal, on the persistent folder), every battle, vote and the address key is also
written there inside its transaction, before the commit: a write that returned is in both. A transaction that
does not commit (whatever the reason, the COMMIT itself included) voids what it journaled, so a write its
caller was told failed never comes back from the journal. `restore` puts the journal's live entries back into
the database (each battle and vote once, by id; voided ones never), every battle before any vote and the
votes in the order they were cast, so the order the journal's segments are read in does not matter;
`unjournaled` gives back what the database holds and the journal lacks; demo.blind.durable uses both at
start-up.

Any sqlite3.Error of a write (a lock another process held past the busy timeout, a failing disk) is raised as
VoteStoreError with a message a visitor may read: it names no path; the path and the reason go to the log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from demo.artifacts.cache import local_dir
from demo.blind import scripted
from demo.blind.journal import live
from demo.errors import VoteRefused, VoteStoreError

log = logging.getLogger(__name__)

VOTES_ENV = "ARENA_VOTES_DB"
DEFAULT_FILE = "votes.sqlite3"
SCHEMA_VERSION = 2
CHOICES = ("a", "b", "tie", "both_bad")
BUSY_TIMEOUT_MS = 10_000  # another process (the CLI, a second worker) holding the write lock: wait, then fail

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS battles (
    id TEXT PRIMARY KEY,
    issued_at TEXT NOT NULL,        -- ISO 8601, UTC
    session TEXT NOT NULL,          -- SHA-256 of the session it was issued to
    base TEXT NOT NULL,
    baseline TEXT NOT NULL,         -- variant id of the base's baseline (one of a, b)
    variant_a TEXT NOT NULL,
    variant_b TEXT NOT NULL,
    prompt TEXT NOT NULL,
    settings TEXT NOT NULL,         -- JSON: decoding settings, the same for both answers
    answer_a TEXT NOT NULL,
    answer_b TEXT NOT NULL,
    record_a TEXT NOT NULL,         -- JSON: the full comparison record (figures, fidelity) shown at the reveal
    record_b TEXT NOT NULL,
    environment TEXT NOT NULL,      -- JSON: device and library versions
    seed INTEGER,                   -- the battle's secret sampling seed (both sides); null before version 2
    address TEXT                    -- HMAC of the client address it was issued to; null before version 2
);
CREATE TABLE IF NOT EXISTS address_salt (value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS votes (
    battle_id TEXT PRIMARY KEY REFERENCES battles(id),
    voted_at TEXT NOT NULL,
    session TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad'))
);
CREATE TRIGGER IF NOT EXISTS battles_no_update BEFORE UPDATE ON battles
    BEGIN SELECT RAISE(ABORT, 'battles are append-only'); END;
CREATE TRIGGER IF NOT EXISTS battles_no_delete BEFORE DELETE ON battles
    BEGIN SELECT RAISE(ABORT, 'battles are append-only'); END;
CREATE TRIGGER IF NOT EXISTS votes_no_update BEFORE UPDATE ON votes
    BEGIN SELECT RAISE(ABORT, 'votes are append-only'); END;
CREATE TRIGGER IF NOT EXISTS votes_no_delete BEFORE DELETE ON votes
    BEGIN SELECT RAISE(ABORT, 'votes are append-only'); END;
"""
_JSON_COLUMNS = ("settings", "record_a", "record_b", "environment")
_ADDED_COLUMNS = {"seed": "INTEGER", "address": "TEXT"}  # version 2: added to a version-1 battles table
_OPTIONAL_FIELDS = frozenset(_ADDED_COLUMNS)  # a journal entry without them is a battle from before version 2
# In a stored JSON column: the paths of the numbers that were NaN or infinite, stored as null.
NONFINITE_KEY = "nonfinite_stored_as_null"


def votes_path(config=None) -> Path:
    """The votes database: $ARENA_VOTES_DB, else models.yaml's blind.votes_db, else votes.sqlite3 in the arena's
    folder on this machine's own disk (never the persistent folder: SQLite's locks need a local disk)."""
    if os.environ.get(VOTES_ENV):
        return Path(os.environ[VOTES_ENV])
    if config is not None and config.blind.votes_db is not None:
        return config.blind.votes_db
    return local_dir() / DEFAULT_FILE


def session_digest(session: str) -> str:
    return hashlib.sha256(session.encode("utf-8", "surrogatepass")).hexdigest()


def address_digest(address: str | None, salt: str) -> str | None:
    """The digest stored for a client address (None when the address is unknown)."""
    if not address:
        return None
    return hmac.new(salt.encode(), address.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Battle:
    """One issued pair: what was asked, which variant answered on which side, and both answers."""

    id: str
    issued_at: str
    session: str  # digest (session_digest)
    base: str
    baseline: str
    variant_a: str
    variant_b: str
    prompt: str
    settings: dict[str, Any]
    answer_a: str
    answer_b: str
    record_a: dict[str, Any]
    record_b: dict[str, Any]
    environment: dict[str, Any]
    seed: int | None = None  # the secret sampling seed of both answers; None in battles from before version 2
    address: str | None = None  # address_digest of the client it was issued to; None when unknown

    @property
    def challenger(self) -> str:
        return self.variant_b if self.variant_a == self.baseline else self.variant_a


@dataclass(frozen=True)
class Outcome:
    """A voted battle as the statistics need it."""

    base: str
    baseline: str
    variant_a: str
    variant_b: str
    choice: str
    label_a: str = ""
    label_b: str = ""
    battle: str = ""  # the battle's id
    session: str = ""  # digests, as stored
    address: str | None = None
    prompt: str = ""
    voted_at: str = ""  # ISO 8601, UTC


@dataclass
class Restored:
    """What `VoteStore.restore` found in a journal and put back."""

    battles_added: int = 0
    votes_added: int = 0
    battle_ids: set[str] = field(default_factory=set)  # every battle and vote the journal holds
    vote_ids: set[str] = field(default_factory=set)  # (a vote's id is its battle's)
    salt: str | None = None  # the journal's address key (its first), None when it holds none
    salt_replaced: bool = False  # the database had another key: the journal's is the one kept
    orphan_votes: int = 0  # votes whose battle is in neither the journal nor the database
    unusable: int = 0  # entries of an unknown kind or missing a field
    voided: int = 0  # entries given that a void among them names (demo.blind.journal.live)


class VoteStore:
    """The database, shared by every request: one connection, one lock, short transactions."""

    def __init__(self, path: str | os.PathLike, *, read_only: bool = False, journal=None):
        self.path = Path(path)
        self.journal = journal  # a demo.blind.journal.Journal written inside each write's transaction, or None
        self._lock = threading.Lock()
        self._journaled: list[str] = []  # the ids the open transaction journaled: voided if it does not commit
        try:
            self._db = self._connect(read_only)
            if not read_only:
                self._create()
            self._check_version()
            self._columns = {r[1] for r in self._db.execute("PRAGMA table_info(battles)")}
            salt = self._db.execute("SELECT value FROM address_salt").fetchone() if "address" in self._columns else None
            self._salt = salt[0] if salt else None
        except sqlite3.Error as exc:
            raise VoteStoreError(f"cannot open the votes database {self.path}: {exc}") from None

    def _connect(self, read_only: bool) -> sqlite3.Connection:
        if read_only:
            if not self.path.is_file():
                raise VoteStoreError(f"no votes database at {self.path}")
            db = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                                 isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a vote that was answered "recorded" survives a power cut
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        db.row_factory = sqlite3.Row
        return db

    def _create(self) -> None:
        """Tables, triggers and the version row in one transaction: two processes starting at once agree."""
        with self._lock:
            self._db.executescript(
                f"BEGIN IMMEDIATE; {_SCHEMA} INSERT INTO schema_version SELECT {SCHEMA_VERSION} "
                "WHERE NOT EXISTS (SELECT 1 FROM schema_version); COMMIT;")
            self._migrate()

    def _migrate(self) -> None:
        """Bring an older database up to SCHEMA_VERSION (adding columns only), and give it its address key."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
            if version is not None and version < SCHEMA_VERSION:
                present = {r[1] for r in db.execute("PRAGMA table_info(battles)")}
                for column, kind in _ADDED_COLUMNS.items():
                    if column not in present:
                        db.execute(f"ALTER TABLE battles ADD COLUMN {column} {kind}")
                db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            if db.execute("SELECT 1 FROM address_salt").fetchone() is None:
                db.execute("INSERT INTO address_salt VALUES (?)", (secrets.token_hex(32),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _check_version(self) -> None:
        row = self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        if row[0] is None or row[0] > SCHEMA_VERSION:
            raise VoteStoreError(f"the votes database {self.path} has schema version {row[0]}; this version of the "
                                 f"app reads version {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def address_digest(self, address: str | None) -> str | None:
        """What a battle stores for the client address it was issued to."""
        if self._salt is None:
            raise VoteStoreError(f"the votes database {self.path} is open read-only: it stores no addresses")
        return address_digest(address, self._salt)

    # --- writing ------------------------------------------------------------------------------------

    def add_battle(self, battle: Battle) -> None:
        entry = battle_entry(battle)
        with self._transaction("record this battle"):
            self._insert_battle(entry, "INSERT")
            self._journal({"kind": "battle", **entry})

    def _insert_battle(self, entry: dict[str, Any], verb: str) -> int:
        """Insert a battle_entry (`verb`: INSERT, or INSERT OR IGNORE when restoring); the rows added."""
        row = {key: entry.get(key) if key in _OPTIONAL_FIELDS else entry[key] for key in Battle.__dataclass_fields__}
        for key in _JSON_COLUMNS:
            row[key] = json.dumps(row[key], ensure_ascii=False, allow_nan=False)
        cursor = self._db.execute(f"{verb} INTO battles ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                                  tuple(row.values()))
        return cursor.rowcount

    def _journal(self, entry: dict[str, Any]) -> None:
        """Inside a write's transaction: a journal that cannot take the entry rolls the write back (and voids the
        entry itself); one that took it is told to void it if the transaction then fails."""
        if self.journal is not None:
            self._journaled += self.journal.append(entry)

    def vote(self, battle_id: str, choice: str, session: str) -> Battle:
        """Attach a vote to a battle issued to this session, once; returns the battle for the reveal."""
        if choice not in CHOICES:
            raise VoteRefused(f"choice must be one of {', '.join(CHOICES)}, got {str(choice)[:40]!r}")
        with self._transaction("record this vote"):
            row = self._db.execute("SELECT * FROM battles WHERE id = ?", (battle_id,)).fetchone()
            if row is None:
                raise VoteRefused("unknown battle id: this server issued no battle with that id "
                                  "(ask /battle for one, then vote on it)")
            if row["session"] != session_digest(session):
                raise VoteRefused("this battle was issued to another session: only the page or client that asked "
                                  "for it may vote on it")
            if self._db.execute("SELECT 1 FROM votes WHERE battle_id = ?", (battle_id,)).fetchone():
                raise VoteRefused("this battle already has a vote: each battle takes one vote, never changed")
            vote = {"battle_id": battle_id, "voted_at": now_iso(), "session": session_digest(session), "choice": choice}
            self._db.execute("INSERT INTO votes VALUES (?, ?, ?, ?)", tuple(vote.values()))
            self._journal({"kind": "vote", **vote})
        return _battle(row)

    # --- the journal ----------------------------------------------------------------------------------

    def restore(self, entries: Iterable[dict[str, Any]]) -> Restored:
        """Put a journal's battles and votes into the database, each once whatever is there already, and take
        its address key; one transaction. Voided entries are left out, wherever their void is (Journal.read has
        left them out already; entries gathered otherwise may still hold voids). The order of `entries` does not
        matter: segments are read in file-name order, which each process's clock decides, so every battle goes
        in before any vote (a vote read before its battle is no orphan), and votes in the order they were cast."""
        restored = Restored()
        entries, restored.voided = live(entries)
        battles, votes = [], []
        for entry in entries:
            kind = entry.get("kind")
            if kind == "battle":
                battles.append(entry)
            elif kind == "vote":
                votes.append(entry)
            elif kind == "salt" and isinstance(entry.get("value"), str):
                restored.salt = restored.salt or entry["value"]
            else:
                restored.unusable += 1
        votes.sort(key=lambda vote: str(vote.get("voted_at", "")))  # stable: votes cast at one instant keep their order
        with self._transaction("restore the votes journal"):
            for entry in battles:
                self._restore_one(self._restore_battle, entry, restored)
            for entry in votes:
                self._restore_one(self._restore_vote, entry, restored)
            if restored.salt is not None and restored.salt != self._salt:
                self._db.execute("DELETE FROM address_salt")
                self._db.execute("INSERT INTO address_salt VALUES (?)", (restored.salt,))
                restored.salt_replaced = self._salt is not None
        self._salt = restored.salt or self._salt
        return restored

    @staticmethod
    def _restore_one(restore, entry: dict[str, Any], restored: Restored) -> None:
        try:
            restore(entry, restored)
        except (KeyError, TypeError, ValueError, sqlite3.InterfaceError, sqlite3.ProgrammingError):
            restored.unusable += 1  # a missing field, or a value of a type that cannot be bound: that entry only

    def _restore_battle(self, entry: dict[str, Any], restored: Restored) -> None:
        restored.battles_added += self._insert_battle(entry, "INSERT OR IGNORE")
        restored.battle_ids.add(entry["id"])

    def _restore_vote(self, entry: dict[str, Any], restored: Restored) -> None:
        vote = tuple(entry[key] for key in ("battle_id", "voted_at", "session", "choice"))
        if not self._db.execute("SELECT 1 FROM battles WHERE id = ?", (vote[0],)).fetchone():
            restored.orphan_votes += 1
            return
        restored.votes_added += self._db.execute("INSERT OR IGNORE INTO votes VALUES (?, ?, ?, ?)", vote).rowcount
        restored.vote_ids.add(vote[0])

    def unjournaled(self, restored: Restored) -> list[dict[str, Any]]:
        """What the database holds and the journal (as `restore` read it) lacks, as journal entries in the order
        they were written: a database from before the journal, or one whose writes outran it."""
        missing: list[dict[str, Any]] = []
        if restored.salt is None and self._salt is not None:
            missing.append({"kind": "salt", "value": self._salt})
        with self._lock:
            battles = [r[0] for r in self._db.execute("SELECT id FROM battles ORDER BY rowid")]
            votes = self._db.execute("SELECT * FROM votes ORDER BY rowid").fetchall()
        for battle_id in battles:
            if battle_id not in restored.battle_ids:
                missing.append({"kind": "battle", **battle_entry(self.battle(battle_id))})
        missing += [{"kind": "vote", **dict(row)} for row in votes if row["battle_id"] not in restored.vote_ids]
        return missing

    def _transaction(self, action: str):
        """A write transaction; `action` ("record this vote") is what the visitor reads could not be done."""
        return _Transaction(self, action)

    # --- reading ------------------------------------------------------------------------------------

    def battle(self, battle_id: str) -> Battle | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM battles WHERE id = ?", (battle_id,)).fetchone()
        return _battle(row) if row else None

    def outcomes(self) -> list[Outcome]:
        """Every voted battle, in voting order."""
        with self._lock:
            address = "b.address" if "address" in self._columns else "NULL AS address"
            rows = self._db.execute(
                "SELECT b.id, b.base, b.baseline, b.variant_a, b.variant_b, v.choice, b.record_a, b.record_b, "
                f"b.session, {address}, b.prompt, v.voted_at "
                "FROM votes v JOIN battles b ON b.id = v.battle_id ORDER BY v.rowid").fetchall()
        return [Outcome(r["base"], r["baseline"], r["variant_a"], r["variant_b"], r["choice"],
                        json.loads(r["record_a"]).get("label", ""), json.loads(r["record_b"]).get("label", ""),
                        r["id"], r["session"], r["address"], r["prompt"], r["voted_at"])
                for r in rows]

    def vote_counts(self, base: str) -> dict[str, int]:
        """Votes so far per variant of one base (both sides counted)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT variant, COUNT(*) FROM (SELECT b.variant_a AS variant FROM votes v JOIN battles b "
                "ON b.id = v.battle_id WHERE b.base = ? UNION ALL SELECT b.variant_b FROM votes v JOIN battles b "
                "ON b.id = v.battle_id WHERE b.base = ?) GROUP BY variant", (base, base)).fetchall()
        return {r[0]: r[1] for r in rows}

    def vote_mark(self) -> tuple[int, int]:
        """(votes, the last vote's rowid): votes are append-only, so this changes exactly when a vote is added."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*), COALESCE(MAX(rowid), 0) FROM votes").fetchone()
        return int(row[0]), int(row[1])

    def counts(self) -> tuple[int, int]:
        """(battles issued, votes)."""
        with self._lock:
            battles = self._db.execute("SELECT COUNT(*) FROM battles").fetchone()[0]
            votes = self._db.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
        return battles, votes

    def export_rows(self) -> Iterator[dict[str, Any]]:
        """Every battle with its vote (None until voted), for analysis elsewhere; a vote's `looks_scripted` says
        why it is left out of the ratings (demo.blind.scripted), or is None."""
        voted = self.outcomes()
        flagged = {o.battle: reason for o, reason in zip(voted, scripted.reasons(voted))}
        with self._lock:
            rows = self._db.execute(
                "SELECT b.*, v.choice, v.voted_at, v.session AS vote_session FROM battles b "
                "LEFT JOIN votes v ON v.battle_id = b.id ORDER BY b.rowid").fetchall()
        for row in rows:
            record = asdict(_battle(row))
            vote = None if row["choice"] is None else {"choice": row["choice"], "voted_at": row["voted_at"],
                                                        "same_session": row["vote_session"] == row["session"],
                                                        "looks_scripted": flagged.get(row["id"])}
            yield {"schema": SCHEMA_VERSION, **record, "vote": vote}

    def export(self, out: str | os.PathLike) -> int:
        """Write export_rows() as JSON Lines; returns the number of battles written."""
        count = 0
        with open(out, "w", encoding="utf-8") as handle:
            for row in self.export_rows():
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        return count


class _Transaction:
    """BEGIN IMMEDIATE under the store's lock: a check and its insert see no other writer in between. When it does
    not commit, what it journaled is voided; a sqlite3.Error from BEGIN, the body or COMMIT becomes a
    VoteStoreError that names no path (a visitor reads it: the path and the reason go to the log)."""

    def __init__(self, store: VoteStore, action: str):
        self.store, self.action = store, action

    def __enter__(self):
        store = self.store
        store._lock.acquire()
        store._journaled = []
        try:
            store._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            store._lock.release()
            raise self._refused(exc) from None
        except BaseException:
            store._lock.release()
            raise
        return store._db

    def __exit__(self, kind, exc, trace):
        store, failure = self.store, exc
        try:
            if kind is None:
                try:
                    store._db.execute("COMMIT")
                except sqlite3.Error as commit_failed:
                    failure = commit_failed
            if kind is not None or failure is not None:
                self._roll_back()
                if store.journal is not None and store._journaled:
                    store.journal.void(store._journaled)  # the caller hears "failed": never restored
        finally:
            store._journaled = []
            store._lock.release()
        if isinstance(failure, sqlite3.Error):
            raise self._refused(failure) from None
        return False

    def _roll_back(self) -> None:
        """Undo what is left of the transaction (a failed statement or COMMIT may have ended it already)."""
        db = self.store._db
        if not db.in_transaction:
            return
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error as exc:  # the next BEGIN fails, and says so
            log.error("blind test: the votes database %s could not roll a failed write back: %s", self.store.path, exc)

    def _refused(self, exc: sqlite3.Error) -> VoteStoreError:
        log.error("blind test: the votes database %s could not %s: %s", self.store.path, self.action, exc)
        return VoteStoreError(f"the votes database could not {self.action} (the server logged why); try again")


def battle_entry(battle: Battle) -> dict[str, Any]:
    """A battle as the journal holds it: its fields, the JSON columns as objects with no NaN or infinity."""
    entry = asdict(battle)
    for key in _JSON_COLUMNS:
        entry[key] = finite_json(entry[key])
    return entry


def finite_json(value: Any) -> Any:
    """`value` with every NaN or infinite number stored as null (JSON has neither), and, in a mapping, which ones
    were under NONFINITE_KEY ({"fidelity.kl_divergence": "inf"}), so the stored record does not read as finite."""
    nulled: dict[str, str] = {}
    clean = _nulled(value, "", nulled)
    if nulled and isinstance(clean, dict):
        clean[NONFINITE_KEY] = nulled
    return clean


def _nulled(value: Any, path: str, nulled: dict[str, str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        nulled[path] = str(value)  # "nan", "inf", "-inf"
        return None
    if isinstance(value, dict):
        return {k: _nulled(v, f"{path}.{k}" if path else str(k), nulled) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nulled(v, f"{path}[{i}]", nulled) for i, v in enumerate(value)]
    return value


def _battle(row: sqlite3.Row) -> Battle:
    values = {key: row[key] for key in Battle.__dataclass_fields__ if key in row.keys()}
    for key in _JSON_COLUMNS:
        values[key] = json.loads(values[key])
    return Battle(**values)
