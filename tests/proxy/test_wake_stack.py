"""Wake on traffic through the whole proxy: a request, a streamed body and a WebSocket
upgrade for a suspended session are held while it resumes, then served by its pod; a
browser tab gets a page that reloads itself; refusals keep their Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
from websockets.asyncio.client import connect

from sandbox_controller import devsandbox
from sandbox_controller.clock import ManualClock

from ..eventually import eventually
from .conftest import Stack, running_stack, serve, token_for

NAVIGATE = {"accept": "text/html,application/xhtml+xml", "sec-fetch-mode": "navigate"}


def suspend(stack: Stack, session_id: str = "sess-a") -> dict[str, str]:
    stack.controller.add(session_id, "suspended")
    return {"x-sandbox-token": token_for(session_id)}


async def finish_restore(stack: Stack, session_id: str = "sess-a") -> None:
    await eventually(lambda: stack.controller.resumes == [session_id], what="the resume")
    stack.controller.add(session_id, "ready", stack.sandbox_served.address)


async def test_a_request_for_a_suspended_session_is_held_and_served_by_the_new_pod(
    stack: Stack,
) -> None:
    headers = suspend(stack)
    held = [
        asyncio.create_task(stack.client.get(stack.base + "/s/sess-a/", headers=headers))
        for _ in range(3)
    ]
    # A streamed body waits in its socket while the session resumes, then goes through.
    echoed = asyncio.create_task(
        stack.client.post(stack.base + "/s/sess-a/echo", content=b"kept", headers=headers)
    )
    await finish_restore(stack)
    assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200, 200]
    reply = await echoed
    assert (reply.status_code, reply.content) == (200, b"kept")
    assert stack.controller.resumes == ["sess-a"]  # one resume for all four


async def test_a_websocket_upgrade_for_a_suspended_session_waits_for_the_pod(
    stack: Stack,
) -> None:
    headers = suspend(stack)

    async def talk() -> str | bytes:
        async with connect(stack.ws_base + "/s/sess-a/ws", additional_headers=headers) as ws:
            await ws.send("after the wake")
            return await ws.recv()

    talking = asyncio.create_task(talk())
    await finish_restore(stack)
    assert await asyncio.wait_for(talking, 10) == "after the wake"


async def test_a_refused_resume_is_passed_on_with_its_retry_after(stack: Stack) -> None:
    headers = suspend(stack)
    stack.controller.resume_refusals.append((429, "user_session_limit", "9"))
    resp = await stack.client.get(stack.base + "/s/sess-a/", headers=headers)
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "9"
    assert resp.json()["error"]["code"] == "user_session_limit"
    assert stack.sandbox.count == 0


async def test_a_browser_tab_gets_a_page_that_reloads_itself_then_the_sandbox() -> None:
    clock = ManualClock()
    async with running_stack(clock=clock) as stack:
        headers = suspend(stack) | NAVIGATE
        background = clock.sleepers  # the proxy's own timers (activity flushes)
        tab = asyncio.create_task(stack.client.get(stack.base + "/s/sess-a/", headers=headers))
        await eventually(lambda: stack.controller.resumes == ["sess-a"], what="the resume")
        await clock.until_sleeping(background + 2)  # the wake's poll, the tab's patience
        clock.advance(2.0)
        page = await tab
        assert page.status_code == 503
        assert page.headers["refresh"] == "2"
        assert page.headers["content-type"].startswith("text/html")
        assert "Waking your sandbox" in page.text
        # The reload, once the restore is done, is the sandbox's own page.
        await clock.until_sleeping(background + 1)  # the wake polls on
        stack.controller.add("sess-a", "ready", stack.sandbox_served.address)
        clock.advance(1.0)
        await eventually(lambda: _wakes(stack, "ready") == 1, what="the wake to end")
        reload = await stack.client.get(stack.base + "/s/sess-a/", headers=headers)
        assert reload.status_code == 200 and "Waking" not in reload.text


async def test_a_resume_that_takes_too_long_is_503_with_retry_after() -> None:
    clock = ManualClock()
    async with running_stack(clock=clock, proxy_resume_wait=10.0) as stack:
        headers = suspend(stack)
        background = clock.sleepers
        waiting = asyncio.create_task(stack.client.get(stack.base + "/s/sess-a/", headers=headers))
        await eventually(lambda: stack.controller.resumes == ["sess-a"], what="the resume")
        await clock.until_sleeping(background + 1)
        clock.advance(10.0)
        resp: httpx.Response = await waiting
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "resume_timeout"
        assert int(resp.headers["retry-after"]) >= 1
        assert stack.sandbox.count == 0


async def test_a_request_its_pod_left_untouched_goes_to_the_next_pod_or_is_refused(
    stack: Stack,
) -> None:
    """A pod being suspended (its snapshot taken) answers 503 X-Sandbox-Suspending: the
    proxy sends a whole request where the controller now says, and refuses one whose
    body has streamed past with 503 sandbox_suspending: never a success then lost."""
    old = await serve(devsandbox.build_app("old-pod-claim-secret"))
    try:
        headers = {"x-sandbox-token": token_for("sess-a")}
        stack.controller.add("sess-a", "ready", old.address)
        first = await stack.client.get(stack.base + "/s/sess-a/headers", headers=headers)
        assert first.status_code == 200  # the proxy now holds the route to the old pod
        auth = {"authorization": "Bearer old-pod-claim-secret"}
        async with httpx.AsyncClient() as direct:
            taken = await direct.post(f"http://{old.address}/_sandbox/snapshot", headers=auth)
        assert taken.status_code == 200
        stack.controller.add("sess-a", "ready", stack.sandbox_served.address)  # moved

        before = stack.sandbox.count
        moved = await stack.client.post(
            stack.base + "/s/sess-a/echo", content=b"kept", headers=headers
        )
        assert (moved.status_code, moved.content) == (200, b"kept")
        assert stack.sandbox.count == before + 1  # the new pod served it

        async def streamed() -> AsyncIterator[bytes]:
            yield b"first half, "
            await asyncio.sleep(0.2)
            yield b"second half"

        stack.controller.add("sess-b", "ready", old.address)
        other = {"x-sandbox-token": token_for("sess-b")}
        refused = await stack.client.post(
            stack.base + "/s/sess-b/echo", content=streamed(), headers=other
        )
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "sandbox_suspending"
        assert refused.headers["retry-after"] == "1"

        # A WebSocket upgrade the old pod refuses untouched is dialled at the next pod.
        stack.controller.add("sess-c", "ready", old.address)
        third = {"x-sandbox-token": token_for("sess-c")}
        # Its health check (still served) leaves the proxy holding the route.
        health = await stack.client.get(stack.base + "/s/sess-c/healthz", headers=third)
        assert health.status_code == 200
        stack.controller.add("sess-c", "ready", stack.sandbox_served.address)
        async with connect(stack.ws_base + "/s/sess-c/ws", additional_headers=third) as ws:
            await ws.send("to the next pod")
            assert await ws.recv() == "to the next pod"
    finally:
        await old.stop()


def _wakes(stack: Stack, outcome: str) -> float:
    samples = stack.proxy.app.metrics.render()[0].decode()
    line = f'sandbox_proxy_wakes_total{{outcome="{outcome}"}} '
    found = [row for row in samples.splitlines() if row.startswith(line)]
    return float(found[0].removeprefix(line)) if found else 0.0
