"""The blind test: statistics against hand-checked values, the votes database, honest votes, and the app's
/battle and /vote under concurrent users and across a restart."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from demo.config import load_config
from demo.errors import ConfigError, InvalidRequest, RateLimited, VariantUnavailable, VoteRefused, VoteStoreError
from demo.blind.ratelimit import SessionRateLimit
from demo.blind.ratings import bradley_terry, rate_intervals, rates, side_outcome, summarize
from demo.blind.votes import SCHEMA_VERSION, Battle, Outcome, VoteStore, now_iso, session_digest
from tests.conftest import REPO, free_port

BLIND = {"max_new_tokens": 4, "variants": ["smollm2/bf16"], "battles_per_minute": 100, "votes_per_minute": 100}
BROKEN = {"id": "smollm2/bf16-cuda", "base": "smollm2", "method": "bf16", "device": "cuda"}  # fails on a CPU


def models_file(tmp_path, blind: dict | str = BLIND, variants: tuple[dict, ...] = ()) -> Path:
    """The shipped models file with another blind block (a dict, or raw YAML text) and extra variants."""
    data = yaml.safe_load((REPO / "models.yaml").read_text())
    data["blind"] = yaml.safe_load(blind) if isinstance(blind, str) else blind
    data["variants"] += list(variants)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---- statistics: hand-checked ----

def test_bradley_terry_two_players_is_the_odds_ratio():
    # Two players: the likelihood p/(p+q) per point is maximized where p/(p+q) = points / games, so
    # p/q = W / L and the rating is 400 * log10(W / L). 3 wins, 1 loss, 2 ties (half each): W = 4, L = 2,
    # 400 * log10(2) = 120.41. With the one virtual tie: W = 4.5, L = 2.5, 400 * log10(1.8) = 102.11.
    games = [("q", "base", 1.0)] * 3 + [("q", "base", 0.0)] + [("q", "base", 0.5)] * 2
    assert bradley_terry(games, "base", virtual_ties=0) == pytest.approx({"base": 0.0, "q": 120.412}, abs=1e-3)
    assert bradley_terry(games, "base") == pytest.approx({"base": 0.0, "q": 102.109}, abs=1e-3)


def test_bradley_terry_on_a_tree_and_a_cycle():
    # A tree of pairs (C-B-A) fits each edge on its own: B beat A 2-1, so B = 400 log10 2 = 120.41; C and B
    # split 1-1, so C = B.
    tree = [("B", "A", 1.0), ("B", "A", 1.0), ("A", "B", 1.0), ("C", "B", 1.0), ("B", "C", 1.0)]
    assert bradley_terry(tree, "A", virtual_ties=0) == pytest.approx({"A": 0, "B": 120.412, "C": 120.412}, abs=1e-3)
    # A balanced cycle (B beats A 2-1, C beats B 2-1, A beats C 2-1): by symmetry everyone is equal.
    cycle = [("B", "A", 1.0)] * 2 + [("A", "B", 1.0)] + [("C", "B", 1.0)] * 2 + [("B", "C", 1.0)] \
        + [("A", "C", 1.0)] * 2 + [("C", "A", 1.0)]
    assert bradley_terry(cycle, "A", virtual_ties=0) == pytest.approx({"A": 0, "B": 0, "C": 0}, abs=1e-6)


def test_bradley_terry_meets_its_score_equations():
    # At the maximum every player's expected points equal its actual points: sum_j n_ij p_i / (p_i + p_j) = W_i.
    games = [("B", "A", 1.0)] * 3 + [("A", "B", 1.0)] + [("C", "A", 0.5)] * 2 + [("C", "A", 0.0)] \
        + [("C", "B", 1.0)] + [("B", "C", 1.0)] * 3
    fitted = bradley_terry(games, "A", virtual_ties=0)
    strength = {p: 10 ** (r / 400) for p, r in fitted.items()}
    for player in "ABC":
        points = sum(s if i == player else 1 - s for i, j, s in games if player in (i, j))
        expected = sum(strength[player] / (strength[i] + strength[j]) for i, j, _ in games if player in (i, j))
        assert expected == pytest.approx(points, abs=1e-6)


def test_wilson_rate_intervals_hand_checked():
    # Wilson score intervals, z = 1.96: centre (p + z^2/2n) / (1 + z^2/n), half-width
    # z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2). Two votes, one each way: 0.5 +- 0.4055 = [0.0945, 0.9055].
    assert rate_intervals(["preferred", "baseline_preferred"])["preferred"] == pytest.approx((0.0945, 0.9055), abs=1e-4)
    # Three preferred, one baseline: centre 0.6276, half-width 0.3269: [0.3006, 0.9544].
    assert rate_intervals(["preferred"] * 3 + ["baseline_preferred"])["preferred"] == pytest.approx(
        (0.3006, 0.9544), abs=1e-4)
    # 100 votes half and half: 0.5 +- 0.0962 (close to the normal approximation's 0.098): [0.4038, 0.5962].
    low, high = rate_intervals(["tie"] * 50 + ["baseline_preferred"] * 50)["tied"]
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    # Closed-form: the same votes give the same intervals; tied and indistinguishable count their parts.
    votes = ["preferred", "tie", "both_bad", "baseline_preferred"] * 5
    assert rate_intervals(votes) == rate_intervals(votes)
    three_in_four = ["preferred"] * 15 + ["baseline_preferred"] * 5
    assert rate_intervals(votes)["indistinguishable"] == rate_intervals(three_in_four)["preferred"]


def test_outcomes_are_read_from_the_quantized_side():
    baseline_on_b = Outcome("s", "s/fp32", "s/bf16", "s/fp32", "b")
    assert side_outcome(baseline_on_b) == ("s/bf16", "baseline_preferred")
    assert side_outcome(Outcome("s", "s/fp32", "s/fp32", "s/bf16", "b")) == ("s/bf16", "preferred")
    assert side_outcome(Outcome("s", "s/fp32", "s/fp32", "s/bf16", "both_bad")) == ("s/bf16", "both_bad")
    # preferred 1/4, tie + both bad 2/4, baseline 1/4; indistinguishable 3/4
    assert rates(["preferred", "tie", "both_bad", "baseline_preferred"]) == {
        "preferred": 0.25, "tied": 0.5, "baseline_preferred": 0.25, "indistinguishable": 0.75}


def test_summary_per_variant_and_rating():
    # bf16: on side a twice (preferred, tie), on side b once (baseline preferred); nf4: one both-bad.
    outcomes = [Outcome("s", "s/fp32", "s/bf16", "s/fp32", "a", "bf16", "fp32"),
                Outcome("s", "s/fp32", "s/bf16", "s/fp32", "tie", "bf16", "fp32"),
                Outcome("s", "s/fp32", "s/fp32", "s/bf16", "a", "fp32", "bf16"),
                Outcome("s", "s/fp32", "s/nf4", "s/fp32", "both_bad", "nf4", "fp32")]
    summary = summarize(outcomes)
    assert summary["votes"] == 4
    rows = {r["variant"]: r for r in summary["variants"]}
    assert rows["s/fp32"]["role"] == "baseline" and rows["s/fp32"]["rating"] == 0.0
    bf16 = rows["s/bf16"]
    assert bf16["votes"] == 3 and bf16["label"] == "bf16"
    assert bf16["counts"] == {"preferred": 1, "tie": 1, "both_bad": 0, "baseline_preferred": 1}
    assert bf16["rates"]["indistinguishable"] == pytest.approx(2 / 3, abs=1e-4)
    # W = 1 + 0.5 + 0.5 (virtual) = 2, L = 1 + 0.5 + 0.5 = 2: rating 0. nf4: a tie and a virtual tie: 0.
    assert bf16["rating"] == 0.0 and rows["s/nf4"]["rating"] == 0.0
    low, high = bf16["rating_interval"]
    assert low < 0 < high
    for key, (lo, hi) in bf16["intervals"].items():
        assert lo <= bf16["rates"][key] <= hi, key


# ---- the database ----

def battle(battle_id="b1", session="s1", a="s/fp32", b="s/bf16", prompt="hi", base="s") -> Battle:
    baseline = f"{base}/fp32"
    return Battle(battle_id, now_iso(), session_digest(session), base, baseline, a, b, prompt, {"decoding": "greedy"},
                  f"answer from {a}", f"answer from {b}", {"variant": a, "label": a}, {"variant": b, "label": b},
                  {"device_name": "cpu"})


def test_votes_forged_replayed_and_cross_session_are_refused(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite3")
    store.add_battle(battle())
    with pytest.raises(VoteRefused, match="unknown battle id"):
        store.vote("not-a-battle", "a", "s1")
    with pytest.raises(VoteRefused, match="issued to another session"):
        store.vote("b1", "a", "s2")
    with pytest.raises(VoteRefused, match="choice must be one of a, b, tie, both_bad"):
        store.vote("b1", "best", "s1")
    assert store.vote("b1", "tie", "s1").id == "b1"
    with pytest.raises(VoteRefused, match="already has a vote"):
        store.vote("b1", "a", "s1")
    assert [o.choice for o in store.outcomes()] == ["tie"]


def test_database_is_append_only_versioned_and_survives_reopening(tmp_path):
    path = tmp_path / "votes.sqlite3"
    store = VoteStore(path)
    for i in range(3):
        store.add_battle(battle(f"b{i}", prompt=f"prompt {i}"))
        store.vote(f"b{i}", "ab"[i % 2], "s1")
    store.add_battle(battle("unvoted"))
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    for statement in ("UPDATE votes SET choice = 'a'", "DELETE FROM votes", "UPDATE battles SET prompt = 'x'",
                      "DELETE FROM battles"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute(statement)
    raw.close()
    exported = list(store.export_rows())
    store.close()
    again = VoteStore(path)
    assert list(again.export_rows()) == exported
    assert again.counts() == (4, 3)
    assert [r["vote"]["choice"] if r["vote"] else None for r in exported] == ["a", "b", "a", None]
    assert exported[0]["prompt"] == "prompt 0" and exported[0]["session"] == session_digest("s1")


def test_a_newer_schema_or_a_foreign_file_is_refused(tmp_path):
    path = tmp_path / "votes.sqlite3"
    VoteStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO schema_version VALUES (99)")
    raw.commit()
    raw.close()
    with pytest.raises(VoteStoreError, match="schema version 99"):
        VoteStore(path)
    junk = tmp_path / "junk.sqlite3"
    junk.write_text("not a database at all" * 100)
    with pytest.raises(VoteStoreError, match="junk.sqlite3"):
        VoteStore(junk)


def test_rate_limit_per_session_over_a_sliding_minute():
    now = [0.0]
    limit = SessionRateLimit(2, "battles", clock=lambda: now[0])
    limit.take("s1")
    limit.take("s1")
    with pytest.raises(RateLimited, match="at most 2 a minute per session; try again in 60 s"):
        limit.take("s1")
    limit.take("s2")  # another session has its own allowance
    now[0] = 59.0
    with pytest.raises(RateLimited, match="try again in 1 s"):
        limit.take("s1")
    now[0] = 60.0
    limit.take("s1")


# ---- configuration ----

@pytest.mark.parametrize("blind, field, message", [
    ("{colour: red}", "blind.colour", "unknown field"),
    ("{max_new_tokens: 0}", "blind.max_new_tokens", "must be positive"),
    ("{max_new_tokens: 600}", "blind.max_new_tokens", "at most limits.max_new_tokens (512)"),
    ("{variants: [smollm2/fp64]}", "blind.variants", "unknown variant id(s): smollm2/fp64"),
    ("{votes_per_minute: many}", "blind.votes_per_minute", "must be int"),
    ("{temperature: 3}", "blind.temperature", "must be in (0, 2]"),
    ("{top_p: 0}", "blind.top_p", "must be positive"),
    ("{top_p: 1.5}", "blind.top_p", "must be in (0, 1]"),
])
def test_bad_blind_block(tmp_path, blind, field, message):
    with pytest.raises(ConfigError) as info:
        load_config(models_file(tmp_path, blind))
    assert f"field '{field}'" in str(info.value) and message in str(info.value)


def test_votes_database_path(tmp_path, monkeypatch):
    from demo.blind.votes import votes_path

    monkeypatch.delenv("ARENA_VOTES_DB", raising=False)
    monkeypatch.setenv("ARENA_CACHE_DIR", str(tmp_path / "cache"))
    assert votes_path(load_config(REPO / "models.yaml")) == tmp_path / "cache" / "votes.sqlite3"
    config = load_config(models_file(tmp_path, {"votes_db": "data/votes.sqlite3"}))
    assert votes_path(config) == (tmp_path / "data" / "votes.sqlite3").resolve()  # beside the models file
    monkeypatch.setenv("ARENA_VOTES_DB", str(tmp_path / "env.sqlite3"))
    assert votes_path(config) == tmp_path / "env.sqlite3"
    monkeypatch.delenv("ARENA_VOTES_DB")
    monkeypatch.setenv("ARENA_DATA_DIR", str(tmp_path / "data"))  # a persistent folder holds a journal, never SQLite
    assert votes_path(load_config(REPO / "models.yaml")) == tmp_path / "cache" / "votes.sqlite3"


# ---- the CLI ----

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "demo", "votes", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_cli_prints_results_as_json_and_exports(tmp_path):
    path = tmp_path / "votes.sqlite3"
    store = VoteStore(path)
    for i, choice in enumerate(["a", "b", "tie"]):
        store.add_battle(battle(f"b{i}"))
        store.vote(f"b{i}", choice, "s1")
    store.close()
    out = run_cli("--json", "--db", str(path))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["votes"] == 3
    bf16 = next(r for r in result["variants"] if r["variant"] == "s/bf16")
    assert bf16["counts"] == {"preferred": 1, "tie": 1, "both_bad": 0, "baseline_preferred": 1}
    assert set(bf16) >= {"rates", "intervals", "rating", "rating_interval", "votes"}
    text = run_cli("--db", str(path))
    assert "s/bf16" in text.stdout and "3 votes in 3 battles" in text.stdout
    exported = run_cli("--db", str(path), "--export", str(tmp_path / "all.jsonl"))
    lines = (tmp_path / "all.jsonl").read_text().splitlines()
    assert exported.returncode == 0 and len(lines) == 3 and json.loads(lines[2])["vote"]["choice"] == "tie"
    missing = run_cli("--json", "--db", str(tmp_path / "none.sqlite3"))
    assert missing.returncode == 0 and json.loads(missing.stdout)["votes"] == 0
    assert not (tmp_path / "none.sqlite3").exists()  # reading never creates a database
    (tmp_path / "junk.sqlite3").write_text("junk" * 500)
    bad = run_cli("--db", str(tmp_path / "junk.sqlite3"))
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


# ---- battles on the real model ----

@pytest.fixture
def blind_arena(arena, tmp_path):
    """The shared arena's models and device, with a blind block: 4 new tokens, bf16 against the fp32 baseline."""
    from demo.running.runner import Arena

    return Arena(load_config(models_file(tmp_path)), manager=arena.manager, device=arena.device)


