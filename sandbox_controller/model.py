"""The things the controller keeps track of: sandbox pods and the sessions that hold them."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

# Sessions in one activity report from a proxy to the controller: the API refuses more
# (its body limit is sized for it), and the proxy splits a larger batch.
ACTIVITY_BATCH_MAX = 1000


class PodState(enum.StrEnum):
    PENDING = "pending"  # created, not ready yet; not bound to any session
    IDLE = "idle"  # ready, in the warm pool
    ASSIGNED = "assigned"  # serving exactly one session, for the rest of its life
    TERMINATING = "terminating"  # delete requested; still counts against the cap


class SessionState(enum.StrEnum):
    PROVISIONING = "provisioning"  # waiting for a sandbox (a resuming one: to restore)
    READY = "ready"
    # Its sandbox's snapshot is being taken; it still holds its pod, which nobody is
    # routed to meanwhile (scheduler/suspension.py).
    SUSPENDING = "suspending"
    SUSPENDED = "suspended"  # no pod; its archive kept in the snapshot store
    ENDED = "ended"


# The states in which a session holds (or awaits) a pod of its own and counts toward its
# user's limit and its org's: not a suspending one (on its way out, as an ended one whose
# pod is still being deleted), nor a suspended one (docs/architecture.md invariant 26).
SEATED_STATES = frozenset({SessionState.PROVISIONING, SessionState.READY})


class EndReason(enum.StrEnum):
    DELETED = "deleted"
    IDLE_TIMEOUT = "idle_timeout"
    MAX_LIFETIME = "max_lifetime"
    RECLAIMED = "reclaimed"
    POD_FAILED = "pod_failed"
    STARTUP_TIMEOUT = "startup_timeout"
    # Its claim was refused by two sandboxes, or failed on max_claim_attempts of them.
    CLAIM_REJECTED = "claim_rejected"
    # `dev` stopped on SIGTERM/SIGINT, stopping its sandboxes: a deliberate stop, no failure.
    CONTROLLER_STOPPED = "controller_stopped"
    # The platform evicted its pod (a drain through the Eviction API, node pressure, more
    # disk than its limits): not a crash. end_detail.eviction says who and why.
    EVICTED = "evicted"
    # Suspended, and its archive was kept SANDBOX_SNAPSHOT_RETENTION without a resume.
    SNAPSHOT_EXPIRED = "snapshot_expired"


class AuditAction(enum.StrEnum):
    """What an audit event records (README "Audit log"). An ending is one event whose
    action says what kind of ending it was; ``reason`` gives the end reason."""

    OPEN = "open"  # a caller was given a new session
    CLAIM = "claim"  # the session got its sandbox (and, with hooks, the sandbox took it)
    END = "end"  # ended for another reason (max_lifetime, pod_failed, ...)
    RECLAIM = "reclaim"  # ended to make room for the same user's new session
    IDLE_TIMEOUT = "idle_timeout"
    DELETE = "delete"  # ended on request (DELETE /sessions/{id}, the console)
    SUSPEND = "suspend"  # its snapshot was kept and its pod given back
    RESUME = "resume"  # its archive was restored into a new pod: ready again
    # An admin action outside the rounds takes a name of its own (audit.emit_audit).


_ENDING_ACTIONS = {
    EndReason.DELETED: AuditAction.DELETE,
    EndReason.IDLE_TIMEOUT: AuditAction.IDLE_TIMEOUT,
    EndReason.RECLAIMED: AuditAction.RECLAIM,
}


def ending_action(reason: EndReason) -> AuditAction:
    return _ENDING_ACTIONS.get(reason, AuditAction.END)


# The caller of what the controller decided on its own (timeouts, failures, claims).
CONTROLLER_CALLER = "controller"


@dataclass(frozen=True)
class AuditEvent:
    """One state change, for the audit log and the webhooks. Names and ids only: never
    a token, env, file or metadata value. ``at`` is wall time (unix seconds)."""

    action: str  # an AuditAction value, or an admin action's own name
    caller: str  # a token id, "controller", or "console:<role>"
    at: float
    session_id: str | None = None
    user_id: str | None = None
    org_id: str | None = None
    reason: str | None = None
    pod: str | None = None


class Outcome(enum.StrEnum):
    """How a POST /sessions ended; the label of sandbox_session_requests_total."""

    WARM = "warm"
    COLD = "cold"
    EXISTING = "existing"
    USER_LIMIT = "user_limit"
    CAPACITY = "capacity"
    ERROR = "error"
    ORG_LIMIT = "org_limit"  # the org holds its plan's max_pods_per_org live sessions
    ORG_RATE = "org_rate"  # the org opened its plan's sessions_per_minute in the last minute


# The template a deployment without SANDBOX_TEMPLATES_FILE runs (and a stored row with
# no template names: NULL, from before templates).
DEFAULT_TEMPLATE = "default"


@dataclass(frozen=True)
class Resources:
    """CPU and memory as Kubernetes quantities (``500m``, ``2Gi``); None: not set."""

    cpu: str | None = None
    memory: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v}


@dataclass(frozen=True)
class Shape:
    """What a pod is made as: its template, and resources when they are not the
    template's own (None). Warm pods are kept, and handed out, per shape."""

    template: str = DEFAULT_TEMPLATE
    resources: Resources | None = None


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
    # Its LABEL_CREATE_ID, from which its claim secret derives (in memory, from the
    # backend's status). None: made by an older version, so no hook calls.
    create_id: str | None = None
    # Its sandbox has stopped (the platform says it failed): no hook can reach it.
    stopped: bool = field(default=False, compare=False)
    # The platform is evicting it (in memory): it goes whatever we do.
    evicting: bool = field(default=False, compare=False)
    # created_at on this process's monotonic clock, which its start-up deadline runs
    # on (in memory, not stored; set by the pool: scheduler/pool.py).
    created_mono: float = field(default=0.0, compare=False)
    template: str = DEFAULT_TEMPLATE
    resources: Resources | None = None  # None: the template's own

    @property
    def shape(self) -> Shape:
        return Shape(self.template, self.resources)


