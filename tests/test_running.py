"""The running parts on their own, without a model or Gradio: admission with a share per client, turns handed
round-robin across clients, and every model-running path (comparisons, the exclusive work of Quantize now and
evaluation scoring, an evaluation's whole run, a blind battle and its retries) admitted the same way."""

import threading
import time

import pytest

from demo.blind.battle import BlindTest
from demo.blind.votes import VoteStore
from demo.config import load_config
from demo.errors import Busy, VariantUnavailable
from demo.running.manager import ModelManager
from demo.running.runner import Arena
from demo.running.turns import Admission, Client, Turns
from tests.conftest import REPO

A, B, C = Client("session-a"), Client("session-b"), Client("session-c")
VARIANT = "smollm2/bf16"


def test_admission_refuses_at_once_past_its_places_and_frees_a_place_on_leaving():
    admission = Admission(2, 2)
    with admission.place(A), admission.place(B):
        with pytest.raises(Busy, match="busy: the device already has 2 requests running or waiting; try again in a "
                                       "minute"):
            with admission.place(C):
                pass
    with admission.place(C):  # both places were given back
        pass


def test_admission_gives_each_client_a_share():
    admission = Admission(4, 2)
    with admission.place(A), admission.place(A):
        with pytest.raises(Busy, match="busy: you already have 2 requests running or waiting for the device "
                                       r"\(the most one client may have\); try again when one of them finishes"):
            with admission.place(A):
                pass
        with admission.place(B), admission.place(B):  # another client still has its share
            pass


def test_a_forwarded_address_shares_one_share_across_its_sessions():
    admission = Admission(8, 2)
    first, second = Client("s1", "203.0.113.7"), Client("s2", "203.0.113.7")
    with admission.place(first), admission.place(second):
        with pytest.raises(Busy, match="you already have 2"):
            with admission.place(Client("s3", "203.0.113.7")):  # a new session from the same address
                pass
        with admission.place(Client("s4", "198.51.100.1")):
            pass
    assert first.key == ("address", "203.0.113.7") and A.key == ("session", "session-a")


def test_turns_are_first_come_first_served_within_a_client():
    turns = Turns()
    first, second, third = turns.join(A), turns.join(A), turns.join(A)
    assert turns.wait(first, 0) and not turns.wait(second, 0)
    assert [turns.ahead(t) for t in (first, second, third)] == [0, 1, 2]
    turns.leave(second)  # a waiting request that gives up keeps no place
    assert turns.ahead(third) == 1
    turns.leave(first)
    assert turns.wait(third, 0)


def test_turns_go_round_robin_across_clients():
    turns = Turns()
    a = [turns.join(A) for _ in range(4)]  # a[0] holds the turn at once
    b = [turns.join(B) for _ in range(2)]
    c = [turns.join(C)]
    expected = [a[0], b[0], c[0], a[1], b[1], a[2], a[3]]  # served longest ago (or never) first
    assert [turns.ahead(t) for t in expected] == list(range(len(expected)))
    order = []
    for _ in expected:
        [holder] = [t for t in expected if t not in order and turns.holds(t)]
        order.append(holder)
        turns.leave(holder)
    assert order == expected
    assert turns.waiting() == 0


def test_a_newcomer_waits_for_the_turn_being_held_only():
    turns = Turns()
    a = [turns.join(A) for _ in range(3)]
    turns.leave(a[0])  # A's first done; A's second holds now
    late = turns.join(B)
    assert turns.ahead(late) == 1 and turns.ahead(a[2]) == 2


def test_a_client_that_comes_back_after_each_turn_gets_its_share_only():
    """A sends one request at a time, the next as soon as its last is done; B, C and D hold 50 each. A counts
    as served just now when it comes back, not as a newcomer: it takes one turn in each round of four."""
    turns, D = Turns(), Client("session-d")
    tickets = {key: [turns.join(client) for _ in range(50)] for key, client in (("b", B), ("c", C), ("d", D))}
    mine = turns.join(A)
    order = []
    for _ in range(40):
        holder = next(t for t in [mine, *sum(tickets.values(), [])] if turns.holds(t))
        order.append("a" if holder is mine else holder.key[1][-1])
        turns.leave(holder)
        if holder is mine:
            mine = turns.join(A)  # at once: its next request
        else:
            tickets[holder.key[1][-1]].remove(holder)
    assert "".join(order) == "bcda" * 10  # a fair share: 10 of 40 (before, A went first each time: 19 of 40)


