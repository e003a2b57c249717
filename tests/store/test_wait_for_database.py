"""Waiting for a database that is not up yet, on a hand-moved clock: PostgreSQL behind
a port that refuses connections until the test opens it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url

from sandbox_controller.clock import ManualClock
from sandbox_controller.store import Store
from sandbox_controller.store.db import wait_for_database


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def opened(port: int, target_host: str, target_port: int) -> AsyncIterator[None]:
    """From now on, ``port`` leads to the real database (a plain TCP relay)."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        await asyncio.gather(
            pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
        )

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()


def behind(postgres_url: str, port: int) -> Store:
    return Store.open(
        make_url(postgres_url).set(host="127.0.0.1", port=port).render_as_string(False)
    )


async def test_it_connects_once_the_database_comes_up(postgres_url: str) -> None:
    real = make_url(postgres_url)
    port = free_port()
    store = behind(postgres_url, port)
    clock, stop = ManualClock(), asyncio.Event()
    try:
        waiting = asyncio.create_task(wait_for_database(store, clock, stop, timeout=60))
        await clock.until_sleeping()  # refused; it backs off on the clock
        clock.advance(5.0)
        await clock.until_sleeping()  # refused again
        async with opened(port, real.host or "127.0.0.1", real.port or 5432):
            clock.advance(5.0)  # the cap: whatever the jitter drew has passed
            await asyncio.wait_for(waiting, 10)
            await store.ping()
            await store.close()  # while the relay is up, so its connections end cleanly
    finally:
        await store.close()


async def test_it_gives_up_after_the_timeout_of_clock_time(postgres_url: str) -> None:
    store = behind(postgres_url, free_port())
    clock, stop = ManualClock(), asyncio.Event()
    start = clock.now()
    try:
        waiting = asyncio.create_task(wait_for_database(store, clock, stop, timeout=20))
        while not waiting.done():
            await clock.until_sleeping()
            clock.advance(5.0)
            await asyncio.wait({waiting}, timeout=0.5)
        with pytest.raises(OSError):
            waiting.result()
        assert 20 <= clock.now() - start <= 25
    finally:
        await store.close()


async def test_a_stop_ends_the_wait_at_once(postgres_url: str) -> None:
    store = behind(postgres_url, free_port())
    clock, stop = ManualClock(), asyncio.Event()
    try:
        waiting = asyncio.create_task(wait_for_database(store, clock, stop, timeout=60))
        await clock.until_sleeping()
        stop.set()  # shutdown need not wait out a backoff, nor a minute of retries
        with pytest.raises(OSError):
            await asyncio.wait_for(waiting, 5)
    finally:
        await store.close()
