"""`sandbox-controller dev` SIGKILLed in the middle of a burst, then started again."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import sandbox_processes

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
            [sys.executable, "-m", "sandbox_controller.cli", "dev",
             "--port", str(self.port), "--proxy-port", str(self.proxy_port)],
            env=self.env, stdout=self.log, stderr=self.log,
        )
        await self.until(self._ready, "the dev server to be ready")

    async def _ready(self) -> bool:
        try:
            return (await self.client.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def until(self, check: Any, what: str, timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await check():
            assert self.proc is None or self.proc.poll() is None, "dev server exited"
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.1)

    async def pool(self) -> dict[str, Any]:
        body: dict[str, Any] = (await self.client.get("/pool")).json()
        return body


@pytest.mark.slow
async def test_a_crash_mid_burst_loses_no_promise_and_orphans_no_sandbox(tmp_path: Path) -> None:
    dev = Dev(tmp_path)
    try:
        await dev.start()

        async def warm() -> bool:
            return int((await dev.pool())["pods"]["idle"]) >= 3

        await dev.until(warm, "the warm pool")

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
            return sum(isinstance(r, httpx.Response) and r.status_code == 201
                       for r in results.values()) >= 6

        await dev.until(enough_promised, "six sessions to be promised", timeout=30)
        assert not producer.done(), "the burst ended before the kill"
        assert dev.proc is not None
        dev.proc.send_signal(signal.SIGKILL)
        dev.proc.wait()
        await producer
        await asyncio.gather(*tasks)
        promised = {
            thread: r.json() for thread, r in results.items()
            if isinstance(r, httpx.Response) and r.status_code == 201
        }
        assert len(promised) >= 6
        assert sandbox_processes(dev.state_dir), "sandboxes survive the controller's death"

        await dev.start()  # same database, same state directory

        async def settled() -> bool:
            pods = (await dev.pool())["pods"]
            return bool(pods["terminating"] == 0 and pods["pending"] == 0)

        await dev.until(settled, "the pool to settle after recovery")
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
        if dev.proc is not None and dev.proc.poll() is None:
            dev.proc.send_signal(signal.SIGTERM)
            dev.proc.wait(timeout=30)
        await dev.client.aclose()
    # A clean stop leaves no sandbox behind either.
    for _ in range(50):
        if not sandbox_processes(dev.state_dir):
            break
        await asyncio.sleep(0.1)
    leftover = sandbox_processes(dev.state_dir)
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert not leftover, "dev left sandbox processes running after SIGTERM"
