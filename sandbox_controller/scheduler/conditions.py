"""When to try a failed create again, and what the operator is told meanwhile.

One executor decides for every create, as client-go's workqueue does with its per-key
rate limiter: each failure pushes the next attempt back exponentially, and the first
success forgets them all (``Forget``). The backend says what kind of failure it was
(backends/base.py ErrorKind); a permanent one (RBAC, an invalid template, no such
image) backs off up to five minutes, lets only one probe create out at a time, and
holds the ``CreateRejected`` condition that GET /pool shows, so a pool that never
fills says why instead of retrying in a storm. Pure: ``now`` is passed in.
"""

from __future__ import annotations

from ..aiotime import Backoff
from ..backends.base import BackendError, ErrorKind
from ..model import ConditionType, PoolCondition

# No jitter: decisions here stay exact and replayable on a hand-set clock.
# A temporary failure (overload, a conflict, no answer): the API server or the node is
# likely still unhappy for a moment, and a hot retry loop would only add to its load.
TEMPORARY_BACKOFF = Backoff(1.0, 30.0, jitter=False)
# A permanent one changes only when someone fixes something: ask again now and then, so
# the pool fills soon after the fix, but never more often than this.
PERMANENT_BACKOFF = Backoff(5.0, 300.0, jitter=False)
# A delete not confirmed by an event, or one that failed, is asked for again.
DELETE_RETRY = 30.0
# Messages are the platform's words; a condition keeps the start of one.
MESSAGE_LIMIT = 1000


class CreateThrottle:
    """The create executor's rate limiter and the condition it reports."""

    def __init__(self) -> None:
        self.failures = 0  # in a row, since the last success
        self.blocked_until = 0.0
        self.rejected: PoolCondition | None = None

    def failed(self, kind: ErrorKind, message: str, now: float) -> float:
        """A create failed: returns when the next may go out."""
        backoff = PERMANENT_BACKOFF if kind is ErrorKind.PERMANENT else TEMPORARY_BACKOFF
        self.blocked_until = max(self.blocked_until, now + backoff.delay(self.failures))
        self.failures += 1
        if kind is ErrorKind.PERMANENT:
            since = self.rejected.since if self.rejected is not None else now
            self.rejected = PoolCondition(
                ConditionType.CREATE_REJECTED, message[:MESSAGE_LIMIT], since
            )
        return self.blocked_until

    def succeeded(self) -> None:
        """The platform made a sandbox: whatever refused before has been fixed."""
        self.failures = 0
        self.blocked_until = 0.0
        self.rejected = None

    def blocked(self, now: float) -> bool:
        return now < self.blocked_until

    def window(self, max_concurrent: int) -> int:
        """Creates allowed in flight at once: one probe while creates are refused."""
        return 1 if self.rejected is not None else max_concurrent

    @property
    def conditions(self) -> tuple[PoolCondition, ...]:
        return () if self.rejected is None else (self.rejected,)


def kind_of(exc: BaseException) -> ErrorKind:
    """The kind its backend gave a failure; anything else (a bug, an unexpected
    exception from a library) is treated as temporary, as before kinds existed."""
    return exc.kind if isinstance(exc, BackendError) else ErrorKind.TEMPORARY
