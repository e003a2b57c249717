"""`sandbox-controller dev` SIGKILLed in the middle of a burst, then started again."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import sandbox_processes
from ..eventually import eventually

TOKEN = "crash-test-token"
MAX_TOTAL = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dev:
    def __init__(self, tmp: Path) -> None:
        self.state_dir = str(tmp / "state")
        self.port, self.proxy_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "SANDBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/sandbox.db",
            "SANDBOX_STATE_DIR": self.state_dir,
            "SANDBOX_API_TOKEN": TOKEN,
            "SANDBOX_TOKEN_SECRET": "crash-test-secret",
            "SANDBOX_PREWARM_POOL_SIZE": "3",
            "SANDBOX_MAX_TOTAL_JOBS": str(MAX_TOTAL),
            "SANDBOX_LOG_LEVEL": "warning",
        }
        self.log = open(tmp / "dev.log", "ab")
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sandbox_controller.cli",
                "dev",
                "--port",
                str(self.port),
                "--proxy-port",
                str(self.proxy_port),
            ],
            env=self.env,
            stdout=self.log,
            stderr=self.log,
        )
        await eventually(self._ready, within=60, what="the dev server to be ready")

    def _assert_running(self) -> None:
        # Waiting on a server that already died would only end at the deadline.
        assert self.proc is None or self.proc.poll() is None, "dev server exited"

    async def _ready(self) -> bool:
        self._assert_running()
        try:
            return (await self.client.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def pool(self) -> dict[str, Any]:
        self._assert_running()
        body: dict[str, Any] = (await self.client.get("/pool")).json()
        return body


@pytest.mark.slow
async def test_a_crash_mid_burst_loses_no_promise_and_orphans_no_sandbox(tmp_path: Path) -> None:
    dev = Dev(tmp_path)
    try:
        await dev.start()

        async def warm() -> bool:
            return int((await dev.pool())["pods"]["idle"]) >= 3

        await eventually(warm, within=60, what="the warm pool")

        plan = [(f"user{u}", f"thread-{u}-{t}") for t in range(8) for u in range(10)]
        results: dict[str, httpx.Response | Exception] = {}

        async def ask(user: str, thread: str) -> None:
            try:
                results[thread] = await dev.client.post(
                    "/sessions", json={"user_id": user, "thread_id": thread, "wait_seconds": 1}
                )
            except httpx.HTTPError as exc:
                results[thread] = exc

        tasks: list[asyncio.Task[None]] = []

        async def burst() -> None:  # a steady stream, so the kill lands in the middle
            for user, thread in plan:
                tasks.append(asyncio.create_task(ask(user, thread)))
                await asyncio.sleep(0.04)

        producer = asyncio.create_task(burst())

        async def enough_promised() -> bool:
            return (
                sum(
                    isinstance(r, httpx.Response) and r.status_code == 201 for r in results.values()
                )
                >= 6
            )

        await eventually(enough_promised, within=30, what="six sessions to be promised")
        assert not producer.done(), "the burst ended before the kill"
        assert dev.proc is not None
        dev.proc.send_signal(signal.SIGKILL)
        dev.proc.wait()
        await producer
        await asyncio.gather(*tasks)
        promised = {
            thread: r.json()
            for thread, r in results.items()
            if isinstance(r, httpx.Response) and r.status_code == 201
        }
        assert len(promised) >= 6
        assert sandbox_processes(dev.state_dir), "sandboxes survive the controller's death"

        await dev.start()  # same database, same state directory

        async def settled() -> bool:
            pods = (await dev.pool())["pods"]
            return bool(pods["terminating"] == 0 and pods["pending"] == 0)

        await eventually(settled, within=60, what="the pool to settle after recovery")
        live_per_user: dict[str, int] = {}
        for thread, body in promised.items():
            got = await dev.client.get(f"/sessions/{body['id']}")
            assert got.status_code == 200, f"session promised to {thread} was lost"
            session = got.json()
            assert session["thread_id"] == thread
            if session["state"] == "ended":
                assert session["end_reason"], session
            else:
                live_per_user[session["user_id"]] = live_per_user.get(session["user_id"], 0) + 1
            if session["state"] == "ready":
                assert session["pod"] == body["pod"] or body["state"] == "provisioning"
                route = (await dev.client.get(f"/internal/routes/{body['id']}")).json()
                async with httpx.AsyncClient() as direct:  # the adopted sandbox still serves
                    health = await direct.get(f"http://{route['address']}/healthz")
                assert health.status_code == 200
        assert all(n <= 5 for n in live_per_user.values())

        pool = await dev.pool()
        known = sum(pool["pods"].values())
        assert known <= MAX_TOTAL
        assert len(sandbox_processes(dev.state_dir)) == known, "an orphaned sandbox process"
    finally:
        await dev.client.aclose()
        leftover = stop_and_reap(dev)
    assert not leftover, "dev left sandbox processes running after SIGTERM"


def stop_and_reap(dev: Dev) -> list[int]:
    """SIGTERM dev, give its sandboxes a moment to go, and kill (and report) any that stay,
    so that a failing test does not leave processes behind either."""
    if dev.proc is not None and dev.proc.poll() is None:
        dev.proc.send_signal(signal.SIGTERM)
        dev.proc.wait(timeout=30)
    deadline = time.monotonic() + 5
    while sandbox_processes(dev.state_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = sandbox_processes(dev.state_dir)
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    return leftover
