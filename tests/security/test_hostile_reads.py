"""Issue 17, rows 2, 4 and 14: every read from a sandbox is bounded.

Real processes only: the hostile sandbox (hostile_sandbox.py) attacks a proxy process
(``python -m proxy``) through a forwarded request, and a controller process (the local
backend running hostile sandboxes, hostile_controller.py) through its hooks. While each
attack runs, the attacked process is watched from outside: its resident memory
(/proc/<pid>/status; VmHWM is reset first, so the peak between two samples is seen too)
and its event loop, through a /healthz request every 50 ms. The issue's bounds: RSS
growth under 50 MiB, no /healthz slower than 250 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..eventually import eventually
from ..proxy.conftest import API_TOKEN, SECRET, ControllerDouble, serve, token_for
from . import hostile_sandbox as hostile

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

RSS_GROWTH_MAX_MIB = 50
HEALTHZ_MAX_MS = 250
HEAD_TIMEOUT = 2.0  # the proxy's SANDBOX_HEADER_READ_TIMEOUT in these tests
HOOK_TIMEOUT = 2.0  # the controller's SANDBOX_HOOK_TIMEOUT (its default)


# ------------------------------------------------------------------ watching a process


def status_kib(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{name} not in /proc/{pid}/status")


@dataclass
class Pressure:
    """What an attacked process went through, measured from outside."""

    what: str
    rss_before_kib: int
    rss_peak_kib: int = 0
    rss_after_kib: int = 0
    healthz_ms: list[float] = field(default_factory=list)

    @property
    def growth_mib(self) -> float:
        return (self.rss_peak_kib - self.rss_before_kib) / 1024

    @property
    def slowest_ms(self) -> float:
        return max(self.healthz_ms)

    def report(self) -> str:
        return (
            f"{self.what}: RSS {self.rss_before_kib / 1024:.1f} MiB before, peak "
            f"+{self.growth_mib:.1f} MiB, {self.rss_after_kib / 1024:.1f} MiB after; "
            f"/healthz x{len(self.healthz_ms)}, slowest {self.slowest_ms:.1f} ms"
        )

    def check(self) -> None:
        print(self.report())
        assert self.healthz_ms, "no /healthz was answered during the attack"
        assert self.growth_mib < RSS_GROWTH_MAX_MIB, self.report()
        assert self.slowest_ms < HEALTHZ_MAX_MS, self.report()


@contextlib.asynccontextmanager
async def watched(what: str, pid: int, healthz: str) -> AsyncIterator[Pressure]:
    """Watch ``pid`` while the block runs: RSS and a /healthz every 50 ms."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS: from here, VmHWM is this attack's peak
    pressure = Pressure(what, status_kib(pid, "VmRSS"))
    stop = asyncio.Event()

    async def probe() -> None:
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            while not stop.is_set():
                started = time.perf_counter()
                response = await client.get(healthz)
                took = time.perf_counter() - started
                assert response.status_code == 200
                pressure.healthz_ms.append(took * 1000)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, 0.05 - took))

    task = asyncio.create_task(probe())
    try:
        yield pressure
    finally:
        stop.set()
        await task
        pressure.rss_peak_kib = max(status_kib(pid, "VmHWM"), status_kib(pid, "VmRSS"))
        pressure.rss_after_kib = status_kib(pid, "VmRSS")


async def for_a_while(seconds: float) -> None:
    """Let an attack run (the process is watched meanwhile): the attack has no end of
    its own to wait for, by design."""
    await asyncio.sleep(seconds)


# ------------------------------------------------------------------ the proxy


@dataclass
class Proxy:
    pid: int
    base: str


