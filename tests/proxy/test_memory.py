"""100 MB each way through a proxy subprocess, whose peak RSS must stay far below 100 MB;
open WebSockets cost the proxy little memory each."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from sandbox_controller import devsandbox

from .conftest import API_TOKEN, SECRET, ControllerDouble, serve, token_for

SIZE = 100 * 1024 * 1024


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@dataclass
class ProxyProcess:
    pid: int
    address: str  # host:port the proxy listens on


@asynccontextmanager
async def proxy_process(
    session_id: str | None = None, **settings: str
) -> AsyncIterator[ProxyProcess]:
    """``python -m proxy`` in a process of its own (its RSS is what is measured), routing
    ``session_id`` to a devsandbox through a controller double; without a session, no
    controller is ever asked."""
    served = []
    controller_url = "http://127.0.0.1:9"
    if session_id is not None:
        controller = ControllerDouble()
        controller_served = await serve(controller.app())
        sandbox_served = await serve(devsandbox.build_app())
        served = [controller_served, sandbox_served]
        controller.add(session_id, "ready", sandbox_served.address)
        controller_url = f"http://127.0.0.1:{controller_served.port}"
    env = dict(
        os.environ,
        SANDBOX_TOKEN_SECRET=SECRET,
        SANDBOX_API_TOKEN=API_TOKEN,
        SANDBOX_CONTROLLER_URL=controller_url,
        SANDBOX_LOG_LEVEL="warning",
        **settings,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "--port", "0", env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        yield ProxyProcess(proc.pid, line.split()[1])
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        await asyncio.gather(*(s.stop() for s in served))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_100mb_each_way_with_bounded_memory() -> None:
    async with proxy_process("sess-m") as proxy:
        base = "http://" + proxy.address + "/s/sess-m"
        headers = {"x-sandbox-token": token_for("sess-m")}
        async with httpx.AsyncClient(timeout=60, trust_env=False, headers=headers) as client:
            assert (await client.get(base + "/healthz")).status_code == 200
            baseline = status_kib(proxy.pid, "VmRSS")

            async def body() -> AsyncIterator[bytes]:
                chunk = b"u" * (1024 * 1024)
                for _ in range(SIZE // len(chunk)):
                    yield chunk

            resp = await client.post(base + "/upload", content=body())
            assert resp.status_code == 200 and int(resp.text) == SIZE

            received = 0
            async with client.stream("GET", base + "/blob", params={"size": SIZE}) as resp:
                assert resp.status_code == 200
                async for chunk in resp.aiter_raw():
                    received += len(chunk)
            assert received == SIZE
        growth_mib = (status_kib(proxy.pid, "VmHWM") - baseline) / 1024
        print(f"proxy peak RSS growth {growth_mib:.1f} MiB")
        assert growth_mib < 40, f"proxy peak RSS grew {growth_mib:.1f} MiB"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_open_websockets_cost_little_memory_each() -> None:
    """Issue 11: 1,000 open WebSockets within 80 MiB. A relay keeps only its two sockets
    and frame scanners: uvicorn's handshake state and the request head are released once
    the relay owns the socket (they cost ~25 KiB a relay before, ~14 KiB after)."""
    sockets: list[ClientConnection] = []
    async with proxy_process("sess-w") as proxy:
        url = "ws://" + proxy.address + "/s/sess-w/ws"
        headers = {"x-sandbox-token": token_for("sess-w")}
        try:
            async with connect(url, additional_headers=headers) as ws:  # routes, pools warm
                await ws.send("warm")
                await ws.recv()
            baseline = status_kib(proxy.pid, "VmRSS")
            count = 400
            for _ in range(count):
                ws = await connect(url, additional_headers=headers, ping_interval=None)
                sockets.append(ws)
                await ws.send("hi")  # every relay fully set up and used
                assert await ws.recv() == "hi"
            per_relay = (status_kib(proxy.pid, "VmRSS") - baseline) / count
            print(f"proxy RSS per open WebSocket {per_relay:.1f} KiB")
            assert per_relay < 20, f"{per_relay:.1f} KiB of proxy memory per open WebSocket"
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def send_huge_head(port: int, size: int) -> bytes:
    """A request whose one header is ``size`` bytes; the status line of the answer. The
    server answers 431 and closes: the rest of the head is not read, only lingered on."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Read while sending: the answer comes long before the send ends (in a reset).
    answer = asyncio.create_task(reader.readline())
    try:
        writer.write(b"GET /s/sess-m/healthz HTTP/1.1\r\nhost: p\r\nx-big: ")
        chunk = b"h" * (1024 * 1024)
        with contextlib.suppress(ConnectionError):
            for _ in range(size // len(chunk)):
                writer.write(chunk)
                await writer.drain()
            writer.write(b"\r\n\r\n")
            await writer.drain()
        return (await asyncio.wait_for(answer, 30)).strip()
    finally:
        writer.close()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_huge_heads_get_431_and_leave_memory_at_its_baseline() -> None:
    # No session: the controller is never asked, since no head is ever complete.
    # The senders here are slow only from load: a generous head-read timeout.
    async with proxy_process(SANDBOX_HEADER_READ_TIMEOUT="120") as proxy:
        port = int(proxy.address.rpartition(":")[2])
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        baseline = status_kib(proxy.pid, "VmRSS")
        statuses = await asyncio.gather(
            *(send_huge_head(port, 80 * 1024 * 1024) for _ in range(20))
        )
        assert set(statuses) == {b"HTTP/1.1 431 Request Header Fields Too Large"}
        growth_mib = (status_kib(proxy.pid, "VmRSS") - baseline) / 1024
        print(f"proxy RSS after 20 x 80 MB heads: {growth_mib:+.1f} MiB from baseline")
        assert growth_mib < 20, f"proxy RSS stayed {growth_mib:.1f} MiB above its baseline"
