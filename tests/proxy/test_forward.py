"""HTTP forwarding: streaming both ways, headers, and a pod that goes away."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

from .conftest import Stack


async def test_sse_first_event_arrives_before_the_stream_ends(stack: Stack) -> None:
    token = stack.session()
    arrivals: list[float] = []
    url = stack.base + "/s/sess-a/events"
    params = {"n": "3", "interval": "0.6"}
    headers = {"x-sandbox-token": token}
    async with stack.client.stream("GET", url, params=params, headers=headers) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic())
        ended = time.monotonic()
    assert len(arrivals) == 3
    # Buffering anywhere would deliver all three together at the end.
    assert ended - arrivals[0] > 0.9
    assert arrivals[1] - arrivals[0] > 0.3


async def test_echo_streams_a_chunked_body_both_ways(stack: Stack) -> None:
    # A raw client, because httpx sends the whole body before it reads the response.
    token = stack.session()
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.proxy_port)
    writer.write(
        b"POST /s/sess-a/echo HTTP/1.1\r\nhost: p\r\ntransfer-encoding: chunked\r\n"
        b"x-sandbox-token: " + token.encode() + b"\r\n\r\n6\r\nfirst-\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    # The first piece comes back while the request body is still open: full duplex.
    assert await asyncio.wait_for(reader.readuntil(b"first-"), 5)
    writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
    rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    assert b"second" in rest
    writer.close()


async def test_headers_raw_path_and_hop_by_hop(stack: Stack) -> None:
    token = stack.session()
    resp = await stack.client.get(
        stack.base + "/s/sess-a/headers",
        params={"a": "1/2"},
        headers={
            "x-sandbox-token": token,
            "connection": "keep-alive, x-hop",
            "x-hop": "secret",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "x-forwarded-for": "10.9.9.9",
            "x-app": "kept",
        },
    )
    assert resp.status_code == 200
    seen = dict(line.split(": ", 1) for line in resp.text.splitlines() if ": " in line)
    assert "x-hop" not in seen and "keep-alive" not in seen and "te" not in seen
    assert seen["x-app"] == "kept"
    assert seen["x-forwarded-for"] == "10.9.9.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{stack.proxy_port}"
    assert seen["x-forwarded-prefix"] == "/s/sess-a"
    assert seen["query"] == "a=1%2F2"  # the raw query, kept as it was
    # An escaped slash stays escaped on its way to the pod.
    resp = await stack.client.get(
        stack.base + "/s/sess-a/headers%2Fx", headers={"x-sandbox-token": token}
    )
    assert resp.status_code == 404  # the sandbox has no such route; it saw the escape
    assert stack.sandbox.count == 2


async def test_a_burst_makes_one_route_lookup(stack: Stack) -> None:
    token = stack.session()
    stack.controller.lookup_delay = 0.2
    headers = {"x-sandbox-token": token}
    results = await asyncio.gather(
        *[stack.client.get(stack.base + "/s/sess-a/healthz", headers=headers) for _ in range(20)]
    )
    assert [r.status_code for r in results] == [200] * 20
    assert stack.controller.lookups == ["sess-a"]


async def start_pod() -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sandbox_controller.devsandbox", "--port", "0",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    return proc, line.split()[1]


async def test_pod_killed_mid_request_gives_502_then_the_route_is_re_resolved(
    stack: Stack,
) -> None:
    pod, address = await start_pod()
    try:
        stack.controller.add("sess-k", "ready", address)
        token = stack.session("sess-k", state="provisioning")  # token only
        stack.controller.add("sess-k", "ready", address)
        headers = {"x-sandbox-token": token}
        url = stack.base + "/s/sess-k/upload"
        assert (
            await stack.client.get(stack.base + "/s/sess-k/healthz", headers=headers)
        ).status_code == 200
        killed = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 65536
            os.kill(pod.pid, signal.SIGKILL)
            await pod.wait()
            killed.set()
            yield b"y" * 65536

        resp = await stack.client.post(url, content=body(), headers=headers)
        assert killed.is_set()
        assert resp.status_code == 502
        assert resp.json()["error"]["code"] == "sandbox_unreachable"
        lookups = len(stack.controller.lookups)
        # The controller moves the session; the proxy must ask again, not reuse the old pod.
        stack.controller.add("sess-k", "ready", stack.sandbox_served.address)
        resp = await stack.client.post(url, content=b"z" * 1000, headers=headers)
        assert resp.status_code == 200 and resp.text == "1000"
        assert len(stack.controller.lookups) == lookups + 1
    finally:
        if pod.returncode is None:
            pod.kill()
            await pod.wait()


async def test_unreachable_pod_is_502_and_dropped_from_the_cache(stack: Stack) -> None:
    token = stack.session()
    stack.controller.add("sess-a", "ready", "127.0.0.1:9")  # discard port: nothing listens
    headers = {"x-sandbox-token": token}
    for _ in range(2):
        resp = await stack.client.get(stack.base + "/s/sess-a/healthz", headers=headers)
        assert resp.status_code == 502
    assert stack.controller.lookups == ["sess-a", "sess-a"]


async def test_head_and_keep_alive_reuse(stack: Stack) -> None:
    token = stack.session()
    headers = {"x-sandbox-token": token}
    resp = await stack.client.head(stack.base + "/s/sess-a/blob?size=5", headers=headers)
    assert resp.status_code == 200 and resp.headers["content-length"] == "5"
    for _ in range(3):
        resp = await stack.client.get(stack.base + "/s/sess-a/blob?size=5", headers=headers)
        assert resp.content == b"xxxxx"
    # After HEAD the connection is not reused (its body length is unknowable); after
    # that, one pooled keep-alive connection carries all three GETs.
    assert len(set(stack.sandbox.clients[1:])) == 1


async def test_one_pooled_connection_parses_responses_of_every_shape_in_turn(
    stack: Stack,
) -> None:
    # The response parser is kept per upstream connection: each answer must start clean.
    headers = {"x-sandbox-token": stack.session()}
    for size in (5, 200_000, 0, 7):
        resp = await stack.client.get(stack.base + f"/s/sess-a/blob?size={size}", headers=headers)
        assert resp.content == b"x" * size
        resp = await stack.client.get(stack.base + "/s/sess-a/headers", headers=headers)
        assert resp.status_code == 200 and "path: /headers" in resp.text
    assert len(set(stack.sandbox.clients)) == 1


async def test_controller_unavailable_is_503(stack: Stack) -> None:
    token = stack.session()
    stack.controller.sessions["sess-a"]["state"] = "weird"
    resp = await stack.client.get(
        stack.base + "/s/sess-a/healthz", headers={"x-sandbox-token": token}
    )
    assert resp.status_code == 503
    assert stack.sandbox.count == 0
