"""Battles under way or awaiting their vote, so that what the page shows of the machine can hold still meanwhile.

A battle loads its challenger if it is not loaded yet, and the System panel lists what is loaded: on a quiet
arena the one new name beside the baseline is the hidden challenger, on the page with the vote buttons. So from
the moment a battle starts until its vote (or HOLD_S, or the battle failing), the panel shows what it showed
before the battle began (demo.ui.system_panel). A battle never voted on holds the panel HOLD_S at most.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Callable

HOLD_S = 600.0  # the longest one battle holds the panel: a battle left unvoted lets it go after this


class OpenBattles:
    """Battles started and not yet voted on, ended or expired, with when each began (clock() seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, hold_s: float = HOLD_S):
        self.clock, self.hold_s = clock, hold_s
        self._lock = threading.Lock()
        self._began: dict[object, float] = {}  # a running battle's token, or an issued battle's id -> began at
        self._tokens = itertools.count()

    def begin(self) -> object:
        """A battle starts (before its variants load); its token."""
        token = ("running", next(self._tokens))
        with self._lock:
            self._began[token] = self.clock()
        return token

    def issued(self, token: object, battle_id: str) -> None:
        """The battle was issued: it stays open under its id until its vote."""
        with self._lock:
            began = self._began.pop(token, None)
            if began is not None:
                self._began[battle_id] = began

    def end(self, token_or_id: object) -> None:
        """Voted on, or ended unissued."""
        with self._lock:
            self._began.pop(token_or_id, None)

    def holding_since(self) -> float | None:
        """When the oldest open battle began, or None when none is open (those past hold_s are dropped)."""
        now = self.clock()
        with self._lock:
            for key in [k for k, began in self._began.items() if now - began >= self.hold_s]:
                del self._began[key]
            return min(self._began.values(), default=None)
