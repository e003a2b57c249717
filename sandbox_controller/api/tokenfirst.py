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
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import Unauthorized, error_response, problem


def bearer_in(authorization: str, accepted: tuple[str, ...]) -> bool:
    """Whether the Authorization header carries one of the accepted bearer tokens.
    Every accepted token is compared, so the time taken tells nothing."""
    scheme, _, value = authorization.partition(" ")
    given = value.encode()
    matches = [secrets.compare_digest(given, token.encode()) for token in accepted]
    return scheme.lower() == "bearer" and any(matches)


def has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


class TokenBeforeBody:
    """``tokens``: every bearer token some route accepts (the API token, the proxies'
    credential); which route takes which is the routes' own check."""

    def __init__(
        self,
        app: ASGIApp,
        tokens: tuple[str, ...],
        own_auth: str,
        review: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.app = app
        self.tokens = tokens
        # A token none of ``tokens`` is may still be an in-cluster caller's, which the
        # API server vouches for (TokenReview, kept briefly): asked before the body.
        self.review = review
        # Pages under this prefix sign in with a cookie and check it (and a CSRF token)
        # themselves: the console (console/access.py). Their bodies are small forms,
        # still held to the body limit and the edge's minimum rate.
        self.own_auth = own_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.tokens or scope["type"] != "http" or _under(scope["path"], self.own_auth):
            await self.app(scope, receive, send)
            return
        authorization = next((v for n, v in scope["headers"] if n == b"authorization"), b"")
        if bearer_in(authorization.decode("latin-1"), self.tokens) or await self._reviewed(
            authorization.decode("latin-1")
        ):
            await self.app(scope, receive, send)
        elif has_body(scope["headers"]):
            await error_response(problem(Unauthorized()))(scope, receive, send)
        else:
            await self.app(scope, receive, _close_after_401(send))

    async def _reviewed(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        if self.review is None or scheme.lower() != "bearer" or not token:
            return False
        return await self.review(token)


def _close_after_401(send: Send) -> Send:
    """A 401 closes the connection: a client without the token keeps none open."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 401:
            message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
        await send(message)

    return sending


_CLOSE = (b"connection", b"close")


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")