@contextlib.asynccontextmanager
async def proxy_to(sandbox: str, session_id: str) -> AsyncIterator[Proxy]:
    """A proxy process routing ``session_id`` to ``sandbox`` (through a controller
    double served here), with a 2 s head timeout."""
    controller = ControllerDouble()
    controller.add(session_id, "ready", sandbox)
    served = await serve(controller.app())
    env = dict(
        os.environ,
        PYTHONPATH=str(hostile.REPO_ROOT),
        SANDBOX_TOKEN_SECRET=SECRET,
        SANDBOX_API_TOKEN=API_TOKEN,
        SANDBOX_CONTROLLER_URL=f"http://127.0.0.1:{served.port}",
        SANDBOX_HEADER_READ_TIMEOUT=f"{HEAD_TIMEOUT}s",
        SANDBOX_LOG_LEVEL="warning",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "--port", "0", env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        yield Proxy(proc.pid, "http://" + line.split()[1])
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        await served.stop()


async def open_connections(sandbox: str) -> int:
    async with httpx.AsyncClient(trust_env=False) as client:
        answer = await client.get(f"http://{sandbox}/_hostile/connections")
    return int(answer.json()["open"])


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        ("huge-headers", "upstream_head_too_large"),  # 400 MB of headers, then held
        ("status-line-hold", "upstream_head_timeout"),
        ("trickle-head", "upstream_head_timeout"),  # a header byte every 0.2 s
    ],
)
async def test_the_proxy_bounds_a_sandbox_response_head(mode: str, code: str) -> None:
    async with (
        hostile.running("--mode", mode, "--interval", "0.2") as sandbox,
        proxy_to(sandbox, "sess-h") as proxy,
    ):
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            warm = await client.get(f"{proxy.base}/healthz")  # the process settles first
            assert warm.status_code == 200
            async with watched(f"proxy, {mode}", proxy.pid, f"{proxy.base}/healthz") as seen:
                started = time.monotonic()
                answer = await client.get(
                    f"{proxy.base}/s/sess-h/page", headers={"x-sandbox-token": token_for("sess-h")}
                )
                took = time.monotonic() - started
                await for_a_while(0.5)  # memory is given back, not just not taken
        assert answer.status_code == 502
        assert answer.json()["error"]["code"] == code
        assert took < HEAD_TIMEOUT + 1.5, f"502 after {took:.1f} s"
        print(f"{mode}: 502 {code} after {took:.2f} s")
        seen.check()
        # The proxy hung up on the sandbox: nothing is kept for a next request.
        await eventually(
            lambda: _none_open(sandbox), within=5, what="the proxy to close the connection"
        )


async def _none_open(sandbox: str) -> bool:
    return await open_connections(sandbox) == 0


# ------------------------------------------------------------------ the controller


@dataclass
class Controller:
    pid: int
    base: str
    client: httpx.AsyncClient
    stderr: Path

    async def metric(self, line: str) -> float:
        text = (await self.client.get("/metrics")).text
        match = re.search(rf"^{re.escape(line)} (\S+)$", text, re.MULTILINE)
        assert match, f"{line} not in /metrics"
        return float(match.group(1))

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")


@contextlib.asynccontextmanager
async def controller_with(
    tmp_path: Path, *hostile_args: str, **settings: str
) -> AsyncIterator[Controller]:
    """A controller process whose local sandboxes are hostile ones (``hostile_args``)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(hostile.REPO_ROOT),
        "SANDBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/sandbox.db",
        "SANDBOX_STATE_DIR": str(tmp_path / "state"),
        "SANDBOX_API_TOKEN": API_TOKEN,
        "SANDBOX_TOKEN_SECRET": SECRET,
        "SANDBOX_PORT": "0",
        "SANDBOX_PREWARM_POOL_SIZE": "1",
        "SANDBOX_MAX_TOTAL_JOBS": "4",
        "SANDBOX_HOOK_TIMEOUT": f"{HOOK_TIMEOUT}s",
        "SANDBOX_LOG_LEVEL": "info",
        **settings,
    }
    stderr = tmp_path / "controller.log"
    with open(stderr, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.security.hostile_controller",
            *hostile_args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("listening "), stderr.read_text()
        base = "http://" + line.split()[1]
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with httpx.AsyncClient(
            base_url=base, headers=headers, timeout=60, trust_env=False
        ) as client:
            yield Controller(proc.pid, base, client, stderr)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    assert "Traceback" not in stderr.read_text(), stderr.read_text()


async def wait_idle_pods(ctl: Controller, count: int) -> None:
    async def ready() -> bool:
        return int((await ctl.client.get("/pool")).json()["pods"]["idle"]) >= count

    await eventually(ready, within=60, what=f"{count} warm pods")


async def open_session(ctl: Controller, user: str, wait: float = 30) -> dict[str, Any]:
    response = await ctl.client.post(
        "/sessions", json={"user_id": user, "thread_id": f"{user}-t", "wait_seconds": wait}
    )
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


async def status_no_answers(ctl: Controller) -> float:
    return await ctl.metric('sandbox_status_checks_total{answer="no_answer"}')


def bound_lines(ctl: Controller, hook: str) -> list[str]:
    return [line for line in ctl.log().splitlines() if f"bounds of its {hook} hook" in line]


# Each session's sandbox is asked before its idle timeout ends it: a second after its
# last activity, here, so the attack comes without waiting out the real defaults.
IDLE_SOON = {"SANDBOX_IDLE_AFTER": "1s", "SANDBOX_IDLE_TIMEOUT": "1s"}


async def test_status_answers_of_a_gigabyte_cost_the_controller_nothing(tmp_path: Path) -> None:
    """Row 4: three sessions' sandboxes, asked at their idle timeout, each answer 1 GB."""
    async with controller_with(
        tmp_path, "--status", "huge-json", SANDBOX_PREWARM_POOL_SIZE="3", **IDLE_SOON
    ) as ctl:
        await wait_idle_pods(ctl, 3)
        async with watched("controller, 3 x 1 GB status", ctl.pid, f"{ctl.base}/healthz") as seen:
            for user in ("ann", "bob", "cyd"):
                assert (await open_session(ctl, user))["state"] == "ready"
            await eventually(
                lambda: _at_least(status_no_answers(ctl), 3), within=30, what="3 status calls"
            )
            await for_a_while(0.5)
        seen.check()
        lines = bound_lines(ctl, "status")
        assert len(lines) == 3 and all("an answer over the 65536 bytes" in x for x in lines)


