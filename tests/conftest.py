"""Shared fixtures: databases (SQLite and PostgreSQL) and a controller served over
real HTTP by uvicorn on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from sandbox_controller.backends.base import Backend
from sandbox_controller.backends.local import LocalBackend
from sandbox_controller.clock import Clock
from sandbox_controller.config import Settings, load_settings
from sandbox_controller.controller import Controller
from sandbox_controller.process import ControllerProcess
from sandbox_controller.serving import serve

from .browsers import browser  # noqa: F401  (a fixture for every browser test)
from .eventually import eventually

PG_ADMIN_URL = os.environ.get(
    "SANDBOX_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
API_TOKEN = "test-api-token"


@asynccontextmanager
async def fresh_postgres() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    name = f"sbx_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with fresh_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each store test runs against both databases, migrated from empty."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/sandbox.db"
        return
    async with fresh_postgres() as url:
        yield url


@dataclass
class RunningController:
    url: str
    client: httpx.AsyncClient
    controller: Controller
    settings: Settings
    stop_event: asyncio.Event
    task: asyncio.Task[None]

    async def stop(self) -> None:
        """Stop the controller process in order, as a rollout would; the fixture's
        teardown then has nothing left to do for it."""
        self.stop_event.set()
        await self.task

    async def settle(self) -> None:
        assert self.controller.scheduler is not None
        await self.controller.scheduler.settle()

    async def open(self, user: str, thread: str, wait: float = 30.0) -> httpx.Response:
        return await self.client.post(
            "/sessions", json={"user_id": user, "thread_id": thread, "wait_seconds": wait}
        )

    async def pool(self) -> dict[str, Any]:
        response = await self.client.get("/pool")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def sandboxes(self) -> dict[str, dict[str, Any]]:
        """The local backend's sandboxes, read from the state files it keeps for a
        restarted controller to adopt: name -> {"pid", "port", "labels", ...}. A file
        goes once its process has exited."""
        backend = self.controller.backend
        assert isinstance(backend, LocalBackend)
        found: dict[str, dict[str, Any]] = {}
        for path in backend.state_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text())
                found[data["name"]] = data
        return found

    def sandbox_address(self, name: str) -> str | None:
        port = self.sandboxes().get(name, {}).get("port")
        return f"127.0.0.1:{port}" if port else None

    async def wait_idle_pods(self, count: int, within: float = 30.0) -> None:
        async def ready() -> bool:
            return int((await self.pool())["pods"]["idle"]) >= count

        await eventually(ready, within=within, what=f"{count} idle pods")


ControllerFactory = Callable[..., Awaitable[RunningController]]


@pytest.fixture
async def start_controller(tmp_path: Path) -> AsyncIterator[ControllerFactory]:
    """Start controllers over real HTTP; everything they started is stopped afterwards."""
    running: list[tuple[asyncio.Event, asyncio.Task[None], httpx.AsyncClient]] = []

    async def start(
        *, clock: Clock | None = None, backend_object: Backend | None = None, **overrides: Any
    ) -> RunningController:
        values: dict[str, Any] = {
            "database_url": f"sqlite+aiosqlite:///{tmp_path}/sandbox.db",
            "state_dir": str(tmp_path / "state"),
            "api_token": API_TOKEN,
            "token_secret": "test-token-secret",
            "prewarm_pool_size": 1,
            "port": 0,
            "log_level": "warning",
        }
        values.update(overrides)
        settings = load_settings(**values)
        process = ControllerProcess(
            settings, clock=clock, backend=backend_object, stop_sandboxes_on_exit=True
        )
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve(process, stop, started.set))
        while not started.is_set():
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        port = process.port
        client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=60.0,
        )
        running.append((stop, task, client))
        return RunningController(
            f"http://127.0.0.1:{port}", client, process.controller, settings, stop, task
        )

    yield start
    for stop, task, client in reversed(running):
        await client.aclose()
        stop.set()
        await task


def sandbox_processes(marker: str = "") -> list[int]:
    """Pids of live devsandbox processes whose command line, environment or log file
    (stderr, in the backend's state directory) has marker."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if b"sandbox_controller.devsandbox" not in cmdline:
                continue
            if (proc / "stat").read_text().split()[2] == "Z":
                continue
            environ = (proc / "environ").read_bytes() if marker else b""
            # The local backend passes sandboxes no SANDBOX_* variable (such as the state
            # directory); their stderr goes to a file in it.
            log_file = os.readlink(proc / "fd" / "2").encode() if marker else b""
        except OSError:
            continue
        if any(marker.encode() in seen for seen in (cmdline, environ, log_file)):
            pids.append(int(proc.name))
    return pids


def never_ready_backend(tmp_path: Path) -> LocalBackend:
    """A local backend whose sandboxes never start (their process sleeps and never
    listens): a session waits for one until its start-up timeout."""
    never_starts = tmp_path / "never-starts"
    never_starts.write_text("#!/bin/sh\nexec sleep 600\n")
    never_starts.chmod(0o755)
    return LocalBackend(
        tmp_path / "never-ready", python=str(never_starts), ready_timeout=600.0, stop_on_close=True
    )
