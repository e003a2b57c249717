"""Issue 17, row 6: clients without a token cannot hold connections, on either server.

Real servers on real sockets: the controller (its real process object, local backend,
no sandbox started) and the proxy (in front of a devsandbox and a controller double).
The hostile clients are raw asyncio sockets: a head declaring a 4 MB body, then one body
byte every 2 s. The body-rate window is 1 s here (SANDBOX_BODY_READ_TIMEOUT), so every
story takes seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ..conftest import API_TOKEN, ControllerFactory
from ..proxy.conftest import running_stack

BODY_TIMEOUT = 1.0  # seconds: SANDBOX_BODY_READ_TIMEOUT in these tests
LINGER = 1.0  # edge.LINGER_SECONDS: how long a refused client is read and dropped
DECLARED = 4_000_000  # the body length the hostile clients declare
TRICKLE_EVERY = 2.0  # seconds between their body bytes


@dataclass
class Edge:
    """One server under test: where to send, and one real authenticated request."""

    port: int
    post_path: str  # a path that takes a body
    token_header: str  # the header line that authenticates a request
    real: Callable[[], Awaitable[int]]  # one real request on a new connection; its status


@contextlib.asynccontextmanager
async def edge(
    server: str, start_controller: ControllerFactory, **settings: Any
) -> AsyncIterator[Edge]:
    settings = {"body_read_timeout": f"{BODY_TIMEOUT}s", **settings}
    # A new connection for every real request: a pooled one would dodge the cap.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=10, trust_env=False, limits=limits) as client:
        if server == "controller":
            controller = await start_controller(prewarm_pool_size=0, **settings)
            bearer = f"Bearer {API_TOKEN}"

            async def pool() -> int:
                headers = {"authorization": bearer}
                return (await client.get(controller.url + "/pool", headers=headers)).status_code

            port = int(controller.url.rpartition(":")[2])
            yield Edge(port, "/sessions", f"Authorization: {bearer}", pool)
        else:
            async with running_stack(**settings) as stack:
                token = stack.session("sess-a")

                async def echo() -> int:
                    url = stack.base + "/s/sess-a/echo"
                    headers = {"x-sandbox-token": token}
                    response = await client.post(url, content=b"hello", headers=headers)
                    assert response.status_code != 200 or response.content == b"hello"
                    return response.status_code

                yield Edge(stack.proxy_port, "/s/sess-a/echo", f"X-Sandbox-Token: {token}", echo)


def head(edge: Edge, *, token: bool = False, length: int = DECLARED) -> bytes:
    lines = [f"POST {edge.post_path} HTTP/1.1", "Host: edge", f"Content-Length: {length}"]
    lines += ["Content-Type: application/json"] + ([edge.token_header] if token else [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Trickled:
    answer: bytes  # everything the server sent
    closed_after: float | None  # seconds from the head to the server's close; None: held

    @property
    def status(self) -> int | None:
        line = self.answer.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) > 1 else None


async def read_to_close(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            data += chunk
    return data, time.monotonic()


async def trickle(port: int, request_head: bytes, hold_for: float, sent: asyncio.Event) -> Trickled:
    """Send the head, then a body byte every 2 s, for up to ``hold_for`` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(request_head)
    sent.set()
    closing = asyncio.create_task(read_to_close(reader))
    try:
        while time.monotonic() - started < hold_for:
            done, _ = await asyncio.wait({closing}, timeout=TRICKLE_EVERY)
            if done:
                break
            writer.write(b"x")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
    finally:
        writer.close()
    if not closing.done():
        closing.cancel()
        return Trickled(b"", None)
    answer, closed_at = closing.result()
    return Trickled(answer, closed_at - started)


async def start_tricklers(edge: Edge, count: int, hold_for: float) -> list[asyncio.Task[Trickled]]:
    """``count`` clients without a token, each with its head sent before this returns."""
    heads_sent = [asyncio.Event() for _ in range(count)]
    tasks = [
        asyncio.create_task(trickle(edge.port, head(edge), hold_for, sent)) for sent in heads_sent
    ]
    await asyncio.wait_for(asyncio.gather(*(sent.wait() for sent in heads_sent)), 10)
    return tasks


SERVERS = ["controller", "proxy"]