class ActivitySource(enum.StrEnum):
    """Where a session's last activity came from: part of why it ended when it did."""

    HANDOVER = "handover"  # the sandbox was handed to the session
    PROXY = "proxy"  # traffic through the proxy
    TOUCH = "touch"  # POST /sessions/{id}/touch (the editor backend or an agent)
    BUSY = "busy"  # the sandbox's status hook said it is busy


@dataclass(frozen=True)
class BusyAnswer:
    """A sandbox status hook's answer (hooks.py asks; the pool decides on it).
    ``answered`` is False when the sandbox did not answer (or has no status hook):
    that counts as not busy, so a hung sandbox still ends. ``refused``: the sandbox
    refused every claim secret the controller holds (HTTP 401, a hook-secret rotation
    gone wrong): unknown, so it counts as busy and the session is kept, never ended."""

    busy: bool
    detail: str
    answered: bool
    refused: bool = False

    def describe(self) -> str:
        if self.refused:
            return f"unknown ({self.detail})"
        if not self.answered:
            return f"no answer ({self.detail})" if self.detail else "no answer"
        state = "busy" if self.busy else "not busy"
        return f"{state}: {self.detail}" if self.detail else state


@dataclass(frozen=True)
class EndDetail:
    """Why a session was ended or reclaimed when it was (stored with the session)."""

    last_active_at: float
    activity_source: ActivitySource | None = None
    # The status hook's answer asked before ending (None: not asked, e.g. a DELETE).
    busy_answer: str | None = None
    # claim_rejected: what the sandboxes answered the claim (quoting.py: bounded, no secret).
    claim_answer: str | None = None
    # evicted: the platform's words (the pod's DisruptionTarget condition or its status).
    eviction: str | None = None
    # Why its snapshot was not kept, when ending it was to be a suspension instead
    # ("hook_error: HTTP 500", "not_supported: the sandbox has no snapshot hook").
    snapshot: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "last_active_at": self.last_active_at,
            "activity_source": self.activity_source.value if self.activity_source else None,
            "busy_answer": self.busy_answer,
            "claim_answer": self.claim_answer,
            "eviction": self.eviction,
            "snapshot": self.snapshot,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> EndDetail:
        source = data.get("activity_source")
        answer = data.get("busy_answer")
        claim = data.get("claim_answer")
        eviction = data.get("eviction")
        snapshot = data.get("snapshot")
        at = data.get("last_active_at")
        return cls(
            last_active_at=float(at) if isinstance(at, int | float) else 0.0,
            activity_source=ActivitySource(source) if isinstance(source, str) else None,
            busy_answer=answer if isinstance(answer, str) else None,
            claim_answer=claim if isinstance(claim, str) else None,
            eviction=eviction if isinstance(eviction, str) else None,
            snapshot=snapshot if isinstance(snapshot, str) else None,
        )


