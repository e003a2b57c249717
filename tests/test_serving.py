"""Servers keep idle connections longer than the clients and balancers in front, and
bound what a client may send before it is authenticated."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI

from proxy import ProxyProcess
from sandbox_controller.config import Settings
from sandbox_controller.edge import EdgeLimits, HeadHeld
from sandbox_controller.serving import Listener, bind, serve

from .conftest import ControllerFactory
from .eventually import eventually

# nginx's keepalive_timeout and the common cloud load balancers' idle timeout.
LOAD_BALANCER_IDLE_SECONDS = 60


class ShiftedLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock the test moves forward: uvicorn's keep-alive timer is a
    loop timer, so minutes of idleness pass at once and every timer due fires."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = 0.0

    def time(self) -> float:
        return super().time() + self.shift


async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One GET on an open connection; the response head, or b"" if the server closed it."""
    try:
        writer.write(b"GET /ping HTTP/1.1\r\nHost: test\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return b""
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)
    return head


async def idle_for(loop: ShiftedLoop, seconds: float) -> None:
    loop.shift += seconds
    await asyncio.sleep(0.05)  # a few loop turns for the timers now due to fire


async def keep_alive_story() -> tuple[bytes, bytes, bytes]:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, ShiftedLoop)
    app = FastAPI()
    app.get("/ping")(lambda: "pong")
    listener = Listener(app, bind("127.0.0.1", 0), limits=LIMITS, log_level="warning")
    stop = asyncio.Event()
    await listener.start()
    task = asyncio.create_task(listener.run(stop))
    try:
        reader, writer = await asyncio.open_connection(*listener.sock.getsockname())
        first = await request(reader, writer)
        await idle_for(loop, LOAD_BALANCER_IDLE_SECONDS + 1)
        after_a_minute = await request(reader, writer)
        await idle_for(loop, 3600)
        after_an_hour = await request(reader, writer)
        writer.close()
        return first, after_a_minute, after_an_hour
    finally:
        stop.set()
        await task
        await listener.drain()


def test_an_idle_connection_outlives_the_load_balancers_and_clients_in_front() -> None:
    # If the server closed first, a client reusing the connection at that moment would
    # lose its request: the race kube_bench hit with uvicorn's default of 5 s.
    with asyncio.Runner(loop_factory=ShiftedLoop) as runner:
        first, after_a_minute, after_an_hour = runner.run(keep_alive_story())
    assert first.startswith(b"HTTP/1.1 200")
    assert after_a_minute.startswith(b"HTTP/1.1 200"), "closed an idle connection too soon"
    # The moved clock did reach the server's timer: it does close idle connections.
    assert after_an_hour == b""


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The status line and the body of one answer (content-length framed)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if b"content-length" in line
    )
    body = await asyncio.wait_for(reader.readexactly(length), 10)
    return head.split(b"\r\n")[0], head + body


async def send_head(port: int, head: bytes, *, body: bytes = b"") -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        return await read_answer(reader)
    finally:
        writer.close()


def big_head(size: int) -> bytes:
    return b"GET /ping HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * size + b"\r\n\r\n"


@contextlib.asynccontextmanager
async def listening(limits: EdgeLimits) -> AsyncIterator[int]:
    app = FastAPI()
    app.get("/ping")(lambda: "pong")
    app.post("/ping")(lambda: "pong")
    listener = Listener(app, bind("127.0.0.1", 0), limits=limits, log_level="warning")
    stop = asyncio.Event()
    await listener.start()
    task = asyncio.create_task(listener.run(stop))
    try:
        yield listener.port
    finally:
        stop.set()
        await task
        await listener.drain()


LIMITS = EdgeLimits(max_header_bytes=64 * 1024, header_read_timeout=10.0, max_connections=2000)


