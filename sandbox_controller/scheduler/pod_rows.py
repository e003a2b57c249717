"""Pod rows waiting to be written, and how many go with one commit.

Rows of pool pods alone (created, ready, gone) are not a promise to anyone: they wait
up to POD_ROWS_DELAY and go with the next commit (rounds.py). A claimed pod's row is
the exception: it goes with its session's row, in the same commit, always.

At most POD_ROWS_PER_COMMIT other rows go with one commit; the rest are due at once
and go with the next rounds, one chunk each. Unbounded, a 10,000-pod fill wrote
thousands of rows in one transaction, which ran past the store's timeout on a busy
machine (a failed commit, then a rebuild), and held every claim behind it meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice

from ..model import Pod

POD_ROWS_DELAY = 1.0
POD_ROWS_PER_COMMIT = 500


class PendingPodRows:
    def __init__(self, per_commit: int = POD_ROWS_PER_COMMIT) -> None:
        self.per_commit = per_commit
        self.dirty: set[str] = set()
        self.forgotten: set[str] = set()
        self.due = float("inf")

    def __bool__(self) -> bool:
        return bool(self.dirty or self.forgotten)

    def add(self, dirty: Iterable[str], forgotten: Iterable[str], now: float) -> None:
        self.dirty.update(dirty)
        self.forgotten.update(forgotten)
        if self:
            self.due = min(self.due, now + POD_ROWS_DELAY)

    def take(
        self, pods: Mapping[str, Pod], with_sessions: Iterable[str], now: float
    ) -> tuple[list[Pod], list[str]]:
        """The rows of the next commit: the pods named by the sessions it writes, and
        at most ``per_commit`` others (oldest-added first is not promised; any order
        is safe), with at most ``per_commit`` rows to delete. What is left is due now."""
        claimed = [name for name in with_sessions if name in self.dirty]
        self.dirty.difference_update(claimed)
        others = list(islice(self.dirty, self.per_commit))
        self.dirty.difference_update(others)
        forgotten = sorted(islice(self.forgotten, self.per_commit))
        self.forgotten.difference_update(forgotten)
        self.due = now if self else float("inf")
        return [pods[n] for n in (*claimed, *others) if n in pods], forgotten

    def clear(self) -> None:
        self.dirty, self.forgotten = set(), set()
        self.due = float("inf")
