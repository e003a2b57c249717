"""WebSocket relay: two copy tasks plus a watchdog, close codes passed on both ways.

The client side is the ASGI server's WebSocket; the pod side is a ``websockets``
client. Pings are answered hop by hop (the ASGI server answers the client's, the client
library answers the pod's and keeps the pod connection alive with its own pings, which
also finds a pod that died without closing). Ping and pong frames are never activity.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from .errors import ProxyError, unreachable, upstream_timeout
from .forward import HOP_BY_HOP, REQUEST_OWN, connection_tokens

log = logging.getLogger(__name__)

MAX_MESSAGE = 16 * 1024 * 1024  # the same ceiling uvicorn applies on the client side
GOING_AWAY = 1001
INTERNAL_ERROR = 1011
# Codes that may not be sent in a close frame (RFC 6455 7.4.1) and what to send instead.
_UNSENDABLE = {1005: 1000, 1006: INTERNAL_ERROR, 1015: INTERNAL_ERROR}


def sendable(code: int | None, fallback: int) -> int:
    if code is None:
        return fallback
    if code in _UNSENDABLE:
        return _UNSENDABLE[code]
    if (1000 <= code <= 1014 and code not in (1004,)) or 3000 <= code <= 4999:
        return code
    return fallback


def upstream_headers(
    scope: Scope, prefix: str, strip_auth: Callable[[bytes, bytes], bytes | None]
) -> list[tuple[str, str]]:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    named = connection_tokens(headers)
    out: list[tuple[str, str]] = []
    forwarded_for = ""
    host = ""
    for name, value in headers:
        if name == b"x-forwarded-for":
            forwarded_for = value.decode("latin-1")
        elif name == b"host":
            host = value.decode("latin-1")
        if (
            name in HOP_BY_HOP
            or name in REQUEST_OWN
            or name in named
            or name.startswith(b"sec-websocket-")
        ):
            continue
        kept = strip_auth(name, value)
        if kept is not None:
            out.append((name.decode("latin-1"), kept.decode("latin-1")))
    client = scope.get("client")
    if client:
        forwarded_for = f"{forwarded_for}, {client[0]}" if forwarded_for else client[0]
    if forwarded_for:
        out.append(("x-forwarded-for", forwarded_for))
    out.append(("x-forwarded-proto", "https" if scope.get("scheme") == "wss" else "http"))
    if host:
        out.append(("x-forwarded-host", host))
    if prefix:
        out.append(("x-forwarded-prefix", prefix))
    return out


async def dial(
    address: str,
    target: str,
    headers: list[tuple[str, str]],
    subprotocols: list[str],
    connect_timeout: float,
) -> ClientConnection:
    try:
        return await connect(
            f"ws://{address}{target}",
            additional_headers=headers,
            subprotocols=[Subprotocol(s) for s in subprotocols] or None,
            user_agent_header=None,
            # A relay must not recompress (and zlib state costs ~100 KiB per socket).
            compression=None,
            proxy=None,  # never route to a pod through an environment proxy
            open_timeout=connect_timeout,
            max_size=MAX_MESSAGE,
            close_timeout=5,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise ProxyError(status, "sandbox_refused", f"the sandbox answered {status}") from None
    except TimeoutError:
        raise upstream_timeout() from None
    except (OSError, InvalidHandshake) as exc:
        raise unreachable(f"cannot open a WebSocket to the sandbox: {exc}") from None


class Relay:
    """One open client<->pod pair. ``shutdown()`` closes both sides with 1001."""

    def __init__(
        self, receive: Receive, send: Send, pod: ClientConnection, mark: Callable[[], None]
    ) -> None:
        self.receive = receive
        self.send = send
        self.pod = pod
        self.mark = mark
        self.bytes_relayed = 0  # message bytes, both ways, for the access log
        self._stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def shutdown(self) -> None:
        if not self._stop.done():
            self._stop.set_result(None)

    async def run(self) -> None:
        up = asyncio.create_task(self._client_to_pod())
        down = asyncio.create_task(self._pod_to_client())
        # The watchdog: whichever side ends first (or a drain) decides how both close.
        waits: set[asyncio.Future[Any]] = {up, down, self._stop}
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        try:
            if self._stop in done:
                await self._close_client(GOING_AWAY, "proxy shutting down")
                await self.pod.close(GOING_AWAY, "proxy shutting down")
            elif up in done and not up.cancelled() and up.exception() is None:
                code, reason = up.result()
                # A client that vanished (1006) is "going away" as far as the pod knows.
                await self.pod.close(GOING_AWAY if code == 1006 else sendable(code, 1000), reason)
            else:
                await self._close_client(self._pod_close_code(), self.pod.close_reason or "")
                await self.pod.close()
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    def _pod_close_code(self) -> int:
        rcvd = self.pod.protocol.close_rcvd
        # The pod's own code if it sent one; a pod that vanished is an internal error.
        return sendable(rcvd.code, INTERNAL_ERROR) if rcvd is not None else INTERNAL_ERROR

    async def _close_client(self, code: int, reason: str) -> None:
        try:
            await self.send({"type": "websocket.close", "code": code, "reason": reason[:120]})
        except (OSError, RuntimeError):
            pass  # the client is already gone

    async def _client_to_pod(self) -> tuple[int, str]:
        receive, pod, mark = self.receive, self.pod, self.mark
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                mark()
                text = message.get("text")
                data = text if text is not None else message.get("bytes") or b""
                self.bytes_relayed += len(data)
                await pod.send(data)
            elif kind == "websocket.disconnect":
                return message.get("code", 1005), message.get("reason") or ""

    async def _pod_to_client(self) -> None:
        send, mark = self.send, self.mark
        try:
            async for data in self.pod:
                mark()
                self.bytes_relayed += len(data)
                if isinstance(data, str):
                    await send({"type": "websocket.send", "text": data})
                else:
                    await send({"type": "websocket.send", "bytes": data})
        except ConnectionClosed:
            pass
