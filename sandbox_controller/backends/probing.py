"""Asking a sandbox whether it serves: one HTTP probe, the same for every backend.

Docker and local poll a new sandbox's ``/healthz`` until it answers
(``wait_until_serving``); Kubernetes probes the pod template's readiness endpoint
while a session waits for a cold pod (``kube_readiness.py``). The answer comes from
code we do not control: a probe never follows a redirect, reads no more of the body
than ``PROBE_BODY_MAX`` (raw, so no decompression), and is bounded by one total
deadline, so a trickle of bytes cannot stretch it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Container, Mapping

import httpx

from ..aiotime import Backoff, sleep_or_stop
from ..bounded import AnswerRefused, read_capped
from ..clock import Clock
from ..sandbox_contract import HEALTH_PATH

# What the kubelet reads of a probe's answer; a health check says far less.
PROBE_BODY_MAX = 10 * 1024
PROBE_TIMEOUT = 2.0
# The sandbox contract: 200 when it can serve.
HEALTHY = range(200, 201)


async def probe(
    http: httpx.AsyncClient,
    url: str,
    *,
    accept: Container[int] = HEALTHY,
    timeout: float = PROBE_TIMEOUT,
    headers: Mapping[str, str] | None = None,
) -> bool:
    """One GET of ``url``: True if it answers a status in ``accept`` within
    ``timeout`` (the whole exchange), with a body of at most PROBE_BODY_MAX bytes."""
    try:
        async with asyncio.timeout(timeout):
            async with http.stream("GET", url, headers=headers, follow_redirects=False) as response:
                if response.status_code not in accept:
                    return False
                await read_capped(response, PROBE_BODY_MAX)  # so the connection is reused
                return True
    except (httpx.HTTPError, AnswerRefused, TimeoutError, OSError):
        return False


async def accepts(host: str, port: int, *, timeout: float = PROBE_TIMEOUT) -> bool:
    """``host``:``port`` takes a TCP connection within ``timeout`` (closed at once, with
    nothing sent): the cheap test of an app that does not listen yet, a quarter of a
    refused HTTP probe's CPU or less (0.1-0.2 ms against 0.4-0.8 ms, benchmarks/README.md
    §12)."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def serves(http: httpx.AsyncClient, address: str) -> bool:
    """The sandbox at ``address`` ("host:port") answers its health check with 200."""
    return await probe(http, f"http://{address}{HEALTH_PATH}")


async def wait_until_serving(
    http: httpx.AsyncClient,
    address: Callable[[], str | None],
    *,
    wanted: Callable[[], bool],
    clock: Clock,
    backoff: Backoff,
    closing: asyncio.Event,
) -> bool:
    """Poll the sandbox's health check, sooner then less often, until it answers 200
    (True), or ``wanted()`` turns false or the backend closes (False). ``address`` is
    asked each time: a sandbox may not have one yet."""
    attempt = 0
    while wanted():
        where = address()
        if where and await serves(http, where):
            return True
        if await sleep_or_stop(clock, backoff.delay(attempt), closing):
            return False
        attempt += 1
    return False
