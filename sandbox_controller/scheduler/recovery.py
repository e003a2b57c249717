"""Rebuilding the pool after a (re)start, from the store's record and the backend's pods.

The store says what was promised; the backend says what exists. A pod held by a live
session is adopted back to it, so the builder notices nothing; a fresh pool pod is
adopted into the pool; anything else is deleted, because a pod that may have served a
session must never serve another (docs/architecture.md invariants 3, 5 and 17).

A fresh pool pod is one whose row says so, or one with no row yet whose labels say so
(state "pool", no session, the current template, not failed): rows of pool pods are
written up to a second late (rounds.POD_ROWS_DELAY), so a takeover or a restart often
finds pods younger than their rows. Such a pod cannot have served a session: a claim's
pod row is committed with the session before anyone hears of it, and the claim's
label follows only after that commit. So every healthy warm pod survives a takeover.

A rebuild within one process (after a failed commit or decision) also knows which pods
it handed to a session (``handed_out``: their label or claim call has gone out), though
neither row nor label may say so yet: they are never fresh either.

Which routes the previous leader leased to proxies is not recorded, so every pod that
may have served a session is taken as leased for a full ROUTE_LEASE from now: one that
must go is deleted only when no proxy can still be routing to it
(docs/architecture.md invariant 15).

Deadlines run on this process's monotonic clock, which means nothing to another
process: across a restart or a takeover the stored wall times are the only truth. A
stored time becomes a monotonic one as ``mono_now + (stored - wall_now)``
(Pool.from_wall), so a deadline is as far off as the wall clock now says.

A session being suspended or resumed is taken back as suspension.py says (its
docstring: which state survives a crash).

A pod that served a session the store cannot name (an orphan: orphans.py) is deleted
like the rest, unless there are so many that the store itself is the likelier fault
(an older backup, the wrong database): then they are all held until an operator
confirms (model.RecoveryGuard). ``confirmed`` names pods an operator already let go
in this term, so a rebuild after a failed commit does not hold them again.
"""

from __future__ import annotations

from ..backends.base import LabelState, PodPhase, PodStatus
from ..model import EndReason, Pod, PodState, Session, SessionState
from .orphans import is_orphan
from .pool import ROUTE_LEASE, Pool


def restore(
    pool: Pool,
    sessions: list[Session],
    pod_rows: list[Pod],
    backend_pods: list[PodStatus],
    now: float,
    handed_out: frozenset[str] | set[str] = frozenset(),
    confirmed: frozenset[str] | set[str] = frozenset(),
) -> None:
    rows = {p.name: p for p in pod_rows}
    suspending: set[str] = set()
    for stored in sessions:
        if stored.state is SessionState.SUSPENDING:
            # Its snapshot died with the previous leader (an archive it may have left has
            # no record: the sweep takes it). Adopted on its pod as ready, if that is
            # healthy, then suspended again below at once: ready for even a round, it
            # would count toward its user's limit beside the session that took its seat.
            stored.state = SessionState.READY
            suspending.add(stored.id)
        elif stored.resuming:
            # A resume the previous leader began: finished here, on a new pod (the one it
            # had, which may hold part of the archive, is deleted below).
            stored.resume_mono = now
    holder = {s.pod_name: s for s in sessions if s.pod_name and s.live}
    adopted: set[str] = set()
    orphans: list[Pod] = []

    for status in backend_pods:
        row = rows.get(status.name)
        session = holder.get(status.name)
        healthy = status.phase is not PodPhase.FAILED and not status.terminating
        created_at = row.created_at if row else status.created_at
        template = row.template_hash if row else status.template_hash or ""
        pod = Pod(status.name, PodState.TERMINATING, created_at, template, address=status.address)
        if row is not None:
            pod.template, pod.resources = row.template, row.resources
        else:
            pod.template = status.template or pool.limits.default_template
            pod.resources = status.resources
        pod.created_mono = pool.from_wall(created_at)
        pod.create_id = status.create_id
        given = status.name in handed_out or bool(row and row.session_id)
        if session is not None or given or status.session_hash:
            pod.route_lease_until = now + ROUTE_LEASE
        if session is not None and healthy and session.state is SessionState.READY:
            pod.state, pod.session_id = PodState.ASSIGNED, session.id
            pod.ready_at = row.ready_at if row else None
            adopted.add(status.name)
        elif (
            session is None
            and healthy
            and not given
            and _fresh_pool_pod(status, row, pool.inventory.hashes.get(pod.template))
        ):
            ready = status.phase is PodPhase.READY
            pod.state = PodState.IDLE if ready else PodState.PENDING
            pod.ready_at = (row.ready_at if row else pool.wall(now)) if ready else None
        elif (
            healthy
            and status.name not in confirmed
            and is_orphan(status, row, status.name in handed_out)
        ):
            orphans.append(pod)
            continue
        pool.restore_pod(pod)

    if pool.limits.recovery.holds(len(orphans), len(backend_pods)):
        pool.orphans.hold(orphans, len(backend_pods), pool.wall(now))
    else:
        for pod in orphans:
            pool.restore_pod(pod)

    for name in rows.keys() - {p.name for p in backend_pods}:
        pool.outbox.forgotten_pods.add(name)

    for session in sessions:
        if not session.live:
            continue
        pool.restore_session(session)
        if session.org_id:  # its org's rate window, as far as the store knows it
            pool.orgs.restored(session.org_id, session.created_mono, now)
        if session.state is SessionState.READY and session.pod_name not in adopted:
            pool.end_session(session.id, EndReason.POD_FAILED, now)
        elif session.id in suspending:
            pool.suspension.suspend(session, EndReason.IDLE_TIMEOUT, now)


def _fresh_pool_pod(status: PodStatus, row: Pod | None, template_hash: str | None) -> bool:
    """Never given to a session, by its row or, with no row yet, by its labels."""
    if status.label_state is LabelState.ASSIGNED or status.session_hash is not None:
        # Given to a session, whatever an older row says (a restored backup's row may
        # still call it warm): it must never serve another (invariant 3).
        return False
    if row is not None:
        return row.session_id is None and row.state in (PodState.PENDING, PodState.IDLE)
    return (
        status.label_state is LabelState.POOL
        and status.session_hash is None
        and status.template_hash == template_hash
    )
