"""Votes that look scripted: flagged in the results, counted apart and left out of the ratings, never deleted.

New sessions cost a script nothing (gradio_client makes one per Client), so the per-session limits alone do not
stop one client from voting many times. A vote is flagged when, among the votes whose battles were issued to the
same client address (its stored digest) within WINDOW_S of it, either
- more than MAX_SESSIONS_PER_ADDRESS sessions voted: one address opening session after session, or
- more than MAX_SAME_PROMPT_PER_ADDRESS votes were on the same prompt (compared without case or surrounding
  spaces) as this one: the same question asked over and over.
Every vote of such a cluster is flagged, the first ones included. Votes whose address is unknown (battles from
before addresses were stored) are never flagged. People behind one address (a classroom behind one NAT) can
trip the first rule: their votes are flagged, not lost, and stay in the export with the reason.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from datetime import datetime
from typing import Any, Sequence

WINDOW_S = 3600.0  # votes within an hour of each other, either side, are judged together
MAX_SESSIONS_PER_ADDRESS = 4  # N: more sessions than this voting from one address within the window is flagged
MAX_SAME_PROMPT_PER_ADDRESS = 3  # M: more votes than this on one prompt from one address within the window

RULES = (f"more than {MAX_SESSIONS_PER_ADDRESS} sessions voting from one address, or more than "
         f"{MAX_SAME_PROMPT_PER_ADDRESS} votes on the same prompt from one address, within "
         f"{WINDOW_S / 60:.0f} minutes")


def reasons(votes: Sequence[Any]) -> list[str | None]:
    """Per vote (anything with .address, .session, .prompt and .voted_at, an ISO 8601 time), why it looks
    scripted, or None."""
    found: list[str | None] = [None] * len(votes)
    by_address: dict[str, list[int]] = defaultdict(list)
    for i, vote in enumerate(votes):
        if vote.address:
            by_address[vote.address].append(i)
    for indices in by_address.values():
        times = [datetime.fromisoformat(votes[i].voted_at).timestamp() for i in indices]
        order = sorted(range(len(indices)), key=times.__getitem__)
        indices, times = [indices[k] for k in order], [times[k] for k in order]
        for i, t in zip(indices, times):
            near = indices[bisect_left(times, t - WINDOW_S):bisect_right(times, t + WINDOW_S)]
            found[i] = _reason(votes, i, near)
    return found


def _reason(votes: Sequence[Any], i: int, near: list[int]) -> str | None:
    sessions = len({votes[j].session for j in near})
    if sessions > MAX_SESSIONS_PER_ADDRESS:
        return f"{sessions} sessions voted from this address within {WINDOW_S / 60:.0f} minutes"
    prompt = _same(votes[i].prompt)
    repeats = sum(_same(votes[j].prompt) == prompt for j in near)
    if repeats > MAX_SAME_PROMPT_PER_ADDRESS:
        return f"the same prompt voted on {repeats} times from this address within {WINDOW_S / 60:.0f} minutes"
    return None


def _same(prompt: str) -> str:
    return prompt.strip().casefold()
