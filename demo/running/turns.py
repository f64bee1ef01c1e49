"""Who may use the device, and when: admission (at most limits.max_pending comparisons running or waiting;
one more is refused at once) and first-come-first-served turns (one holder at a time)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from demo.errors import Busy


class Admission:
    """A fixed number of places; a request that finds none is refused at once, never queued."""

    def __init__(self, places: int):
        self.places = places
        self._free = threading.BoundedSemaphore(places)

    @contextmanager
    def place(self) -> Iterator[None]:
        if not self._free.acquire(blocking=False):
            raise Busy(f"busy: {self.places} comparisons are already running or waiting; try again in a minute")
        try:
            yield
        finally:
            self._free.release()


class Turns:
    """First come, first served turns on the device: one holder at a time, the others wait in order.

    A comparison holds its turn for all of its variants and their fidelity scoring, so no other
    request's work lands in its measurement windows, and a waiting request can say how many are ahead.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._line: list[object] = []  # the holder first, then the waiting tickets in arrival order

    def join(self) -> object:
        ticket = object()
        with self._cond:
            self._line.append(ticket)
        return ticket

    def wait(self, ticket: object, timeout_s: float) -> bool:
        """True once ticket holds the turn; False if it still waits after timeout_s."""
        with self._cond:
            return self._cond.wait_for(lambda: self._line[0] is ticket, timeout_s)

    def ahead(self, ticket: object) -> int:
        """How many turns come before this ticket's (the holder included)."""
        with self._cond:
            return self._line.index(ticket)

    def leave(self, ticket: object) -> None:
        """Give the turn back, or stop waiting for it."""
        with self._cond:
            if ticket in self._line:
                self._line.remove(ticket)
                self._cond.notify_all()
