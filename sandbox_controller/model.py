"""The things the controller keeps track of: sandbox pods and the sessions that hold them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class PodState(enum.StrEnum):
    PENDING = "pending"  # created, not ready yet; not bound to any session
    IDLE = "idle"  # ready, in the warm pool
    ASSIGNED = "assigned"  # serving exactly one session, for the rest of its life
    TERMINATING = "terminating"  # delete requested; still counts against the cap


class SessionState(enum.StrEnum):
    PROVISIONING = "provisioning"
    READY = "ready"
    ENDED = "ended"


class EndReason(enum.StrEnum):
    DELETED = "deleted"
    IDLE_TIMEOUT = "idle_timeout"
    MAX_LIFETIME = "max_lifetime"
    RECLAIMED = "reclaimed"
    POD_FAILED = "pod_failed"
    STARTUP_TIMEOUT = "startup_timeout"


class Outcome(enum.StrEnum):
    """How a POST /sessions ended; the label of sandbox_session_requests_total."""

    WARM = "warm"
    COLD = "cold"
    EXISTING = "existing"
    USER_LIMIT = "user_limit"
    CAPACITY = "capacity"
    ERROR = "error"


@dataclass
class Pod:
    name: str
    state: PodState
    created_at: float
    template_hash: str
    ready_at: float | None = None
    address: str | None = None
    session_id: str | None = None
    detail: str | None = None
    unschedulable: bool = False
    delete_retry_at: float | None = None
    # Until when a proxy may route to this pod's address (in memory, not stored).
    route_lease_until: float = 0.0


@dataclass
class Session:
    id: str
    user_id: str
    thread_id: str
    state: SessionState
    created_at: float
    last_active_at: float
    pod_name: str | None = None
    end_reason: EndReason | None = None
    ended_at: float | None = None
    # Until the caller has its answer: when we stop waiting for a pod, and who asked.
    reply_deadline: float | None = None
    requests: list[int] = field(default_factory=list)
    reclaimed_session_id: str | None = None

    @property
    def live(self) -> bool:
        return self.state is not SessionState.ENDED

    def is_idle(self, now: float, idle_after: float) -> bool:
        """Reclaimable: ready, and quiet for at least idle_after."""
        return self.state is SessionState.READY and now - self.last_active_at >= idle_after


@dataclass(frozen=True)
class Limits:
    """The scheduler's limits; built by ``Settings.limits()``, where the defaults live."""

    prewarm_pool_size: int
    max_total_jobs: int
    max_sessions_per_user: int
    idle_after: float
    idle_timeout: float
    max_lifetime: float
    startup_timeout: float
    max_concurrent_creates: int
    # How late activity may reach the controller (the proxies report it in batches).
    # Reclaiming waits this much beyond idle_after, so a session that was just used
    # is never reclaimed because the news of it was still on its way (invariant 4).
    activity_lag: float

    @property
    def reclaim_after(self) -> float:
        return self.idle_after + self.activity_lag
