"""Domain errors. Each carries its data and nothing of HTTP: the API alone turns them
into status codes and words (api/errors.py)."""

from __future__ import annotations

from typing import ClassVar

from .model import EndReason, Outcome


class SandboxError(Exception):
    # The sandbox_session_requests_total label when this refuses a POST /sessions.
    outcome: ClassVar[Outcome] = Outcome.ERROR


class UserSessionLimit(SandboxError):
    """The user holds ``limit`` live sessions and none is idle."""

    outcome = Outcome.USER_LIMIT

    def __init__(self, limit: int, live: int, retry_after: float) -> None:
        super().__init__(limit, live, retry_after)
        self.limit = limit
        self.live = live
        self.retry_after = retry_after  # when the first of them could turn idle


class CapacityExhausted(SandboxError):
    """``max_total_jobs`` pods exist, none is warm, and none freed within the wait."""

    outcome = Outcome.CAPACITY

    def __init__(self, max_total_jobs: int, retry_after: float) -> None:
        super().__init__(max_total_jobs, retry_after)
        self.max_total_jobs = max_total_jobs
        self.retry_after = retry_after


class UnknownPlan(SandboxError):
    """POST /sessions named a plan that SANDBOX_PLANS_FILE does not define."""

    def __init__(self, plan: str, known: tuple[str, ...]) -> None:
        super().__init__(plan, known)
        self.plan = plan
        self.known = known


class OrgSessionLimit(SandboxError):
    """The org holds its plan's ``limit`` live sessions and the user has none idle."""

    outcome = Outcome.ORG_LIMIT

    def __init__(self, org_id: str, plan: str, limit: int, retry_after: float) -> None:
        super().__init__(org_id, plan, limit, retry_after)
        self.org_id = org_id
        self.plan = plan
        self.limit = limit
        self.retry_after = retry_after  # when the first of them could time out


class OrgRateLimited(SandboxError):
    """The org opened its plan's ``per_minute`` new sessions in the last 60 seconds."""

    outcome = Outcome.ORG_RATE

    def __init__(self, org_id: str, plan: str, per_minute: int, retry_after: float) -> None:
        super().__init__(org_id, plan, per_minute, retry_after)
        self.org_id = org_id
        self.plan = plan
        self.per_minute = per_minute
        self.retry_after = retry_after  # when the oldest of them leaves the window


class ThreadOwnedByOtherUser(SandboxError):
    def __init__(self, thread_id: str) -> None:
        super().__init__(thread_id)
        self.thread_id = thread_id


class UnknownTemplate(SandboxError):
    def __init__(self, template: str, known: tuple[str, ...]) -> None:
        super().__init__(template)
        self.template = template
        self.known = known


class ResourcesOutOfBounds(SandboxError):
    """A session asked for more (or for something other) than its template allows."""

    def __init__(self, template: str, reason: str) -> None:
        super().__init__(reason)
        self.template = template
        self.reason = reason


class SessionNotFound(SandboxError):
    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id


class SessionEnded(SandboxError):
    def __init__(self, session_id: str, reason: EndReason | None) -> None:
        super().__init__(session_id, reason)
        self.session_id = session_id
        self.reason = reason


class UserBeingDeleted(SandboxError):
    """A session was asked for a user whose deletion (DELETE /users/{id}) is under way."""

    def __init__(self, user_id: str) -> None:
        super().__init__(user_id)
        self.user_id = user_id


class NotLeader(SandboxError):
    """This replica does not schedule: a standby, starting, stopping, or deposed."""


class StoreUnavailable(SandboxError):
    """The store did not take a round's writes; nothing of that round was promised."""


class DecisionFailed(SandboxError):
    """A scheduling decision raised (a bug): nothing of its round was committed and the
    pool was rebuilt from the store. ``request_id`` is in the log line with the
    traceback, so an operator can find it from the caller's answer."""

    def __init__(self, request_id: str) -> None:
        super().__init__(request_id)
        self.request_id = request_id


# When a caller whose resume failed may try again.
RESTORE_RETRY_AFTER = 5.0


class SessionRestoreFailed(SandboxError):
    """A resume's restore (or the claim before it) failed: that pod is deleted, and the
    session is suspended again with its archive."""

    def __init__(self, session_id: str, detail: str, retry_after: float) -> None:
        super().__init__(session_id, detail, retry_after)
        self.session_id = session_id
        self.detail = detail
        self.retry_after = retry_after


class SessionSuspended(SandboxError):
    """The session is suspended (or suspending, or resuming): no sandbox to route to
    until it is resumed (POST /internal/sessions/{id}/resume)."""

    def __init__(self, session_id: str, state: str) -> None:
        super().__init__(session_id, state)
        self.session_id = session_id
        self.state = state


class SuspensionDisabled(SandboxError):
    """A suspend was asked of a deployment with no snapshot store (or no hooks)."""


class SessionNotReady(SandboxError):
    """A suspend was asked of a session that has no sandbox yet (provisioning)."""

    def __init__(self, session_id: str, state: str) -> None:
        super().__init__(session_id, state)
        self.session_id = session_id
        self.state = state
