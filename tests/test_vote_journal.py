"""The votes journal on the persistent folder: torn and damaged lines, segments, restoring a lost database once
however often it is replayed and whatever the order of its segments, writes the caller was told failed never
coming back (voids), what a visitor reads when the database or the journal fails, and where the persistent
folder and the cache are. The app killed and its database deleted is in tests/test_blind.py
(test_votes_survive_the_app_being_killed_and_started_again)."""

import errno
import json
import math
import os
import sqlite3
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from demo.blind import journal as journal_module
from demo.blind import votes as votes_module
from demo.blind.durable import JOURNAL_FOLDER, LEGACY_FILE, open_store, storage_line
from demo.blind.journal import Journal, encode
from demo.blind.votes import VoteStore, session_digest
from demo.errors import VoteRefused, VoteStoreError
from tests.test_blind import battle


def entries(n: int, kind="vote") -> list[dict]:
    return [{"kind": kind, "battle_id": f"b{i}", "choice": "a"} for i in range(n)]


def test_a_torn_last_line_is_skipped_and_never_appended_to(tmp_path):
    journal = Journal(tmp_path / "j")
    journal.append(*entries(2))
    [segment] = journal.segments()
    with segment.open("ab") as handle:  # a crash in the middle of the next append
        handle.write(b'{"format": 1, "kind": "vote", "battle_id": "b2", "cho')
    read = Journal(tmp_path / "j").read()
    assert [e["battle_id"] for e in read.entries] == ["b0", "b1"] and read.torn == 1 and read.damaged == []
    assert all(e["format"] == journal_module.FORMAT for e in read.entries)
    again = Journal(tmp_path / "j")  # the next process: its own segment, after the torn one
    again.append({"kind": "vote", "battle_id": "b3"})
    assert len(again.segments()) == 2
    read = again.read()
    assert [e["battle_id"] for e in read.entries] == ["b0", "b1", "b3"] and read.torn == 1


def test_a_whole_line_without_its_newline_counts_and_damage_is_named(tmp_path):
    folder = tmp_path / "j"
    folder.mkdir()
    (folder / "1-a.jsonl").write_bytes(b'{"format": 1, "n": 1}\nnot json\n[1, 2]\n\n{"format": 1, "n": 2}')
    (folder / "2-b.jsonl").write_bytes(b'{"format": 1, "n": 3}\n\xff\xfe\n')
    read = Journal(folder).read()
    assert [e["n"] for e in read.entries] == [1, 2, 3]
    assert read.torn == 0 and read.damaged == ["1-a.jsonl:2", "1-a.jsonl:3", "2-b.jsonl:2"]
    (folder / "3-c.jsonl").write_bytes(b'{"format": 2, "n": 4}\n')
    with pytest.raises(VoteStoreError, match="format 2; this version of the app reads format 1"):
        Journal(folder).read()


def test_segments_roll_over_and_read_back_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "SEGMENT_MAX_BYTES", 200)
    journal = Journal(tmp_path / "j")
    for entry in entries(12):
        journal.append(entry)
    segments = journal.segments()
    assert len(segments) >= 4 and all(s.stat().st_size <= 200 for s in segments)
    assert [e["battle_id"] for e in journal.read().entries] == [f"b{i}" for i in range(12)]


def test_a_failed_write_is_refused_and_the_next_goes_to_a_new_segment(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "j")
    journal.append({"kind": "vote", "battle_id": "b0"})

    def failing_fsync(descriptor):
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(journal_module.os, "fsync", failing_fsync)
        with pytest.raises(VoteStoreError, match=r"the votes journal could not take this write \(the server logged"):
            journal.append({"kind": "vote", "battle_id": "b1"})
    journal.append({"kind": "vote", "battle_id": "b2"})
    assert len(journal.segments()) == 2  # b1 landed but was refused: cut back, and nothing appended after it
    assert [e["battle_id"] for e in journal.read().entries] == ["b0", "b2"]


def voted_store(path, journal=None) -> VoteStore:
    """Three battles from one address, two voted, one not."""
    store = VoteStore(path, journal=journal)
    for i in range(3):
        store.add_battle(replace(battle(f"b{i}", prompt=f"prompt {i}"), address=store.address_digest("10.0.0.1"),
                                 record_a={"variant": "s/fp32", "label": "fp32", "kl": float("inf")}))
    store.vote("b0", "a", "s1")
    store.vote("b2", "tie", "s1")
    return store


