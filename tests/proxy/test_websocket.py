"""WebSocket relay: frames both ways, pings, close codes passed on both ways, socket to
socket."""

from __future__ import annotations

import asyncio
import os
import struct
import sys

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from proxy.websocket import FrameScanner

from ..eventually import eventually
from .conftest import SECRET, Stack, running_stack


async def test_text_binary_and_ping(stack: Stack) -> None:
    token = stack.session()
    headers = {"x-sandbox-token": token}
    async with connect(stack.ws_base + "/s/sess-a/ws", additional_headers=headers) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01\xff")
        assert await ws.recv() == b"\x00\x01\xff"
        pong = await ws.ping()
        await asyncio.wait_for(pong, 5)


@pytest.mark.parametrize("code", [4001, 1008])
async def test_pod_close_code_reaches_the_client(stack: Stack, code: int) -> None:
    token = stack.session()
    headers = {"x-sandbox-token": token}
    async with connect(stack.ws_base + "/s/sess-a/ws", additional_headers=headers) as ws:
        await ws.send(f"close:{code}")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == code


async def test_client_close_code_reaches_the_pod_without_credentials(stack: Stack) -> None:
    seen: asyncio.Queue[tuple[int | None, str | None]] = asyncio.Queue()
    requests: list[tuple[str, dict[str, str]]] = []

    async def recorder(conn: ServerConnection) -> None:
        assert conn.request is not None
        requests.append(
            (conn.request.path, {k.lower(): v for k, v in conn.request.headers.raw_items()})
        )
        try:
            async for message in conn:
                await conn.send(message)
        except ConnectionClosed:
            pass
        await seen.put((conn.close_code, conn.close_reason))

    async with serve(recorder, "127.0.0.1", 0, compression=None) as pod:
        port = pod.sockets[0].getsockname()[1]
        token = stack.session("sess-r")
        stack.controller.add("sess-r", "ready", f"127.0.0.1:{port}")
        headers = {"authorization": f"Bearer {token}", "cookie": f"sandbox_token={token}; a=b"}
        url = stack.ws_base + f"/s/sess-r/x?q=1&token={token}"
        async with connect(url, additional_headers=headers) as ws:
            await ws.send("one")
            assert await ws.recv() == "one"
            await ws.close(4321, "bye")
        assert await asyncio.wait_for(seen.get(), 5) == (4321, "bye")
    path, pod_headers = requests[0]
    assert path == "/x?q=1"
    assert "authorization" not in pod_headers and pod_headers["cookie"] == "a=b"
    assert token not in repr(pod_headers)
    assert pod_headers["x-forwarded-prefix"] == "/s/sess-r"


async def test_pod_that_dies_closes_the_client_with_1011(stack: Stack) -> None:
    async def dies(conn: ServerConnection) -> None:
        await conn.recv()
        conn.transport.abort()  # no close frame: the pod just vanished

    async with serve(dies, "127.0.0.1", 0) as pod:
        port = pod.sockets[0].getsockname()[1]
        token = stack.session("sess-d")
        stack.controller.add("sess-d", "ready", f"127.0.0.1:{port}")
        headers = {"x-sandbox-token": token}
        async with connect(stack.ws_base + "/s/sess-d/x", additional_headers=headers) as ws:
            await ws.send("boom")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1011


async def test_unreachable_pod_refuses_the_upgrade_with_502(stack: Stack) -> None:
    import websockets

    token = stack.session()
    stack.controller.add("sess-a", "ready", "127.0.0.1:9")
    with pytest.raises(websockets.InvalidStatus) as info:
        async with connect(
            stack.ws_base + "/s/sess-a/ws", additional_headers={"x-sandbox-token": token}
        ):
            pass
    assert info.value.response.status_code == 502