@pytest.mark.parametrize("server", SERVERS)
async def test_fifty_trickling_clients_without_a_token_are_answered_and_closed(
    server: str, start_controller: ControllerFactory
) -> None:
    async with edge(server, start_controller) as e:
        hold_for = 8.0
        tricklers = await start_tricklers(e, 50, hold_for)
        # Real requests keep being served meanwhile, every one of them.
        statuses = []
        until = time.monotonic() + 3.0
        while time.monotonic() < until:
            statuses.append(await e.real())
            await asyncio.sleep(0.05)
        trickled = await asyncio.gather(*tricklers)
    assert len(statuses) >= 10 and set(statuses) == {200}, statuses
    assert [t.status for t in trickled] == [401] * 50
    assert all(b"connection: close" in t.answer.lower() for t in trickled)
    # Closed by the server well before the clients gave up: an early answer, a short
    # linger for the client to read it, then the socket is gone.
    closed = [t.closed_after for t in trickled]
    assert all(c is not None and c < LINGER + 2.0 for c in closed), closed
    print(f"{server}: 50 tricklers closed after {max(c or 0 for c in closed):.2f} s at most")


@pytest.mark.parametrize("server", SERVERS)
async def test_a_connection_cap_filled_without_a_token_frees_within_the_body_timeout(
    server: str, start_controller: ControllerFactory
) -> None:
    async with edge(server, start_controller, max_connections=40) as e:
        hold_for = 10.0
        filled_at = time.monotonic()
        tricklers = await start_tricklers(e, 40, hold_for)
        statuses = []
        while time.monotonic() - filled_at < hold_for - 1:
            statuses.append(await e.real())
            if statuses[-1] == 200:
                break
            await asyncio.sleep(0.05)
        served_after = time.monotonic() - filled_at
        trickled = await asyncio.gather(*tricklers)
    assert statuses[-1] == 200, statuses
    assert set(statuses) <= {200, 503}
    print(f"{server}: a real request served {served_after:.2f} s after 40 tricklers filled the cap")
    assert served_after < BODY_TIMEOUT + LINGER + 1.0
    assert all(t.closed_after is not None for t in trickled)


@pytest.mark.parametrize("server", SERVERS)
async def test_a_large_body_without_a_token_gets_401_before_a_byte_of_it_is_sent(
    server: str, start_controller: ControllerFactory
) -> None:
    async with edge(server, start_controller) as e:
        # The head alone: a server that wanted the body before the token would wait here.
        reader, writer = await asyncio.open_connection("127.0.0.1", e.port)
        started = time.monotonic()
        writer.write(head(e, length=3_900_000))
        try:
            answer, closed_at = await asyncio.wait_for(read_to_close(reader), 5)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
        assert b"connection: close" in answer.lower() and b'"unauthorized"' in answer
        print(f"{server}: 401 and close {closed_at - started:.3f} s after a 3.9 MB head")

        # With the 3.9 MB body sent at once, the answer is the same, and as quick.
        reader, writer = await asyncio.open_connection("127.0.0.1", e.port)
        started = time.monotonic()
        writer.write(head(e, length=3_900_000) + b"{" + b" " * (3_900_000 - 2) + b"}")
        status_line = await asyncio.wait_for(reader.readline(), 5)
        answered = time.monotonic() - started
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 401")
        print(f"{server}: 401 {answered * 1000:.1f} ms after a 3.9 MB body was sent")
        assert await e.real() == 200


@pytest.mark.parametrize("server", SERVERS)
async def test_an_authenticated_body_slower_than_the_minimum_rate_is_cut(
    server: str, start_controller: ControllerFactory
) -> None:
    async with edge(server, start_controller) as e:
        sent = asyncio.Event()
        trickled = await trickle(e.port, head(e, token=True), 8.0, sent)
        assert trickled.status == 408, trickled.answer[:200]
        assert b'"body_timeout"' in trickled.answer
        assert trickled.closed_after is not None
        assert trickled.closed_after < 2 * BODY_TIMEOUT + LINGER + 1.0
        assert await e.real() == 200


@pytest.mark.parametrize("server", SERVERS)
async def test_a_request_without_a_token_keeps_no_connection_open(
    server: str, start_controller: ControllerFactory
) -> None:
    async with edge(server, start_controller) as e:
        reader, writer = await asyncio.open_connection("127.0.0.1", e.port)
        try:
            # No body at all: answered 401, and closed rather than kept alive for 75 s.
            writer.write(f"GET {e.post_path} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
            answer, _ = await asyncio.wait_for(read_to_close(reader), 5)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 401") and b"connection: close" in answer.lower()