async def test_a_head_over_the_limit_gets_431_and_one_under_it_is_served() -> None:
    async with listening(LIMITS) as port:
        status, answer = await send_head(port, big_head(1024 * 1024))
        assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
        assert b'"code": "header_too_large"' in answer
        status, _ = await send_head(port, big_head(60 * 1024))
        assert status == b"HTTP/1.1 200 OK"
        # Only the head counts: a body in the same write is not mistaken for headers.
        body = b"b" * (512 * 1024)
        post = b"POST /ping HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % len(body)
        status, _ = await send_head(port, post, body=body)
        assert status == b"HTTP/1.1 200 OK"


async def test_beyond_the_connection_cap_a_client_gets_503_with_retry_after() -> None:
    limits = EdgeLimits(max_header_bytes=8192, header_read_timeout=10.0, max_connections=3)
    async with listening(limits) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ping HTTP/1.1\r\nhost: t\r\n\r\n")
        status, answer = await read_answer(reader)
        assert status == b"HTTP/1.1 503 Service Unavailable"
        assert b"retry-after: 5" in answer and b"too_many_connections" in answer
        writer.close()
        for _, w in held:
            w.close()
        # Once they are gone, a new client is served again.

        async def served() -> bool:
            status, _ = await send_head(port, b"GET /ping HTTP/1.1\r\nhost: t\r\n\r\n")
            return status == b"HTTP/1.1 200 OK"

        await eventually(served, what="a client to be served after the others left")


async def slow_loris_story() -> tuple[bytes, list[bytes], bytes]:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, ShiftedLoop)
    async with listening(LIMITS) as port:
        trickling = [await asyncio.open_connection("127.0.0.1", port) for _ in range(500)]
        for _, writer in trickling:
            writer.write(b"GET /ping HTTP/1.1\r\nhost: t\r\nx-half: ")
        await asyncio.sleep(0.2)
        served_meanwhile, _ = await send_head(port, b"GET /ping HTTP/1.1\r\nhost: t\r\n\r\n")
        await idle_for(loop, LIMITS.header_read_timeout + 1)
        ends = await asyncio.gather(*(r.read(100) for r, _ in trickling))
        for _, writer in trickling:
            writer.close()
        served_after, _ = await send_head(port, b"GET /ping HTTP/1.1\r\nhost: t\r\n\r\n")
    return served_meanwhile, ends, served_after


def test_a_head_not_finished_in_time_is_closed_while_others_are_served() -> None:
    with asyncio.Runner(loop_factory=ShiftedLoop) as runner:
        served_meanwhile, ends, served_after = runner.run(slow_loris_story())
    assert served_meanwhile == b"HTTP/1.1 200 OK"
    assert ends == [b""] * 500  # every trickling connection was closed by the server
    assert served_after == b"HTTP/1.1 200 OK"


async def test_both_servers_answer_a_1mb_head_with_431(start_controller: ControllerFactory) -> None:
    controller = await start_controller(prewarm_pool_size=0, max_header_bytes=32 * 1024)
    proxy = ProxyProcess(
        Settings(token_secret="s", proxy_port=0, log_level="warning"), drain_timeout=1
    )
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(proxy, stop, started.set))
    await asyncio.wait_for(started.wait(), 10)
    try:
        controller_port = int(controller.url.rpartition(":")[2])
        for port in (controller_port, proxy.port):
            status, answer = await send_head(port, big_head(1024 * 1024))
            assert status == b"HTTP/1.1 431 Request Header Fields Too Large", port
            assert b'{"error": {"code": "header_too_large"' in answer
        # The controller's own limit is its setting: 40 KiB is over its 32 KiB.
        status, _ = await send_head(controller_port, big_head(40 * 1024))
        assert status.startswith(b"HTTP/1.1 431")
    finally:
        stop.set()
        await task


