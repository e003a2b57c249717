"""What the pool shows of itself: the counts its policies and the metrics read, and
the status behind ``GET /pool``. Read-only views over the state that pool.py keeps and
its policies own; no decision is taken here."""

from __future__ import annotations

from collections import Counter, OrderedDict

from ..backends.base import attribution_labels, shape_labels
from ..model import (
    Limits,
    Pod,
    PodState,
    PoolCondition,
    PoolStatus,
    Session,
    SessionActivity,
    SessionState,
    Shape,
    TemplateStatus,
    ThreadKey,
)
from .claiming import Claiming, Claims
from .idling import BusyChecks, Idling
from .inventory import PodInventory
from .lifecycle import PodLifecycle
from .orphans import Orphans
from .prewarm import Prewarm


class PoolViews:
    """Mixed into pool.Pool, which sets these attributes."""

    limits: Limits
    inventory: PodInventory
    sessions: dict[str, Session]
    waiting: OrderedDict[str, None]
    live_by_thread: dict[ThreadKey, str]
    prewarm: Prewarm
    prewarms: dict[str, Prewarm]
    lifecycle: PodLifecycle
    claiming: Claiming
    idling: Idling
    orphans: Orphans

    @property
    def pods(self) -> dict[str, Pod]:
        return self.inventory.pods

    @property
    def counts(self) -> dict[PodState, int]:
        return self.inventory.counts

    @property
    def idle(self) -> OrderedDict[str, None]:
        return self.inventory.idle

    @property
    def template_hash(self) -> str:
        return self.inventory.template_hash

    @property
    def lifecycle_in_flight(self) -> Counter[Shape]:
        return self.lifecycle.in_flight

    @property
    def creates_in_flight(self) -> int:
        return self.lifecycle.creates_in_flight

    @property
    def total_pods(self) -> int:
        """Pods that exist or are being created: the number the cap applies to (held
        orphans exist too)."""
        return len(self.inventory) + len(self.orphans.held) + self.creates_in_flight

    @property
    def unschedulable(self) -> bool:
        return bool(self.inventory.unschedulable)

    @property
    def cap_blocked(self) -> bool:
        return self.lifecycle.cap_blocked

    @property
    def create_rejected(self) -> PoolCondition | None:
        return self.lifecycle.create_throttle.rejected

    @property
    def capacity_blocked(self) -> bool:
        return self.cap_blocked or self.unschedulable

    @property
    def claims(self) -> Claims:
        return self.claiming.claims

    @property
    def busy(self) -> BusyChecks:
        """Status checks asked before idling out (idling.py)."""
        return self.idling.busy

    def status(self, now: float, *, sessions_by_activity: bool = True) -> PoolStatus:
        """The pool at ``now``. Sessions by activity take a pass over every live session
        (5,000 at scale): only the metrics show them, so others may leave them out."""
        sessions = dict.fromkeys(SessionActivity, 0)
        idle_after = self.limits.idle_after
        live = self.live_by_thread.values() if sessions_by_activity else ()
        for sid in live:
            session = self.sessions[sid]
            if session.state is SessionState.PROVISIONING:
                sessions[SessionActivity.PROVISIONING] += 1
            elif session.state is SessionState.SUSPENDED:
                sessions[SessionActivity.SUSPENDED] += 1
            elif session.state is SessionState.SUSPENDING or session.is_idle(now, idle_after):
                sessions[SessionActivity.IDLE] += 1
            else:
                sessions[SessionActivity.ACTIVE] += 1
        return PoolStatus(
            pods=dict(self.counts),
            creating=self.creates_in_flight,
            waiters=len(self.waiting),
            capacity_blocked=self.capacity_blocked,
            cap_reached=self.total_pods >= self.limits.max_total_jobs,
            sessions=sessions,
            limits=self.limits,
            prewarm=self.prewarm.current,
            conditions=self.lifecycle.create_throttle.conditions + self.orphans.conditions,
            held_pods=len(self.orphans.held),
            templates=self.template_status(),
        )

    def pod_labels(self) -> list[tuple[str, dict[str, str]]]:
        """Each pod held by a live session, with the labels that say whose it is (its
        template and size, the session's org and allow-listed metadata): what the pod
        carries on Kubernetes, for the metrics, since a Docker container's labels are
        fixed when it is made, before any session (README "Cost attribution"). A pass
        over every live session: the metrics' only."""
        keys = self.limits.label_metadata_keys
        found = []
        for sid in self.live_by_thread.values():
            session = self.sessions[sid]
            pod = self.inventory.pods.get(session.pod_name or "")
            if pod is None or pod.session_id != sid:
                continue
            labels = shape_labels(pod.shape)
            labels.update(attribution_labels(session.metadata, keys, session.org_id))
            found.append((pod.name, labels))
        return found

    def template_status(self) -> tuple[TemplateStatus, ...]:
        """Each template's pods, creates, waiting sessions and warm target."""
        creating: Counter[str] = Counter()
        for shape, count in self.lifecycle.in_flight.items():
            creating[shape.template] += count
        waiters = Counter(self.sessions[sid].template for sid in self.waiting)
        return tuple(
            TemplateStatus(
                name,
                self.inventory.template_counts(name),
                creating[name],
                waiters[name],
                prewarm.current,
            )
            for name, prewarm in self.prewarms.items()
        )