def test_battle_hides_then_reveals(blind_arena, tmp_path):
    from demo.blind.battle import BlindTest

    blind = BlindTest(blind_arena, VoteStore(tmp_path / "votes.sqlite3"))
    issued = blind.battle("What is the capital of France?", None, "s1")
    assert set(issued) == {"battle", "a", "b"} and len(issued["battle"]) >= 22
    stored = blind.store.battle(issued["battle"])
    assert {stored.variant_a, stored.variant_b} == {"smollm2/fp32", "smollm2/bf16"}
    assert (stored.answer_a, stored.answer_b) == (issued["a"], issued["b"])
    assert stored.settings == {"decoding": "sample", "max_new_tokens": 4, "temperature": 0.7, "top_p": 0.9,
                               "seed": stored.seed} and 0 <= stored.seed < 2**31
    shown = blind.vote(issued["battle"], "b", "s1")
    assert shown["preferred"] == stored.variant_b and shown["prompt"] == "What is the capital of France?"
    assert shown["a"]["variant"] == stored.variant_a and shown["a"]["text"] == issued["a"]
    challenger = shown["b" if shown["baseline"] == "a" else "a"]
    assert challenger["fidelity"] is not None and challenger["label"] == "bf16"
    with pytest.raises(InvalidRequest, match="unknown base 'llama'"):
        blind.battle("hi", "llama", "s1")
    with pytest.raises(InvalidRequest, match="the prompt is empty"):
        blind.battle("  ", None, "s1")


