"""The proxy's access log: one line per request or WebSocket, secrets never in it
(paths are logged without their query)."""

from __future__ import annotations

import logging

from starlette.types import Scope

access_log = logging.getLogger("proxy.access")


def log_access(scope: Scope, session_id: str, status: int, sent: int, seconds: float) -> None:
    method = scope.get("method", "WEBSOCKET") if scope["type"] == "http" else "WEBSOCKET"
    path = scope["path"]  # never the query: a token may be in it
    access_log.info(
        "%s %s session=%s status=%d bytes=%d duration_ms=%.1f",
        method,
        path,
        session_id,
        status,
        sent,
        seconds * 1000,
        extra={
            "fields": {
                "method": method,
                "path": path,
                "session_id": session_id,
                "status": status,
                "bytes": sent,
                "duration_ms": round(seconds * 1000, 3),
            }
        },
    )
