"""devsandbox's quiesce: from its snapshot on, the sandbox takes no more work.

The contract (README, "Suspend and resume: the sandbox contract"): once a sandbox has
begun answering ``POST /_sandbox/snapshot`` it serves nothing but its hooks and its
health check until it is deleted. Every other request, and every WebSocket upgrade, is
answered 503 with ``X-Sandbox-Suspending: 1`` and left untouched, so the proxy may send
it to the session's next pod; the snapshot waits (up to 10 s) for the requests in
progress not yet answered, so that what they acknowledge is in it (a stream whose
status went out before, SSE, is not waited for); one that answers only after the
packing began gets a plain 503 instead of its own answer (it may or may not be in the
archive: never a success that might be lost); open WebSockets are closed with 1012
(service restart), and the client's reconnection wakes the session.

``Quiesce.around(app)`` is the ASGI middleware around the whole app; the snapshot hook
calls ``quiesce`` and then ``packing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .sandbox_contract import HEALTH_PATH, HOOK_PREFIX, SUSPENDING_HEADER

# How long a snapshot waits for the requests in progress before it packs anyway.
DRAIN_SECONDS = 10.0
SERVICE_RESTART = 1012


def _body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


_SUSPENDING = _body("sandbox_suspending", "this sandbox is being suspended; ask again")
_LATE = _body("sandbox_suspending", "answered after the snapshot began: try again")


def _head(body: bytes, marked: bool) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"retry-after", b"1"),
    ]
    if marked:
        headers.append((SUSPENDING_HEADER.encode(), b"1"))
    return headers


class Quiesce:
    def __init__(self) -> None:
        self.quiet = False  # the snapshot began: new work is refused
        self.packed = False  # the archive is being made: no late answer succeeds
        self._busy = 0
        self._idle: asyncio.Event | None = None
        self._sockets: set[Callable[[Message], Awaitable[None]]] = set()

    async def quiesce(self) -> None:
        """Refuse new work, close the WebSockets, and wait (up to DRAIN_SECONDS) for the
        requests in progress to be answered (their status sent)."""
        self.quiet = True
        for send in list(self._sockets):
            with contextlib.suppress(Exception):  # it closed meanwhile
                await send({"type": "websocket.close", "code": SERVICE_RESTART})
        if self._busy:
            self._idle = self._idle or asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), DRAIN_SECONDS)

    def packing(self) -> None:
        self.packed = True

    def around(self, app: ASGIApp) -> ASGIApp:
        async def quiescing(scope: Scope, receive: Receive, send: Send) -> None:
            path: str = scope.get("path", "")
            if (
                scope["type"] not in ("http", "websocket")
                or path.startswith(HOOK_PREFIX)
                or path == HEALTH_PATH
            ):
                await app(scope, receive, send)
                return
            if self.quiet:
                await _refuse(scope, receive, send)
                return
            # Busy until answered (its status sent: a stream already answered, SSE, is
            # not waited for) or, for a WebSocket, until it closes.
            self._busy += 1
            busy = True

            def answered() -> None:
                nonlocal busy
                if busy:
                    busy = False
                    self._busy -= 1
                    if not self._busy and self._idle is not None:
                        self._idle.set()

            websocket = scope["type"] == "websocket"
            if websocket:
                self._sockets.add(send)
            try:
                await app(scope, receive, send if websocket else self._guard(send, answered))
            finally:
                self._sockets.discard(send)
                answered()

        return quiescing

    def _guard(self, send: Send, answered: Callable[[], None]) -> Send:
        late = False

        async def guarded(message: Message) -> None:
            nonlocal late
            if message["type"] == "http.response.start" and self.packed:
                late = True
                start = {"type": "http.response.start", "status": 503}
                await send({**start, "headers": _head(_LATE, marked=False)})
                return
            if not late:
                await send(message)
                if message["type"] == "http.response.start":
                    answered()
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await send({"type": "http.response.body", "body": _LATE})

        return guarded


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    headers = _head(_SUSPENDING, marked=True)
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": _SUSPENDING})
        return
    message: dict[str, Any] = dict(await receive())  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        start = {"type": "websocket.http.response.start", "status": 503, "headers": headers}
        await send(start)
        await send({"type": "websocket.http.response.body", "body": _SUSPENDING})
    elif message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": SERVICE_RESTART})
