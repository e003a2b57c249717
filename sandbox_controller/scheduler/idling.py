"""Busy-aware idling: the sandbox's status hook is asked before a session is ended for
its idle timeout or reclaimed, and its release hook before its pod is deleted.

Pure bookkeeping for the pool (pool.py decides, with ``now`` passed in); the scheduler
loop makes the HTTP calls (hooks.py) and feeds the answers back as commands. A status
check the pool waits for has a fallback deadline, so a lost answer never strands a
session: unanswered means not busy, and a hung sandbox still ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..hooks import BusyAnswer
from ..model import Limits, Pod

# Beyond hook_timeout, how long the pool waits for an answer the loop's call (bounded
# by hook_timeout) should already have brought: a round's commit, a busy event loop.
CHECK_MARGIN = 1.0


@dataclass(frozen=True)
class StatusCheck:
    """Ask this session's sandbox whether it is busy (GET /_sandbox/status)."""

    session_id: str
    address: str
    create_id: str


@dataclass(frozen=True)
class Release:
    """Tell this pod's sandbox it is about to be deleted (POST /_sandbox/release)."""

    session_id: str
    address: str
    create_id: str
    reason: str


def hook_target(pod: Pod | None) -> tuple[str, str] | None:
    """Where and with which create id a pod's hooks are called; None when they cannot
    be (no address yet, or a pod from a version that gave it no create id)."""
    if pod is None or not pod.address or not pod.create_id:
        return None
    return pod.address, pod.create_id


def unanswered(within: float) -> BusyAnswer:
    return BusyAnswer(False, f"none within {within:g}s", answered=False)


class BusyChecks:
    """Status checks in flight, and the latest not-busy answer of each session (what
    its end records, if it ends soon after)."""

    def __init__(self, limits: Limits) -> None:
        # How long an answer may take before it counts as none, and how long a not-busy
        # answer stays the reason a session is reclaimed.
        self.wait = limits.hook_timeout + CHECK_MARGIN
        self.pending: dict[str, float] = {}  # session id -> its fallback deadline
        self._answers: dict[str, tuple[BusyAnswer, float]] = {}

    def start(self, session_id: str, now: float) -> float:
        """A check is asked now: the deadline after which it counts as unanswered."""
        due = now + self.wait
        self.pending[session_id] = due
        return due

    def expired(self, session_id: str, now: float) -> bool:
        """The fallback deadline of this session's check has passed with no answer
        (a later check's deadline, pushed after an answer, is not yet due)."""
        due = self.pending.get(session_id)
        if due is None or due > now:
            return False
        del self.pending[session_id]
        return True

    def answered(self, session_id: str, answer: BusyAnswer, now: float) -> bool:
        """Record an answer; True if the pool was waiting for it (an idle check)."""
        if not answer.busy:
            self._answers[session_id] = (answer, now)
        else:
            self._answers.pop(session_id, None)
        return self.pending.pop(session_id, None) is not None

    def recent(self, session_id: str, now: float) -> BusyAnswer | None:
        """The not-busy answer given for this session just now, if any."""
        found = self._answers.get(session_id)
        if found is None or now - found[1] > self.wait:
            return None
        return found[0]

    def forget(self, session_id: str) -> None:
        self.pending.pop(session_id, None)
        self._answers.pop(session_id, None)