async def test_a_response_head_waits_for_its_body_but_not_past_the_loop_turn() -> None:
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    out = HeadHeld(transport, loop)
    try:
        out.hold_next()
        out.write(b"head|")
        with pytest.raises(BlockingIOError):
            peer.recv(100)  # held back for the body
        out.write(b"body")
        assert peer.recv(100) == b"head|body"
        out.hold_next()
        out.write(b"head without a body yet")
        await asyncio.sleep(0)  # one loop turn, and it goes alone
        assert peer.recv(100) == b"head without a body yet"
        out.write(b"more")  # only a head is held
        assert peer.recv(100) == b"more"
        out.hold_next()
        out.write(b"last head")
        out.close()  # what is held goes before the close
        assert peer.recv(100) == b"last head"
    finally:
        transport.close()
        peer.close()


async def test_a_streamed_response_head_is_not_held_for_its_body() -> None:
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await release.wait()
        await send({"type": "http.response.body", "body": b"late", "more_body": False})

    listener = Listener(app, bind("127.0.0.1", 0), limits=LIMITS, log_level="warning")
    stop = asyncio.Event()
    await listener.start()
    task = asyncio.create_task(listener.run(stop))
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding: chunked" in head
        release.set()
        assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10) == (
            b"4\r\nlate\r\n0\r\n\r\n"
        )
    finally:
        writer.close()
        stop.set()
        await task
        await listener.drain()


async def body_app(scope: Any, receive: Any, send: Any) -> None:
    """/read reads the whole body and says how long it was; any other path answers at
    once without reading it (as a 401 before the body does)."""
    size = 0
    if scope["path"] == "/read":
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
    body = b"read %d" % size
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def body_listener(limits: EdgeLimits = LIMITS) -> AsyncIterator[int]:
    listener = Listener(body_app, bind("127.0.0.1", 0), limits=limits, log_level="warning")
    stop = asyncio.Event()
    await listener.start()
    task = asyncio.create_task(listener.run(stop))
    try:
        yield listener.port
    finally:
        stop.set()
        await task
        await listener.drain()


async def test_a_body_sent_after_its_head_keeps_the_connection_alive() -> None:
    async with body_listener() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"POST /read HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\n")
            await asyncio.sleep(0.05)  # the body in a read of its own
            writer.write(b"0123456789")
            status, answer = await read_answer(reader)
            assert status == b"HTTP/1.1 200 OK" and answer.endswith(b"read 10")
            assert b"connection: close" not in answer.lower()
            assert (await request(reader, writer)).startswith(b"HTTP/1.1 200")  # same socket
        finally:
            writer.close()


async def test_an_answer_before_the_body_says_close_and_closes() -> None:
    async with body_listener() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"POST /ignore HTTP/1.1\r\nhost: t\r\ncontent-length: 1000000\r\n\r\n")
            status, answer = await read_answer(reader)
            assert status == b"HTTP/1.1 200 OK" and b"connection: close" in answer.lower()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # FIN, body never sent
        finally:
            writer.close()


async def slow_body_story() -> tuple[bytes, bytes]:
    """One body at 2 KiB a window for three windows (kept), one at a byte (cut)."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, ShiftedLoop)
    window = LIMITS.body_read_timeout
    async with body_listener() as port:
        answers = []
        for piece in (b"x" * 2048, b"x"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /read HTTP/1.1\r\nhost: t\r\ncontent-length: 6144\r\n\r\n")
            sent = 0
            answer = asyncio.create_task(reader.read(1000))
            while sent < 6144 and not answer.done():
                writer.write(piece)
                sent += len(piece)
                await idle_for(loop, window * 0.9)
            answers.append(await asyncio.wait_for(answer, 5))
            writer.close()
    return answers[0], answers[1]


def test_a_body_slower_than_the_minimum_rate_gets_408() -> None:
    with asyncio.Runner(loop_factory=ShiftedLoop) as runner:
        kept, cut = runner.run(slow_body_story())
    assert kept.startswith(b"HTTP/1.1 200") and kept.endswith(b"read 6144")
    assert cut.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in cut
