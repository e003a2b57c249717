"""A min-heap of (when, kind, key) with lazy invalidation.

Entries are never removed early: whoever pops one checks the current state and
either acts, drops it, or pushes the real deadline again. So each session has at
most a few live entries, however often it is touched.
"""

from __future__ import annotations

import heapq


class Deadlines:
    def __init__(self) -> None:
        self._heap: list[tuple[float, str, str]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, when: float, kind: str, key: str) -> None:
        heapq.heappush(self._heap, (when, kind, key))

    def earliest(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[tuple[str, str]]:
        """Pop every entry whose time has come, earliest first."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            _, kind, key = heapq.heappop(self._heap)
            out.append((kind, key))
        return out
