"""The controller's error codes on the wire, with the status each comes with.

Every refusal is ``{"error": {"code": "...", "message": "..."}}``. The API answers with
these codes (api/errors.py) and the client raises by them (client.py), both from this
one table, so neither can name a code the other does not know.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class ErrorCode(enum.StrEnum):
    UNAUTHORIZED = "unauthorized"
    INVALID_REQUEST = "invalid_request"
    CLAIM_LIMIT_EXCEEDED = "claim_limit_exceeded"
    HOOKS_DISABLED = "hooks_disabled"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BODY_TOO_LARGE = "body_too_large"
    SESSION_NOT_FOUND = "session_not_found"
    SESSION_ENDED = "session_ended"
    THREAD_OWNED_BY_OTHER_USER = "thread_owned_by_other_user"
    USER_BEING_DELETED = "user_being_deleted"
    USER_SESSION_LIMIT = "user_session_limit"
    UNKNOWN_PLAN = "unknown_plan"
    ORG_SESSION_LIMIT = "org_session_limit"
    ORG_RATE_LIMITED = "org_rate_limited"
    CAPACITY_EXHAUSTED = "capacity_exhausted"
    UNKNOWN_TEMPLATE = "unknown_template"
    RESOURCES_OUT_OF_BOUNDS = "resources_out_of_bounds"
    NOT_LEADER = "not_leader"
    STORE_UNAVAILABLE = "store_unavailable"
    RESTORE_FAILED = "restore_failed"
    SESSION_SUSPENDED = "session_suspended"
    SUSPENSION_DISABLED = "suspension_disabled"
    SESSION_NOT_READY = "session_not_ready"
    INTERNAL_ERROR = "internal_error"
    # Any other status the web framework raises (the status says which).
    HTTP_ERROR = "http_error"


# The status of each code. invalid_request is also a 400, for a body that is not even
# text; http_error comes with whatever status was raised.
STATUS: Mapping[ErrorCode, int] = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.INVALID_REQUEST: 422,
    ErrorCode.CLAIM_LIMIT_EXCEEDED: 422,
    ErrorCode.HOOKS_DISABLED: 422,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.BODY_TOO_LARGE: 413,
    ErrorCode.SESSION_NOT_FOUND: 404,
    ErrorCode.SESSION_ENDED: 410,
    ErrorCode.THREAD_OWNED_BY_OTHER_USER: 409,
    ErrorCode.USER_BEING_DELETED: 409,
    ErrorCode.USER_SESSION_LIMIT: 429,
    ErrorCode.UNKNOWN_PLAN: 422,
    ErrorCode.ORG_SESSION_LIMIT: 429,
    ErrorCode.ORG_RATE_LIMITED: 429,
    ErrorCode.CAPACITY_EXHAUSTED: 503,
    ErrorCode.UNKNOWN_TEMPLATE: 422,
    ErrorCode.RESOURCES_OUT_OF_BOUNDS: 422,
    ErrorCode.NOT_LEADER: 503,
    ErrorCode.STORE_UNAVAILABLE: 503,
    ErrorCode.RESTORE_FAILED: 503,
    ErrorCode.SESSION_SUSPENDED: 409,
    ErrorCode.SUSPENSION_DISABLED: 422,
    ErrorCode.SESSION_NOT_READY: 409,
    ErrorCode.INTERNAL_ERROR: 500,
}
