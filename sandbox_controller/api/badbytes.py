"""Refuse paths and queries carrying characters no store can keep, before the app sees them.

PostgreSQL cannot store NUL in text at all (asyncpg raises, and the caller saw a 500),
and no id or query value of the API is legitimately a control character or a lone
surrogate. A path with one names nothing, so it is 404; a query with one is a bad
argument, so it is 422. Bodies are checked by the pydantic schemas (an id holds no
character this refuses: schemas.ID_PATTERN).
"""

from __future__ import annotations

import json
import unicodedata
from urllib.parse import unquote_plus

from starlette.types import ASGIApp, Receive, Scope, Send

from ..wire_errors import STATUS, ErrorCode

# Cc: C0 and C1 controls, NUL and DEL among them; Cs: surrogates, which a decoder
# with errors="surrogateescape" or a hand-made scope could leave in a str.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs"})


def unstorable(text: str) -> bool:
    """True if text holds a character the store cannot (or should never) keep."""
    return any(unicodedata.category(ch) in _REFUSED_CATEGORIES for ch in text)


class RefuseBadBytes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if unstorable(scope["path"]):
                await _refuse(
                    send, ErrorCode.NOT_FOUND, "no such path: it holds a control character"
                )
                return
            # Decoded as Starlette decodes it (latin-1 on the wire, then %-escapes as UTF-8),
            # so what is checked here is what a handler would get.
            query = unquote_plus(scope.get("query_string", b"").decode("latin-1"))
            if unstorable(query):
                await _refuse(
                    send, ErrorCode.INVALID_REQUEST, "the query string holds a control character"
                )
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, code: ErrorCode, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": STATUS[code],
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