def test_turns_remember_only_clients_that_could_still_matter():
    turns = Turns()
    for client in (A, B, C):  # each served once, one after another, nobody else waiting
        turns.leave(turns.join(client))
    assert turns._served == {}  # with nobody in line, nobody is remembered
    held, waiting = turns.join(A), turns.join(B)
    turns.leave(held)  # A served; B holds now
    again = turns.join(A)
    assert turns.ahead(again) == 1  # A comes back behind B's turn, as served just now
    turns.leave(waiting)
    turns.leave(again)
    assert turns._served == {}


# ---- the arena: every path admitted and ordered the same way, over a fake loader ----

def arena_with(tmp_path, loader, per_client=8, places=16):
    shipped = (REPO / "models.yaml").read_text()
    path = tmp_path / "models.yaml"
    path.write_text(shipped.replace("max_pending: 16", f"max_pending: {places}")
                    .replace("max_pending_per_client: 4", f"max_pending_per_client: {per_client}")
                    .replace("max_new_tokens: 96", "max_new_tokens: 2"))  # the blind test's answers
    config = load_config(path)
    assert (config.limits.max_pending, config.limits.max_pending_per_client) == (places, per_client)
    # no size estimate: it counts the base model's parameters, seconds that tell nothing about turns
    return Arena(config, ModelManager(config, loader, estimator=lambda variant, base: None))


class HeldLoader:
    """A loader that never loads: its first call waits until released (a long first load holding the turn), then
    every call says the variant is unavailable, so each comparison ends at once."""

    def __init__(self):
        self.release, self.called = threading.Event(), threading.Event()

    def __call__(self, variant, base):
        self.called.set()
        self.release.wait(10)
        raise VariantUnavailable("not available: a test loader loads nothing")


class Requests:
    """Comparisons in threads, each recording when its turn came (its first variant began loading)."""

    def __init__(self):
        self.started: list[str] = []  # request labels in the order their turns came
        self.refused: dict[str, str] = {}
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def submit(self, arena: Arena, label: str):
        def run():
            try:
                for snap in arena.compare("Name a colour.", [VARIANT], arena.settings(max_new_tokens=2)):
                    if snap[0].status == "loading" and label not in self.started:
                        with self.lock:
                            self.started.append(label)
            except Busy as exc:
                self.refused[label] = str(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self):
        for thread in self.threads:
            thread.join(10)
        assert not any(t.is_alive() for t in self.threads)


