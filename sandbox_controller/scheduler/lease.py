"""How long this process may act on its leader lease, by its own monotonic clock.

The database says who holds the lease; only this process's clock can say whether it
may still act on it. A renewal query sent at ``t`` (monotonic) made the lease good
until ``t + ttl`` in the database's eyes at the earliest, so the process may act until
``t + ttl - margin`` (client-go's renew deadline): the margin absorbs clock rate
differences and the time between a check and the request it guards. Taking the time
the query was *sent*, not answered, keeps a slow or paused answer from lengthening
the lease.

A gap in the process's own progress (a pause: SIGSTOP, a long GC, a frozen VM) makes
the lease unusable until the database has confirmed it again, whatever the
arithmetic says: a process that was not running cannot know what happened meanwhile.

Pure: the caller passes every ``now`` in; nothing here awaits.
"""

from __future__ import annotations

import math


class LeaseTerm:
    def __init__(self, ttl: float, margin: float, max_gap: float) -> None:
        if not 0 <= margin < ttl:
            raise ValueError("the lease margin must be at least 0 and less than the TTL")
        self.ttl = ttl
        self.margin = margin
        self.max_gap = max_gap  # a longer stretch without a tick is a pause
        self.usable_until = -math.inf
        self._last_tick = -math.inf

    def renewed(self, sent_at: float) -> None:
        """The database confirmed the lease, by a query sent at ``sent_at``."""
        self.usable_until = max(self.usable_until, sent_at + self.ttl - self.margin)

    def lost(self) -> None:
        self.usable_until = -math.inf

    def resting(self, now: float) -> None:
        """The keeper goes to sleep until its next tick: the gap that tick measures is
        the sleep and its overrun only. A slow store call before it is no pause (the
        lease counts from when that query was sent)."""
        self._last_tick = now

    def tick(self, now: float) -> bool:
        """The keeper's regular tick; False (and the lease unusable until renewed
        again) if the time since the last one shows the process was paused. The first
        tick has nothing to compare with, so it is never a pause."""
        paused = self._last_tick > -math.inf and now - self._last_tick > self.max_gap
        self._last_tick = now
        if paused:
            self.lost()
        return not paused

    def usable(self, now: float) -> bool:
        return now < self.usable_until