def test_restoring_a_journal_twice_counts_everything_once(tmp_path):
    journal = Journal(tmp_path / "j")
    original = voted_store(tmp_path / "votes.sqlite3", journal)
    with pytest.raises(VoteRefused):
        original.vote("b0", "b", "s1")  # refused: never journaled
    kinds = [e["kind"] for e in journal.read().entries]
    assert kinds == ["battle"] * 3 + ["vote"] * 2
    rebuilt = VoteStore(tmp_path / "rebuilt.sqlite3")
    first = rebuilt.restore(journal.read().entries)
    assert (first.battles_added, first.votes_added) == (3, 2)
    second = rebuilt.restore(journal.read().entries)
    assert (second.battles_added, second.votes_added) == (0, 0)
    assert rebuilt.counts() == (3, 2) == original.counts()
    unsalted = list(rebuilt.export_rows())
    assert [r["id"] for r in unsalted] == ["b0", "b1", "b2"]
    for row, before in zip(unsalted, original.export_rows()):
        assert row == before  # prompt, answers, records (with the infinity marked), digests, votes, times
    assert rebuilt.unjournaled(second) == [{"kind": "salt", "value": rebuilt._salt}]  # the journal had no key


def test_a_journal_that_cannot_take_the_vote_rolls_it_back(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "j")
    store = voted_store(tmp_path / "votes.sqlite3", journal)
    monkeypatch.setattr(journal, "append", lambda *e: (_ for _ in ()).throw(VoteStoreError("bucket gone")))
    with pytest.raises(VoteStoreError, match="bucket gone"):
        store.vote("b1", "b", "s1")
    assert store.counts() == (3, 2)  # not recorded, so the voter may try again
    monkeypatch.undo()
    store.vote("b1", "b", "s1")
    assert store.counts() == (3, 3) and len(journal.read().entries) == 6


def test_open_store_journals_an_older_database_then_rebuilds_it_when_lost(tmp_path):
    data, db = tmp_path / "data", tmp_path / "local" / "votes.sqlite3"
    before = list(voted_store(db).export_rows())  # votes from before the journal
    store = open_store(db, data)
    assert [e["kind"] for e in store.journal.read().entries] == ["salt"] + ["battle"] * 3 + ["vote"] * 2
    store.add_battle(replace(battle("b3"), address=store.address_digest("10.0.0.1")))
    store.vote("b3", "b", "s1")
    store.close()
    for suffix in ("", "-wal", "-shm"):  # the local disk is lost
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    segment = sorted((data / JOURNAL_FOLDER).glob("*.jsonl"))[-1]
    with segment.open("ab") as handle:
        handle.write(b'{"format": 1, "kind": "vote", "battle_id": "b1", "choice"')  # a vote never acknowledged
    for _ in range(2):  # restarted twice over the same journal: nothing counted twice, nothing re-journaled
        store = open_store(db, data)
        rows = list(store.export_rows())
        assert rows[:3] == before
        assert rows[3]["vote"]["choice"] == "b" and rows[3]["address"] == before[0]["address"]  # same key
        assert store.counts() == (4, 3) and len(store.journal.read().entries) == 8
        assert storage_line(store) == (f"Votes are kept in `{db}` and journaled to `{data / JOURNAL_FOLDER}`, "
                                       "which survives a restart.")
        store.close()


def test_a_database_an_older_version_kept_on_the_persistent_folder_is_copied_then_journaled(tmp_path):
    data, db = tmp_path / "data", tmp_path / "local" / "votes.sqlite3"
    legacy = voted_store(data / LEGACY_FILE)
    before = list(legacy.export_rows())
    legacy.close()
    store = open_store(db, data)
    assert list(store.export_rows()) == before and db.is_file()
    assert sum(e["kind"] == "vote" for e in store.journal.read().entries) == 2
    assert not list(db.parent.glob(".*partial"))


