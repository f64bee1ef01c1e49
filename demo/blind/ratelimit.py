"""Requests per session (or per client address) per minute, over a sliding window, kept in memory (limits restart with the app)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from demo.errors import RateLimited

WINDOW_S = 60.0


class SessionRateLimit:
    """At most `per_minute` calls of one kind per key (a session, or an address digest when `per` says so) in any
    60 s; the next raises RateLimited."""

    def __init__(self, per_minute: int, what: str, clock: Callable[[], float] = time.monotonic, per: str = "session"):
        self.per_minute, self.what, self.clock, self.per = per_minute, what, clock, per
        self._calls: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, session: str) -> None:
        now = self.clock()
        with self._lock:
            self._forget_idle(now)
            calls = self._calls.setdefault(session, deque())
            if len(calls) >= self.per_minute:
                wait_s = max(1, round(WINDOW_S - (now - calls[0])))
                raise RateLimited(f"too many {self.what}: at most {self.per_minute} a minute per {self.per}; "
                                  f"try again in {wait_s} s")
            calls.append(now)

    def _forget_idle(self, now: float) -> None:
        """Drop calls older than the window, and sessions with none left, so memory follows active sessions."""
        for session in list(self._calls):
            calls = self._calls[session]
            while calls and now - calls[0] >= WINDOW_S:
                calls.popleft()
            if not calls:
                del self._calls[session]