def test_battles_and_votes_are_rate_limited(arena, tmp_path):
    from demo.blind.battle import BlindTest
    from demo.running.runner import Arena

    config = load_config(models_file(tmp_path, {**BLIND, "battles_per_minute": 1, "votes_per_minute": 2}))
    blind = BlindTest(Arena(config, manager=arena.manager, device=arena.device), VoteStore(tmp_path / "v.sqlite3"))
    issued = blind.battle("Name a colour.", None, "s1")
    with pytest.raises(RateLimited, match="too many battles: at most 1 a minute per session"):
        blind.battle("Name a colour.", None, "s1")
    with pytest.raises(VoteRefused):
        blind.vote("forged-id", "a", "s1")  # a refused vote still counts against the limit
    blind.vote(issued["battle"], "a", "s1")
    with pytest.raises(RateLimited, match="too many votes"):
        blind.vote(issued["battle"], "a", "s1")
    blind.battle("Name a colour.", None, "s2")  # another session is not held back


def test_a_variant_that_cannot_answer_is_left_out_of_the_draw(arena, tmp_path):
    import torch

    from demo.blind.battle import BlindTest
    from demo.running.runner import Arena

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = load_config(models_file(tmp_path, {**BLIND, "variants": [BROKEN["id"]]}, (BROKEN,)))
    blind = BlindTest(Arena(config, device=arena.device), VoteStore(tmp_path / "v.sqlite3"))
    with pytest.raises(VariantUnavailable, match="could answer beside its baseline"):
        blind.battle("Name a colour.", None, "s1")
    assert blind.store.counts() == (0, 0)  # nothing issued
    both = load_config(models_file(tmp_path, {**BLIND, "variants": [BROKEN["id"], "smollm2/bf16"]}, (BROKEN,)))
    blind.arena.config = both  # the same arena, now with a variant that can answer beside the failed one
    assert {blind.draw("smollm2") for _ in range(50)} == {"smollm2/bf16"}  # the failed one waits its turn out


