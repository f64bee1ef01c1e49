"""Blind battles: the server pairs a base's baseline with another of its variants, answers the prompt with both
under the same settings, hides which is which until the one vote its session may cast, then reveals them.

Both answers are sampled (models.yaml blind.temperature and top_p) with a seed drawn secretly for each battle,
the same for both sides. Greedy answers would give the baseline away: its answer to a prompt would always be
the same text, which a greedy /compare or a second battle on the same prompt shows before the vote. The seed is
stored with the battle and shown in the reveal and the export, never before the vote.

A session is what Gradio calls one: `gr.Request.session_hash`, a random id the browser makes for each page
load and gradio_client for each Client. It is not a login: a client can start a new session at will (the
rate limits are per session, and so also per client address), but it cannot vote on a battle issued to a session it does not know, nor on a
battle id it did not receive (ids are 128-bit random strings).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any, Callable, Iterator

from demo.blind import ratings
from demo.errors import Busy, InvalidRequest, VariantUnavailable
from demo.blind.open_battles import OpenBattles
from demo.blind.ratelimit import SessionRateLimit
from demo.running.runner import Arena, Client
from demo.settings import GenerationSettings
from demo.blind.votes import Battle, VoteStore, now_iso, session_digest

log = logging.getLogger(__name__)

FAILED_RETRY_S = 600.0  # a variant that could not answer is left out of the draw this long (not made yet, ...)
MAX_ATTEMPTS = 3  # variants tried for one battle before giving up
BATTLE_ID_BYTES = 16
SEED_BITS = 31  # a battle's seed: below every runtime's highest seed (2**32 - 2)
_RANDOM = secrets.SystemRandom()  # sides and pairs nobody can predict from earlier battles


class BlindTest:
    """Issues battles, takes votes, summarizes them; one per app, shared by every session."""

    def __init__(self, arena: Arena, store: VoteStore, clock=time.monotonic):
        self.arena, self.store, self.clock = arena, store, clock
        blind = arena.config.blind
        self.battle_limit = SessionRateLimit(blind.battles_per_minute, "battles", clock)
        self.vote_limit = SessionRateLimit(blind.votes_per_minute, "votes", clock)
        # keyed by the address digest: new sessions from one address share these
        self.address_battle_limit = SessionRateLimit(blind.battles_per_minute, "battles", clock, "address")
        self.address_vote_limit = SessionRateLimit(blind.votes_per_minute, "votes", clock, "address")
        self._failed_at: dict[str, float] = {}  # variant id -> clock() when it last failed to answer
        self._results_lock = threading.Lock()
        self._results: tuple[tuple[int, int], dict] | None = None  # (the store's vote mark, its summary)
        self.open = OpenBattles(clock)  # under way or awaiting their vote: the System panel holds still meanwhile

    # --- pairing --------------------------------------------------------------------------------------

    def bases(self) -> list[str]:
        """Base ids that can hold a battle: a baseline and at least one other variant to face it."""
        return [b for b in self.arena.config.bases if self._base_ready(b)]

    def _base_ready(self, base_id: str) -> bool:
        base = self.arena.config.bases[base_id]
        # random weights (speed and memory only): telling their answers apart says nothing about quantization
        return bool(base.baseline) and not base.random_weights and bool(self.candidates(base_id))

    def candidates(self, base_id: str) -> list[str]:
        """Variants that may face the base's baseline (models.yaml blind.variants, else all of the base's)."""
        config = self.arena.config
        chosen = config.blind.variants or tuple(config.variants)
        baseline = config.bases[base_id].baseline
        return [v for v in chosen if config.variants[v].base == base_id and v != baseline]

    def resolve_base(self, base: str | None) -> str:
        ready = self.bases()
        if base in (None, ""):
            if not ready:
                raise InvalidRequest("no base model here has a baseline and another variant to face it")
            return ready[0]
        if not isinstance(base, str) or base not in self.arena.config.bases:
            raise InvalidRequest(f"unknown base {str(base)[:60]!r}; known: {', '.join(self.arena.config.bases)}")
        if base not in ready:
            raise InvalidRequest(f"base '{base}' has no baseline and another variant for a blind test")
        return base

    def draw(self, base_id: str, exclude: set[str] = frozenset()) -> str | None:
        """A challenger, weighted 1 / (1 + its votes) so the least-voted variants catch up."""
        now = self.clock()
        pool = [v for v in self.candidates(base_id) if v not in exclude]
        fresh = [v for v in pool if now - self._failed_at.get(v, -FAILED_RETRY_S) >= FAILED_RETRY_S]
        pool = fresh or pool  # every one failed lately: try them again rather than refuse
        if not pool:
            return None
        votes = self.store.vote_counts(base_id)
        return _RANDOM.choices(pool, weights=[1 / (1 + votes.get(v, 0)) for v in pool])[0]

    # --- battles and votes ----------------------------------------------------------------------------

    def battle(self, prompt: str, base: str | None, session: str, address: str | None = None,
               client: Client | None = None, stop: threading.Event | None = None,
               report: Callable[[int], None] | None = None) -> dict[str, str]:
        """Answer `prompt` with the baseline and a drawn variant; {"battle": id, "a": text, "b": text} only.
        `address` is the client's (stored only as a digest); None where unknown. `client` is who the arena admits
        (by default the session alone): the battle and its retries hold one place in its share. `stop` (its
        client gone) ends the battle unissued. `report` is told each of battle_steps' turn counts."""
        for step in self.battle_steps(prompt, base, session, address, client, stop):
            if isinstance(step, dict):
                return step
            if report is not None:
                report(step)
        raise AssertionError("a battle ends with its answers or an error")

    def battle_steps(self, prompt: str, base: str | None, session: str, address: str | None = None,
                     client: Client | None = None, stop: threading.Event | None = None
                     ) -> Iterator[int | dict[str, str]]:
        """battle() as it goes: how many turns are ahead while it waits for the device, 0 when its turn has come
        (for each challenger tried), then the battle."""
        base_id = self.resolve_base(base)
        baseline = self.arena.config.bases[base_id].baseline
        self.arena.validate(prompt, [baseline])  # a bad prompt is refused before it costs the session a battle
        digest = self.store.address_digest(address)
        self._take(self.battle_limit, self.address_battle_limit, session, digest)
        token = self.open.begin()
        issued = None
        try:
            with self.arena.for_client(client or Client(session)).admitted() as arena:
                for step in self._answer(arena, prompt, base_id, baseline, session, digest, stop or threading.Event()):
                    if isinstance(step, dict):
                        issued = step
                        self.open.issued(token, step["battle"])
                    yield step
        finally:
            if issued is None:
                self.open.end(token)

    def _answer(self, arena: Arena, prompt: str, base_id: str, baseline: str, session: str,
                digest: str | None, stop: threading.Event) -> Iterator[int | dict[str, str]]:
        """The baseline's and a challenger's answers; another challenger, up to MAX_ATTEMPTS, when one fails."""
        settings = self.sampling()
        tried: set[str] = set()
        while len(tried) < MAX_ATTEMPTS and (challenger := self.draw(base_id, tried)) is not None:
            tried.add(challenger)
            final, turn_came = [], False
            for final in arena.compare(prompt, [baseline, challenger], settings, stop):
                if final[0].status == "waiting":
                    yield final[0].queue_ahead or 1
                elif not turn_came and final[0].status != "queued":
                    turn_came = True
                    yield 0  # its turn: generating
            if stop.is_set():
                raise Busy("the battle was stopped: its client has gone")
            records = {r.variant: r.to_record() for r in final}
            if records[baseline]["status"] != "done":
                raise VariantUnavailable(f"the baseline could not answer: {records[baseline]['error']}")
            if records[challenger]["status"] == "done":
                yield self._issue(base_id, baseline, records[baseline], records[challenger], session, digest)
                return
            log.warning("blind test: %s could not answer (%s); drawing another", challenger,
                        records[challenger]["error"])
            self._failed_at[challenger] = self.clock()
        raise VariantUnavailable(f"no variant of '{base_id}' could answer beside its baseline just now "
                                 f"(tried {', '.join(sorted(tried)) or 'none'}); see the Compare tab for why")

    def sampling(self) -> GenerationSettings:
        """A battle's settings: sampled, models.yaml's blind temperature and top_p, and a fresh secret seed."""
        blind = self.arena.config.blind
        return self.arena.settings(max_new_tokens=blind.max_new_tokens, do_sample=True, temperature=blind.temperature,
                                   top_p=blind.top_p, seed=secrets.randbits(SEED_BITS))

    @staticmethod
    def _take(per_session: SessionRateLimit, per_address: SessionRateLimit, session: str, digest: str | None):
        if digest is not None:
            per_address.take(digest)
        per_session.take(session)

    def _issue(self, base_id: str, baseline: str, base_record: dict, other: dict, session: str,
               address: str | None) -> dict[str, str]:
        a, b = (base_record, other) if _RANDOM.random() < 0.5 else (other, base_record)
        battle = Battle(
            id=secrets.token_urlsafe(BATTLE_ID_BYTES), issued_at=now_iso(), session=session_digest(session),
            base=base_id, baseline=baseline, variant_a=a["variant"], variant_b=b["variant"], prompt=a["prompt"],
            settings=a["settings"], answer_a=a["text"], answer_b=b["text"], record_a=self._shown(a),
            record_b=self._shown(b), environment=a["environment"], seed=a["settings"].get("seed"), address=address)
        self.store.add_battle(battle)
        return {"battle": battle.id, "a": battle.answer_a, "b": battle.answer_b}

    def _shown(self, record: dict) -> dict[str, Any]:
        """A record as the reveal shows it: its label added, what the battle holds once left out."""
        variant = self.arena.config.variants[record["variant"]]
        kept = {k: v for k, v in record.items() if k not in ("prompt", "settings", "environment")}
        return {**kept, "label": variant.label or variant.id}

    def vote(self, battle_id: str, choice: str, session: str, address: str | None = None) -> dict[str, Any]:
        """Record the vote of the session the battle was issued to, once; then reveal both sides."""
        # forged and replayed votes count too: guessing costs the guesser
        self._take(self.vote_limit, self.address_vote_limit, session, self.store.address_digest(address))
        if not isinstance(battle_id, str) or not isinstance(choice, str):
            raise InvalidRequest("battle and choice must be text")
        battle = self.store.vote(battle_id, choice, session)
        self.open.end(battle_id)
        return reveal(battle, choice)

    def results(self) -> dict:
        return self.marked_results()[1]

    def marked_results(self) -> tuple[tuple[int, int], dict]:
        """(the vote mark, the summary): the statistics and the Bradley-Terry fit run once per new vote, not on
        every refresh; callers share the summary and must not change it."""
        with self._results_lock:  # viewers refreshing at once wait for one computation and share it
            mark = self.store.vote_mark()
            if self._results is None or self._results[0] != mark:
                self._results = (mark, ratings.summarize(self.store.outcomes()))
            return self._results


def reveal(battle: Battle, choice: str) -> dict[str, Any]:
    """What the voter sees after voting: both sides named, with their figures and fidelity."""
    preferred = {"a": battle.variant_a, "b": battle.variant_b}.get(choice)
    return {"battle": battle.id, "choice": choice, "preferred": preferred, "prompt": battle.prompt,
            "settings": battle.settings, "seed": battle.seed, "baseline": "a" if battle.variant_a == battle.baseline else "b",
            "a": battle.record_a, "b": battle.record_b}
