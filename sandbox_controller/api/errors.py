"""Errors become HTTP here, and only here: one table from each domain error
(errors.py) to its status, code, words and Retry-After (DESIGN §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..errors import (
    CapacityExhausted,
    NotLeader,
    SandboxError,
    SessionEnded,
    SessionNotFound,
    StoreUnavailable,
    ThreadOwnedByOtherUser,
    UserSessionLimit,
)
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


# Validation errors about a claim's sizes (schemas.py) get a code of their own.
_SIZE_ERRORS = frozenset({"string_too_long", "too_long", LIMIT_CODE})
_CLAIM_FIELDS = frozenset({"env", "metadata", "files"})


@dataclass(frozen=True)
class Problem:
    status: int
    code: str
    message: str
    retry_after: float | None = None


def problem(exc: SandboxError) -> Problem:
    match exc:
        case UserSessionLimit():
            return Problem(
                429,
                "user_session_limit",
                f"user has {exc.live} live sessions (limit {exc.limit}) and none is idle",
                exc.retry_after,
            )
        case CapacityExhausted():
            return Problem(
                503,
                "capacity_exhausted",
                f"all {exc.max_total_jobs} sandbox pods (maxTotalJobs) are in use "
                "and none freed in time",
                exc.retry_after,
            )
        case ThreadOwnedByOtherUser():
            return Problem(
                409, "thread_owned_by_other_user", f"thread {exc.thread_id} belongs to another user"
            )
        case SessionNotFound():
            return Problem(404, "session_not_found", f"no session {exc.session_id}")
        case SessionEnded():
            return Problem(
                410, "session_ended", f"session {exc.session_id} has ended ({exc.reason})"
            )
        case NotLeader():
            return Problem(
                503,
                "not_leader",
                "this replica is not the leader; retry against the service",
                NOT_LEADER_RETRY_AFTER,
            )
        case StoreUnavailable():
            return Problem(
                503,
                "store_unavailable",
                "the store is unavailable; nothing was changed, try again",
                STORE_RETRY_AFTER,
            )
        case Unauthorized():
            return Problem(401, "unauthorized", "missing or wrong bearer token")
        case HooksDisabled():
            return Problem(
                422,
                "hooks_disabled",
                "env and files need the sandbox hooks, which are off (SANDBOX_HOOKS=false)",
            )
    return Problem(500, "internal_error", "internal error; see the controller log")


def error_response(problem: Problem) -> JSONResponse:
    headers = {}
    if problem.retry_after is not None:
        # Rounded up: a client that waits what it is told must not come back too early.
        headers["Retry-After"] = str(max(1, math.ceil(problem.retry_after)))
    if problem.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SandboxError)
    async def domain_error(request: Request, exc: SandboxError) -> Response:
        return error_response(problem(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        code = "invalid_request"
        # Words and places only: never an input value (env and files are secrets).
        for err in exc.errors()[:5]:
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            where = ".".join(loc)
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
            if err.get("type") == LIMIT_CODE or (
                err.get("type") in _SIZE_ERRORS and loc and loc[0] in _CLAIM_FIELDS
            ):
                code = LIMIT_CODE
        message = "; ".join(problems) or "invalid request"
        return error_response(Problem(422, code, message))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {
            400: "invalid_request",  # a body that is not even text
            404: "not_found",
            405: "method_not_allowed",
            413: "body_too_large",
        }
        code = codes.get(exc.status_code, "http_error")
        response = error_response(Problem(exc.status_code, code, str(exc.detail)))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = allowed_methods(request)
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # Logged by the server; the caller gets a code, never a traceback.
        return error_response(
            Problem(500, "internal_error", "internal error; see the controller log")
        )