@dataclass(frozen=True)
class Snapshot:
    """A suspended session's archive: where it is in the snapshot store, its size, and
    when it was taken and expires (wall time). Stored with the session (the
    ``snapshot_*`` columns), from the round that suspends it until the round that
    resumes or ends it; the object itself is deleted only after that round."""

    key: str
    bytes: int
    taken_at: float
    expires_at: float


def snapshot_key(session_id: str, taken_at: float) -> str:
    """The archive's key in the store: one per snapshot taken, never reused."""
    return f"{session_id}/{int(taken_at * 1000)}.tar"


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
    # The caller's metadata (POST /sessions), stored and echoed; never env or files.
    metadata: dict[str, str] = field(default_factory=dict)
    activity_source: ActivitySource | None = None
    # What the last activity said, when it says something (a busy sandbox's detail).
    activity_detail: str | None = None
    end_detail: EndDetail | None = None
    # The org it belongs to ('' for none) and the plan it was admitted under (None: the
    # deployment's defaults), both as the caller named them (README "Orgs and plans").
    org_id: str = ""
    plan: str | None = None
    # created_at and last_active_at on this process's monotonic clock, which the
    # session's deadlines run on (in memory, not stored; set by the pool, and from the
    # stored wall times when loaded: scheduler/pool.py).
    created_mono: float = field(default=0.0, compare=False)
    active_mono: float = field(default=0.0, compare=False)
    template: str = DEFAULT_TEMPLATE
    resources: Resources | None = None  # None: the template's own
    # Its archive while suspended or resuming (stored); None otherwise.
    snapshot: Snapshot | None = None
    # Brought back from an archive (in memory: the answer to a resume says so).
    resumed: bool = field(default=False, compare=False)
    # When its resume began, on this process's monotonic clock: a resume's start-up
    # timeout runs from it (in memory).
    resume_mono: float = field(default=0.0, compare=False)

    @property
    def shape(self) -> Shape:
        return Shape(self.template, self.resources)

    @property
    def seated(self) -> bool:
        """Holds or awaits a pod: counts toward its user's and its org's limits."""
        return self.state in SEATED_STATES

    @property
    def resuming(self) -> bool:
        """Waiting for a pod to restore its archive into (provisioning, with one)."""
        return self.state is SessionState.PROVISIONING and self.snapshot is not None

    # Who opened it (the audit log's caller), until its open is answered: in memory only.
    opened_by: str = field(default="", compare=False)

    @property
    def live(self) -> bool:
        return self.state is not SessionState.ENDED

    def is_idle(self, now: float, idle_after: float) -> bool:
        """Reclaimable: ready, and quiet for at least idle_after (``now`` monotonic)."""
        return self.state is SessionState.READY and now - self.active_mono >= idle_after


