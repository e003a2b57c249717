"""The one error table (api/errors.py): each domain error becomes its status, code,
message and Retry-After, through the app's real exception handlers."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from sandbox_controller.api.errors import Unauthorized, install_error_handlers
from sandbox_controller.errors import (
    CapacityExhausted,
    DecisionFailed,
    NotLeader,
    OrgRateLimited,
    OrgSessionLimit,
    SandboxError,
    SessionEnded,
    SessionNotFound,
    StoreUnavailable,
    ThreadOwnedByOtherUser,
    UnknownPlan,
    UserSessionLimit,
)
from sandbox_controller.model import EndReason

CASES: list[tuple[SandboxError, int, str, str | None, str]] = [
    (
        UserSessionLimit(limit=5, live=5, retry_after=42.4),
        429,
        "user_session_limit",
        "43",
        "5",
    ),  # rounded up
    (CapacityExhausted(max_total_jobs=50, retry_after=5.0), 503, "capacity_exhausted", "5", "50"),
    (ThreadOwnedByOtherUser("t-1"), 409, "thread_owned_by_other_user", None, "t-1"),
    (UnknownPlan("gold", ("starter",)), 422, "unknown_plan", None, "starter"),
    (OrgSessionLimit("acme", "starter", 2, 59.5), 429, "org_session_limit", "60", "acme"),
    (OrgRateLimited("acme", "starter", 3, 20.0), 429, "org_rate_limited", "20", "starter"),
    (SessionNotFound("s-1"), 404, "session_not_found", None, "s-1"),
    (SessionEnded("s-2", EndReason.IDLE_TIMEOUT), 410, "session_ended", None, "idle_timeout"),
    (NotLeader(), 503, "not_leader", "1", "leader"),
    (StoreUnavailable(), 503, "store_unavailable", "2", "store"),
    (Unauthorized(), 401, "unauthorized", None, "token"),
    (DecisionFailed("0f3c9a7e5d2b4c61"), 500, "internal_error", None, "0f3c9a7e5d2b4c61"),
    (SandboxError(), 500, "internal_error", None, "internal"),
]


@pytest.mark.parametrize(("error", "status", "code", "retry_after", "names"), CASES)
async def test_each_domain_error_has_one_status_code_and_retry_after(
    error: SandboxError, status: int, code: str, retry_after: str | None, names: str
) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/fail")
    async def fail() -> None:
        raise error

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.get("/fail")
    assert response.status_code == status
    body = response.json()
    assert body["error"]["code"] == code
    assert names in body["error"]["message"]  # the words name the error's data
    assert response.headers.get("retry-after") == retry_after
    if status == 503:  # DESIGN: every 503 says when to come back
        assert retry_after is not None
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if isinstance(error, DecisionFailed):  # the id that names the controller's log line
        assert response.headers["x-request-id"] == error.request_id
