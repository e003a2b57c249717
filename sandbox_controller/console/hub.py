"""The console's live feed: one task follows the scheduler's change feed and tells
every open console (one Server-Sent Events stream each) what changed.

It wakes after a committed round, at most every TICK, reads only the sessions that
round wrote, and publishes one small message that all streams share. Along the way
it keeps what the scheduler does not: each session's recent history of activity
and the pool's counts over the last hour (the chart).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass

from ..controller import Controller
from ..model import PodState, PoolStatus, Session, SessionState, SessionView
from ..scheduler.loop import Scheduler

log = logging.getLogger(__name__)

TICK = 0.5  # at most two messages a second: a change shows within a second
SAMPLE_EVERY = 10.0  # pool history: one point per 10 s ...
SAMPLES = 360  # ... for the last hour
MESSAGES = 128  # a stream further behind than this reloads its page instead
HISTORY_SESSIONS = 10_000  # sessions whose history is kept (the least recent go first)
HISTORY_ENTRIES = 20
IDS_MAX = 200  # a message names at most this many sessions; beyond it, "all"


@dataclass
class Entry:
    """One line of a session's history."""

    at: float
    what: str
    count: int = 1  # activity of one source in a row is one line


@dataclass(frozen=True)
class Sample:
    at: float
    pods: dict[PodState, int]
    creating: int
    waiters: int


class Hub:
    def __init__(self, controller: Controller) -> None:
        self._ctl = controller
        self.version = 0
        self.leading = False
        self._messages: deque[tuple[int, str]] = deque(maxlen=MESSAGES)
        self._published = asyncio.Event()
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._seen: dict[str, tuple[object, ...]] = {}
        self.history: OrderedDict[str, deque[Entry]] = OrderedDict()
        self.samples: deque[Sample] = deque(maxlen=SAMPLES)
        self._next_sample = 0.0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="console-hub")

    async def stop(self) -> None:
        """End every stream (so a drain does not wait on them) and the task."""
        self._closed.set()
        self._wake_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # ------------------------------------------------------------ streams

    def since(self, version: int) -> list[tuple[int, str]] | None:
        """Messages after ``version``; None if some of them are no longer kept."""
        if version >= self.version:
            return []
        if not self._messages or self._messages[0][0] > version + 1:
            return None
        return [m for m in self._messages if m[0] > version]

    async def next_message(self, timeout: float) -> None:
        """Until something is published (or the timeout, for a heartbeat)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._published.wait()

    def _publish(self, body: dict[str, object]) -> None:
        self.version += 1
        body["v"] = self.version
        self._messages.append((self.version, json.dumps(body)))
        self._wake_streams()

    def _wake_streams(self) -> None:
        self._published.set()
        self._published = asyncio.Event()

    # ------------------------------------------------------------ the task

    async def _run(self) -> None:
        while not self._closed.is_set():
            try:
                scheduler = self._ctl.scheduler
                if scheduler is None or not scheduler.running:
                    await self._standby()
                else:
                    await self._follow(scheduler)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the feed for good
                log.exception("console feed failed; starting again")
                await asyncio.sleep(1.0)

    async def _standby(self) -> None:
        if self.leading:
            self.leading = False
            self._publish({"standby": True})
        await asyncio.sleep(TICK)

    async def _follow(self, scheduler: Scheduler) -> None:
        feed = scheduler.changes
        if not self.leading:
            self.leading = True
            feed.take()
            self._note(scheduler.live_sessions(), first=True)
            self._publish({"ids": [], "all": True})
        while scheduler.running and not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SAMPLE_EVERY):
                    await feed.wait()
            if not scheduler.running:
                return
            now = self._ctl.clock.now()
            if now >= self._next_sample:
                self._next_sample = now + SAMPLE_EVERY
                self._sample(scheduler.snapshot(now))
            changed, everything = feed.take()
            if everything:
                self._note(scheduler.live_sessions(), first=True)
            elif changed:
                self._note(scheduler.sessions_now(changed))
            if changed or everything:
                ids = sorted(changed)[:IDS_MAX]
                self._publish({"ids": ids, "all": everything or len(changed) > IDS_MAX})
            await asyncio.sleep(TICK)

    def _sample(self, status: PoolStatus) -> None:
        self.samples.append(
            Sample(self._ctl.clock.now(), dict(status.pods), status.creating, status.waiters)
        )

    # ------------------------------------------------------------ history

    def _note(self, views: list[SessionView], *, first: bool = False) -> None:
        for view in views:
            session = view.session
            key = (
                session.state,
                session.pod_name,
                session.last_active_at,
                session.activity_source,
                session.activity_detail,
            )
            before = self._seen.get(session.id)
            if before == key:
                continue
            if session.state is SessionState.ENDED:
                self._seen.pop(session.id, None)
            else:
                self._seen[session.id] = key
            for entry in _entries(session, before, first=first):
                self._add(session.id, entry)

    def _add(self, session_id: str, entry: Entry) -> None:
        lines = self.history.get(session_id)
        if lines is None:
            lines = self.history[session_id] = deque(maxlen=HISTORY_ENTRIES)
            while len(self.history) > HISTORY_SESSIONS:
                self.history.popitem(last=False)
        else:
            self.history.move_to_end(session_id)
        last = lines[-1] if lines else None
        if last is not None and last.what == entry.what and entry.what.startswith("activity"):
            last.at, last.count = entry.at, last.count + 1
            return
        lines.append(entry)


def _entries(session: Session, before: tuple[object, ...] | None, *, first: bool) -> list[Entry]:
    """What changed about a session since it was last seen, as history lines."""
    out = []
    if before is None:
        state = session.state.value
        what = f"seen {state} (the console started)" if first else f"opened ({state})"
        out.append(Entry(session.last_active_at if first else session.created_at, what))
        if first:
            return out
    old_state = before[0] if before is not None else SessionState.PROVISIONING
    if session.state is not old_state:
        if session.state is SessionState.READY:
            out.append(Entry(session.last_active_at, f"ready on {session.pod_name}"))
        elif session.state is SessionState.ENDED:
            reason = session.end_reason.value if session.end_reason else "ended"
            out.append(Entry(session.ended_at or session.last_active_at, f"ended: {reason}"))
    elif before is not None and session.last_active_at != before[2]:
        source = session.activity_source.value if session.activity_source else "unknown"
        detail = f": {session.activity_detail}" if session.activity_detail else ""
        out.append(Entry(session.last_active_at, f"activity ({source}){detail}"))
    return out