def frame(opcode: int, payload: bytes, masked: bool) -> bytes:
    head = bytes([0x80 | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    return head + (b"\x01\x02\x03\x04" if masked else b"") + payload


@pytest.mark.parametrize("masked", [True, False])
def test_the_scanner_finds_data_frames_wherever_the_reads_split(masked: bool) -> None:
    stream = (
        frame(0x9, b"ping", masked)  # control frames are not activity
        + frame(0x2, b"x" * 70_000, masked)  # a 64-bit length
        + frame(0x1, b"y" * 300, masked)  # a 16-bit length
        + frame(0x8, b"\x03\xe8", masked)
    )
    for size in (1, 2, 3, 7, 100, 4096, len(stream)):
        scanner = FrameScanner()
        active = [scanner.feed(stream[i : i + size]) for i in range(0, len(stream), size)]
        assert scanner.between_frames and scanner.closed
        # Activity is seen in the reads where a data frame's header completes, only there.
        mask = 4 if masked else 0
        first = len(frame(0x9, b"ping", masked))
        second = first + len(frame(0x2, b"x" * 70_000, masked))
        header_ends = {first + 10 + mask - 1, second + 4 + mask - 1}
        expected = [
            any(i <= e < i + size for e in header_ends) for i in range(0, len(stream), size)
        ]
        assert active == expected, size

    pings = FrameScanner()
    assert not pings.feed(frame(0x9, b"", masked) + frame(0xA, b"", masked))
    assert not pings.closed


async def test_frames_a_pod_sends_with_its_handshake_reach_the_client(stack: Stack) -> None:
    async def greets(conn: ServerConnection) -> None:
        await conn.send("welcome")
        await conn.wait_closed()

    async with serve(greets, "127.0.0.1", 0, compression=None) as pod:
        port = pod.sockets[0].getsockname()[1]
        token = stack.session("sess-g")
        stack.controller.add("sess-g", "ready", f"127.0.0.1:{port}")
        headers = {"x-sandbox-token": token}
        async with connect(stack.ws_base + "/s/sess-g/", additional_headers=headers) as ws:
            assert await asyncio.wait_for(ws.recv(), 5) == "welcome"


async def test_open_websockets_count_toward_the_connection_cap() -> None:
    """A relay takes uvicorn's place among the server's connections: the cap still
    counts open WebSockets, and frees the place when one closes."""
    async with running_stack(max_connections=3) as stack:
        headers = {"x-sandbox-token": stack.session()}
        url = stack.ws_base + "/s/sess-a/ws"
        sockets = [await connect(url, additional_headers=headers) for _ in range(3)]
        for ws in sockets:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), 5) == "hi"
        refused = await stack.client.get(stack.base + "/healthz")
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "too_many_connections"
        await sockets.pop().close()

        async def answered() -> bool:
            return (await stack.client.get(stack.base + "/healthz")).status_code == 200

        await eventually(answered, within=5, what="a place to free up")
        for ws in sockets:  # the others still relay
            await ws.send("still")
            assert await asyncio.wait_for(ws.recv(), 5) == "still"
            await ws.close()


async def test_a_refused_upgrade_is_one_info_line_and_no_error() -> None:
    # In a process of its own, on uvloop as in production: there the connection is lost
    # after the app has returned, which uvicorn took for a handshake left unanswered.
    env = dict(
        os.environ,
        SANDBOX_TOKEN_SECRET=SECRET,
        SANDBOX_CONTROLLER_URL="http://127.0.0.1:9",  # never asked: auth fails first
        SANDBOX_LOG_LEVEL="info",
    )
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "--port", "0", env=env, stdout=pipe, stderr=pipe
    )
    try:
        assert proc.stdout is not None
        address = (await asyncio.wait_for(proc.stdout.readline(), 20)).split()[1].decode()
        for _ in range(3):
            with pytest.raises(InvalidStatus) as info:
                async with connect(f"ws://{address}/s/sess-a/ws"):
                    pass
            assert info.value.response.status_code == 401
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    log = err.decode()
    assert log.count("refused a WebSocket upgrade for session sess-a: 401") == 3, log
    # Configured the old way (SANDBOX_TOKEN_SECRET): that is warned about, once.
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    assert " ERROR " not in log and len(warnings) == 1, log
    assert "SANDBOX_TOKEN_SECRET is set for the proxy" in warnings[0], log
