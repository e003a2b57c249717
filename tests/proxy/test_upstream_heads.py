"""A sandbox's response head is held to the request head's limits (issue 17, row 2): its
size (SANDBOX_MAX_HEADER_BYTES) and, from its first byte, its time
(SANDBOX_HEADER_READ_TIMEOUT). What is not a head stays unbounded in time: a slow
first byte, a Server-Sent Events stream with long gaps. The attacks themselves, with
the proxy's memory and event loop measured, are in tests/security/test_hostile_reads.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from ..security import hostile_sandbox as hostile
from .conftest import Stack, running_stack

HEAD_TIMEOUT = 1.0
HEAD_MAX = 4096

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running_stack(header_read_timeout=HEAD_TIMEOUT, max_header_bytes=HEAD_MAX) as s:
        yield s


@contextlib.asynccontextmanager
async def raw_sandbox(handle: Handler) -> AsyncIterator[str]:
    async def served(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            await handle(reader, writer)
            await reader.read()  # until the proxy hangs up
        writer.close()

    server = await asyncio.start_server(served, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def answers(*pieces: bytes, pause: float = 0.0) -> Handler:
    """A sandbox that writes ``pieces`` with ``pause`` seconds between them."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i, piece in enumerate(pieces):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(piece)
            await writer.drain()

    return handle


def head_of(size: int) -> bytes:
    """A response head of exactly ``size`` bytes (blank line included), and a body."""
    start = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-pad: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n" + b"ok"


async def get(stack: Stack, address: str, path: str = "/page") -> httpx.Response:
    """GET through the proxy from a session of its own on ``address`` (routes are cached
    per session)."""
    session_id = f"sess-{len(stack.controller.sessions)}"
    token = stack.session(session_id)
    stack.controller.add(session_id, "ready", address)
    return await stack.client.get(
        f"{stack.base}/s/{session_id}{path}", headers={"x-sandbox-token": token}
    )


async def test_a_head_of_the_limit_passes_and_one_byte_more_is_a_502(stack: Stack) -> None:
    async with raw_sandbox(answers(head_of(HEAD_MAX))) as address:
        answer = await get(stack, address)
    assert answer.status_code == 200 and answer.text == "ok"
    async with raw_sandbox(answers(head_of(HEAD_MAX + 1))) as address:
        answer = await get(stack, address)
    assert answer.status_code == 502
    assert answer.json()["error"] == {
        "code": "upstream_head_too_large",
        "message": f"the sandbox's response head is over {HEAD_MAX} bytes",
    }


async def test_interim_heads_count_against_the_limit(stack: Stack) -> None:
    interim = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
    many = interim * (HEAD_MAX // len(interim) + 1)
    async with raw_sandbox(answers(many + head_of(100))) as address:
        answer = await get(stack, address)
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_head_too_large"


async def test_a_head_must_end_within_the_timeout_of_its_first_byte(stack: Stack) -> None:
    async with raw_sandbox(answers(b"HTTP/1.1 200 OK\r\n", b"x-late: 1\r\n\r\n", pause=5)) as (
        address
    ):
        started = time.monotonic()
        answer = await get(stack, address)
        took = time.monotonic() - started
    assert answer.status_code == 502
    assert answer.json()["error"] == {
        "code": "upstream_head_timeout",
        "message": f"the sandbox did not finish its response head within {HEAD_TIMEOUT:g} s",
    }
    assert HEAD_TIMEOUT <= took < HEAD_TIMEOUT + 3


async def test_each_interim_head_starts_the_clock_again(stack: Stack) -> None:
    # 102 Processing now and then is how a slow handler says it is still at work.
    interim = b"HTTP/1.1 102 Processing\r\n\r\n"
    pieces = (interim, interim, head_of(100))
    async with raw_sandbox(answers(*pieces, pause=HEAD_TIMEOUT * 0.8)) as address:
        answer = await get(stack, address)
    assert answer.status_code == 200 and answer.text == "ok"


async def test_a_slow_first_byte_is_the_sandboxs_right(stack: Stack) -> None:
    async with hostile.running("--mode", "late-ok", "--interval", str(HEAD_TIMEOUT * 2)) as sandbox:
        answer = await get(stack, sandbox)
    assert answer.status_code == 200 and answer.text == "ok\n"


async def test_an_event_stream_with_long_gaps_still_streams(stack: Stack) -> None:
    interval = str(HEAD_TIMEOUT * 1.5)
    async with hostile.running("--mode", "slow-events", "--interval", interval) as sandbox:
        answer = await get(stack, sandbox, "/events")
    assert answer.status_code == 200
    assert answer.text == "".join(f"data: event {n}\n\n" for n in range(5))


async def test_endless_trailers_end_the_response_and_are_not_kept(stack: Stack) -> None:
    async with hostile.running("--mode", "huge-trailers") as sandbox:
        with pytest.raises(httpx.RemoteProtocolError):
            await get(stack, sandbox)
        # The proxy stays itself.
        assert (await stack.client.get(f"{stack.base}/healthz")).status_code == 200