def test_draw_favours_the_variants_with_fewest_votes(arena, tmp_path):
    from demo.blind.battle import BlindTest
    from demo.running.runner import Arena

    config = load_config(models_file(tmp_path, {**BLIND, "variants": ["smollm2/bf16", "smollm2/bnb-nf4"]}))
    store = VoteStore(tmp_path / "v.sqlite3")
    for i in range(30):  # bf16 has 30 votes, NF4 none: weights 1/31 against 1, so NF4 is drawn 31/32 = 97%
        store.add_battle(battle(f"b{i}", a="smollm2/fp32", b="smollm2/bf16", base="smollm2"))
        store.vote(f"b{i}", "a", "s1")
    blind = BlindTest(Arena(config, manager=arena.manager, device=arena.device), store)
    drawn = [blind.draw("smollm2") for _ in range(400)]
    assert 0.9 < drawn.count("smollm2/bnb-nf4") / len(drawn) < 1.0


# ---- the app: /battle and /vote through gradio_client ----

@pytest.fixture(scope="module")
def app(arena, tmp_path_factory):
    from demo import ui
    from demo.running.runner import Arena

    folder = tmp_path_factory.mktemp("blind-app")
    previous = os.environ.get("ARENA_VOTES_DB")
    os.environ["ARENA_VOTES_DB"] = str(folder / "votes.sqlite3")
    try:
        path = models_file(folder)  # behind "a proxy" at 127.0.0.1, so that a test's clients can have addresses
        path.write_text(path.read_text() + "proxies: {trusted: [127.0.0.1], hops: 1}\n")
        local = Arena(load_config(path), manager=arena.manager, device=arena.device)
        demo = ui.build_demo(local)
    finally:
        if previous is None:
            os.environ.pop("ARENA_VOTES_DB")
        else:
            os.environ["ARENA_VOTES_DB"] = previous
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                            **ui.launch_kwargs(demo))
    yield url, folder / "votes.sqlite3"
    demo.close()


