"""One table of wire error codes: what the API answers is what the client raises by."""

from __future__ import annotations

import httpx
import pytest

from sandbox_controller import client
from sandbox_controller.api.errors import HooksDisabled, Unauthorized, error_response, problem
from sandbox_controller.errors import (
    CapacityExhausted,
    EgressNotGrantable,
    InvalidEgress,
    NotLeader,
    OrgRateLimited,
    OrgSessionLimit,
    SandboxError,
    SessionEnded,
    SessionNotFound,
    StoreUnavailable,
    ThreadOwnedByOtherUser,
    UnknownPlan,
    UserBeingDeleted,
    UserSessionLimit,
)
from sandbox_controller.model import EndReason
from sandbox_controller.wire_errors import STATUS, ErrorCode

DOMAIN_ERRORS: list[SandboxError] = [
    UserSessionLimit(live=5, limit=5, retry_after=3.0),
    CapacityExhausted(max_total_jobs=50, retry_after=2.0),
    ThreadOwnedByOtherUser(thread_id="t"),
    UnknownPlan(plan="gold", known=("starter",)),
    OrgSessionLimit(org_id="acme", plan="starter", limit=2, retry_after=60.0),
    OrgRateLimited(org_id="acme", plan="starter", per_minute=3, retry_after=20.0),
    UserBeingDeleted(user_id="u"),
    SessionNotFound(session_id="s"),
    SessionEnded(session_id="s", reason=EndReason.DELETED),
    NotLeader(),
    StoreUnavailable(),
    Unauthorized(),
    HooksDisabled(),
    EgressNotGrantable(pattern="api.github.com", grantable=("*.gitlab.com",)),
    InvalidEgress("secrets need the egress proxy"),
]


@pytest.mark.parametrize("error", DOMAIN_ERRORS, ids=lambda e: type(e).__name__)
def test_the_client_raises_the_error_the_api_answers(error: SandboxError) -> None:
    answer = error_response(problem(error))
    response = httpx.Response(answer.status_code, headers=answer.headers, content=answer.body)
    raised = client.error_from(response)
    assert type(raised) is client.ERRORS[raised.code], f"no client error for {raised.code}"
    assert raised.status == STATUS[ErrorCode(raised.code)] == answer.status_code
    assert (raised.retry_after is not None) == (answer.status_code in client.RETRIED)


def test_every_client_error_names_a_code_of_the_table() -> None:
    assert set(client.ERRORS) <= set(ErrorCode)
    assert all(isinstance(code, ErrorCode) for code in client.ERRORS)


def test_an_unknown_code_is_still_a_sandbox_api_error() -> None:
    body = b'{"error": {"code": "from_the_future", "message": "m"}}'
    raised = client.error_from(httpx.Response(418, content=body))
    assert type(raised) is client.SandboxAPIError
    assert (raised.code, raised.status) == ("from_the_future", 418)
