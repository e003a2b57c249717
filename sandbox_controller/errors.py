"""Domain errors. Each carries its data; the API maps them to HTTP in one place."""

from __future__ import annotations


class SandboxError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class UserSessionLimit(SandboxError):
    status = 429
    code = "user_session_limit"


class CapacityExhausted(SandboxError):
    status = 503
    code = "capacity_exhausted"


class SessionNotFound(SandboxError):
    status = 404
    code = "session_not_found"


class SessionEnded(SandboxError):
    status = 410
    code = "session_ended"


class ThreadConflict(SandboxError):
    status = 409
    code = "thread_owned_by_other_user"


class NotLeader(SandboxError):
    status = 503
    code = "not_leader"


class StoreUnavailable(SandboxError):
    status = 503
    code = "store_unavailable"
