"""Activity: data moving marks the session; an open, silent WebSocket does not."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect

from ..eventually import eventually
from .conftest import Stack


async def test_traffic_is_reported_in_a_batch(stack: Stack) -> None:
    token = stack.session("sess-a")
    stack.session("sess-b")
    resp = await stack.client.post(
        stack.base + "/s/sess-a/upload", content=b"x" * 1000, headers={"x-sandbox-token": token}
    )
    assert resp.status_code == 200
    await eventually(lambda: "sess-a" in stack.controller.active_ids())
    assert "sess-b" not in stack.controller.active_ids()
    batch = next(b for b in stack.controller.activity if "sess-a" in b)
    assert isinstance(batch["sess-a"], float)


async def test_a_silent_websocket_is_not_activity(stack: Stack) -> None:
    token = stack.session()
    headers = {"x-sandbox-token": token}
    async with connect(stack.ws_base + "/s/sess-a/ws", additional_headers=headers) as ws:
        await asyncio.wait_for(await ws.ping(), 5)  # control frames are not activity either
        await asyncio.sleep(0.8)  # four flush intervals
        assert stack.controller.activity == []
        # The same socket moving data is activity: the check above could have failed.
        await ws.send("tick")
        assert await ws.recv() == "tick"
        await eventually(lambda: "sess-a" in stack.controller.active_ids())