# What a user's limit and a thread's live session are keyed by: a user id names a user
# within an org (the org '' when there is none), and a thread id a thread of that user.
UserKey = tuple[str, str]  # (org_id, user_id)
ThreadKey = tuple[str, str, str]  # (org_id, user_id, thread_id)


def user_key(session: Session) -> UserKey:
    return (session.org_id, session.user_id)


def thread_key(session: Session) -> ThreadKey:
    return (session.org_id, session.user_id, session.thread_id)


class PrewarmPolicy(enum.StrEnum):
    STATIC = "static"  # always prewarm_pool_size warm pods (the seed's semantics)
    ADAPTIVE = "adaptive"  # follows recent arrivals and pod start-up (scheduler/prewarm.py)


@dataclass(frozen=True)
class PrewarmSettings:
    """How the adaptive policy sizes the warm pool (unused by ``static``)."""

    policy: PrewarmPolicy = PrewarmPolicy.STATIC
    # One pod kept warm even at night, so the first session after a lull is warm too.
    min: int = 1
    max: int = 20
    # The share of new sessions that should find a warm pod.
    target_warm_hit_rate: float = 0.99
    # The arrival rate is the larger of two windows' averages: the short one reacts to
    # a burst within a minute, the long one keeps the pool from collapsing in a lull.
    short_window: float = 60.0
    long_window: float = 1800.0


@dataclass(frozen=True)
class PrewarmTarget:
    """The warm pool's size right now, and why: GET /pool's ``prewarm``."""

    policy: PrewarmPolicy
    target: int
    reason: str


@dataclass(frozen=True)
class Plan:
    """What one plan allows (plans.py reads them from SANDBOX_PLANS_FILE). None: the
    deployment's own limit (max_sessions_per_user) or no org limit of that kind. The
    org-wide ones bind only sessions that name an org."""

    name: str
    max_sessions_per_user: int | None = None
    # Live sessions (each holds or awaits one pod) of one org at most.
    max_pods_per_org: int | None = None
    # The share of the warm pool an org may take while it refills (scheduler/orgs.py).
    warm_share: float = 1.0
    # New sessions of one org in any 60 seconds at most.
    sessions_per_minute: int | None = None

    @property
    def shares_warm_pool(self) -> bool:
        """Whether the warm-share rule applies (a share of 1 takes what is there)."""
        return self.warm_share < 1.0


@dataclass(frozen=True)
class TemplateLimits:
    """What the scheduler knows of one template: its warm pool's policy, and the
    resources a session may ask for (templates.py reads the rest, for the backends)."""

    name: str
    prewarm_pool_size: int = 1
    prewarm: PrewarmSettings = PrewarmSettings()
    resources: Resources = Resources()  # its pods' own
    max_resources: Resources = Resources()  # the most a session may ask (None: its own)


