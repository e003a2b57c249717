"""Operator endpoints that change more than one session: deleting a user's data
(``DELETE /users/{user_id}``) and confirming what a recovery held
(``POST /admin/recovery/confirm``). Both take the API token, as every operator call,
and both leave one audit event (audit.py: ``user_deleted``, ``recovery_confirmed``), its
counts in ``reason``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ..audit import caller_of, emit_audit
from ..clock import Clock
from ..scheduler.loop import Scheduler
from .auth import caller_id
from .request_bodies import ID_MAX, ID_SCHEMA, Id
from .schemas import errors


def audit(action: str, request: Request, at: float, **counts: int) -> None:
    """One audit event for this operator call, by the caller's token id."""
    caller = caller_of(caller_id(request), request.headers.get("authorization", ""))
    reason = " ".join(f"{k}={v}" for k, v in counts.items())
    user_id = request.path_params.get("user_id")
    emit_audit(action, caller=caller, at=at, user_id=user_id, reason=reason)


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
        request: Request,
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
        audit("user_deleted", request, clock.now(), **counts)
        return JSONResponse({"user_id": user_id, **counts})

    @api.post(
        "/admin/recovery/confirm",
        responses={200: {"model": RecoveryConfirmedBody}, **errors(401, 503)},
    )
    async def confirm_recovery(request: Request) -> Response:
        """Delete the pods a recovery holds (GET /pool condition RecoveryHeld): pods
        that served sessions the store does not know. None held: an empty list."""
        names = await leading().confirm_recovery()
        audit("recovery_confirmed", request, clock.now(), deleted_pods=len(names))
        return JSONResponse({"deleted_pods": names})
