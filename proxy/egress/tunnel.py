"""A CONNECT tunnel: two copy loops, each reading at most one chunk ahead of what the
other side has taken (``drain`` before the next read), so a slow reader holds the fast
writer back instead of filling our memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from .heads import CHUNK


async def _pipe(
    src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: Callable[[int], None]
) -> None:
    while data := await src.read(CHUNK):
        dst.write(data)
        count(len(data))
        await dst.drain()
    if dst.can_write_eof():
        dst.write_eof()  # half-close passed on: the other direction may still speak


async def splice(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    up: Callable[[int], None],
    down: Callable[[int], None],
) -> None:
    """Copy both ways until both sides have finished, or either fails."""
    tasks = {
        asyncio.create_task(_pipe(client[0], upstream[1], up)),
        asyncio.create_task(_pipe(upstream[0], client[1], down)),
    }
    try:
        pending = tasks
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(not t.cancelled() and t.exception() is not None for t in done):
                break  # a reset on one side ends the tunnel: nothing more can pass
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            upstream[1].close()
