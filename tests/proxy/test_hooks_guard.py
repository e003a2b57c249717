"""The sandbox hooks (/_sandbox/...) are the controller's: the proxy never forwards a
request for them, in either routing mode, however the path is spelled."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import Stack, raw_request, running_stack


async def raw_to_host(port: int, host: str, target: str, token: str) -> int:
    """A request line as written (no client normalising it), for a session's host."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nX-Sandbox-Token: {token}\r\n"
    writer.write((head + "Connection: close\r\n\r\n").encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


HOOK_PATHS = [
    "/_sandbox/claim",
    "/_sandbox/status",
    "/_sandbox",
    "/%5Fsandbox/claim",
    "/%5fSANDBOX/release",
    "/_sandbo%78/claim",
    "/%255Fsandbox/claim",
    "//_sandbox/claim",
]


@pytest.mark.parametrize("path", HOOK_PATHS)
async def test_path_mode_refuses_the_hooks(stack: Stack, path: str) -> None:
    token = stack.session("sess-a")
    status = await raw_request(stack.proxy_port, f"/s/sess-a{path}", {"X-Sandbox-Token": token})
    assert status == 404
    assert stack.sandbox.count == 0


async def test_subdomain_mode_refuses_the_hooks_and_forwards_the_rest() -> None:
    domain = "sandbox.test"
    async with running_stack(proxy_session_domain=domain) as stack:
        token = stack.session("sess1")
        host = f"sess1.{domain}:{stack.proxy_port}"
        for path in HOOK_PATHS:
            assert await raw_to_host(stack.proxy_port, host, path, token) == 404, path
        assert stack.sandbox.count == 0
        # Lookalikes are the sandbox's own paths, and forwarded.
        for path in ("/_sandboxes", "/app/_sandbox/claim", "/sandbox", "/healthz"):
            await raw_to_host(stack.proxy_port, host, path, token)
        assert stack.sandbox.count == 4


async def test_path_mode_forwards_lookalikes(stack: Stack) -> None:
    token = stack.session("sess-a")
    for path in ("/_sandboxes", "/app/_sandbox/claim", "/healthz"):
        await raw_request(stack.proxy_port, f"/s/sess-a{path}", {"X-Sandbox-Token": token})
    assert stack.sandbox.count == 3
