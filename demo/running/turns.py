"""Who may use the device, and when: admission (at most limits.max_pending requests running or waiting, and at
most limits.max_pending_per_client of them from one client; one more is refused at once) and turns (one holder at
a time, handed round-robin across clients)."""

from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from demo.errors import Busy


@dataclass(frozen=True)
class Client:
    """Who a request comes from: its session (Gradio's session hash, one per page load or gradio_client Client;
    "local" for the command line) and its address (the connection's, or the one a trusted proxy names:
    demo.ui.clients), None where unknown.

    A client can open new sessions at will, so where the address is known it is what identifies the client: its
    share and its place in the round-robin are the address's, whatever session it uses."""

    session: str = "local"
    address: str | None = None

    @property
    def keys(self) -> tuple[tuple[str, str], ...]:
        """What a request counts against: its session and, where known, its address."""
        return (("session", self.session),) + ((("address", self.address),) if self.address else ())

    @property
    def key(self) -> tuple[str, str]:
        """Whose turn a request takes in the round-robin: the address where known, else the session."""
        return self.keys[-1]


LOCAL = Client()


class Admission:
    """A fixed number of places, and a share of them per client; a request that finds none is refused at once,
    never queued."""

    def __init__(self, places: int, per_client: int):
        self.places, self.per_client = places, min(per_client, places)
        self._lock = threading.Lock()
        self._taken = 0
        self._by_key: dict[tuple[str, str], int] = {}  # a session or address -> its places taken (none: absent)

    @contextmanager
    def place(self, client: Client) -> Iterator[None]:
        self._take(client)
        try:
            yield
        finally:
            self._give_back(client)

    def _take(self, client: Client) -> None:
        with self._lock:
            if self._taken >= self.places:
                raise Busy(f"busy: the device already has {_requests(self.places)} running or waiting; "
                           "try again in a minute")
            if any(self._by_key.get(key, 0) >= self.per_client for key in client.keys):
                raise Busy(f"busy: you already have {_requests(self.per_client)} running or waiting for the device "
                           "(the most one client may have); try again when one of them finishes")
            self._taken += 1
            for key in client.keys:
                self._by_key[key] = self._by_key.get(key, 0) + 1

    def _give_back(self, client: Client) -> None:
        with self._lock:
            self._taken -= 1
            for key in client.keys:
                self._by_key[key] -= 1
                if not self._by_key[key]:
                    del self._by_key[key]  # memory follows the clients with requests in


def _requests(count: int) -> str:
    return f"{count} request{'s' if count != 1 else ''}"


class Ticket:
    """One request's place in the line for the device."""

    __slots__ = ("key", "arrival")

    def __init__(self, key: tuple[str, str], arrival: int):
        self.key, self.arrival = key, arrival


class Turns:
    """Turns on the device, one holder at a time, handed round-robin across clients: the next turn goes to the
    waiting client served longest ago (a client with nothing served yet first), to its oldest request; within a
    client, first come first served. So a client with many requests waiting takes one turn in each round, and a
    newcomer waits for at most the turn being held.

    When a client was last served is remembered after its last request leaves, for as long as it could matter:
    a client that sends one request at a time, each as soon as the last is done, comes back as served just now,
    not as a newcomer, so how it times its requests cannot buy it more than its share. A client served before
    everyone still waiting is forgotten (as a newcomer it would go first anyway), so memory follows the line.

    A comparison holds its turn for all of its variants and their fidelity scoring, so no other request's work
    lands in its measurement windows, and a waiting request can say how many are ahead.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: Ticket | None = None
        self._waiting: list[Ticket] = []  # in arrival order
        self._served: dict[tuple[str, str], int] = {}  # client key -> number of its latest turn (see _forget)
        self._arrivals, self._grants = itertools.count(), itertools.count(1)

    def join(self, client: Client = LOCAL) -> Ticket:
        with self._cond:
            ticket = Ticket(client.key, next(self._arrivals))
            self._waiting.append(ticket)
            self._hand_on()
            return ticket

    def wait(self, ticket: Ticket, timeout_s: float) -> bool:
        """True once ticket holds the turn; False if it still waits after timeout_s."""
        with self._cond:
            return self._cond.wait_for(lambda: self._holder is ticket, timeout_s)

    def holds(self, ticket: Ticket) -> bool:
        with self._cond:
            return self._holder is ticket

    def ahead(self, ticket: Ticket) -> int:
        """How many turns come before this ticket's (the holder included), in the order they will be handed on."""
        with self._cond:
            if self._holder is ticket:
                return 0
            return (self._holder is not None) + self._line().index(ticket)

    def waiting(self) -> int:
        """How many tickets wait for the turn (the holder not counted)."""
        with self._cond:
            return len(self._waiting)

    def leave(self, ticket: Ticket) -> None:
        """Give the turn back, or stop waiting for it."""
        with self._cond:
            if self._holder is ticket:
                self._holder = None
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            else:
                return
            self._hand_on()
            self._forget()

    def _forget(self) -> None:
        """Drop the turns of clients without tickets that were served before every client with tickets: as
        newcomers they would be served first all the same. With nobody in line, nobody is remembered."""
        present = {t.key for t in self._waiting} | ({self._holder.key} if self._holder is not None else set())
        oldest = min((self._served.get(key, 0) for key in present), default=None)
        for key in [k for k, grant in self._served.items() if k not in present and (oldest is None or grant < oldest)]:
            del self._served[key]

    def _hand_on(self) -> None:
        """With nobody holding the turn, give it to the first of the line."""
        if self._holder is None and self._waiting:
            self._holder = self._line()[0]
            self._waiting.remove(self._holder)
            self._served[self._holder.key] = next(self._grants)
            self._cond.notify_all()

    def _line(self) -> list[Ticket]:
        """The waiting tickets in the order they will hold the turn: round after round, each client with tickets
        left gives its oldest, the client served longest ago first."""
        queues: dict[tuple[str, str], list[Ticket]] = {}
        for ticket in self._waiting:
            queues.setdefault(ticket.key, []).append(ticket)
        served = {key: self._served.get(key, 0) for key in queues}
        line, grant = [], max(self._served.values(), default=0)
        while queues:
            key = min(queues, key=lambda k: (served[k], queues[k][0].arrival))
            line.append(queues[key].pop(0))
            grant += 1
            served[key] = grant
            if not queues[key]:
                del queues[key]
        return line
