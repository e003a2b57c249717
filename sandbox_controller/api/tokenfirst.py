"""No request body is read from a client without the API token.

FastAPI reads and parses a body before it runs a route's dependencies, so with the
token checked there, a client without one could make the controller read and parse
megabytes, or hold a connection open while it trickled them in. This middleware,
outside the body limit, answers such a request 401 before a byte of its body is read
(the server then closes the connection: edge.GuardedHttp). A request without a body
goes on to the routes' own check, and the connection is closed after its 401; the
endpoints open to all (probes, metrics) take no body.
"""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import Unauthorized, error_response, problem


def bearer_matches(authorization: str, api_token: str) -> bool:
    scheme, _, value = authorization.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(value.encode(), api_token.encode())


def has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


class TokenBeforeBody:
    def __init__(self, app: ASGIApp, api_token: str | None) -> None:
        self.app = app
        self.api_token = api_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = self.api_token
        if token is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = next((v for n, v in scope["headers"] if n == b"authorization"), b"")
        if bearer_matches(authorization.decode("latin-1"), token):
            await self.app(scope, receive, send)
        elif has_body(scope["headers"]):
            await error_response(problem(Unauthorized()))(scope, receive, send)
        else:
            await self.app(scope, receive, _close_after_401(send))


def _close_after_401(send: Send) -> Send:
    """A 401 closes the connection: a client without the token keeps none open."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 401:
            message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
        await send(message)

    return sending


_CLOSE = (b"connection", b"close")
