"""The blind test cannot be de-anonymised or steered: battles are sampled with a secret per-battle seed, the
rate limits hold per client address as well as per session, scripted-looking votes are flagged and left out of
the ratings, and a database from before these columns still opens."""

import sqlite3
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from demo.blind import scripted
from demo.blind.ratings import summarize
from demo.blind.votes import SCHEMA_VERSION, Outcome, VoteStore, session_digest
from demo.config import load_config
from demo.errors import RateLimited, VoteRefused
from tests.test_blind import BLIND, battle, models_file

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def at(minutes: float) -> str:
    return (START + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


def vote(n: int, address: str | None, session: str, prompt: str, minutes: float, choice: str = "a") -> Outcome:
    return Outcome("s", "s/fp32", "s/fp32", "s/bf16", choice, battle=f"b{n}", session=session, address=address,
                   prompt=prompt, voted_at=at(minutes))


# ---- flagging, on hand-built votes ----

def hand_built() -> tuple[list[Outcome], set[str]]:
    """Votes with the ids that must be flagged, worked out by hand against the rules' constants."""
    many = scripted.MAX_SESSIONS_PER_ADDRESS + 1
    votes = [vote(i, "x", f"x{i}", f"question {i}", 5 * i) for i in range(many)]  # 5 sessions in 20 min
    votes += [vote(10 + i, "y", f"y{i}", f"question {i}", 70 * i) for i in range(many)]  # 70 min apart: fine
    repeats = scripted.MAX_SAME_PROMPT_PER_ADDRESS + 1
    votes += [vote(20 + i, "z", "z", " Same Question ", 10 * i) for i in range(repeats)]  # 4 times in 30 min
    votes += [vote(30, "z", "z", "another question", 15)]  # z's other prompt is not flagged
    votes += [vote(40 + i, "w", "w", "same again", 61 * i) for i in range(repeats)]  # over 3 hours: fine
    votes += [vote(50 + i, None, f"n{i}", "same again", i) for i in range(many)]  # address unknown: never
    flagged = {f"b{i}" for i in range(many)} | {f"b{20 + i}" for i in range(repeats)}
    return votes, flagged


def test_scripted_votes_are_flagged_by_hand_worked_rules():
    votes, expected = hand_built()
    found = scripted.reasons(votes)
    assert {v.battle for v, reason in zip(votes, found) if reason} == expected
    reasons = dict(zip([v.battle for v in votes], found))
    assert reasons["b0"].startswith("5 sessions voted from this address")
    assert reasons["b20"].startswith("the same prompt voted on 4 times")
    assert scripted.reasons(list(reversed(votes))) == list(reversed(found))  # order of arrival does not matter


def test_flagged_votes_are_counted_apart_and_left_out_of_the_ratings():
    votes, expected = hand_built()
    votes = [replace(v, choice="b") if v.battle in expected else v for v in votes]
    shown = summarize(votes)
    kept = [v for v in votes if v.battle not in expected]
    assert shown["votes"] == len(kept) and shown["flagged_votes"] == len(expected)
    row = next(r for r in shown["variants"] if r["variant"] == "s/bf16")
    # every kept vote says "a" (the baseline, s/fp32): the flagged "b" votes for bf16 would show if counted
    assert row["counts"]["baseline_preferred"] == len(kept) and row["counts"]["preferred"] == 0
    assert row["flagged"] == len(expected)


def test_export_says_which_votes_look_scripted(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite3")
    address = store.address_digest("198.51.100.4")
    for i in range(scripted.MAX_SESSIONS_PER_ADDRESS + 1):
        store.add_battle(replace(battle(f"b{i}", session=f"s{i}", prompt=f"q{i}"), address=address))
        store.vote(f"b{i}", "a", f"s{i}")
    store.add_battle(battle("lone", session="t", prompt="q"))
    store.vote("lone", "b", "t")
    rows = {r["id"]: r for r in store.export_rows()}
    assert rows["b0"]["vote"]["looks_scripted"].startswith("5 sessions") and rows["b0"]["address"] == address
    assert rows["lone"]["vote"]["looks_scripted"] is None
    assert "198.51.100.4" not in (tmp_path / "votes.sqlite3").read_bytes().decode("latin-1")


# ---- the address rate limit ----

def test_sessions_from_one_address_share_its_limit(tmp_path):
    from demo.blind.battle import BlindTest

    config = load_config(models_file(tmp_path, {**BLIND, "votes_per_minute": 2}))
    blind = BlindTest(SimpleNamespace(config=config), VoteStore(tmp_path / "v.sqlite3"), clock=lambda: 0.0)
    for session in ("s1", "s2"):  # refused votes count: no model needed to spend the allowance
        with pytest.raises(VoteRefused):
            blind.vote("forged", "a", session, "203.0.113.7")
    with pytest.raises(RateLimited, match="at most 2 a minute per address"):
        blind.vote("forged", "a", "s3", "203.0.113.7")  # a fresh session from the same address
    with pytest.raises(VoteRefused):
        blind.vote("forged", "a", "s3", "203.0.113.8")  # another address is not held back
    with pytest.raises(VoteRefused):
        blind.vote("forged", "a", "s4", None)  # an unknown address: the per-session limit alone


# ---- an old database ----

VERSION_1 = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1);
CREATE TABLE battles (id TEXT PRIMARY KEY, issued_at TEXT NOT NULL, session TEXT NOT NULL, base TEXT NOT NULL,
    baseline TEXT NOT NULL, variant_a TEXT NOT NULL, variant_b TEXT NOT NULL, prompt TEXT NOT NULL,
    settings TEXT NOT NULL, answer_a TEXT NOT NULL, answer_b TEXT NOT NULL, record_a TEXT NOT NULL,
    record_b TEXT NOT NULL, environment TEXT NOT NULL);
CREATE TABLE votes (battle_id TEXT PRIMARY KEY REFERENCES battles(id), voted_at TEXT NOT NULL,
    session TEXT NOT NULL, choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')));
INSERT INTO battles VALUES ('old', '2025-01-01T00:00:00.000+00:00', '{session}', 's', 's/fp32', 's/fp32', 's/bf16',
    'hi', '{{"decoding": "greedy"}}', 'x', 'y', '{{"label": "fp32"}}', '{{"label": "bf16"}}', '{{}}');
INSERT INTO votes VALUES ('old', '2025-01-01T00:00:01.000+00:00', '{session}', 'b');
"""


def test_a_version_1_database_still_opens_and_is_migrated(tmp_path):
    path = tmp_path / "votes.sqlite3"
    raw = sqlite3.connect(path)
    raw.executescript(VERSION_1.format(session=session_digest("s1")))
    raw.close()
    before = list(VoteStore(path, read_only=True).export_rows())  # read as it is, not migrated
    assert before[0]["seed"] is None and before[0]["address"] is None and before[0]["vote"]["choice"] == "b"
    assert summarize(VoteStore(path, read_only=True).outcomes())["votes"] == 1
    store = VoteStore(path)
    assert [r["seed"] for r in store.export_rows()] == [None]
    store.add_battle(replace(battle("new"), seed=7, address=store.address_digest("192.0.2.1")))
    store.vote("new", "a", "s1")
    rows = {r["id"]: r for r in store.export_rows()}
    assert rows["new"]["seed"] == 7 and rows["old"]["vote"]["choice"] == "b" and len(rows["new"]["address"]) == 64
    store.close()
    again = sqlite3.connect(path)
    assert again.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        again.execute("UPDATE battles SET seed = 1")  # append-only after the migration too
    again.close()


# ---- battles on the real model: sampled with a secret seed ----

def test_repeated_prompt_gives_different_baseline_answers_none_greedy(arena, tmp_path):
    """The issue's test: two battles on one open-ended prompt give different baseline answers, and neither is the
    greedy answer /compare gives; the seed is stored, exported and revealed, never in /battle's answer. Two
    sessions from one address use up its battle allowance: a third session from it is refused."""
    from demo.blind.battle import BlindTest
    from demo.running.runner import Arena
    from demo.ui.blind import reveal_markdown

    config = load_config(models_file(tmp_path, {**BLIND, "max_new_tokens": 24, "battles_per_minute": 2}))
    local = Arena(config, manager=arena.manager, device=arena.device)
    # the limits' clock stands still: on a loaded machine two battles can take longer than the one-minute window
    blind = BlindTest(local, VoteStore(tmp_path / "v.sqlite3"), clock=lambda: 1000.0)
    prompt, address = "Write a sentence about autumn.", "203.0.113.7"
    greedy = local.compare_records(prompt, ["smollm2/fp32"], local.settings(max_new_tokens=24))[0]["text"]
    issued = [blind.battle(prompt, None, session, address) for session in ("s1", "s2")]
    with pytest.raises(RateLimited, match="per address"):
        blind.battle(prompt, None, "s3", address)
    stored = [blind.store.battle(i["battle"]) for i in issued]
    baseline = [b.answer_a if b.variant_a == b.baseline else b.answer_b for b in stored]
    assert baseline[0] != baseline[1] and greedy not in baseline
    assert all(set(i) == {"battle", "a", "b"} for i in issued)  # nothing else before the vote: no seed
    assert stored[0].seed != stored[1].seed and stored[0].address == blind.store.address_digest(address)
    shown = blind.vote(issued[0]["battle"], "tie", "s1", address)
    assert shown["seed"] == stored[0].seed == shown["settings"]["seed"]
    assert f"seed={stored[0].seed}" in reveal_markdown(shown)
    exported = {r["id"]: r for r in blind.store.export_rows()}
    assert exported[issued[0]["battle"]]["seed"] == stored[0].seed
