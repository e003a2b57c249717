"""Graceful shutdown: WebSockets hear 1001, an in-flight request still completes."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .conftest import Stack


async def test_shutdown_closes_websockets_with_1001_and_finishes_requests(stack: Stack) -> None:
    token = stack.session()
    headers = {"x-sandbox-token": token}
    url = stack.base + "/s/sess-a/events"
    events: list[str] = []

    async def slow_request() -> int:
        params = {"n": "3", "interval": "0.4"}
        async with stack.client.stream("GET", url, params=params, headers=headers) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    events.append(line)
                    started.set()
            return resp.status_code

    started = asyncio.Event()
    async with connect(stack.ws_base + "/s/sess-a/ws", additional_headers=headers) as ws:
        in_flight = asyncio.create_task(slow_request())
        await asyncio.wait_for(started.wait(), 5)
        stack.shutdown.set()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1001
    assert await asyncio.wait_for(in_flight, 5) == 200
    assert len(events) == 3
    await asyncio.wait_for(stack.proxy_task, 5)
    # Stopped accepting: a new connection is refused.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", stack.proxy_port)
