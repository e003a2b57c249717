"""Proxy errors carry their status and code; they become responses in one place (app.py)."""

from __future__ import annotations

import json


class ProxyError(Exception):
    def __init__(
        self, status: int, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        # Seconds for Retry-After: a 429/503 passed on from the controller keeps its own;
        # any other 503 says 1.
        self.retry_after = retry_after

    def body(self) -> bytes:
        # The controller's shape and spelling (api/errors.py), so a client parses one.
        error = {"error": {"code": self.code, "message": self.message}}
        return json.dumps(error, separators=(",", ":")).encode()


def bad_path(message: str) -> ProxyError:
    return ProxyError(400, "bad_path", message)


def unauthorized(message: str) -> ProxyError:
    return ProxyError(401, "unauthorized", message)


def forbidden() -> ProxyError:
    return ProxyError(403, "forbidden", "the token belongs to another session")


def not_found(message: str = "no such session") -> ProxyError:
    return ProxyError(404, "session_not_found", message)


def provisioning() -> ProxyError:
    return ProxyError(409, "session_provisioning", "the session's sandbox is not ready yet")


def suspended() -> ProxyError:
    return ProxyError(409, "session_suspended", "the session is suspended")


def sandbox_suspending() -> ProxyError:
    message = "the session's sandbox is being suspended; send the request again"
    return ProxyError(503, "sandbox_suspending", message, retry_after=1.0)


def resume_timeout(seconds: float) -> ProxyError:
    message = f"the session did not resume within {seconds:g} s; try again"
    return ProxyError(503, "resume_timeout", message, retry_after=2.0)


def ended() -> ProxyError:
    return ProxyError(410, "session_ended", "the session has ended")


def unreachable(message: str = "the sandbox is unreachable") -> ProxyError:
    return ProxyError(502, "sandbox_unreachable", message)


def upstream_head_too_large(limit: int) -> ProxyError:
    return ProxyError(
        502, "upstream_head_too_large", f"the sandbox's response head is over {limit} bytes"
    )


def upstream_head_timeout(seconds: float) -> ProxyError:
    message = f"the sandbox did not finish its response head within {seconds:g} s"
    return ProxyError(502, "upstream_head_timeout", message)


def upstream_timeout() -> ProxyError:
    return ProxyError(504, "sandbox_timeout", "timed out connecting to the sandbox")


def controller_unavailable(message: str = "cannot look the route up right now") -> ProxyError:
    return ProxyError(503, "controller_unavailable", message)


def origin_mismatch(origin: str | None) -> ProxyError:
    seen = f"Origin {origin!r}" if origin is not None else "no Origin"
    return ProxyError(403, "origin_mismatch", f"{seen} may not use this session's cookie here")