def until(condition, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_one_client_cannot_take_every_turn_or_every_place(tmp_path):
    loader = HeldLoader()
    arena = arena_with(tmp_path, loader, per_client=8)
    client_a, client_b = arena.for_client(A), arena.for_client(B)
    requests = Requests()
    for i in range(8):  # A submits 8 at once: its first holds the turn (a long load), seven wait
        requests.submit(client_a, f"a{i}")
    until(lambda: loader.called.is_set() and arena.turns.waiting() == 7)
    requests.submit(client_b, "b")  # then B submits one
    until(lambda: arena.turns.waiting() == 8)
    with pytest.raises(Busy, match="you already have 8 requests running or waiting"):  # A's ninth: refused at once
        next(client_a.compare("Name a colour.", [VARIANT], arena.settings(max_new_tokens=2)))
    loader.release.set()
    requests.join()
    assert not requests.refused
    assert len(requests.started) == 9 and requests.started.index("b") <= 1  # after at most one of A's
    assert requests.started.index("b") == 1  # exactly: the turn A held when B came


def test_exclusive_work_is_admitted_and_reports_its_wait_between_polls(tmp_path):
    arena = arena_with(tmp_path, HeldLoader(), per_client=2, places=4)
    with arena.for_client(A).device_turn() as wait_a:  # Quantize now: admitted, then holds the device at once
        assert list(wait_a) == []
        with arena.for_client(B).device_turn() as wait_b:  # another client's waits, saying how many are ahead
            started = time.perf_counter()
            assert next(wait_b) == 1  # a poll that returns to its caller (a Gradio generator), not a loop in it
            assert time.perf_counter() - started < 2.0
            with pytest.raises(Busy, match="you already have 2 requests"):  # A's share: 2, one of them held
                with arena.for_client(A).admitted(), arena.for_client(A).device_turn():
                    pass
            assert arena.turns.waiting() == 1  # the refused one never joined the line
        assert arena.turns.waiting() == 0  # B, gone while waiting, left the line
    with arena.for_client(B).device_turn() as wait_b:  # and the device is free for the next one at once
        assert list(wait_b) == []


def test_an_evaluation_holds_one_place_for_all_its_runs(tmp_path):
    arena = arena_with(tmp_path, HeldLoader(), per_client=2, places=3)
    client_a = arena.for_client(A)
    with client_a.admitted() as evaluation:
        with client_a.admitted():  # A's share: 2, one of them the evaluation's
            with pytest.raises(Busy, match="you already have 2"):
                with client_a.device_turn():
                    pass
            with evaluation.exclusive():  # the evaluation's scoring: in its own place, and its turn at once
                assert arena.admission.per_client == 2
            with arena.for_client(B).admitted():  # the last free place: B's
                with pytest.raises(Busy, match="busy: the device already has 3 requests running"):
                    with arena.for_client(C).device_turn():
                        pass


def test_stop_while_waiting_for_exclusive_work_refuses_it_and_frees_its_place(tmp_path):
    arena = arena_with(tmp_path, HeldLoader(), per_client=1, places=2)
    stop = threading.Event()
    with arena.for_client(A).device_turn() as held:
        list(held)
        with arena.for_client(B).device_turn(stop) as wait:
            stop.set()
            with pytest.raises(Busy, match="stopped while waiting for the device"):
                list(wait)
    with arena.for_client(B).device_turn() as wait:  # B's place and ticket were given back
        assert list(wait) == []
    assert arena.turns.waiting() == 0


class BaselineOnlyArena(Arena):
    """An arena whose comparisons answer at once, without a model: the baseline answers, every other variant is
    unavailable, so a battle tries another challenger each time. Admission and turns are the arena's own."""

    def _compare(self, prompt, variant_ids, settings, stop):
        results = self._new_results(prompt, variant_ids, settings)
        ticket = self.turns.join(self.client)
        try:
            yield from self._wait_for_turn(ticket, results, stop)  # the arena's own: its place in line
            for result in results:
                if result.variant == self.config.bases[result.base].baseline:
                    result.status, result.text = "done", "Blue."
                else:
                    result.status, result.error = "error", "not available: this test arena runs the baseline only"
        finally:
            self.turns.leave(ticket)
        yield results


def test_a_battle_and_its_retries_hold_one_place_in_the_clients_share(tmp_path):
    config = arena_with(tmp_path, HeldLoader(), per_client=1, places=4).config
    arena = BaselineOnlyArena(config, ModelManager(config, HeldLoader()))
    blind = BlindTest(arena, VoteStore(tmp_path / "votes.sqlite3"))
    with arena.for_client(A).admitted():  # A's one place in use: its battle is refused before any model runs
        with pytest.raises(Busy, match="you already have 1 request running"):
            blind.battle("Name a colour.", None, "session-a", None, A)
    # A's place is free again: every retry runs in the battle's one place (a place of its own would be refused)
    with pytest.raises(VariantUnavailable, match=r"beside its baseline just now \(tried [^,]+, [^,]+, [^,]+\)"):
        blind.battle("Name a colour.", None, "session-a", None, A)  # MAX_ATTEMPTS (3) challengers tried
    assert not arena.admission._by_key and arena.turns.waiting() == 0  # its place and its turns given back


def test_a_battle_waiting_for_the_device_says_so_between_polls(tmp_path):
    config = arena_with(tmp_path, HeldLoader(), per_client=1, places=4).config
    arena = BaselineOnlyArena(config, ModelManager(config, HeldLoader()))
    blind = BlindTest(arena, VoteStore(tmp_path / "votes.sqlite3"))
    with arena.for_client(B).device_turn() as held:  # another client holds the device
        list(held)
        steps = blind.battle_steps("Name a colour.", None, "session-a", None, A)
        assert next(steps) == 1  # the page's handler shows this and returns to Gradio
    with pytest.raises(VariantUnavailable, match="could answer beside its baseline"):
        list(steps)  # the turn came: the battle ran (and, with this arena, found no challenger that answers)
