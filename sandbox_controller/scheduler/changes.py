"""Change notifications for watchers of the pool (the operator console).

After each committed round the loop bumps a version and notes which sessions the
round wrote; a watcher wakes on it, takes the ids, and reads only those sessions.
Nothing is copied or formatted on the loop's side: a round pays a set union and an
event, and only while someone watches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class ChangeFeed:
    def __init__(self) -> None:
        self.version = 0
        self.watched = False
        self._changed: set[str] = set()
        # A rebuild from the store: every session may have changed.
        self._everything = False
        self._event = asyncio.Event()

    def committed(self, session_ids: Iterable[str]) -> None:
        """A round was committed, having written these sessions."""
        if not self.watched:
            return
        self.version += 1
        self._changed.update(session_ids)
        self._event.set()

    def rebuilt(self) -> None:
        self.version += 1
        self._everything = True
        self._event.set()

    async def wait(self) -> None:
        """Until a round has been committed since the last ``take``."""
        self.watched = True
        await self._event.wait()

    def take(self) -> tuple[set[str], bool]:
        """The sessions changed since the last call, and whether everything may have."""
        changed, everything = self._changed, self._everything
        self._changed, self._everything = set(), False
        self._event.clear()
        return changed, everything
