"""The proxy in front of the real controller (no test double), with real sandboxes.

One test drives ``sandbox-controller dev`` from outside, with curl and a WebSocket
client; the others run the controller (``start_controller``) and the proxy
(``ProxyProcess``) in the test's loop, sharing one ManualClock, so "ten minutes later"
takes no time and every assertion about idleness is exact.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from proxy import ProxyProcess
from sandbox_controller.api.schemas import iso
from sandbox_controller.clock import ManualClock
from sandbox_controller.serving import serve

from ..conftest import ControllerFactory, RunningController, sandbox_processes
from ..eventually import eventually
from .test_dev_crash import Dev, free_port

FLUSH = 0.1  # the proxy's activity flush interval, in real seconds


class SharedNow:
    """The proxy's clock: the controller's ManualClock for every timestamp (activity
    marks, token expiry, route age), real time for the flush loop's sleeps, so batches
    keep flowing while the test holds the manual clock still."""

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock

    def now(self) -> float:
        return self._clock.now()

    def monotonic(self) -> float:
        return self._clock.monotonic()

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(max(0.0, delay))


@dataclass
class Proxied:
    ctl: RunningController
    clock: ManualClock
    http: httpx.AsyncClient

    async def open(self, user: str, thread: str) -> dict[str, Any]:
        response = await self.ctl.open(user, thread)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        assert body["state"] == "ready", body
        return body

    async def session(self, session_id: str) -> dict[str, Any]:
        response = await self.ctl.client.get(f"/sessions/{session_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def wait_active_at(self, session_id: str, at: float) -> None:
        async def landed() -> bool:
            return (await self.session(session_id))["last_active_at"] == iso(at)

        await eventually(landed, within=10, what=f"last_active_at of {session_id} to be {iso(at)}")

    async def websocket(self, session: dict[str, Any]) -> ClientConnection:
        url = "ws" + session["connect"]["url"].removeprefix("http") + "ws"
        return await connect(
            url, additional_headers=bearer(session), proxy=None, ping_interval=None
        )


ProxiedFactory = Callable[..., Awaitable[Proxied]]


def bearer(session: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['connect']['token']}"}


@pytest.fixture
async def start_proxied(start_controller: ControllerFactory) -> AsyncIterator[ProxiedFactory]:
    """A real controller plus the real proxy in front of it, on one ManualClock."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
    http = httpx.AsyncClient(timeout=30, trust_env=False)

    async def start(**overrides: Any) -> Proxied:
        clock = ManualClock()
        port = free_port()
        ctl = await start_controller(
            clock=clock,
            proxy_public_url=f"http://127.0.0.1:{port}",
            activity_flush_interval=FLUSH,
            **overrides,
        )
        settings = ctl.settings.model_copy(
            update={"controller_url": ctl.url, "proxy_port": port, "log_level": "warning"}
        )
        shutdown, ready = asyncio.Event(), asyncio.Event()
        proxy = ProxyProcess(settings, clock=SharedNow(clock))
        task = asyncio.create_task(serve(proxy, shutdown, ready.set))
        running.append((shutdown, task))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()
        assert ready.is_set(), "the proxy did not start"
        await ctl.wait_idle_pods(1)
        return Proxied(ctl, clock, http)

    yield start
    await http.aclose()
    for shutdown, task in reversed(running):  # before the controllers stop
        shutdown.set()
        await asyncio.wait_for(task, 15)


async def curl(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    body, _, status = out.decode().rpartition("\n")
    return int(status), body


async def test_dev_serves_curl_and_websockets_through_its_proxy_then_stops_clean(
    tmp_path: Path,
) -> None:
    dev = Dev(tmp_path)
    dev.env["SANDBOX_PREWARM_POOL_SIZE"] = "1"
    try:
        await dev.start()
        created = await dev.client.post("/sessions", json={"user_id": "u", "thread_id": "t"})
        assert created.status_code == 201, created.text
        session = created.json()
        url, token = session["connect"]["url"], session["connect"]["token"]
        assert url == f"http://127.0.0.1:{dev.proxy_port}/s/{session['id']}/"
        auth = f"Authorization: Bearer {token}"

        assert await curl("-H", auth, url + "healthz") == (200, "ok")
        assert await curl("-H", auth, "--data-binary", "hello via curl", url + "echo") == (
            200,
            "hello via curl",
        )
        jar = str(tmp_path / "cookies")
        status, text = await curl(
            "-c", jar, "--data-binary", "by query", f"{url}echo?token={quote(token)}"
        )
        assert (status, text) == (200, "by query")
        # The cookie set for the query token carries the next request, as in a browser.
        # A write by cookie comes from a page of the proxy's own origin (test_origin.py).
        origin = f"Origin: http://127.0.0.1:{dev.proxy_port}"
        assert await curl("-b", jar, "-H", origin, "--data-binary", "by cookie", url + "echo") == (
            200,
            "by cookie",
        )
        status, text = await curl("--data-binary", "no token", url + "echo")
        assert status == 401, text

        ws = await connect(
            "ws" + url.removeprefix("http") + "ws",
            additional_headers={"Authorization": f"Bearer {token}"},
            proxy=None,
        )
        await ws.send("text frame")
        assert await ws.recv() == "text frame"
        await ws.send(b"\x00\x01binary\xff")
        assert await ws.recv() == b"\x00\x01binary\xff"

        assert dev.proc is not None
        dev.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 15)
        # The proxy drains before the pods stop: the editor hears "going away".
        assert ws.close_code == 1001, (ws.close_code, ws.close_reason)
        assert await asyncio.to_thread(dev.proc.wait, 30) == 0
        assert sandbox_processes(dev.state_dir) == [], "a sandbox outlived dev"
    finally:
        await dev.client.aclose()
        if dev.proc is not None and dev.proc.poll() is None:
            dev.proc.kill()
            dev.proc.wait()
        for pid in sandbox_processes(dev.state_dir):
            os.kill(pid, signal.SIGKILL)


