"""Pod lifecycle: creating pods (within the cap, the create window and a backoff),
watching them start, noticing them fail or vanish, and deleting them (after a session's
release hook, and no sooner than a proxy's route lease allows).

Pure decisions on the pool's shared state (core.py), ``now`` passed in; the pods to
create and delete go to the outbox for the loop to carry out.
"""

from __future__ import annotations

from collections import Counter
from itertools import islice

from ..backends.base import ErrorKind, PodPhase, PodStatus
from ..model import EndReason, Pod, PodState, Session, SessionState, Shape
from .conditions import DELETE_RETRY, CreateThrottle
from .core import PoolCore
from .deadlines import DeadlineKind
from .effects import Release
from .idling import hook_target
from .shares import refill_order, warm_shares

# How long a route handed to a proxy may be used (proxy/routes.py keeps to it). A pod
# that was routed to is deleted no sooner than its lease ends: until then it holds its
# address, which no other pod can be given, so a proxy's cached route can only ever
# reach the session's own sandbox, even while the controller is unreachable and the
# proxy serves what it has (docs/architecture.md invariant 15, which keeps 6).
ROUTE_LEASE = 30.0


class PodLifecycle:
    def __init__(self, pool: PoolCore) -> None:
        self.pool = pool
        self.creates_in_flight = 0
        self.in_flight: Counter[Shape] = Counter()  # the same, by shape
        # Pods the watch showed before their create call returned (see _stray_pod).
        self._seen_early: set[str] = set()
        # Failed creates back off, by kind; a refused one holds a condition (conditions.py).
        self.create_throttle = CreateThrottle()
        self.cap_blocked = False
        self._releases: dict[str, Release] = {}  # pod -> its release, sent with the delete
        # Each template's own shape, made once: reconcile asks after every template's
        # warm pool several times a round, and a Shape made and hashed anew each time
        # was most of what a round cost per template (benchmarks/README.md).
        self._own = {t.name: Shape(t.name) for t in pool.limits.all_templates}

    # ------------------------------------------------------------ pod bookkeeping

    def set_state(self, pod: Pod, state: PodState) -> None:
        self.pool.inventory.set_state(pod, state)
        self.pool.outbox.dirty_pods.add(pod.name)

    def add(self, pod: Pod) -> None:
        self.pool.inventory.add(pod)
        if pod.state is PodState.PENDING:
            self.pool.deadlines.push(
                pod.created_mono + self.pool.limits.startup_timeout,
                DeadlineKind.POD_STARTUP,
                pod.name,
            )
        self.pool.outbox.dirty_pods.add(pod.name)

    def _remove(self, pod: Pod) -> None:
        self.pool.inventory.remove(pod)
        self._releases.pop(pod.name, None)
        self.pool.outbox.dirty_pods.discard(pod.name)
        self.pool.outbox.forgotten_pods.add(pod.name)

    def delete(self, pod: Pod, now: float) -> None:
        if pod.state is PodState.TERMINATING:
            return
        self.set_state(pod, PodState.TERMINATING)
        self._plan_release(pod)
        if pod.route_lease_until > now and not pod.evicting:
            # A proxy may still use its route to this pod: delete when the lease ends.
            pod.delete_retry_at = pod.route_lease_until
            self.pool.deadlines.push(pod.delete_retry_at, DeadlineKind.POD_DELETE, pod.name)
            return
        pod.delete_retry_at = now + DELETE_RETRY
        self.pool.deadlines.push(pod.delete_retry_at, DeadlineKind.POD_DELETE, pod.name)
        self._send_delete(pod.name)

    def _plan_release(self, pod: Pod) -> None:
        """A pod that served a session hears of its end before it is deleted (never a
        pool pod: its delete is not delayed, and it has nothing to flush)."""
        session = self.pool.sessions.get(pod.session_id or "")
        target = hook_target(pod)
        if not self.pool.limits.hooks or session is None or target is None:
            return
        reason = session.end_reason
        if reason is EndReason.POD_FAILED or pod.stopped:
            # A failed or stopped pod would only make the delete wait out the deadline.
            # An evicted one still running (its grace period) hears of the end first.
            return
        if reason is not None:
            self._releases[pod.name] = Release(session.id, *target, reason.value)
        elif session.state is SessionState.SUSPENDED:
            # Its snapshot is kept (or, resuming, its restore failed): it goes all the same.
            self._releases[pod.name] = Release(session.id, *target, "suspended")

    def _send_delete(self, name: str) -> None:
        self.pool.outbox.deletes.append(name)
        release = self._releases.pop(name, None)  # with the first delete only
        if release is not None:
            self.pool.outbox.releases[name] = release

    def restore(self, pod: Pod) -> None:
        self.add(pod)
        if pod.state is PodState.TERMINATING:
            # At once, or when a route the previous leader may have leased runs out.
            pod.delete_retry_at = pod.route_lease_until
            self.pool.deadlines.push(pod.route_lease_until, DeadlineKind.POD_DELETE, pod.name)

    def lease_route(self, session_id: str, now: float) -> Pod | None:
        """A proxy asks where a ready session's pod is: the pod, its address now leased
        for ROUTE_LEASE seconds. Only an in-memory lease changes: nothing to commit (a
        restarted controller assumes every routed pod leased, see recovery.py)."""
        session = self.pool.sessions.get(session_id)
        if session is None or session.state is not SessionState.READY or not session.pod_name:
            return None
        pod = self.pool.pods.get(session.pod_name)
        if pod is None or pod.state is not PodState.ASSIGNED or not pod.address:
            return None
        pod.route_lease_until = max(pod.route_lease_until, now + ROUTE_LEASE)
        return pod

    # ------------------------------------------------------------ pod events

    def _landed(self, shape: Shape | None) -> Shape:
        """A create in flight returned: which shape it was (None: the caller does not
        say, as a one-shape test harness; the first shape in flight, else the default)."""
        # max(): after a rebuild from the store, creates started before it may return.
        self.creates_in_flight = max(0, self.creates_in_flight - 1)
        if shape is None:
            shape = next(iter(self.in_flight), Shape(self.pool.limits.default_template))
        if self.in_flight[shape] > 1:
            self.in_flight[shape] -= 1
        else:
            self.in_flight.pop(shape, None)
        return shape

    def pod_created(self, name: str, now: float, shape: Shape | None = None) -> None:
        shape = self._landed(shape)
        self.create_throttle.succeeded()
        if name in self._seen_early:
            self._seen_early.discard(name)
        elif name not in self.pool.pods:
            self.add(self._new_pod(name, now, shape))

    def create_failed(
        self,
        now: float,
        kind: ErrorKind = ErrorKind.TEMPORARY,
        message: str = "",
        shape: Shape | None = None,
    ) -> None:
        self._landed(shape)
        while len(self._seen_early) > self.creates_in_flight:
            self._seen_early.pop()  # a stray after all; it stays a pool pod
        retry_at = self.create_throttle.failed(kind, message, now)
        self.pool.deadlines.push(retry_at, DeadlineKind.CREATE_BACKOFF, "")

    def delete_failed(self, name: str, now: float) -> None:
        pod = self.pool.pods.get(name)
        if pod is not None and pod.state is PodState.TERMINATING:
            pod.delete_retry_at = now + DELETE_RETRY
            self.pool.deadlines.push(pod.delete_retry_at, DeadlineKind.POD_DELETE, name)

    def pod_observed(self, status: PodStatus, now: float) -> None:
        """The backend reports a pod's current status."""
        pod = self.pool.pods.get(status.name)
        if pod is None:
            self._stray_pod(status, now)
            return
        if status.address:
            pod.address = status.address
        if pod.create_id is None:
            pod.create_id = status.create_id
        if status.phase is PodPhase.FAILED:
            pod.stopped = True
        if pod.state is PodState.TERMINATING:
            return
        if status.phase is PodPhase.FAILED or status.terminating:
            # Failed, evicted, or deleted by someone else (kubectl): either way this
            # pod will not serve.
            self._pod_lost(pod, now, status.evicted)
        elif status.phase is PodPhase.READY:
            if pod.state is PodState.PENDING:
                self._pod_ready(pod, now)
        elif pod.state is PodState.PENDING:
            pod.detail = status.detail
            self.pool.inventory.set_unschedulable(pod, status.unschedulable)
        elif pod.state is PodState.IDLE:
            # A warm pod that stopped answering is no longer worth handing out.
            self.delete(pod, now)

    def pod_gone(self, name: str, now: float, eviction: str | None = None) -> None:
        pod = self.pool.pods.get(name)
        if pod is None:
            return
        pod.stopped = True
        if pod.state is PodState.ASSIGNED and pod.session_id is not None:
            self._assigned_pod_lost(pod, pod.session_id, now, eviction)
        self._remove(pod)

    def _stray_pod(self, status: PodStatus, now: float) -> None:
        """A pod we did not know. While our own creates are in flight it is most
        likely one of them, seen by the watch before the create call returned; adopt
        it, still counting the create as in flight until it returns (the count errs
        high, never low). Otherwise nobody accounts for it: delete it."""
        if len(self._seen_early) < self.creates_in_flight and status.session_hash is None:
            template = status.template or self.pool.limits.default_template
            shape = Shape(template, status.resources)
            self.add(self._new_pod(status.name, now, shape))
            self._seen_early.add(status.name)
            self.pod_observed(status, now)
            return
        self.pool.outbox.deletes.append(status.name)

    def _new_pod(self, name: str, now: float, shape: Shape) -> Pod:
        inventory = self.pool.inventory
        template_hash = inventory.hashes.get(shape.template, inventory.template_hash)
        pod = Pod(name, PodState.PENDING, self.pool.wall(now), template_hash)
        pod.template, pod.resources = shape.template, shape.resources
        pod.created_mono = now
        return pod

    def _pod_ready(self, pod: Pod, now: float) -> None:
        pod.ready_at = self.pool.wall(now)
        pod.detail = None
        self.pool.inventory.set_unschedulable(pod, False)
        self.pool.outbox.startup_seconds.append(now - pod.created_mono)
        prewarm = self.pool.prewarms.get(pod.template)
        if prewarm is not None:
            prewarm.pod_started(now - pod.created_mono)
        if not self.pool.inventory.fresh(pod):
            self.delete(pod, now)
            return
        self.set_state(pod, PodState.IDLE)
        session = self._first_waiting(pod.shape)
        if session is not None:
            self.pool.lease(pod, session, now, warm=False)

    def _first_waiting(self, shape: Shape) -> Session | None:
        """The session waiting longest for a pod of this shape."""
        for session_id in self.pool.waiting:
            session = self.pool.sessions[session_id]
            if session.shape == shape:
                return session
        return None

    def _pod_lost(self, pod: Pod, now: float, eviction: str | None = None) -> None:
        # The platform is deleting an evicted pod whatever we do: its release hook and
        # our delete go at once, within its grace period, not after a route lease.
        pod.evicting = eviction is not None
        if pod.state is PodState.ASSIGNED and pod.session_id is not None:
            self._assigned_pod_lost(pod, pod.session_id, now, eviction)
        else:
            self.delete(pod, now)

    def _assigned_pod_lost(
        self, pod: Pod, session_id: str, now: float, eviction: str | None = None
    ) -> None:
        # Never handed over: the session tries another pod, as on a failed claim.
        if self.pool.claim_pod_lost(session_id, pod.name, now):
            return
        # Being restored into: the session is suspended again, its archive kept.
        if self.pool.restore_pod_lost(session_id, pod.name, now):
            return
        session = self.pool.sessions.get(session_id)
        if session is not None and session.state is SessionState.SUSPENDING:
            # Its snapshot call fails on its own (or comes back with the archive).
            return
        if eviction is None:
            self.pool.end_session(session_id, EndReason.POD_FAILED, now)
        else:
            # Ended as evicted, not failed; a pod still in its grace period gets the
            # release hook before the delete (_plan_release).
            self.pool.end_session(session_id, EndReason.EVICTED, now, eviction=eviction)

    # ------------------------------------------------------------ deadlines

    def startup_due(self, name: str, now: float) -> None:
        pod = self.pool.pods.get(name)
        if pod is not None and pod.state is PodState.PENDING:
            self.delete(pod, now)  # replaced by the refill below

    def delete_due(self, name: str, now: float) -> None:
        pod = self.pool.pods.get(name)
        if (
            pod is not None
            and pod.state is PodState.TERMINATING
            and pod.delete_retry_at is not None
            and pod.delete_retry_at <= now
        ):
            pod.delete_retry_at = now + DELETE_RETRY
            self.pool.deadlines.push(pod.delete_retry_at, DeadlineKind.POD_DELETE, name)
            self._send_delete(name)

    # ------------------------------------------------------------ sizing

    def reconcile(self, now: float) -> None:
        """Replace idle pods of an old template, hand ready pods to waiters, and create
        what demand needs (waiting sessions first, then each template's warm pool, the
        cap shared as shares.py says), within the cap and the create window."""
        pool = self.pool
        for name in list(pool.inventory.stale_idle):
            self.delete(pool.pods[name], now)
        self._hand_idle_to_waiters(now)

        limits = pool.limits
        targets = self._prewarm_targets(now)
        for name, target in targets.items():
            if len(pool.inventory.idle_by_shape.get(self._own_shape(name)) or ()) >= target:
                pool.orgs.pool_full(name)  # the warm-share counts start again (orgs.py)
        needs, warm = self._demand(targets)
        room = limits.max_total_jobs - pool.total_pods
        self.cap_blocked = bool(needs) and room <= 0
        # Pods being deleted are on their way out: counting them would shrink the
        # shares again after each give-up, and one give-up would cascade.
        held = pool.total_pods - pool.counts[PodState.TERMINATING] - sum(warm.values())
        budget = limits.max_total_jobs - held - len(needs)
        wanted = warm_shares(budget, targets)
        if room <= 0:
            if needs or any(warm[t] < wanted[t] for t in targets):
                self._give_up_excess(warm, wanted, now)
            return
        if not needs and all(warm[t] >= targets[t] for t in targets):
            return
        if self.create_throttle.blocked(now):
            return
        if pool.unschedulable:
            # The cluster has no room: more pending pods would only pile up.
            return
        window = self.create_throttle.window(limits.max_concurrent_creates)
        window -= self.creates_in_flight
        count = min(room, window)
        if count <= 0:
            return
        shapes = needs[:count]
        refills = refill_order(warm, wanted, count - len(shapes))
        shapes += [self._own_shape(name) for name in refills]
        for shape in shapes:
            self.creates_in_flight += 1
            self.in_flight[shape] += 1
            pool.outbox.create_shapes.append(shape)

    def _own_shape(self, template: str) -> Shape:
        shape = self._own.get(template)
        return shape if shape is not None else Shape(template)

    def _hand_idle_to_waiters(self, now: float) -> None:
        """Idle pods of their shape go to waiting sessions, first come first, skipping
        those whose org is past its share of the warm pool (they wait for a new pod),
        unless the cap is reached: no new pod could come but by deleting an idle one."""
        pool = self.pool
        if not pool.waiting or not pool.inventory.idle_by_shape:
            return
        at_cap = pool.total_pods >= pool.limits.max_total_jobs
        for session_id in list(pool.waiting):
            session = pool.sessions[session_id]
            if not at_cap and not pool.may_take_warm(session):
                continue
            pod = pool.inventory.oldest_fresh_idle(session.shape)
            if pod is not None:
                pool.took_warm(session)
                pool.lease(pod, session, now, warm=False)

    def _demand(self, targets: dict[str, int]) -> tuple[list[Shape], dict[str, int]]:
        """The shapes waiting sessions still need created (first come, first served),
        and each template's warm pods (idle or coming, of its own shape) beyond what
        the waiting sessions will take. A session held back by its org's warm share
        takes no idle pod: only a coming one, else a new one."""
        pool = self.pool
        coming: Counter[Shape] = Counter()
        for shape, counts in pool.inventory.shape_counts.items():
            coming[shape] = counts[PodState.PENDING]
        coming.update(self.in_flight)
        idle = Counter({shape: len(pods) for shape, pods in pool.inventory.idle_by_shape.items()})
        needs: list[Shape] = []
        for session_id in pool.waiting:
            session = pool.sessions[session_id]
            shape = session.shape
            if shape.template not in pool.inventory.hashes:
                # Its template was removed while it waited (a restart with another
                # file): no pod can be made for it; its start-up timeout ends it.
                continue
            if idle[shape] > 0 and pool.may_take_warm(session):
                idle[shape] -= 1
            elif coming[shape] > 0:
                coming[shape] -= 1
            else:
                needs.append(shape)
        own = {name: self._own_shape(name) for name in targets}
        warm = {name: idle[shape] + coming[shape] for name, shape in own.items()}
        return needs, warm

    def _give_up_excess(self, warm: dict[str, int], wanted: dict[str, int], now: float) -> None:
        """At the cap, with a waiting session or a short warm pool: delete idle pods
        nobody's share holds (of another size than their template's own), then idle
        pods of templates above their share, oldest first; the room goes to the rest."""
        inventory = self.pool.inventory
        for shape, idle in list(inventory.idle_by_shape.items()):
            if shape.resources is not None and not any(
                self.pool.sessions[sid].shape == shape for sid in self.pool.waiting
            ):
                for name in list(idle):
                    self.delete(self.pool.pods[name], now)
        for name, have in warm.items():
            own = inventory.idle_by_shape.get(self._own_shape(name))
            # The oldest first. islice, not list(): a copy of thousands of idle names
            # in every round was the claim path's largest cost at 10,000 pods.
            for pod_name in list(islice(own or (), max(0, have - wanted[name]))):
                self.delete(self.pool.pods[pod_name], now)

    def _prewarm_targets(self, now: float) -> dict[str, int]:
        """Each template's warm pool size now (prewarm.py); idle pods beyond it are let
        go, and a deadline wakes the pool when a target may next change on its own."""
        pool = self.pool
        targets: dict[str, int] = {}
        waiting: Counter[str] = Counter()
        if pool.waiting:
            waiting.update(pool.sessions[sid].template for sid in pool.waiting)
        for name, prewarm in pool.prewarms.items():
            targets[name] = prewarm.decide(now).target
            idle = pool.inventory.idle_by_shape.get(self._own_shape(name))
            excess = prewarm.excess_idle(len(idle or ()), waiting[name], now)
            for pod_name in list(islice(idle or (), excess)):  # as in _give_up_excess
                self.delete(pool.pods[pod_name], now)  # the oldest first
            due = prewarm.wake_at(now)
            if due is not None:
                pool.deadlines.push(due, DeadlineKind.PREWARM, "")
        return targets
