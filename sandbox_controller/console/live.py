"""One console's Server-Sent Events stream.

Opened for a page (``?page=/console/sessions?...``), a stream carries the page's live
part itself: after each change that concerns the page it sends the fragment, rendered
once per change, page and role and shared by every stream on that page (the frame is
one string), so no console fetches anything per change. Without a page it carries the
hub's small change messages, as before.

A stream holds no queue: it sends the newest fragment when the client has taken the
last one (uvicorn's send waits while the socket's buffer is full), so a slow client
skips the changes it had no time for, and what it costs is one frame in flight.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from .hub import Hub, Message

HEARTBEAT = 15.0
# A live part bigger than this is not pushed: the page fetches it (the 5,000-row
# sessions page is ~1.5 MB).
FRAGMENT_MAX = 4 * 1024 * 1024
# SSE ends a line at CR, LF or CRLF: every one of them starts a new "data:" line, so
# nothing in the page's text can end the event or start a field of its own.
_LINE_END = re.compile(r"\r\n|\r|\n")

RELOAD = b"event: reload\ndata: \n\n"  # signed out, standby, or the page is gone
REFRESH = b"event: refresh\ndata: \n\n"  # too big for the stream: fetch the live part


def frame(version: int, body: str) -> bytes:
    """The live part as one SSE event (console.js puts event.data in #live); bytes,
    encoded once for every stream that sends it."""
    if len(body) > FRAGMENT_MAX:
        return REFRESH
    data = "".join(f"data: {line}\n" for line in _LINE_END.split(body))
    return f"id: {version}\nevent: fragment\n{data}\n".encode()


@dataclass(frozen=True)
class Page:
    """The page a stream follows: which changes concern it, and its frame now."""

    session_id: str | None  # a session's page follows only that session
    frame: Callable[[], Awaitable[bytes]]

    def concerns(self, messages: list[Message]) -> bool:
        if self.session_id is None:
            return True
        return any(touched is None or self.session_id in touched for _, _, touched in messages)


async def stream(hub: Hub, since: int, page: Page | None) -> AsyncIterator[str | bytes]:
    """Every change after ``since`` (as fragments for a page), a heartbeat when quiet."""
    yield "retry: 2000\n\n"
    seen = since
    while not hub.closed:
        messages = hub.since(seen)
        if messages is None:  # too far behind: everything may have changed
            seen = hub.version
            messages = [(seen, '{"all": true}', None)]
        if not messages:
            await hub.next_message(HEARTBEAT)
            if not hub.since(seen):
                yield ": heartbeat\n\n"
            continue
        seen = messages[-1][0]
        if page is None:
            for version, data, _ in messages:
                event = "standby" if '"standby"' in data else "change"
                yield f"id: {version}\nevent: {event}\ndata: {data}\n\n"
        elif any('"standby"' in data for _, data, _ in messages):
            yield f'id: {seen}\nevent: standby\ndata: {{"standby": true}}\n\n'
        elif page.concerns(messages):
            yield await page.frame()
        await asyncio.sleep(0)
