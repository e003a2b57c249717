"""Orphans: pods that served a session the store does not know, and the hold on them.

After a restart every pod is adopted or deleted (recovery.py). Most pods a rebuild
deletes are accounted for: the store's row names the session it served, so the store
knows the session ended, or the pod never served anyone (a warm pod of an old template,
a failed one). An *orphan* is different: a healthy pod whose labels say it was given to
a session (state ``assigned`` or a session label) while the store has no row that names
a session for it. Its session was committed before its label was set (invariant 17), so
a store that does not know it has lost that commit: a database restored from an older
backup, or a controller pointed at the wrong database. Deleting orphans then deletes
live sandboxes that users are working in, so a rebuild that finds many of them holds
them instead (model.RecoveryGuard, SANDBOX_RECOVERY_MAX_DELETE and _MAX_PODS).

Held pods are neither deleted nor handed out. They count against maxTotalJobs (they
exist: invariant 1), the pool shows the ``RecoveryHeld`` condition, and the loop logs
their names, until an operator confirms (``sandbox-controller recover --confirm``,
``POST /admin/recovery/confirm``) or restarts with ``SANDBOX_RECOVERY_CONFIRM=true``;
then they go as every pod that served does (release hook, route lease). Warm pods are
never orphans: a pod labelled ``pool`` with no session cannot hold anyone's work.

Pure: state in memory, times passed in.
"""

from __future__ import annotations

from ..backends.base import LabelState, PodStatus
from ..model import ConditionType, Pod, PoolCondition

# The condition names at most this many pods; the log names them all.
NAMED_IN_CONDITION = 10


def is_orphan(status: PodStatus, row: Pod | None, handed_out: bool) -> bool:
    """A pod a rebuild would delete: did it serve a session the store cannot name?"""
    if handed_out or (row is not None and row.session_id is not None):
        return False  # this process, or the store, knows whom it served
    return status.label_state is LabelState.ASSIGNED or status.session_hash is not None


class Orphans:
    """The pods a rebuild holds, until confirmed."""

    def __init__(self) -> None:
        self.held: dict[str, Pod] = {}
        self.found = 0  # pods the rebuild found in the backend, for the condition
        self.since: float | None = None  # wall time the hold began

    def hold(self, pods: list[Pod], found: int, wall_now: float) -> None:
        self.held = {pod.name: pod for pod in pods}
        self.found = found
        self.since = wall_now

    def release(self) -> list[Pod]:
        """The operator confirmed: every held pod, to be deleted."""
        pods, self.held, self.since = list(self.held.values()), {}, None
        return pods

    def observed(self, status: PodStatus) -> bool:
        """A pod event: True if the pod is held (and so not the pool's to act on)."""
        pod = self.held.get(status.name)
        if pod is None:
            return False
        if status.address:
            pod.address = status.address
        return True

    def gone(self, name: str) -> bool:
        """True if a held pod went (someone else deleted it): one fewer to hold."""
        if self.held.pop(name, None) is None:
            return False
        if not self.held:
            self.since = None
        return True

    @property
    def conditions(self) -> tuple[PoolCondition, ...]:
        if not self.held or self.since is None:
            return ()
        names = sorted(self.held)
        shown = ", ".join(names[:NAMED_IN_CONDITION])
        more = len(names) - NAMED_IN_CONDITION
        if more > 0:
            shown += f" and {more} more"
        message = (
            f"holding {len(names)} of {self.found} pods that served sessions the store "
            f"does not know (an older database?): {shown}. Nothing is deleted until "
            "`sandbox-controller recover --confirm`"
        )
        return (PoolCondition(ConditionType.RECOVERY_HELD, message, self.since),)
