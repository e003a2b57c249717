"""What the session API answers, as the client hands it back: a session, how to reach it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class Connect:
    """Where the editor reaches the sandbox, and the token that opens it (until it expires:
    ``refresh`` hands out a fresh one)."""

    url: str
    token: str


@dataclass(frozen=True)
class EndDetail:
    """Why a session ended when it did: its last activity, where that came from, the
    sandbox's answer when it was asked whether it was busy, and why its claim was given
    up (claim_rejected); None where they do not apply."""

    last_active_at: str | None
    activity_source: str | None  # handover | proxy | touch | busy
    busy_answer: str | None
    # claim_rejected: why the claim was given up, quoting the sandbox's answer.
    claim_answer: str | None = None
    # evicted: the platform's words for the eviction.
    eviction: str | None = None


@dataclass(frozen=True)
class Session:
    id: str
    user_id: str
    thread_id: str
    state: str  # provisioning | ready | ended
    # deleted | idle_timeout | max_lifetime | reclaimed | pod_failed | startup_timeout |
    # claim_rejected | controller_stopped | evicted
    end_reason: str | None
    created_at: str
    last_active_at: str | None
    ended_at: str | None
    pod: str | None
    connect: Connect | None  # None once ended
    reclaimed_session_id: str | None
    detail: str | None  # why a provisioning session is not ready yet
    metadata: Mapping[str, str] = field(default_factory=dict)  # as given at open
    activity_source: str | None = None  # of the last activity: handover|proxy|touch|busy
    activity_detail: str | None = None  # what it said (a busy sandbox's detail)
    end_detail: EndDetail | None = None  # once ended
    org_id: str | None = None  # as given at open
    plan: str | None = None  # the plan it was admitted under (None: the defaults)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Session:
        connect = body.get("connect")
        activity = body.get("last_activity") or {}
        ended = body.get("end_detail")
        return cls(
            id=body["id"],
            user_id=body["user_id"],
            thread_id=body["thread_id"],
            state=body["state"],
            end_reason=body.get("end_reason"),
            created_at=body["created_at"],
            last_active_at=body.get("last_active_at"),
            ended_at=body.get("ended_at"),
            pod=body.get("pod"),
            connect=Connect(connect["url"], connect["token"]) if connect else None,
            reclaimed_session_id=body.get("reclaimed_session_id"),
            detail=body.get("detail"),
            metadata=body.get("metadata") or {},
            activity_source=activity.get("source"),
            activity_detail=activity.get("detail"),
            end_detail=EndDetail(
                ended.get("last_active_at"),
                ended.get("activity_source"),
                ended.get("busy_answer"),
                ended.get("claim_answer"),
                ended.get("eviction"),
            )
            if ended
            else None,
            org_id=body.get("org_id"),
            plan=body.get("plan"),
        )


@dataclass(frozen=True)
class Opened:
    """What ``open_session`` got: the session, and whether it was made now (201) or the
    thread already had it (200)."""

    session: Session
    created: bool