async def test_a_hundred_thousand_nested_brackets_are_no_answer(tmp_path: Path) -> None:
    """Row 14: counted as no answer (the metric too), logged once, never a traceback."""
    async with controller_with(tmp_path, "--status", "deep-json", **IDLE_SOON) as ctl:
        await wait_idle_pods(ctl, 1)
        async with watched("controller, deep JSON status", ctl.pid, f"{ctl.base}/healthz") as seen:
            assert (await open_session(ctl, "ann"))["state"] == "ready"
            await eventually(
                lambda: _at_least(status_no_answers(ctl), 1), within=30, what="a status call"
            )
        seen.check()
        assert len(bound_lines(ctl, "status")) == 1
    # controller_with checks, once it has stopped, that its log holds no traceback


async def _at_least(value: Awaitable[float], count: float) -> bool:
    return await value >= count


async def test_a_claim_answer_streaming_at_full_speed_costs_the_controller_nothing(
    tmp_path: Path,
) -> None:
    """Row 4: every warm pod's claim hook answers an endless body as fast as it can."""
    async with controller_with(tmp_path, "--claim", "flood") as ctl:
        await wait_idle_pods(ctl, 1)
        async with watched("controller, claim flood", ctl.pid, f"{ctl.base}/healthz") as seen:
            opening = asyncio.create_task(open_session(ctl, "ann", wait=3))
            await eventually(lambda: claims_failed(ctl, 2), within=30, what="two claims to fail")
            await for_a_while(1.0)
        seen.check()
        await end_sessions(ctl, "ann", opening)
        assert all("an answer over the 65536 bytes" in x for x in bound_lines(ctl, "claim"))


async def test_a_trickled_claim_answer_fails_by_the_hook_timeout(tmp_path: Path) -> None:
    """A byte every 0.2 s satisfies every per-read timeout; the call's deadline ends it."""
    async with controller_with(tmp_path, "--claim", "trickle-body", "--interval", "0.2") as ctl:
        await wait_idle_pods(ctl, 1)
        started = time.monotonic()
        opening = asyncio.create_task(open_session(ctl, "ann", wait=2))
        await eventually(lambda: claims_failed(ctl, 1), within=30, what="the claim to fail")
        took = time.monotonic() - started
        print(f"trickled claim failed after {took:.2f} s (hook timeout {HOOK_TIMEOUT:g} s)")
        assert took < HOOK_TIMEOUT + 2.0
        await end_sessions(ctl, "ann", opening)
        assert any("(timed out)" in x for x in bound_lines(ctl, "claim"))


async def end_sessions(ctl: Controller, user: str, opening: asyncio.Task[Any]) -> None:
    """End what the attack left: the open, if it still waits, and the user's sessions
    (what a failing claim does to its session is test_claim_flood.py's part)."""
    opening.cancel()
    with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
        await opening
    listed = (await ctl.client.get("/sessions", params={"user_id": user})).json()
    for session in listed["sessions"]:
        await ctl.client.delete(f"/sessions/{session['id']}")


async def claims_failed(ctl: Controller, count: int) -> bool:
    return await ctl.metric("sandbox_claim_hook_failures_total") >= count
