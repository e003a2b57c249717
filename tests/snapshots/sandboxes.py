"""Sandboxes for the snapshot tests: devsandbox as a real process, and raw TCP servers
that answer the snapshot hook badly in one way each."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

SECRET = "pod-claim-secret"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def devsandbox(workdir: Path, *args: str) -> AsyncIterator[str]:
    """A devsandbox process serving ``workdir``; its "host:port"."""
    env = os.environ | {"SANDBOX_CLAIM_SECRET": SECRET}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sandbox_controller.devsandbox", "--port", "0",
        "--workdir", str(workdir), *args, stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        yield line.split()[1]
    finally:
        proc.terminate()
        await proc.wait()


@contextlib.asynccontextmanager
async def tcp_server(handle: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        # Handlers still holding a connection (the hung one) are not waited for.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1)


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def answering(status: int, body: bytes, headers: str = "") -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n{headers}"
            "connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    return handle


def tar_stream(total: int, *, hang_after: bool = False, declared: int | None = None) -> Handler:
    """Answers 200 with ``total`` bytes of "tar" (chunked, or with a Content-Length of
    ``declared``), then ends, or hangs with the connection open."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        length = (
            f"content-length: {declared}\r\n"
            if declared is not None
            else "transfer-encoding: chunked\r\n"
        )
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-type: application/x-tar\r\n{length}\r\n".encode())
        piece = b"t" * 65536
        sent = 0
        while sent < total:
            part = piece[: total - sent]
            sent += len(part)
            writer.write(part if declared is not None else b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        if hang_after:
            await asyncio.sleep(3600)
        if declared is None:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    return handle
