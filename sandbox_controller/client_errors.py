"""The session API's refusals as exceptions, one class per error code, and the mapping
from an HTTP answer to the exception it raises."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from .wire_errors import ErrorCode

if TYPE_CHECKING:
    from .client_results import Session

# ------------------------------------------------------------------ errors


class SandboxAPIError(Exception):
    """The controller refused: ``code`` is the error code of its body."""

    code: str = ""  # each subclass names its code; an instance keeps the server's word

    def __init__(
        self, code: str, message: str, status: int, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after


class UnauthorizedError(SandboxAPIError):
    code = ErrorCode.UNAUTHORIZED


class InvalidRequestError(SandboxAPIError):
    code = ErrorCode.INVALID_REQUEST


class ClaimLimitExceededError(SandboxAPIError):
    """``env``, ``metadata`` or ``files`` over a limit (README, claim-time configuration)."""

    code = ErrorCode.CLAIM_LIMIT_EXCEEDED


class HooksDisabledError(SandboxAPIError):
    """``env`` or ``files`` sent to a controller running with SANDBOX_HOOKS=false."""

    code = ErrorCode.HOOKS_DISABLED


class UserSessionLimitError(SandboxAPIError):
    code = ErrorCode.USER_SESSION_LIMIT


class UnknownPlanError(SandboxAPIError):
    code = ErrorCode.UNKNOWN_PLAN


class OrgSessionLimitError(SandboxAPIError):
    code = ErrorCode.ORG_SESSION_LIMIT


class OrgRateLimitedError(SandboxAPIError):
    code = ErrorCode.ORG_RATE_LIMITED


class CapacityExhaustedError(SandboxAPIError):
    code = ErrorCode.CAPACITY_EXHAUSTED


class NotLeaderError(SandboxAPIError):
    code = ErrorCode.NOT_LEADER


class StoreUnavailableError(SandboxAPIError):
    code = ErrorCode.STORE_UNAVAILABLE


class SessionNotFoundError(SandboxAPIError):
    code = ErrorCode.SESSION_NOT_FOUND


class SessionEndedError(SandboxAPIError):
    code = ErrorCode.SESSION_ENDED


class ThreadOwnedByOtherUserError(SandboxAPIError):
    code = ErrorCode.THREAD_OWNED_BY_OTHER_USER


class UnknownTemplateError(SandboxAPIError):
    code = ErrorCode.UNKNOWN_TEMPLATE


class ResourcesOutOfBoundsError(SandboxAPIError):
    code = ErrorCode.RESOURCES_OUT_OF_BOUNDS


class EgressNotGrantableError(SandboxAPIError):
    """An egress grant outside the deployment's SANDBOX_EGRESS_GRANTABLE."""

    code = ErrorCode.EGRESS_NOT_GRANTABLE


class UserBeingDeletedError(SandboxAPIError):
    """The user's data is being deleted (DELETE /users/{id}); no session meanwhile."""

    code = ErrorCode.USER_BEING_DELETED


class RestoreFailedError(SandboxAPIError):
    """A resume's restore failed; the session stays suspended (retried after
    Retry-After, as a 503)."""

    code = ErrorCode.RESTORE_FAILED


class SessionSuspendedError(SandboxAPIError):
    code = ErrorCode.SESSION_SUSPENDED


class SuspensionDisabledError(SandboxAPIError):
    code = ErrorCode.SUSPENSION_DISABLED


class SessionNotReadyError(SandboxAPIError):
    code = ErrorCode.SESSION_NOT_READY


class NotReadyError(SandboxAPIError):
    """Client-side: the session was still provisioning when ``ready_within`` ran out.
    The session is live; open it again (same thread) to keep waiting, or delete it."""

    code = "not_ready"

    def __init__(self, session: Session, waited: float) -> None:
        super().__init__(
            self.code,
            f"session {session.id} not ready after {waited:.1f} s: {session.detail}",
            0,
        )
        self.session = session


ERRORS: dict[str, type[SandboxAPIError]] = {
    cls.code: cls
    for cls in (
        UnauthorizedError,
        InvalidRequestError,
        ClaimLimitExceededError,
        HooksDisabledError,
        UserSessionLimitError,
        UnknownPlanError,
        OrgSessionLimitError,
        OrgRateLimitedError,
        CapacityExhaustedError,
        NotLeaderError,
        StoreUnavailableError,
        SessionNotFoundError,
        SessionEndedError,
        ThreadOwnedByOtherUserError,
        UnknownTemplateError,
        ResourcesOutOfBoundsError,
        EgressNotGrantableError,
        UserBeingDeletedError,
        RestoreFailedError,
        SessionSuspendedError,
        SuspensionDisabledError,
        SessionNotReadyError,
    )
}
RETRIED = frozenset({429, 503})


def error_from(response: httpx.Response) -> SandboxAPIError:
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = ErrorCode.HTTP_ERROR, response.text[:200]
    retry_after: float | None
    try:
        retry_after = float(response.headers["retry-after"])
    except (KeyError, ValueError):
        retry_after = None
    return ERRORS.get(code, SandboxAPIError)(code, message, response.status_code, retry_after)
