"""Errors become HTTP here, and only here: one table from each domain error
(errors.py) to its code (wire_errors.py, with its status), words and Retry-After."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..errors import (
    CapacityExhausted,
    DecisionFailed,
    NotLeader,
    OrgRateLimited,
    OrgSessionLimit,
    ResourcesOutOfBounds,
    SandboxError,
    SessionEnded,
    SessionNotFound,
    SessionNotReady,
    SessionRestoreFailed,
    SessionSuspended,
    StoreUnavailable,
    SuspensionDisabled,
    ThreadOwnedByOtherUser,
    UnknownPlan,
    UnknownTemplate,
    UserBeingDeleted,
    UserSessionLimit,
)
from ..wire_errors import STATUS, ErrorCode
from .schemas import LIMIT_CODE

# Every 503 says when to come back. A graceful hand-over completes within about a
# second (a standby polls every 0.5 s); a store outage that outlasts this is met by
# the next retry's answer.
NOT_LEADER_RETRY_AFTER = 1.0
STORE_RETRY_AFTER = 2.0


class Unauthorized(SandboxError):
    """No bearer token, or the wrong one (an API error, not a domain one)."""


class HooksDisabled(SandboxError):
    """env or files asked for with SANDBOX_HOOKS=false: nothing could deliver them."""


# Validation errors about a claim's sizes (request_bodies.py) get a code of their own.
_SIZE_ERRORS = frozenset({"string_too_long", "too_long", LIMIT_CODE})
_CLAIM_FIELDS = frozenset({"env", "metadata", "files"})


@dataclass(frozen=True)
class Problem:
    status: int
    code: ErrorCode
    message: str
    retry_after: float | None = None
    # Names the controller's log line about it (X-Request-Id and the message say it).
    request_id: str | None = None

    @classmethod
    def of(cls, code: ErrorCode, message: str, retry_after: float | None = None) -> Problem:
        """The problem with the code's own status."""
        return cls(STATUS[code], code, message, retry_after)


INTERNAL = Problem.of(ErrorCode.INTERNAL_ERROR, "internal error; see the controller log")


def problem(exc: SandboxError) -> Problem:
    match exc:
        case UserSessionLimit():
            return Problem.of(
                ErrorCode.USER_SESSION_LIMIT,
                f"user has {exc.live} live sessions (limit {exc.limit}) and none is idle",
                exc.retry_after,
            )
        case CapacityExhausted():
            return Problem.of(
                ErrorCode.CAPACITY_EXHAUSTED,
                f"all {exc.max_total_jobs} sandbox pods (maxTotalJobs) are in use "
                "and none freed in time",
                exc.retry_after,
            )
        case UnknownPlan():
            known = ", ".join(exc.known) or "none: SANDBOX_PLANS_FILE is not set"
            return Problem.of(
                ErrorCode.UNKNOWN_PLAN, f"plan {exc.plan!r} is not defined (plans: {known})"
            )
        case OrgSessionLimit():
            return Problem.of(
                ErrorCode.ORG_SESSION_LIMIT,
                f"org {exc.org_id} has {exc.limit} live sessions, the limit of plan "
                f"{exc.plan}, and this user has none idle",
                exc.retry_after,
            )
        case OrgRateLimited():
            return Problem.of(
                ErrorCode.ORG_RATE_LIMITED,
                f"org {exc.org_id} opened {exc.per_minute} sessions in the last minute, "
                f"the rate of plan {exc.plan}",
                exc.retry_after,
            )
        case ThreadOwnedByOtherUser():
            return Problem.of(
                ErrorCode.THREAD_OWNED_BY_OTHER_USER,
                f"thread {exc.thread_id} belongs to another user",
            )
        case UnknownTemplate():
            known = ", ".join(exc.known)
            return Problem.of(
                ErrorCode.UNKNOWN_TEMPLATE, f"no template {exc.template!r} (known: {known})"
            )
        case ResourcesOutOfBounds():
            return Problem.of(
                ErrorCode.RESOURCES_OUT_OF_BOUNDS, f"template {exc.template}: {exc.reason}"
            )
        case UserBeingDeleted():
            return Problem.of(
                ErrorCode.USER_BEING_DELETED,
                f"user {exc.user_id} is being deleted; no session is opened meanwhile",
            )
        case SessionNotFound():
            return Problem.of(ErrorCode.SESSION_NOT_FOUND, f"no session {exc.session_id}")
        case SessionEnded():
            return Problem.of(
                ErrorCode.SESSION_ENDED, f"session {exc.session_id} has ended ({exc.reason})"
            )
        case NotLeader():
            return Problem.of(
                ErrorCode.NOT_LEADER,
                "this replica is not the leader; retry against the service",
                NOT_LEADER_RETRY_AFTER,
            )
        case StoreUnavailable():
            return Problem.of(
                ErrorCode.STORE_UNAVAILABLE,
                "the store is unavailable; nothing was changed, try again",
                STORE_RETRY_AFTER,
            )
        case Unauthorized():
            return Problem.of(ErrorCode.UNAUTHORIZED, "missing or wrong bearer token")
        case DecisionFailed():
            return Problem(
                STATUS[ErrorCode.INTERNAL_ERROR],
                ErrorCode.INTERNAL_ERROR,
                f"internal error in a scheduling decision (request id {exc.request_id}); "
                "nothing of it was changed; see the controller log",
                request_id=exc.request_id,
            )
        case SessionRestoreFailed():
            return Problem.of(
                ErrorCode.RESTORE_FAILED,
                f"session {exc.session_id} could not be resumed ({exc.detail}); it stays "
                "suspended with its archive: try again",
                exc.retry_after,
            )
        case SessionSuspended():
            return Problem.of(
                ErrorCode.SESSION_SUSPENDED,
                f"session {exc.session_id} is {exc.state}: resume it first "
                "(POST /internal/sessions/{id}/resume)",
            )
        case SuspensionDisabled():
            return Problem.of(
                ErrorCode.SUSPENSION_DISABLED,
                "suspension needs a snapshot store (SANDBOX_SNAPSHOT_STORE) and the "
                "sandbox hooks (SANDBOX_HOOKS)",
            )
        case SessionNotReady():
            return Problem.of(
                ErrorCode.SESSION_NOT_READY,
                f"session {exc.session_id} is {exc.state}: only a ready session can be suspended",
            )
        case HooksDisabled():
            return Problem.of(
                ErrorCode.HOOKS_DISABLED,
                "env and files need the sandbox hooks, which are off (SANDBOX_HOOKS=false)",
            )
    return INTERNAL