@dataclass(frozen=True)
class RecoveryGuard:
    """How many pods that served a session the store does not know (orphans) a rebuild
    deletes on its own. More than ``max_fraction`` of the pods it finds AND more than
    ``max_pods`` are held for an operator instead: that many is what a restored old
    backup or the wrong database looks like, not a crash (scheduler/orphans.py)."""

    max_fraction: float = 0.2
    max_pods: int = 5
    # SANDBOX_RECOVERY_CONFIRM: the operator has looked; delete whatever is found.
    confirmed: bool = False

    def holds(self, orphans: int, pods: int) -> bool:
        if self.confirmed:
            return False
        return orphans > self.max_pods and orphans > self.max_fraction * pods


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
    # is never reclaimed because the news of it was still on its way
    # (docs/architecture.md invariant 4).
    activity_lag: float
    prewarm: PrewarmSettings = PrewarmSettings()
    # The sandbox contract's hooks (hooks.py): a lease waits for the claim hook before
    # the session is ready, and idling a session out first asks its status hook.
    hooks: bool = False
    # How long one hook call may take (the loop's calls are bounded by it; the pool's
    # fallback deadlines allow for it).
    hook_timeout: float = 2.0
    # Pods a session's claim may cost at most (claiming.py), whatever the failures.
    max_claim_attempts: int = 3
    # The named plans (SANDBOX_PLANS_FILE); a session without a plan has the defaults.
    plans: tuple[Plan, ...] = ()
    # The templates, the default first (templates.py). Empty: one template, named
    # DEFAULT_TEMPLATE, with prewarm_pool_size and prewarm above.
    templates: tuple[TemplateLimits, ...] = ()
    # Metadata keys whose values label a session's pod (cost attribution).
    label_metadata_keys: tuple[str, ...] = ()
    # Suspend and resume (scheduler/suspension.py). ``snapshots``: a snapshot store is
    # configured and the hooks are on (snapshots are taken through them), so a session
    # can be suspended; ``idle_action``: what the idle timeout and a reclaim do.
    snapshots: bool = False
    idle_action: str = "end"
    snapshot_timeout: float = 300.0
    snapshot_retention: float = 7 * 86400.0

    @property
    def suspends_idle(self) -> bool:
        """The idle timeout and a reclaim suspend a session rather than end it."""
        return self.snapshots and self.idle_action == "suspend"

    @property
    def all_templates(self) -> tuple[TemplateLimits, ...]:
        if self.templates:
            return self.templates
        return (TemplateLimits(DEFAULT_TEMPLATE, self.prewarm_pool_size, self.prewarm),)

    @property
    def default_template(self) -> str:
        return self.all_templates[0].name

    # How many unmatched pods a rebuild may delete without an operator (orphans.py).
    recovery: RecoveryGuard = RecoveryGuard()

    @property
    def reclaim_after(self) -> float:
        return self.idle_after + self.activity_lag

    @cached_property
    def default_plan(self) -> Plan:
        """What a session without a plan is held to: the deployment's limits."""
        return Plan("", self.max_sessions_per_user)

    def plan(self, name: str | None) -> Plan | None:
        """The plan of this name (None: the deployment's defaults), or None if unknown."""
        if name is None:
            return self.default_plan
        found = next((p for p in self.plans if p.name == name), None)
        if found is None or found.max_sessions_per_user is not None:
            return found
        return replace(found, max_sessions_per_user=self.max_sessions_per_user)


class SessionActivity(enum.StrEnum):
    """Live sessions as the sandbox_sessions gauge counts them."""

    ACTIVE = "active"
    IDLE = "idle"  # ready and quiet for idle_after: reclaimable
    PROVISIONING = "provisioning"
    SUSPENDED = "suspended"  # no pod, an archive kept


class WaitReason(enum.StrEnum):
    """Why a provisioning session has no sandbox yet (the API puts it in words)."""

    POD_REPORTS = "pod_reports"  # a pending pod says why, in the platform's own words
    CAP_REACHED = "cap_reached"  # maxTotalJobs pods exist
    POD_STARTING = "pod_starting"
    NO_POD_YET = "no_pod_yet"
    CLAIMING = "claiming"  # it has its pod; the pod's claim hook has not answered yet
    RESTORING = "restoring"  # resuming: its archive is being streamed into its new pod
    POOL_CONDITION = "pool_condition"  # the pool cannot fill (a PoolCondition holds)


class ConditionType(enum.StrEnum):
    """What is wrong with the pool, as GET /pool and sandbox_pool_condition name it."""

    CREATE_REJECTED = "CreateRejected"  # the platform refuses to create sandboxes
    # A rebuild found more pods that served sessions the store does not know than it
    # may delete on its own (scheduler/orphans.py): they are held for an operator.
    RECOVERY_HELD = "RecoveryHeld"