def client(url, address: str | None = None):
    """A fresh client (a new session); with `address`, as the proxy in front of the app names it."""
    from gradio_client import Client

    return Client(url, verbose=False, headers={"X-Forwarded-For": address} if address else None)


def test_api_battle_says_nothing_before_the_vote(app):
    from gradio_client.exceptions import AppError

    url, _ = app
    first, second = client(url), client(url)
    issued = first.predict(prompt="What is the capital of France?", api_name="/battle")
    assert set(issued) == {"battle", "a", "b"}
    raw = json.dumps(issued)
    for word in ("smollm2/", "fp32", "bf16", "baseline", "ms", "MiB"):
        assert word not in raw.replace(issued["a"], "").replace(issued["b"], ""), word
    with pytest.raises(AppError, match="issued to another session"):
        second.predict(battle=issued["battle"], choice="a", api_name="/vote")
    with pytest.raises(AppError, match="unknown battle id"):
        first.predict(battle=issued["battle"][:-2] + "xx", choice="a", api_name="/vote")
    shown = first.predict(battle=issued["battle"], choice="both_bad", api_name="/vote")
    assert {shown["a"]["variant"], shown["b"]["variant"]} == {"smollm2/fp32", "smollm2/bf16"}
    assert shown["a"]["text"] == issued["a"] and shown["b"]["text"] == issued["b"]
    with pytest.raises(AppError, match="already has a vote"):
        first.predict(battle=issued["battle"], choice="a", api_name="/vote")