def test_without_a_persistent_folder_the_store_is_plain(tmp_path, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("ARENA_DATA_DIR", raising=False)
    store = open_store(tmp_path / "votes.sqlite3")
    assert store.journal is None and storage_line(store) == f"Votes are kept in `{tmp_path / 'votes.sqlite3'}`."
    monkeypatch.setenv("SPACE_ID", "org/arena")
    monkeypatch.setattr("demo.artifacts.persistent.SPACE_DATA", tmp_path / "no-bucket")
    assert "a restart loses them" in storage_line(store)


def test_the_persistent_folder_holds_the_cache_and_the_journal_never_the_database(tmp_path, monkeypatch):
    from demo.artifacts import cache
    from demo.artifacts.persistent import persistent_dir
    from demo.blind.votes import votes_path
    from demo.config import load_config
    from tests.conftest import REPO

    config = load_config(REPO / "models.yaml")
    monkeypatch.delenv("ARENA_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    local = tmp_path / "home" / ".cache" / "quantization-arena"
    assert persistent_dir() is None and cache.cache_dir() == local == cache.local_dir()
    monkeypatch.setattr("demo.artifacts.persistent.SPACE_DATA", tmp_path / "bucket")
    monkeypatch.setenv("SPACE_ID", "org/arena")
    assert persistent_dir() is None  # a Space with no bucket mounted
    (tmp_path / "bucket").mkdir()
    assert persistent_dir() == tmp_path / "bucket" and cache.cache_dir() == tmp_path / "bucket" / "cache"
    assert votes_path(config) == local / "votes.sqlite3"  # SQLite stays on the local disk
    monkeypatch.setenv("ARENA_DATA_DIR", str(tmp_path / "elsewhere"))
    assert persistent_dir() == tmp_path / "elsewhere" and cache.cache_dir() == tmp_path / "elsewhere" / "cache"
    monkeypatch.setenv("ARENA_CACHE_DIR", str(tmp_path / "named"))
    assert cache.cache_dir() == tmp_path / "named" == cache.local_dir()  # a named cache is kept where named


def test_journal_lines_are_json_objects_one_per_write(tmp_path):
    journal = Journal(tmp_path / "j")
    voted_store(tmp_path / "votes.sqlite3", journal)
    [segment] = journal.segments()
    lines = segment.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5 and all(isinstance(json.loads(line), dict) for line in lines)
    battle_line = json.loads(lines[0])
    assert battle_line["record_a"]["kl"] is None
    assert battle_line["record_a"]["nonfinite_stored_as_null"] == {"kl": "inf"}
    assert sqlite3.connect(tmp_path / "votes.sqlite3").execute("SELECT COUNT(*) FROM votes").fetchone() == (2,)


# --- a write the caller was told failed never comes back -----------------------------------------------------


def fsync_failing(times: float):
    """os.fsync failing with EIO for the next `times` segment files (regular files; folders still sync), as a
    bucket that took the bytes but could not make them durable."""
    real, left = os.fsync, [times]

    def fsync(descriptor):
        if left[0] > 0 and stat.S_ISREG(os.fstat(descriptor).st_mode):
            left[0] -= 1
            raise OSError(errno.EIO, "Input/output error")
        real(descriptor)

    return fsync


def truncate_failing(path, length):
    raise OSError(errno.EOPNOTSUPP, "Operation not supported")


class CommitFails:
    """A connection whose COMMIT fails, as a full or failing local disk makes it; all else passes through."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def execute(self, sql, *args):
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


def restarted(store: VoteStore, db: Path, data: Path) -> VoteStore:
    """The app stopped, its local disk lost, and started again over the same persistent folder."""
    store.close()
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    return open_store(db, data)


def raw_entries(folder: Path) -> list[dict]:
    """Every whole line of every segment, voids and voided entries included."""
    return [json.loads(line) for segment in sorted(folder.glob("*.jsonl"))
            for line in segment.read_bytes().splitlines() if line.strip()]


@pytest.mark.parametrize("truncate", ["works", "fails"])
def test_a_vote_refused_after_its_journal_line_landed_never_comes_back(tmp_path, monkeypatch, truncate):
    data, db = tmp_path / "data", tmp_path / "local" / "votes.sqlite3"
    store = open_store(db, data)
    store.add_battle(battle("b0"))
    with monkeypatch.context() as patch:
        patch.setattr(journal_module.os, "fsync", fsync_failing(1))  # the line is written, its fsync fails
        if truncate == "fails":  # object storage that cannot cut a file back: only the void keeps it out
            patch.setattr(journal_module.os, "truncate", truncate_failing)
        with pytest.raises(VoteStoreError):
            store.vote("b0", "a", "s1")
    assert store.counts() == (1, 0)
    journaled = raw_entries(data / JOURNAL_FOLDER)
    assert sum(e["kind"] == "vote" for e in journaled) == (1 if truncate == "fails" else 0)
    assert sum(e["kind"] == "void" for e in journaled) == 1
    store.vote("b0", "b", "s1")  # told it failed, the voter votes again: recorded
    store = restarted(store, db, data)
    assert [o.choice for o in store.outcomes()] == ["b"]  # the refused "a" is not back, the recorded "b" is
    store.close()


def test_a_vote_whose_commit_failed_never_comes_back(tmp_path):
    data, db = tmp_path / "data", tmp_path / "local" / "votes.sqlite3"
    store = open_store(db, data)
    store.add_battle(battle("b0"))
    real, store._db = store._db, CommitFails(store._db)
    with pytest.raises(VoteStoreError, match="could not record this vote"):
        store.vote("b0", "a", "s1")  # journaled, then the database could not commit it
    store._db = real
    assert store.counts() == (1, 0)
    store.vote("b0", "b", "s1")
    assert [e["kind"] for e in raw_entries(data / JOURNAL_FOLDER)][-3:] == ["vote", "void", "vote"]
    store = restarted(store, db, data)
    assert [o.choice for o in store.outcomes()] == ["b"]
    store.close()


def test_a_journal_that_cannot_void_a_refused_write_refuses_writes_until_it_can(tmp_path, monkeypatch, caplog):
    data, db = tmp_path / "data", tmp_path / "local" / "votes.sqlite3"
    store = open_store(db, data)
    store.add_battle(battle("b0"))
    store.add_battle(battle("b1"))
    with monkeypatch.context() as patch:
        patch.setattr(journal_module.os, "fsync", fsync_failing(math.inf))  # the bucket fails, and stays failing
        patch.setattr(journal_module.os, "truncate", truncate_failing)
        with pytest.raises(VoteStoreError):
            store.vote("b0", "a", "s1")  # its line stays and its void cannot be written
        before = raw_entries(data / JOURNAL_FOLDER)
        with pytest.raises(VoteStoreError, match="refusing writes"):
            store.vote("b1", "a", "s1")  # "recorded" would let the refused vote on b0 come back: refused
        assert not [e for e in raw_entries(data / JOURNAL_FOLDER) if e not in before and e["kind"] != "void"]
    assert "could not void" in caplog.text and str(data / JOURNAL_FOLDER) in caplog.text
    assert store.counts() == (2, 0)
    store.vote("b0", "b", "s1")  # the bucket is back: the void first, then the vote
    store = restarted(store, db, data)
    assert {o.battle: o.choice for o in store.outcomes()} == {"b0": "b"}
    store.close()


def test_voids_count_wherever_they_are_and_entries_without_an_id_still_restore(tmp_path):
    folder = tmp_path / "j"
    folder.mkdir()
    old = {"kind": "battle", **votes_module.battle_entry(battle("b0"))}  # written before entries had ids
    voted = {"battle_id": "b0", "voted_at": "2025-01-01T00:00:00.000+00:00", "session": session_digest("s1")}
    (folder / "0-later-process.jsonl").write_bytes(encode({"entry": "v", "kind": "void", "entries": ["refused"]}))
    (folder / "1-first-process.jsonl").write_bytes(
        encode(old) + encode({"entry": "refused", "kind": "vote", **voted, "choice": "a"})
        + encode({"entry": "recorded", "kind": "vote", **voted, "choice": "b"}))
    read = Journal(folder).read()
    assert [e.get("entry") for e in read.entries] == [None, "recorded"] and read.voided == 1
    for given in (read.entries, raw_entries(folder)):  # restore honours voids in what it is given, too
        store = VoteStore(tmp_path / f"votes-{len(given)}.sqlite3")
        restored = store.restore(given)
        assert (restored.battles_added, restored.votes_added, restored.unusable) == (1, 1, 0)
        assert [o.choice for o in store.outcomes()] == ["b"]
        store.close()


def test_every_entry_has_an_id_of_its_own(tmp_path):
    journal = Journal(tmp_path / "j")
    ids = journal.append(*entries(3))
    read = journal.read().entries
    assert [e["entry"] for e in read] == ids and len(set(ids)) == 3
    assert journal.append({"kind": "vote", "entry": "given"}) == ["given"]


# --- restoring does not depend on the order of the segments --------------------------------------------------


def test_restore_puts_every_battle_before_any_vote_whatever_the_segment_order(tmp_path):
    journal = Journal(tmp_path / "j")
    original = voted_store(tmp_path / "votes.sqlite3", journal)
    written = journal.read().entries
    battles = [e for e in written if e["kind"] == "battle"]
    votes = [{**e, "voted_at": f"2025-01-01T00:00:0{i}.000+00:00"} for i, e in enumerate(written)
             if e["kind"] == "vote"]
    # another process, its clock behind, wrote the votes: its segment's name sorts before the battles'
    folder = tmp_path / "skewed"
    folder.mkdir()
    (folder / "20000101T000000.000000Z-2-aaaa.jsonl").write_bytes(b"".join(encode(e) for e in reversed(votes)))
    (folder / "20990101T000000.000000Z-1-bbbb.jsonl").write_bytes(b"".join(encode(e) for e in battles))
    rebuilt = VoteStore(tmp_path / "rebuilt.sqlite3")
    restored = rebuilt.restore(Journal(folder).read().entries)
    assert (restored.battles_added, restored.votes_added, restored.orphan_votes) == (3, 2, 0)
    assert [(o.battle, o.choice) for o in rebuilt.outcomes()] == [("b0", "a"), ("b2", "tie")]  # voting order
    assert rebuilt.counts() == original.counts()


# --- the journal folder's own name is durable -----------------------------------------------------------------


def test_a_new_journal_folder_is_made_durable_in_its_parent(tmp_path, monkeypatch):
    synced = []
    real = journal_module._fsync_folder
    monkeypatch.setattr(journal_module, "_fsync_folder", lambda folder: (synced.append(Path(folder)), real(folder)))
    journal = Journal(tmp_path / "data" / "votes-journal")
    journal.append({"kind": "vote", "battle_id": "b0"})
    # each folder made, in its parent, then the segment in the journal's folder
    assert synced == [tmp_path, tmp_path / "data", tmp_path / "data" / "votes-journal"]
    monkeypatch.setattr(journal_module, "SEGMENT_MAX_BYTES", 1)
    synced.clear()
    journal.append({"kind": "vote", "battle_id": "b1"})  # a new segment in a folder that was there
    assert synced == [tmp_path / "data" / "votes-journal"]


# --- what a visitor reads when the database or the journal fails ----------------------------------------------


def test_a_database_locked_by_another_process_is_a_clear_error_for_the_visitor(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(votes_module, "BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "votes.sqlite3"
    store = VoteStore(path)
    store.add_battle(battle("b0"))
    other = sqlite3.connect(path, isolation_level=None)  # the CLI or a second worker, holding the write lock
    other.execute("BEGIN IMMEDIATE")
    visitor_message = r"the votes database could not record this vote \(the server logged why\); try again"
    with pytest.raises(VoteStoreError, match=visitor_message) as refused:
        store.vote("b0", "a", "s1")
    with pytest.raises(VoteStoreError, match="could not record this battle"):
        store.add_battle(battle("b1"))
    assert str(tmp_path) not in str(refused.value)
    assert "database is locked" in caplog.text and str(path) in caplog.text
    other.execute("ROLLBACK")
    other.close()
    store.vote("b0", "a", "s1")  # the lock was let go: the store goes on
    assert store.counts() == (1, 1)


def test_what_a_visitor_reads_names_no_path_and_the_log_does(tmp_path, monkeypatch, caplog):
    data, db = tmp_path / "data", tmp_path / "local" / "votes.sqlite3"
    store = open_store(db, data)
    with monkeypatch.context() as patch:
        patch.setattr(journal_module.os, "fsync", fsync_failing(1))
        with pytest.raises(VoteStoreError) as journal_failed:
            store.add_battle(battle("b0"))
    real, store._db = store._db, CommitFails(store._db)
    with pytest.raises(VoteStoreError) as commit_failed:
        store.add_battle(battle("b1"))
    store._db = real
    for refused in (journal_failed, commit_failed):
        assert str(tmp_path) not in str(refused.value) and "(the server logged why); try again" in str(refused.value)
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(str(data / JOURNAL_FOLDER) in m and "Input/output error" in m for m in logged)
    assert any(str(db) in m and "disk I/O error" in m for m in logged)
    assert store.counts() == (0, 0)