@dataclass(frozen=True)
class PoolCondition:
    """A fault the pool cannot get past on its own (scheduler/conditions.py)."""

    type: ConditionType
    message: str  # the latest refusal, in the platform's words
    since: float  # when it began: the first refusal since the last success


@dataclass(frozen=True)
class UserDeletion:
    """What DELETE /users/{id} did: sessions ended now, rows purged (ended sessions,
    those just ended included), and pods that go with the sessions ended now."""

    user_id: str
    sessions_ended: int
    sessions_purged: int
    pods_deleted: int


@dataclass(frozen=True)
class Provisioning:
    reason: WaitReason
    pod_detail: str | None = None  # POD_REPORTS: from the pod's conditions and events
    max_total_jobs: int = 0  # CAP_REACHED: the cap that was reached
    condition: PoolCondition | None = None  # POOL_CONDITION: the one that holds


@dataclass(frozen=True)
class SessionView:
    """A session as the scheduler saw it (a copy), and why it is still provisioning."""

    session: Session
    detail: Provisioning | None = None


@dataclass(frozen=True)
class Opened:
    """The answer to an open-session request, given once its writes are committed."""

    session: Session  # a copy: the pool's own object stays inside the scheduler
    outcome: Outcome  # WARM, COLD or EXISTING (refusals are raised as errors.py errors)
    reclaimed_session_id: str | None = None
    detail: Provisioning | None = None


@dataclass(frozen=True)
class Route:
    """Where a proxy may send a session's traffic, and for how long (a lease)."""

    session_id: str
    state: SessionState
    address: str | None = None
    lease_seconds: float | None = None
    resuming: bool = False  # provisioning to restore its archive

    @property
    def suspended(self) -> bool:
        """No sandbox to route to until it is resumed (the proxy asks for that)."""
        return self.resuming or self.state in (SessionState.SUSPENDING, SessionState.SUSPENDED)


@dataclass(frozen=True)
class TemplateStatus:
    """One template's part of the pool: GET /pool's ``templates`` and the metrics'
    ``template`` label."""

    name: str
    pods: Mapping[PodState, int]
    creating: int
    waiters: int
    prewarm: PrewarmTarget


@dataclass(frozen=True)
class PoolStatus:
    """The pool at one moment: what GET /pool and the metrics collector both show."""

    pods: Mapping[PodState, int]
    creating: int  # creates sent, not answered yet (they count toward the cap)
    waiters: int
    capacity_blocked: bool
    cap_reached: bool
    sessions: Mapping[SessionActivity, int]
    limits: Limits
    prewarm: PrewarmTarget | None = None  # None: no pool (a standby)
    conditions: tuple[PoolCondition, ...] = ()
    templates: tuple[TemplateStatus, ...] = ()  # each template's part, the default first
    held_pods: int = 0  # orphans a rebuild holds until an operator confirms (orphans.py)

    @classmethod
    def empty(cls, limits: Limits) -> PoolStatus:
        """No pool (a standby): only the limits it would keep."""
        return cls(
            pods=dict.fromkeys(PodState, 0),
            creating=0,
            waiters=0,
            capacity_blocked=False,
            cap_reached=False,
            sessions=dict.fromkeys(SessionActivity, 0),
            limits=limits,
        )


@dataclass(frozen=True)
class SessionQuery:
    """An operator's listing (GET /sessions, the console): newest first, filtered,
    one page at a time. ``after`` is the keyset cursor: the (created_at, id) of the
    last session of the page before, so pages never skip or repeat a row while
    sessions come and go."""

    user_id: str | None = None
    states: tuple[SessionState, ...] = ()
    created_after: float | None = None
    created_before: float | None = None
    limit: int = 100
    after: tuple[float, str] | None = None


@dataclass(frozen=True)
class SessionPage:
    sessions: list[Session]
    # The cursor of the next page; None when this one is the last.
    next: tuple[float, str] | None
