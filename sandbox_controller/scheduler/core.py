"""What each policy (admission.py, claiming.py, idling.py, lifecycle.py) may use of
the pool: its shared state, and the operations that cross from one policy to another.

A Protocol, satisfied by pool.Pool, so that the policies need not import pool.py
(which composes them): the pure core stays free of import cycles, and this list is
the whole of what one policy can reach of the others.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict
from typing import Protocol

from ..model import (
    ActivitySource,
    AuditAction,
    BusyAnswer,
    EndReason,
    Limits,
    Outcome,
    Pod,
    PodState,
    PoolCondition,
    Session,
    Shape,
    ThreadKey,
    UserKey,
)
from .deadlines import Deadlines
from .effects import Outbox
from .inventory import PodInventory
from .orgs import OrgLedger
from .prewarm import Prewarm


class PoolCore(Protocol):
    # ------------------------------------------------------------ shared state

    @property
    def limits(self) -> Limits: ...

    @property
    def sessions(self) -> dict[str, Session]:
        """Live sessions, plus ended ones not yet pruned."""

    @property
    def waiting(self) -> OrderedDict[str, None]:
        """Provisioning sessions with no pod yet, first come first served."""

    @property
    def live_by_user(self) -> defaultdict[UserKey, set[str]]: ...

    @property
    def live_by_thread(self) -> dict[ThreadKey, str]: ...

    @property
    def live_by_org(self) -> defaultdict[str, set[str]]: ...

    @property
    def orgs(self) -> OrgLedger: ...

    @property
    def deleting_users(self) -> set[str]:
        """Users whose deletion is under way: no session opens for them."""

    @property
    def inventory(self) -> PodInventory: ...

    @property
    def deadlines(self) -> Deadlines: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def prewarm(self) -> Prewarm: ...

    @property
    def prewarms(self) -> dict[str, Prewarm]: ...

    @property
    def lifecycle_in_flight(self) -> Counter[Shape]:
        """Creates in flight, by shape."""

    @property
    def pods(self) -> dict[str, Pod]: ...

    @property
    def idle(self) -> OrderedDict[str, None]: ...

    @property
    def counts(self) -> dict[PodState, int]: ...

    @property
    def template_hash(self) -> str: ...

    @property
    def total_pods(self) -> int: ...

    @property
    def unschedulable(self) -> bool: ...

    @property
    def creates_in_flight(self) -> int: ...

    @property
    def cap_blocked(self) -> bool:
        """Someone waits and the cap leaves no room to create a pod for them."""

    @property
    def create_rejected(self) -> PoolCondition | None:
        """The platform refuses creates for good (conditions.py), or None."""

    def wall(self, now: float) -> float:
        """The wall time (stored and shown) of the monotonic ``now``."""

    @property
    def caller(self) -> str:
        """Who asked for the command being applied (the audit log's caller)."""

    def audit(
        self,
        action: AuditAction,
        session: Session,
        now: float,
        *,
        reason: str | None = None,
        caller: str | None = None,
    ) -> None:
        """Record a state change of this session for the audit log."""

    # ------------------------------------------------------------ sessions (pool.py)

    def track_live(self, session: Session) -> None: ...

    def untrack_live(self, session: Session) -> None: ...

    def seat(self, session: Session) -> None:
        """It counts toward its user's and org's limits (it holds or awaits a pod)."""

    def unseat(self, session: Session) -> None:
        """It counts toward no limit (suspending, suspended)."""

    def watch_session_deadlines(self, session: Session) -> None: ...

    def lease(self, pod: Pod, session: Session, now: float, *, warm: bool) -> None: ...

    def hand_over(self, session: Session, now: float, outcome: Outcome) -> None: ...

    def end_session(
        self,
        session_id: str,
        reason: EndReason,
        now: float,
        asked: BusyAnswer | None = None,
        *,
        claim_answer: str | None = None,
        eviction: str | None = None,
        snapshot: str | None = None,
    ) -> bool: ...

    def claimed(self, session: Session, pod: Pod, now: float, *, warm: bool) -> None:
        """Its pod took the claim: ready, or, resuming, its archive restored first."""

    def idle_out(self, session: Session, now: float, asked: BusyAnswer | None) -> None:
        """Its idle timeout passed: suspended or ended (suspension.py)."""

    def reclaim(self, session: Session, now: float, asked: BusyAnswer | None) -> None:
        """Reclaimed for its user's new session: suspended or ended (suspension.py)."""

    def touch(
        self, session_id: str, at: float, source: ActivitySource, detail: str | None = None
    ) -> bool: ...

    # ------------------------------------------------------------ across policies

    def delete_pod(self, pod: Pod, now: float) -> None:
        """lifecycle.py: delete it (after its release hook and route lease)."""

    def reply_due(self, session_id: str, now: float) -> None:
        """admission.py: the caller's wait may be over."""

    def may_take_warm(self, session: Session) -> bool:
        """admission.py: its org is within its share of the warm pool (orgs.py)."""

    def took_warm(self, session: Session) -> None:
        """admission.py: it took a warm pod (counted against its org's share)."""

    def claiming_session(self, session_id: str) -> bool:
        """claiming.py: a claim is in flight for this session."""

    def claim_pod_lost(self, session_id: str, pod_name: str, now: float) -> bool:
        """claiming.py: the pod being claimed for this session is lost."""

    def drop_claim(self, session_id: str) -> None:
        """claiming.py: the session's claim in flight, if any, is given up."""

    def resume_waiting(self, session: Session, now: float) -> None:
        """admission.py: resume a session asked for while it was being suspended."""

    def resume_failed(self, session: Session, now: float, detail: str) -> None:
        """suspension.py: its callers hear restore_failed; suspended again."""

    def back_to_suspended(self, session: Session, now: float) -> None:
        """suspension.py: a resume given up; its pod goes, its archive stays."""

    def restore_pod_lost(self, session_id: str, pod_name: str, now: float) -> bool:
        """suspension.py: the pod its archive was being restored into is lost."""

    def restoring(self, session_id: str) -> bool:
        """suspension.py: its archive is being restored into its pod."""

    def hold_payload(self, session_id: str, request_id: int) -> None:
        """claiming.py: this request's env and files go with the session's claims."""

    def release_payload(self, session_id: str) -> None:
        """claiming.py: the session's claims need its payload no more."""

    def recent_busy_answer(self, session_id: str, now: float) -> BusyAnswer | None:
        """idling.py: the not-busy answer its sandbox gave just now, if any."""