async def test_dev_exits_when_its_proxy_port_is_taken(tmp_path: Path) -> None:
    dev = Dev(tmp_path)
    dev.env["SANDBOX_PREWARM_POOL_SIZE"] = "0"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sandbox_controller.cli",
            "dev",
            "--port",
            "0",
            "--proxy-port",
            str(port := taken.getsockname()[1]),
            env=dev.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    await dev.client.aclose()
    assert proc.returncode != 0
    assert f"port {port} on 127.0.0.1 is taken".encode() in err, err.decode()


async def test_traffic_through_the_proxy_moves_last_active_at(
    start_proxied: ProxiedFactory,
) -> None:
    p = await start_proxied()
    session = await p.open("ann", "t1")
    sid, url = session["id"], session["connect"]["url"]
    assert session["last_active_at"] == iso(p.clock.now())

    p.clock.advance(600)
    echoed = await p.http.post(url + "echo", content=b"x" * 1000, headers=bearer(session))
    assert echoed.status_code == 200 and echoed.content == b"x" * 1000
    await p.wait_active_at(sid, p.clock.now())

    ws = await p.websocket(session)
    p.clock.advance(600)
    await ws.send(b"frame")
    assert await ws.recv() == b"frame"
    await p.wait_active_at(sid, p.clock.now())
    await ws.close()


async def test_a_silent_websocket_lets_the_session_be_reclaimed(
    start_proxied: ProxiedFactory,
) -> None:
    p = await start_proxied(max_sessions_per_user=1, idle_after=300)
    first = await p.open("bea", "t1")
    await p.ctl.wait_idle_pods(1)
    witness = await p.open("cid", "w1")
    ws = await p.websocket(first)
    await ws.send("hello")  # the relay works (and this is activity, at creation time)
    assert await ws.recv() == "hello"
    quiet_since = (await p.session(first["id"]))["last_active_at"]

    p.clock.advance(301)
    await asyncio.wait_for(await ws.ping(), 5)  # control frames are not activity
    # Traffic on another session after the ping: the batch that reports it carries
    # every mark the proxy made before it, so once it lands, a mark for the first would.
    seen = await p.http.get(witness["connect"]["url"] + "healthz", headers=bearer(witness))
    assert seen.status_code == 200, seen.text
    await p.wait_active_at(witness["id"], p.clock.now())
    assert (await p.session(first["id"]))["last_active_at"] == quiet_since

    second = await p.ctl.open("bea", "t2")
    assert second.status_code == 201, second.text
    assert second.json()["reclaimed_session_id"] == first["id"]
    # The reclaimed pod is deleted, and the editor's socket with it.
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 15)
    assert ws.close_code is not None and ws.close_code != 1006, ws.close_code
    ended = await p.session(first["id"])
    assert (ended["state"], ended["end_reason"]) == ("ended", "reclaimed")
    gone = await p.http.get(first["connect"]["url"] + "healthz", headers=bearer(first))
    assert gone.status_code == 410, gone.text


async def test_a_busy_websocket_keeps_the_session_from_being_reclaimed(
    start_proxied: ProxiedFactory,
) -> None:
    p = await start_proxied(max_sessions_per_user=1, idle_after=300)
    first = await p.open("cy", "t1")
    ws = await p.websocket(first)
    for step in range(4):  # 400 s in all, well past idle_after, never 300 s quiet
        p.clock.advance(100)
        frame: str | bytes = f"tick {step}" if step % 2 else f"tick {step}".encode()
        await ws.send(frame)
        assert await ws.recv() == frame
        await p.wait_active_at(first["id"], p.clock.now())

    refused = await p.ctl.open("cy", "t2")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "user_session_limit"
    assert (await p.session(first["id"]))["state"] == "ready"
    await ws.send("still here")
    assert await ws.recv() == "still here"
    await ws.close()


async def test_a_killed_pod_ends_the_session_and_the_proxy_answers_410(
    start_proxied: ProxiedFactory,
) -> None:
    p = await start_proxied()
    session = await p.open("dee", "t1")
    sid, health = session["id"], session["connect"]["url"] + "healthz"
    assert (await p.http.get(health, headers=bearer(session))).status_code == 200

    [pid] = sandbox_processes(session["pod"])  # the pod name is on its command line
    os.kill(pid, signal.SIGKILL)
    first_try = await p.http.get(health, headers=bearer(session))
    assert first_try.status_code in (502, 410), first_try.text

    async def failed() -> bool:
        return (await p.session(sid))["end_reason"] == "pod_failed"

    await eventually(failed, within=10, what="the session to end with pod_failed")
    assert (await p.session(sid))["state"] == "ended"
    after = await p.http.get(health, headers=bearer(session))
    assert after.status_code == 410, after.text
    assert after.json()["error"]["code"] == "session_ended"
    assert sandbox_processes(session["pod"]) == []
