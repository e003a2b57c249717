"""Servers keep idle connections longer than the clients and balancers in front."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from sandbox_controller.serving import Listener, bind

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
    listener = Listener(app, bind("127.0.0.1", 0), log_level="warning")
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