def test_the_results_say_where_votes_are_kept(app):
    import urllib.request

    url, path = app
    config = json.load(urllib.request.urlopen(f"{url}config", timeout=30))
    shown = [c["props"].get("value") for c in config["components"]
             if c.get("props", {}).get("elem_id") == "blind-storage"]
    assert shown == [f"Votes are kept in `{path}`."]  # no persistent folder in this test: the database alone


def test_the_results_view_is_a_cached_route_with_its_chart_and_files(app):
    """The Refresh button fetches /gradio_api/arena/blind/results from the browser: a plain GET answered from memory, 304
    while no vote has changed it, a new body after a vote, with the chart and the files it links to."""
    import re
    import urllib.error
    import urllib.request

    url, _ = app

    def get(path: str, etag: str | None = None):
        request = urllib.request.Request(url + path, headers={"If-None-Match": etag} if etag else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    status, headers, before = get("gradio_api/arena/blind/results")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and headers["Cache-Control"] == "no-cache"
    assert b'id="blind-table"' in before and b'id="blind-summary"' in before
    assert get("gradio_api/arena/blind/results", headers["ETag"])[0] == 304  # nothing changed: no body at all
    me = client(url)
    issued = me.predict(prompt="Name a colour.", api_name="/battle")
    status, _, issued_view = get("gradio_api/arena/blind/results", headers["ETag"])
    assert status == 200 and issued_view != before  # a battle issued, no vote yet: the count of battles moved on
    me.predict(battle=issued["battle"], choice="a", api_name="/vote")
    status, after_headers, after = get("gradio_api/arena/blind/results", headers["ETag"])
    assert status == 200 and after != before and after_headers["ETag"] != headers["ETag"]
    html = after.decode()
    assert "smollm2/bf16" in html and "vote" in html
    chart = re.search(r'<img src="([^"]+)"', html).group(1)
    status, chart_headers, png = get(chart)
    assert status == 200 and png.startswith(b"\x89PNG") and "immutable" in chart_headers["Cache-Control"]
    links = dict((name, href) for href, name in re.findall(r'<a href="([^"]+)" download="([^"]+)"', html))
    assert set(links) == {"blind_results.json", "blind_results.csv"}
    shown = json.loads(get(links["blind_results.json"])[2])
    assert any(r["variant"] == "smollm2/bf16" and r["votes"] >= 1 for r in shown["variants"])
    assert get(links["blind_results.csv"])[2].startswith(b"variant,")
    assert get("gradio_api/arena/blind/files/0123456789abcdef0123/blind_results.json")[0] == 404  # not a kept one
    assert get("gradio_api/arena/blind/results", "W/" + after_headers["ETag"])[0] == 304  # a proxy's weakened tag
    assert get(chart.rsplit("/", 1)[0] + "/../../../etc/passwd")[0] == 404


def test_sixteen_users_vote_at_once(app):
    """Sixteen users, each from an address of its own (one address has a share of 4 places), ask with their own
    prompts at once, then vote: every vote lands on its own battle, none lost."""
    url, path = app
    choices = ["a", "b", "tie", "both_bad"]
    start = threading.Barrier(16)

    def user(i: int) -> tuple[dict, dict]:
        me = client(url, f"198.51.100.{i + 1}")
        start.wait(timeout=120)  # all 16 ask at once
        issued = me.predict(prompt=f"Repeat the number {i}.", api_name="/battle")
        return issued, me.predict(battle=issued["battle"], choice=choices[i % 4], api_name="/vote")

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(user, i) for i in range(16)]
        results = [f.result(timeout=900) for f in futures]
    store = VoteStore(path, read_only=True)
    rows = {r["id"]: r for r in store.export_rows()}
    for i, (issued, shown) in enumerate(results):
        assert shown["prompt"] == f"Repeat the number {i}." and shown["choice"] == choices[i % 4]
        row = rows[issued["battle"]]
        assert row["prompt"] == f"Repeat the number {i}." and row["vote"]["choice"] == choices[i % 4]
        assert (row["answer_a"], row["answer_b"]) == (issued["a"], issued["b"])
    assert len({issued["battle"] for issued, _ in results}) == 16
    # sixteen addresses, stored only as digests: one vote each, nothing flagged
    mine = [rows[issued["battle"]] for issued, _ in results]
    assert {len(row["address"]) for row in mine} == {64} and len({row["address"] for row in mine}) == 16
    assert not any(row["vote"]["looks_scripted"] for row in mine)


