"""Orgs: what their plans bound beyond one user (README "Orgs and plans").

``OrgLedger`` keeps, per org, in memory only:

- the start times of its new sessions in the last ``RATE_WINDOW`` seconds, for
  ``sessions_per_minute`` (a sliding window: at most that many in any 60 seconds, and
  Retry-After says when the oldest leaves it). A takeover rebuilds it from the live
  sessions' stored ``created_at`` (``restored``); sessions that began and ended within
  the last minute before it are not known then, so an org may open up to that many more
  in the first minute after a takeover, never more than twice its rate in one minute.
- the warm pods it took since the warm pool was last full, for ``warm_share``: while the
  pool refills (it holds fewer idle pods than its target), an org may take at most
  ``warm_quota(share, target)`` of them; past that it is served cold (a new pod), so one
  org cannot drain the warm pool that the others' next sessions count on. Once the pool
  is full again, every org starts from zero. The counts start from zero after a
  takeover, too. Per template, the same rule runs on each template's pool and target
  (the counts are keyed by template and org).

Pure: ``now`` is given, on the scheduler's monotonic clock.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter

RATE_WINDOW = 60.0


def warm_quota(share: float, target: int) -> int:
    """Warm pods an org with this share may take while the pool refills: the share of
    the target, rounded down, but at least one for any share above 0 (so a small pool
    still serves every org warm once)."""
    if share <= 0.0:
        return 0
    return max(1, math.floor(share * target))


class OrgLedger:
    def __init__(self) -> None:
        self._starts: dict[str, list[float]] = {}
        # Per (template, org): each template's warm pool has its own target and refill.
        self._warm_taken: Counter[tuple[str, str]] = Counter()

    # ------------------------------------------------------------ rate

    def _recent(self, org_id: str, now: float) -> list[float]:
        starts = self._starts.get(org_id)
        if starts is None:
            return []
        cut = bisect.bisect_right(starts, now - RATE_WINDOW)
        del starts[:cut]
        if not starts:
            del self._starts[org_id]
        return starts

    def rate_retry_after(self, org_id: str, per_minute: int, now: float) -> float | None:
        """None if the org may open a session now, else in how many seconds it may."""
        starts = self._recent(org_id, now)
        if len(starts) < per_minute:
            return None
        return starts[-per_minute] + RATE_WINDOW - now

    def started(self, org_id: str, at: float) -> None:
        bisect.insort(self._starts.setdefault(org_id, []), at)

    def restored(self, org_id: str, created: float, now: float) -> None:
        """A live session taken back from the store, created at ``created`` (monotonic)."""
        if created > now - RATE_WINDOW:
            self.started(org_id, created)

    # ------------------------------------------------------------ warm share

    def may_take_warm(self, template: str, org_id: str, share: float, target: int) -> bool:
        return self._warm_taken[template, org_id] < warm_quota(share, target)

    def took_warm(self, template: str, org_id: str) -> None:
        self._warm_taken[template, org_id] += 1

    def pool_full(self, template: str) -> None:
        """That template's warm pool is full again: its orgs start from zero."""
        if not self._warm_taken:  # asked each round of every full pool: mostly nothing
            return
        for key in [k for k in self._warm_taken if k[0] == template]:
            del self._warm_taken[key]
