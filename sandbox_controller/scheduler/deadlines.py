"""A min-heap of (when, kind, key) with lazy invalidation.

Entries are never removed early: whoever pops one checks the current state and
either acts, drops it, or pushes the real deadline again. So each session has at
most a few live entries, however often it is touched.
"""

from __future__ import annotations

import enum
import heapq


class DeadlineKind(enum.StrEnum):
    """What a deadline is for, and so which policy acts on it (pool.py dispatches).
    A str enum: entries due at the same time order by kind, as they always have."""

    REPLY = "reply"  # a POST /sessions caller's wait ends (admission.py)
    IDLE = "idle"  # a ready session's idle timeout (idling.py)
    BUSY_CHECK = "busy_check"  # a status check's fallback (idling.py)
    LIFETIME = "lifetime"  # a session's max lifetime (pool.py)
    SESSION_STARTUP = "session_startup"  # a session not ready in time (pool.py)
    POD_STARTUP = "pod_startup"  # a pod not ready in time (lifecycle.py)
    POD_DELETE = "pod_delete"  # a delete to send, or to send again (lifecycle.py)
    CLAIM = "claim"  # a claim hook's fallback (claiming.py)
    SNAPSHOT = "snapshot"  # a snapshot call's fallback (suspension.py)
    RESTORE = "restore"  # a restore call's fallback (suspension.py)
    ARCHIVE_EXPIRY = "archive_expiry"  # a suspended session's retention (suspension.py)
    # Wake-ups only: the tick's reconcile acts on them (create again, a new target).
    CREATE_BACKOFF = "create_backoff"
    PREWARM = "prewarm"


class Deadlines:
    def __init__(self) -> None:
        self._heap: list[tuple[float, DeadlineKind, str]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, when: float, kind: DeadlineKind, key: str) -> None:
        heapq.heappush(self._heap, (when, kind, key))

    def earliest(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[tuple[DeadlineKind, str]]:
        """Pop every entry whose time has come, earliest first."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            _, kind, key = heapq.heappop(self._heap)
            out.append((kind, key))
        return out