# ---- a restart: the app killed outright, started again ----

def start_app(env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    import urllib.request

    port = free_port()
    handle = log.open("a")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env={**env, "GRADIO_SERVER_PORT": str(port)},
                            stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.5)
    proc.kill()
    pytest.fail("the app did not answer within 180 s")


def test_votes_survive_the_app_being_killed_and_started_again(tmp_path):
    """As on a Space: killed outright, the local disk (the database) lost, started again over the same
    persistent folder (ARENA_DATA_DIR, a temporary folder here): every acknowledged battle and vote is back,
    once, and a client address keeps its digest."""
    from demo.blind.durable import JOURNAL_FOLDER

    db, data = tmp_path / "local" / "votes.sqlite3", tmp_path / "data"
    env = {**os.environ, "ARENA_MODELS": str(models_file(tmp_path)), "ARENA_VOTES_DB": str(db),
           "ARENA_DATA_DIR": str(data)}
    proc, url = start_app(env, tmp_path / "app.log")
    try:
        me = client(url)
        voted = {}
        for i, choice in enumerate(["a", "tie", "b"]):
            issued = me.predict(prompt=f"Say {i}.", api_name="/battle")
            me.predict(battle=issued["battle"], choice=choice, api_name="/vote")
            voted[issued["battle"]] = choice
        unvoted = me.predict(prompt="Say nothing.", api_name="/battle")["battle"]
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean shutdown: only what was acknowledged may count
        proc.wait(timeout=30)
    before = {r["id"]: r for r in VoteStore(db, read_only=True).export_rows()}
    for suffix in ("", "-wal", "-shm"):  # the restart loses the local disk; the persistent folder stays
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    assert list((data / JOURNAL_FOLDER).glob("*.jsonl"))
    proc, url = start_app(env, tmp_path / "app.log")
    try:
        me = client(url)
        rows = {r["id"]: r for r in VoteStore(db, read_only=True).export_rows()}
        assert rows == before  # battles, answers, records, digests, votes and their times: all back
        assert {k: r["vote"]["choice"] for k, r in rows.items() if r["vote"]} == voted
        assert rows[unvoted]["vote"] is None
        issued = me.predict(prompt="Say 4.", api_name="/battle")  # the restarted app goes on writing
        me.predict(battle=issued["battle"], choice="a", api_name="/vote")
        with pytest.raises(Exception, match="issued to another session"):
            me.predict(battle=unvoted, choice="a", api_name="/vote")  # a new session after the restart
        with pytest.raises(Exception, match="already has a vote"):
            me.predict(battle=issued["battle"], choice="b", api_name="/vote")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    rows = {r["id"]: r for r in VoteStore(db, read_only=True).export_rows()}
    assert rows[issued["battle"]]["address"] == rows[unvoted]["address"]  # the address key came back too
    out = run_cli("--json", "--db", str(db))
    assert json.loads(out.stdout)["votes"] == 4
    from demo.blind.durable import open_store

    store = open_store(db, data)  # the journal replayed over a database that holds it all: nothing twice
    assert store.counts() == (5, 4) and store.restore(store.journal.read().entries).votes_added == 0
    store.close()
