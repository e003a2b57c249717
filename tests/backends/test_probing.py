"""The one HTTP probe every backend uses: the answer comes from code we do not control,
so it never follows a redirect, reads a capped body, and has one deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from sandbox_controller.backends.kube_readiness import KUBELET_ACCEPTS
from sandbox_controller.backends.probing import PROBE_BODY_MAX, accepts, probe, serves


class Sandbox:
    """A hostile sandbox on a free port; ``hits`` counts requests by path."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.app = web.Application()
        self.app.router.add_get("/{tail:.*}", self.handle)
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        if request.path == "/healthz":
            return web.Response(text="ok")
        if request.path == "/redirect":
            raise web.HTTPFound("/healthz")
        if request.path == "/big":
            return web.Response(body=b"x" * (PROBE_BODY_MAX + 1))
        if request.path == "/chunked-big":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(PROBE_BODY_MAX // 1024 + 2):
                await response.write(b"x" * 1024)
            await response.write_eof()
            return response
        if request.path == "/slow-body":
            response = web.StreamResponse()
            response.content_length = 100
            await response.prepare(request)
            await asyncio.sleep(3600)
        return web.Response(status=503)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    box = Sandbox()
    runner = web.AppRunner(box.app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    box.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield box
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


async def test_a_sandbox_that_answers_200_serves(sandbox: Sandbox, http: httpx.AsyncClient) -> None:
    assert await probe(http, f"{sandbox.url}/healthz")
    assert await serves(http, sandbox.url.removeprefix("http://"))
    assert not await probe(http, f"{sandbox.url}/unavailable")


async def test_a_redirect_is_never_followed(sandbox: Sandbox, http: httpx.AsyncClient) -> None:
    assert not await probe(http, f"{sandbox.url}/redirect")  # the contract: 200
    # The kubelet counts a 3xx as success; either way the target is never asked.
    assert await probe(http, f"{sandbox.url}/redirect", accept=KUBELET_ACCEPTS)
    assert sandbox.hits == {"/redirect": 2}


@pytest.mark.parametrize("path", ["/big", "/chunked-big"])
async def test_a_body_over_the_cap_is_refused(
    sandbox: Sandbox, http: httpx.AsyncClient, path: str
) -> None:
    assert not await probe(http, f"{sandbox.url}{path}")


async def test_an_answer_that_never_ends_is_cut_at_the_deadline(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    assert not await probe(http, f"{sandbox.url}/slow-body", timeout=0.2)


async def test_nothing_listening_is_not_serving(http: httpx.AsyncClient) -> None:
    assert not await probe(http, "http://127.0.0.1:9/healthz")


async def test_a_bare_connect_tells_a_listening_port_and_asks_nothing(sandbox: Sandbox) -> None:
    port = int(sandbox.url.rsplit(":", 1)[1])
    assert await accepts("127.0.0.1", port)
    assert sandbox.hits == {}
    assert not await accepts("127.0.0.1", 9)