def error_response(problem: Problem) -> JSONResponse:
    headers = {}
    if problem.retry_after is not None:
        # Rounded up: a client that waits what it is told must not come back too early.
        headers["Retry-After"] = str(max(1, math.ceil(problem.retry_after)))
    if problem.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if problem.request_id is not None:
        headers["X-Request-Id"] = problem.request_id
    return JSONResponse(
        {"error": {"code": problem.code, "message": problem.message}},
        status_code=problem.status,
        headers=headers,
    )


def allowed_methods(request: Request) -> str:
    """Every method the path takes. Starlette's own 405 names only the first route that
    matched the path, though /sessions, say, is two routes (GET and POST). Each method
    is tried against the routes, so included routers are asked too."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    )


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


# What pydantic says of a body that is not an object: bytes or a string, as a body sent
# without content-type: application/json arrives (FastAPI parses JSON only with it).
_NOT_AN_OBJECT = frozenset({"model_attributes_type", "dict_type", "model_type"})


def _not_json(request: Request, errors: Sequence[Any]) -> str | None:
    """The one message for a body that is no JSON object: malformed JSON (where it
    broke, never its bytes), or a body sent without the JSON content type."""
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid" and len(loc) == 2 and loc[0] == "body":
            why = str((err.get("ctx") or {}).get("error", "")) or "JSON decode error"
            return f"the body is not valid JSON at character {loc[1]}: {why}"
        if loc == ("body",) and err.get("type") in _NOT_AN_OBJECT:
            sent = request.headers.get("content-type", "").split(";")[0].strip()
            subtype = sent.lower().partition("/")[2]
            if subtype != "json" and not subtype.endswith("+json"):  # as FastAPI reads it
                has = f"this request's is {sent[:80]}" if sent else "this request has none"
                return f"send the body as a JSON object with content-type: application/json ({has})"
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SandboxError)
    async def domain_error(request: Request, exc: SandboxError) -> Response:
        return error_response(problem(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first_run = _not_json(request, errors)
        if first_run is not None:
            return error_response(Problem.of(ErrorCode.INVALID_REQUEST, first_run))
        problems = []
        code = ErrorCode.INVALID_REQUEST
        # Words and places only: never an input value (env and files are secrets).
        for err in errors[:5]:
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            where = ".".join(loc)
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
            if err.get("type") == LIMIT_CODE or (
                err.get("type") in _SIZE_ERRORS and loc and loc[0] in _CLAIM_FIELDS
            ):
                code = ErrorCode.CLAIM_LIMIT_EXCEEDED
        message = "; ".join(problems) or "invalid request"
        return error_response(Problem.of(code, message))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {
            400: ErrorCode.INVALID_REQUEST,  # a body that is not even text
            404: ErrorCode.NOT_FOUND,
            405: ErrorCode.METHOD_NOT_ALLOWED,
            413: ErrorCode.BODY_TOO_LARGE,
        }
        code = codes.get(exc.status_code, ErrorCode.HTTP_ERROR)
        response = error_response(Problem(exc.status_code, code, str(exc.detail)))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = allowed_methods(request)
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # Logged by the server; the caller gets a code, never a traceback.
        return error_response(INTERNAL)
