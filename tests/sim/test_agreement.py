"""The simulator and the live controller agree: the same short trace, driven in real time
against a real `sandbox-controller dev` (local sandboxes, SQLite) by an HTTP client, and
replayed by the simulator, gives the same counts of warm claims, 429 and 503 (within
one each: the live run's clock is real, its sandboxes start in their own time)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sandbox_controller.config import load_settings
from sandbox_controller.model import Outcome
from sandbox_controller.sim.simulate import Platform, Startup, simulate
from sandbox_controller.sim.trace import EventKind, TraceEvent

from ..eventually import eventually

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

TOKEN = "agreement-token"
LIMITS = {
    "prewarm_pool_size": "2",
    "max_total_jobs": "4",
    "max_sessions_per_user": "2",
    "idle_after": "30s",
    "idle_timeout": "2m",
    "activity_flush_interval": "0.5s",
}
# Phases a few seconds apart, so a sandbox started by one is ready by the next, both
# live and simulated: warm claims, a user at the limit (429), the cap reached (503),
# closes that free room, and the pool refilling behind them.
TRACE = [
    (1, "open", "u1", "a", "2"),
    (4, "open", "u2", "b", "2"),
    (7, "open", "u3", "c", "2"),
    (10, "open", "u1", "d", "2"),
    (12, "open", "u4", "e", "1"),
    (13, "activity", "u1", "a", ""),
    (14, "open", "u1", "f", "2"),
    (16, "close", "u1", "a", "deleted"),
    (19, "open", "u4", "g", "2"),
    (21, "open", "u5", "h", "0"),
    (23, "close", "u2", "b", "deleted"),
    (23, "close", "u3", "c", "deleted"),
    (23, "close", "u1", "d", "deleted"),
    (27, "open", "u5", "i", "2"),
    (30, "open", "u6", "j", "2"),
    (33, "open", "u6", "k", "2"),
    (34, "open", "u6", "l", "2"),
]
EVENTS = [TraceEvent(float(t), EventKind(k), u, th, v) for t, k, u, th, v in TRACE]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def drive(client: httpx.AsyncClient) -> dict[str, int]:
    """Play the trace in real time: each event at its second from the start."""
    codes: dict[str, int] = {}
    session_of: dict[str, str] = {}
    tasks: list[asyncio.Task[None]] = []

    async def open_session(event: TraceEvent) -> None:
        body = {
            "user_id": event.user,
            "thread_id": event.thread,
            "wait_seconds": event.wait_seconds,
        }
        response = await client.post("/sessions", json=body)
        codes[event.thread] = response.status_code
        if response.status_code in (200, 201):
            session_of[event.thread] = response.json()["id"]

    start = time.monotonic()
    for event in EVENTS:
        await asyncio.sleep(max(0.0, start + event.time - time.monotonic()))
        if event.kind is EventKind.OPEN:
            tasks.append(asyncio.create_task(open_session(event)))
            continue
        session_id = session_of[event.thread]  # every close comes after its answer
        if event.kind is EventKind.ACTIVITY:
            assert (await client.post(f"/sessions/{session_id}/touch")).status_code == 204
        else:
            assert (await client.delete(f"/sessions/{session_id}")).status_code == 204
    await asyncio.gather(*tasks)
    return codes


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert match, name
    return float(match.group(1))


async def test_simulation_and_live_dev_agree_on_warm_claims_and_refusals(tmp_path: Path) -> None:
    port, proxy_port = free_port(), free_port()
    env = {
        **os.environ,
        **{f"SANDBOX_{name.upper()}": value for name, value in LIMITS.items()},
        "SANDBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/sandbox.db",
        "SANDBOX_STATE_DIR": str(tmp_path / "state"),
        "SANDBOX_API_TOKEN": TOKEN,
        "SANDBOX_TOKEN_SECRET": "agreement-secret",
        "SANDBOX_LOG_LEVEL": "warning",
    }
    command = [sys.executable, "-m", "sandbox_controller.cli", "dev"]
    command += ["--port", str(port), "--proxy-port", str(proxy_port)]
    with open(tmp_path / "dev.log", "ab") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    client = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    try:

        async def warm_pool() -> bool:
            assert proc.poll() is None, "dev exited"
            try:
                pool = (await client.get("/pool")).json()
            except httpx.HTTPError:
                return False
            return int(pool["pods"]["idle"]) >= 2

        await eventually(warm_pool, within=60, what="the warm pool of dev")
        codes = await drive(client)
        metrics = (await client.get("/metrics")).text
    finally:
        await client.aclose()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

    live = {
        "warm": metric(metrics, 'sandbox_session_requests_total{outcome="warm"}'),
        "429": sum(1 for c in codes.values() if c == 429),
        "503": sum(1 for c in codes.values() if c == 503),
    }
    # The simulated platform starts pods as fast as the live one did, on average.
    startup = metric(metrics, "sandbox_pod_startup_seconds_sum") / metric(
        metrics, "sandbox_pod_startup_seconds_count"
    )
    limits = load_settings(**LIMITS).limits()  # type: ignore[arg-type]
    platform = Platform(create_seconds=0.05, delete_seconds=0.5)
    result = simulate(EVENTS, limits, Startup(max(startup, 0.01)), platform=platform)
    simulated = {
        "warm": result.requests[Outcome.WARM],
        "429": result.requests[Outcome.USER_LIMIT],
        "503": result.requests[Outcome.CAPACITY],
    }
    assert simulated["warm"] >= 6 and simulated["429"] >= 1 and simulated["503"] >= 1
    for key in ("warm", "429", "503"):
        assert abs(live[key] - simulated[key]) <= 1, (key, live, simulated, codes)
