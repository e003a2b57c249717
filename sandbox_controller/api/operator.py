"""Operator endpoints that change more than one session: deleting a user's data
(``DELETE /users/{user_id}``) and confirming what a recovery held
(``POST /admin/recovery/confirm``). Both take the API token, as every operator call,
and both leave one JSON audit line on the ``sandbox_controller.audit`` logger."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ..clock import Clock
from ..scheduler.loop import Scheduler
from .request_bodies import ID_MAX, ID_SCHEMA, Id
from .schemas import errors

audit_log = logging.getLogger("sandbox_controller.audit")

# Who called: one API token today, so one caller id. (With several tokens, the id of
# the token that authenticated the request.)
API_CALLER = "api_token"


def audit(event: str, caller: str, at: float, **fields: Any) -> None:
    """One audit event, one JSON line. The one place these endpoints emit from: point it
    at the controller's audit emitter when there is one."""
    record = {"event": event, "caller": caller, "time": _iso(at), **fields}
    audit_log.info(json.dumps(record, sort_keys=True))


class UserDeletedBody(BaseModel):
    """What DELETE /users/{user_id} did. A second call answers the same with zeros."""

    user_id: str
    sessions_ended: int = Field(description="live sessions ended now (reason deleted)")
    sessions_purged: int = Field(
        description="session rows deleted from the store, ended ones included"
    )
    pods_deleted: int = Field(description="sandboxes of the sessions ended now, being deleted")


class RecoveryConfirmedBody(BaseModel):
    """The pods a recovery held (pool condition RecoveryHeld), now being deleted."""

    deleted_pods: list[str]


def add_operator_routes(api: APIRouter, leading: Callable[[], Scheduler], clock: Clock) -> None:
    @api.delete(
        "/users/{user_id}",
        responses={
            200: {"model": UserDeletedBody},
            **errors(401, 404, 422, 503, why={404: "a path holding a control character"}),
        },
    )
    async def delete_user(
        user_id: Annotated[Id, Path(max_length=ID_MAX, json_schema_extra=ID_SCHEMA)],
    ) -> Response:
        """End every session of the user (their sandboxes deleted after the release
        hook) and delete every row of theirs, ended sessions included, in every org.
        Idempotent: a user with nothing left answers 200 with zero counts. Sessions
        asked for the user meanwhile are refused (409 user_being_deleted)."""
        done = await leading().delete_user(user_id)
        counts = {
            "sessions_ended": done.sessions_ended,
            "sessions_purged": done.sessions_purged,
            "pods_deleted": done.pods_deleted,
        }
        audit("user_deleted", API_CALLER, clock.now(), user_id=user_id, **counts)
        return JSONResponse({"user_id": user_id, **counts})

    @api.post(
        "/admin/recovery/confirm",
        responses={200: {"model": RecoveryConfirmedBody}, **errors(401, 503)},
    )
    async def confirm_recovery() -> Response:
        """Delete the pods a recovery holds (GET /pool condition RecoveryHeld): pods
        that served sessions the store does not know. None held: an empty list."""
        names = await leading().confirm_recovery()
        audit("recovery_confirmed", API_CALLER, clock.now(), deleted_pods=len(names))
        return JSONResponse({"deleted_pods": names})


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
