"""Request bodies and the session JSON of the contract (DESIGN §4)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..model import (
    PodState,
    PoolStatus,
    PrewarmPolicy,
    Provisioning,
    Session,
    SessionState,
    WaitReason,
)
from ..tokens import issue_token


def _check_id(value: str) -> str:
    if not 1 <= len(value) <= 253:
        raise ValueError("must be 1 to 253 characters")
    if not value.isprintable():
        raise ValueError("must contain printable characters only")
    return value


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str
    thread_id: str
    wait_seconds: float = Field(30.0, ge=0, le=120)

    _ids = field_validator("user_id", "thread_id")(_check_id)


class ActivityReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    activity: dict[str, float] = Field(max_length=10000)


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def wait_detail(provisioning: Provisioning | None) -> str | None:
    """Why a provisioning session has no sandbox yet, in words."""
    if provisioning is None:
        return None
    match provisioning.reason:
        case WaitReason.POD_REPORTS:
            return provisioning.pod_detail
        case WaitReason.CAP_REACHED:
            return (
                f"waiting for a free slot: maxTotalJobs ({provisioning.max_total_jobs}) "
                "sandbox pods exist"
            )
        case WaitReason.POD_STARTING:
            return "sandbox pod is starting"
        case WaitReason.NO_POD_YET:
            return "waiting for a sandbox pod"


def pool_json(status: PoolStatus, *, leader: bool) -> dict[str, Any]:
    limits = status.limits
    return {
        "pods": {state.value: status.pods[state] for state in PodState},
        "creating": status.creating,
        "waiters": status.waiters,
        "capacity_blocked": status.capacity_blocked,
        "max_total_jobs": limits.max_total_jobs,
        "prewarm_pool_size": limits.prewarm_pool_size,
        "max_sessions_per_user": limits.max_sessions_per_user,
        "prewarm": prewarm_json(status),
        "leader": leader,
    }


def prewarm_json(status: PoolStatus) -> dict[str, Any]:
    """The warm pool's target and why; a standby names its policy and target only."""
    limits = status.limits
    if status.prewarm is not None:
        target = status.prewarm
        return {"policy": target.policy.value, "target": target.target, "reason": target.reason}
    policy = limits.prewarm.policy
    size = limits.prewarm_pool_size if policy is PrewarmPolicy.STATIC else limits.prewarm.min
    return {"policy": policy.value, "target": size, "reason": "standby: not scheduling"}


def session_json(
    session: Session,
    *,
    connect_url: str,
    token_secret: bytes,
    token_ttl: float,
    now: float,
    detail: Provisioning | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": session.id,
        "user_id": session.user_id,
        "thread_id": session.thread_id,
        "state": session.state.value,
        "end_reason": session.end_reason.value if session.end_reason else None,
        "created_at": iso(session.created_at),
        "last_active_at": iso(session.last_active_at),
        "ended_at": iso(session.ended_at),
        "pod": session.pod_name,
        "connect": None,
        "reclaimed_session_id": session.reclaimed_session_id,
    }
    if session.state is not SessionState.ENDED:
        body["connect"] = {
            "url": connect_url,
            "token": issue_token(token_secret, session.id, now + token_ttl),
        }
    if session.state is SessionState.PROVISIONING:
        body["detail"] = wait_detail(detail)
    return body
