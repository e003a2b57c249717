"""In-memory stand-ins for what the scheduler loop talks to: a store that can be held
or made to fail, and a backend that logs every call it receives (the outside witness
of which effects were started, and when)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace

from sandbox_controller.backends.base import (
    BackendError,
    LeaseLost,
    PodEvent,
    PodPhase,
    PodStatus,
)
from sandbox_controller.backends.kit import EventFeed
from sandbox_controller.model import EndReason, Pod, Session, SessionPage, SessionQuery
from sandbox_controller.store import Batch, Fence


class FakeStore:
    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.pods: dict[str, Pod] = {}
        self.writes: list[Batch] = []  # every write that committed, in order
        self.write_started = asyncio.Event()
        self.gate: asyncio.Event | None = None  # when set, a write waits for it to open
        self.failures = 0  # this many writes fail next
        self.load_failures = 0  # this many loads fail next (the store is down)

    async def load(self) -> tuple[list[Session], list[Pod]]:
        if self.load_failures:
            self.load_failures -= 1
            raise ConnectionError("the database is down")
        live = [replace(s, requests=[]) for s in self.sessions.values() if s.live]
        return live, [replace(p) for p in self.pods.values()]

    async def get_session(self, session_id: str) -> Session | None:
        session = self.sessions.get(session_id)
        return replace(session, requests=[]) if session else None

    async def list_sessions(self, user_id: str, limit: int = 100) -> list[Session]:
        mine = [replace(s) for s in self.sessions.values() if s.user_id == user_id]
        return sorted(mine, key=lambda s: s.created_at, reverse=True)[:limit]

    async def query_sessions(self, query: SessionQuery) -> SessionPage:
        found = [
            replace(s, requests=[])
            for s in self.sessions.values()
            if (query.user_id is None or s.user_id == query.user_id)
            and (not query.states or s.state in query.states)
        ]
        found.sort(key=lambda s: (s.created_at, s.id), reverse=True)
        if query.after is not None:
            found = [s for s in found if (s.created_at, s.id) < query.after]
        page = found[: query.limit]
        more = len(found) > query.limit
        return SessionPage(page, (page[-1].created_at, page[-1].id) if more else None)

    async def recent_ended(self, limit: int) -> list[Session]:
        ended = [replace(s, requests=[]) for s in self.sessions.values() if not s.live]
        return sorted(ended, key=lambda s: s.ended_at or 0.0, reverse=True)[:limit]

    async def purge_user(self, user_id: str) -> int:
        gone = [sid for sid, s in self.sessions.items() if s.user_id == user_id and not s.live]
        for sid in gone:
            del self.sessions[sid]
        return len(gone)

    async def write(self, batch: Batch, fence: Fence | None) -> None:
        self.write_started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the database went away")
        for session in batch.sessions:
            self.sessions[session.id] = replace(session, requests=[])
        for pod in batch.pods:
            self.pods[pod.name] = replace(pod)
        for name in batch.forgotten_pods:
            self.pods.pop(name, None)
        self.writes.append(batch)


class FakeBackend:
    template_hash = "tmpl"

    def __init__(self) -> None:
        self.pods: dict[str, PodStatus] = {}
        self.calls: list[tuple[str, str]] = []  # (operation, pod name), in order
        self._events = EventFeed()
        self._events.begin()  # never ended: the fake follows for as long as it lives
        self._names = itertools.count(1)
        self.lease_ok = True  # what the write guard says: False refuses every write
        self.create_error: BackendError | None = None  # raised by every create while set

    def _guard(self) -> None:
        if not self.lease_ok:
            raise LeaseLost()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def create_pod(self, labels: Mapping[str, str]) -> str:
        self._guard()
        if self.create_error is not None:
            self.calls.append(("create", ""))  # asked, refused: no pod
            raise self.create_error
        name = f"pod-{next(self._names)}"
        self.pods[name] = PodStatus(name, PodPhase.PENDING, labels=dict(labels))
        self.calls.append(("create", name))
        return name

    async def delete_pod(self, name: str) -> None:
        self._guard()
        self.calls.append(("delete", name))
        if self.pods.pop(name, None) is not None:
            self._events.put(PodEvent(PodStatus(name, PodPhase.FAILED), deleted=True))

    async def set_labels(self, name: str, labels: Mapping[str, str]) -> None:
        self._guard()
        self.calls.append(("label", name))

    async def resync(self) -> list[PodStatus]:
        return self._events.resync(list(self.pods.values()))

    def events(self) -> AsyncIterator[PodEvent]:
        return self._events.events()

    async def close(self) -> None:
        pass

    def make_ready(self) -> list[str]:
        """Every pending pod turns ready, with an address of its own."""
        names = [n for n, p in self.pods.items() if p.phase is PodPhase.PENDING]
        for name in names:
            address = f"127.0.0.1:{9000 + int(name.split('-')[1])}"
            self.pods[name] = replace(self.pods[name], phase=PodPhase.READY, address=address)
            self._events.put(PodEvent(self.pods[name]))
        return names

    def emit(self, status: PodStatus) -> None:
        """An event as a watch would deliver it, whether or not it is news."""
        self._events.put(PodEvent(status))

    def calls_of(self, operation: str) -> list[str]:
        return [name for op, name in self.calls if op == operation]


class RecordingObserver:
    def __init__(self) -> None:
        self.rounds: list[int] = []
        self.store_failures = 0
        self.backend_failures: list[str] = []
        self.backend_failure_kinds: list[str] = []
        self.started: list[float] = []
        self.ended: list[EndReason] = []
        self.claim_failures = 0
        self.status_answers: list[str] = []

    def round_committed(self, commands: int) -> None:
        self.rounds.append(commands)

    def store_failed(self) -> None:
        self.store_failures += 1

    def backend_failed(self, operation: str, kind: str) -> None:
        self.backend_failures.append(operation)
        self.backend_failure_kinds.append(str(kind))

    def pod_started(self, seconds: float) -> None:
        self.started.append(seconds)

    def session_ended(self, reason: EndReason) -> None:
        self.ended.append(reason)

    def claim_hook_failed(self) -> None:
        self.claim_failures += 1

    def status_answered(self, answer: str) -> None:
        self.status_answers.append(answer)
