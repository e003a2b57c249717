"""The sandboxes' PodDisruptionBudget, kept equal to the sessions it protects.

The chart's budget selects assigned sandbox pods (``agent-sandbox/state=assigned``).
Sandboxes are bare pods, and a budget over pods without a controller accepts only an
integer ``minAvailable``: a percentage, or ``maxUnavailable``, makes every eviction
fail. So the controller sets ``minAvailable`` to the number of assigned pods: a drain
(``kubectl drain``, a managed node upgrade, the cluster-autoscaler, Karpenter) evicts
every warm pod at once and waits on each live session's pod (429) until the session
ends and the controller deletes it itself.

Writes are coalesced: the first change after a quiet spell is written at once, and
the changes within the next ``interval`` become one write of the latest count. A burst
of a hundred opens costs two PATCH calls, not a hundred, and a new session is covered
within one interval at worst.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..clock import Clock
from .base import BackendError

log = logging.getLogger(__name__)

# Sends the new minAvailable (the backend's call: paced, retried, write-guarded).
WriteBudget = Callable[[int], Awaitable[Any]]


class BudgetKeeper:
    def __init__(self, name: str, write: WriteBudget, clock: Clock, interval: float) -> None:
        self.name = name
        self._write = write
        self._clock = clock
        self._interval = interval
        self._wanted = 0
        self._written: int | None = None  # unknown at the start of a term
        self._changed = asyncio.Event()
        self._changed.set()  # the first term writes once, whatever the budget says
        self._failed = False

    @property
    def written(self) -> int | None:
        """The minAvailable last written (None: not yet, this term)."""
        return self._written

    def want(self, count: int) -> None:
        """The assigned pods now number ``count``."""
        if count != self._wanted:
            self._wanted = count
            self._changed.set()

    async def run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            wanted = self._wanted
            if wanted != self._written:
                await self._send(wanted)
            # The changes within the interval become one write of the latest count.
            await self._clock.sleep(self._interval)

    async def _send(self, wanted: int) -> None:
        try:
            await self._write(wanted)
        except BackendError as exc:
            # Already retried by the backend's call. The next change (or the next
            # term) tries again; meanwhile the budget errs as it stands.
            if not self._failed:
                log.warning("setting %s minAvailable to %d failed: %s", self.name, wanted, exc)
            self._failed = True
            return
        if self._failed:
            log.info("disruption budget %s is kept again", self.name)
        self._failed = False
        self._written = wanted
        log.debug("disruption budget %s: minAvailable %d", self.name, wanted)
