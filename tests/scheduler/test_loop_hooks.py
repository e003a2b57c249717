"""The scheduler loop's hook effects against sandboxes that are real HTTP servers on
loopback: one with no hooks (404), one that accepts and never answers, one that says
it is not busy and counts the asks. The backend and store are fakes.py's; the clock is
a ManualClock, so the pool's own deadlines move only when a test says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from sandbox_controller.backends.base import LABEL_CREATE_ID, PodPhase, PodStatus
from sandbox_controller.clock import ManualClock
from sandbox_controller.errors import UserSessionLimit
from sandbox_controller.hooks import SandboxHooks
from sandbox_controller.model import EndReason, Opened, SessionState
from sandbox_controller.scheduler.loop import Scheduler

from ..eventually import eventually
from .fakes import FakeBackend, FakeStore
from .harness import limits_with

LIMITS = limits_with(
    prewarm_pool_size=2,
    max_sessions_per_user=1,
    idle_after=300,
    idle_timeout=3600,
    hooks=True,
    hook_timeout=0.3,
)


@dataclass
class Sandbox:
    """A sandbox's HTTP server: ``mode`` is "no hooks" (404 to all), "hung" (reads the
    request, never answers) or "quiet" (not busy)."""

    mode: str
    paths: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1].decode()
        self.paths.append(path)
        # A hung sandbox hung after it was claimed: its claim was answered (no hook).
        if self.mode == "hung" and path != "/_sandbox/claim":
            await self.stopping.wait()
            writer.close()
            return
        quiet = self.mode == "quiet"
        body = b'{"busy": false, "detail": ""}' if quiet else b""
        status = b"200 OK" if quiet else b"404 Not Found"
        writer.write(b"HTTP/1.1 %s\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body))
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        self.stopping.set()  # lets a hung handler return, closing its connection
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass
class World:
    scheduler: Scheduler
    backend: FakeBackend
    clock: ManualClock
    sandboxes: list[Sandbox]

    async def sandboxes_ready(self, mode: str) -> None:
        """Every pending pod turns ready, each served by a sandbox of this mode."""
        for name, status in list(self.backend.pods.items()):
            if status.phase is PodPhase.PENDING:
                sandbox = Sandbox(mode)
                self.sandboxes.append(sandbox)
                address = await sandbox.start()
                labels = {**status.labels, LABEL_CREATE_ID: f"create-{name}"}
                ready = PodStatus(name, PodPhase.READY, labels, address=address)
                self.backend.pods[name] = ready
                self.backend.emit(ready)

    def sandbox_of(self, opened: Opened) -> Sandbox:
        status = self.backend.pods[opened.session.pod_name or ""]
        (sandbox,) = [s for s in self.sandboxes if s.server and status.address == _addr(s)]
        return sandbox

    def deleted(self, name: str | None) -> bool:
        return name in self.backend.calls_of("delete")


def _addr(sandbox: Sandbox) -> str:
    assert sandbox.server is not None
    host, port = sandbox.server.sockets[0].getsockname()[:2]
    return f"{host}:{port}"


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store, backend, clock = FakeStore(), FakeBackend(), ManualClock()
    hooks = SandboxHooks(b"key", timeout=LIMITS.hook_timeout, release_timeout=0.3)
    scheduler = Scheduler(limits=LIMITS, store=store, backend=backend, clock=clock, hooks=hooks)
    await scheduler.start()
    sandboxes: list[Sandbox] = []
    try:
        yield World(scheduler, backend, clock, sandboxes)
    finally:
        await scheduler.stop()
        await hooks.close()
        for sandbox in sandboxes:
            await sandbox.stop()


async def open_warm(world: World, mode: str, user: str = "ann", thread: str = "t1") -> Opened:
    await world.scheduler.settle()
    await world.sandboxes_ready(mode)
    await world.scheduler.settle()
    # A wait the manual clock never ends: answered once the claim hook accepts.
    return await world.scheduler.open_session(user, thread, 5)


async def until_ended(world: World, session_id: str) -> None:
    async def ended() -> bool:
        view = await world.scheduler.view(session_id)
        return view is not None and view.session.state is SessionState.ENDED

    await eventually(ended, within=10, what=f"{session_id} to end")


async def test_a_sandbox_without_hooks_is_idled_out_and_deleted_after_its_404s(
    world: World,
) -> None:
    opened = await open_warm(world, "no hooks")
    sandbox = world.sandbox_of(opened)
    world.clock.advance(LIMITS.idle_timeout)
    await until_ended(world, opened.session.id)
    view = await world.scheduler.view(opened.session.id)
    assert view is not None and view.session.end_reason is EndReason.IDLE_TIMEOUT
    assert view.session.end_detail is not None
    assert view.session.end_detail.busy_answer == "no answer (no status hook)"
    await eventually(lambda: world.deleted(opened.session.pod_name), what="the delete")
    assert sandbox.paths == ["/_sandbox/claim", "/_sandbox/status", "/_sandbox/release"]


async def test_a_hung_sandbox_is_reclaimed_and_deleted_though_its_release_never_answers(
    world: World,
) -> None:
    opened = await open_warm(world, "hung")
    sandbox = world.sandbox_of(opened)
    world.clock.advance(LIMITS.reclaim_after + 1)
    second = await world.scheduler.open_session("ann", "t2", 0)
    assert second.reclaimed_session_id == opened.session.id
    view = await world.scheduler.view(opened.session.id)
    assert view is not None and view.session.end_detail is not None
    assert view.session.end_detail.busy_answer == "no answer (timed out)"
    await eventually(lambda: world.deleted(opened.session.pod_name), what="the delete")
    assert sandbox.paths == ["/_sandbox/claim", "/_sandbox/status", "/_sandbox/release"]


async def test_concurrent_opens_at_the_limit_ask_once_and_reclaim_once(world: World) -> None:
    opened = await open_warm(world, "quiet")
    sandbox = world.sandbox_of(opened)
    await world.sandboxes_ready("quiet")  # the refill, so every open could be warm
    world.clock.advance(LIMITS.reclaim_after + 1)
    results = await asyncio.gather(
        *(world.scheduler.open_session("ann", f"new-{i}", 0) for i in range(8)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, Opened)]
    assert len(won) == 1 and won[0].reclaimed_session_id == opened.session.id
    assert all(isinstance(r, UserSessionLimit) for r in results if r not in won)
    assert sandbox.paths.count("/_sandbox/status") == 1  # one call, shared by all eight
