"""Stop buttons: each running request of a session registers its own stop event, and the session's Stop sets
every one of them. A request that ends takes out its own event only, never a newer request's of the same
session (two evaluations from one page, or from one gradio_client session, each stop)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class Stops:
    """Per session, the stop events of its running requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_session: dict[str | None, list[threading.Event]] = {}

    @contextmanager
    def running(self, session: str | None) -> Iterator[threading.Event]:
        """A fresh stop event for one request of `session`, registered until the block ends."""
        event = threading.Event()
        with self._lock:
            self._by_session.setdefault(session, []).append(event)
        try:
            yield event
        finally:
            with self._lock:
                events = self._by_session.get(session, [])
                if event in events:
                    events.remove(event)
                if not events:
                    self._by_session.pop(session, None)

    def stop(self, session: str | None) -> int:
        """Set the stop event of every running request of `session`; how many."""
        with self._lock:
            events = list(self._by_session.get(session, []))
        for event in events:
            event.set()
        return len(events)

    def events(self, session: str | None) -> list[threading.Event]:
        """The stop events of `session`'s running requests, oldest first."""
        with self._lock:
            return list(self._by_session.get(session, []))

    def running_count(self, session: str | None) -> int:
        return len(self.events(session))
