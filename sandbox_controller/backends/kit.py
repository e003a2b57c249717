"""What every backend does the same way: the event feed of a term and the resync that
starts a new scheduler from a list (asking a sandbox whether it serves: probing.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .base import PodEvent, PodStatus


class EventFeed:
    """The pod events of one term (the backend's start() to its stop()), in order.

    ``end()`` puts an end marker behind the events already queued, so the consumer's
    ``events()`` returns instead of waiting forever; ``begin()`` starts a new term with
    an empty queue, so a standby keeps no backlog. Events put outside a term are dropped.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[PodEvent | None] = asyncio.Queue()
        self.open = False

    def begin(self) -> None:
        self._queue = asyncio.Queue()
        self.open = True

    def end(self) -> None:
        self.open = False
        self._queue.put_nowait(None)

    def put(self, event: PodEvent) -> None:
        if self.open:
            self._queue.put_nowait(event)

    def resync(self, statuses: list[PodStatus]) -> list[PodStatus]:
        """``statuses``, a list the backend read with no await since, as the base of a
        new scheduler: the events still queued are older than it (it already shows
        what they say) and are dropped; an end marker is kept. Replayed after the list,
        a stale "pending" would read as a warm pod that stopped answering."""
        ended = False
        while not self._queue.empty():
            ended = self._queue.get_nowait() is None or ended
        if ended:
            self._queue.put_nowait(None)
        return statuses

    async def events(self) -> AsyncIterator[PodEvent]:
        queue = self._queue  # this term's: end() ends it, begin() makes another
        while True:
            event = await queue.get()
            if event is None:
                return
            yield event
