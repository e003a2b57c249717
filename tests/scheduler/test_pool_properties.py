"""Random sequences of requests, platform events and clock jumps against
docs/architecture.md invariants 1-4 and 15 (the controller's half: no routed pod deleted
before its lease ends), and with orgs on plans invariant 24, checked after every step."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sandbox_controller.backends.base import LABEL_CREATE_ID, LABEL_SESSION, PodPhase, PodStatus
from sandbox_controller.model import (
    ActivitySource,
    AuditEvent,
    BusyAnswer,
    EndReason,
    Plan,
    PodState,
    Resources,
    SessionState,
    Shape,
    TemplateLimits,
    ending_action,
)
from sandbox_controller.scheduler.claiming import NO_ANSWER, ClaimFailure
from sandbox_controller.scheduler.effects import ClaimCall
from sandbox_controller.scheduler.lifecycle import ROUTE_LEASE
from sandbox_controller.scheduler.orgs import RATE_WINDOW
from sandbox_controller.scheduler.pool import Pool
from sandbox_controller.scheduler.recovery import restore
from sandbox_controller.scheduler.shares import warm_shares

from .harness import limits_with

LIMITS = limits_with(
    prewarm_pool_size=3,
    max_total_jobs=8,
    max_sessions_per_user=2,
    idle_after=300,
    idle_timeout=3600,
    max_lifetime=20000,
    startup_timeout=600,
    max_concurrent_creates=2,
)
USERS = st.sampled_from(["ann", "ben", "cat", "dov"])
THREADS = st.sampled_from([f"t{i}" for i in range(8)])


class PoolMachine(RuleBasedStateMachine):
    limits = LIMITS  # a variant may change the policy, never the caps checked below

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        ids = itertools.count(1)
        # Deterministic ids: hypothesis replays draws that depend on them.
        self.new_id = lambda: f"s{next(ids):04d}"
        self.templates = 0
        self.pool = self.new_pool()
        self.platform: set[str] = set()  # pods that exist on the pretend platform
        self.creates_sent = 0
        self.deletes_sent: set[str] = set()
        self.served_by: dict[str, str] = {}  # pod -> the one session it ever served
        self.leased_until: dict[str, float] = {}  # pod -> the end of its last route lease
        self.names = 0
        self.claim_calls: list[ClaimCall] = []  # claim hooks asked for, not answered yet
        # Pods each session's claims went to, in this controller's term (a restarted one
        # knows no claim in flight, and delivers no env or files: it starts over).
        self.claimed_pods: dict[str, list[str]] = {}
        self.refusals: dict[str, int] = {}
        self.audit: list[AuditEvent] = []  # every audit event the pool asked for
        self.settle()

    # -- plumbing

    def new_pool(self) -> Pool:
        """A controller's pool; each restart brings a new pod template."""
        return Pool(self.limits, f"tmpl-{self.templates}", new_id=self.new_id)

    def settle(self) -> None:
        self.pool.tick(self.now)
        out = self.pool.take_outbox()
        self.creates_sent += out.creates
        self.deletes_sent.update(out.deletes)
        self.claim_calls.extend(out.claims)
        self.audit.extend(out.audit)
        for call in out.claims:
            self.claimed_pods.setdefault(call.session_id, []).append(call.pod_name)
        for name in out.deletes:
            assert self.now >= self.leased_until.get(name, 0.0), "invariant 15: leased pod deleted"
        self.check_ends()

    def check_ends(self) -> None:
        for session in self.pool.sessions.values():
            if session.state is SessionState.ENDED and session.ended_at == self.now:
                quiet = self.now - session.last_active_at
                if session.end_reason is EndReason.RECLAIMED:
                    assert quiet >= self.limits.idle_after, "invariant 4: an active one reclaimed"
                if session.end_reason is EndReason.IDLE_TIMEOUT:
                    assert quiet >= self.limits.idle_timeout, "ended before its idle timeout"

    def ready(self, name: str) -> PodStatus:
        # Every pod has a create id, so with the hooks on every lease is claimed first.
        return PodStatus(name, PodPhase.READY, {LABEL_CREATE_ID: name}, address="x:1")

    def pods_in(self, *states: PodState) -> list[str]:
        return sorted(n for n, p in self.pool.pods.items() if p.state in states)

    # -- callers

    @rule(user=USERS, thread=THREADS, wait=st.sampled_from([0.0, 5.0, 60.0]))
    def open_session(self, user: str, thread: str, wait: float) -> None:
        self.pool.open_session(self.pool.next_request_id(), user, thread, wait, self.now)
        self.settle()

    @rule(data=st.data())
    def close_session(self, data: st.DataObject) -> None:
        live = sorted(s.id for s in self.pool.sessions.values() if s.live)
        if live:
            self.pool.end_session(data.draw(st.sampled_from(live)), EndReason.DELETED, self.now)
            self.settle()

    @rule(data=st.data())
    def touch(self, data: st.DataObject) -> None:
        live = sorted(s.id for s in self.pool.sessions.values() if s.live)
        if live:
            self.pool.touch(data.draw(st.sampled_from(live)), self.now, ActivitySource.TOUCH)
            self.settle()

    @rule(data=st.data())
    def proxy_asks_for_a_route(self, data: st.DataObject) -> None:
        ready = sorted(s.id for s in self.pool.sessions.values() if s.state is SessionState.READY)
        if ready:
            pod = self.pool.lease_route(data.draw(st.sampled_from(ready)), self.now)
            assert pod is not None and pod.address, "a ready session without a routable pod"
            self.leased_until[pod.name] = self.now + ROUTE_LEASE
            self.settle()

    @rule(seconds=st.sampled_from([1.0, 5.0, 29.0, 60.0, 299.0, 301.0, 700.0, 3600.0]))
    def clock_jumps(self, seconds: float) -> None:
        self.now += seconds
        self.settle()

    # -- the platform

    @precondition(lambda self: self.creates_sent > 0)
    @rule(ok=st.booleans())
    def create_returns(self, ok: bool) -> None:
        self.creates_sent -= 1
        if ok:
            self.names += 1
            name = f"pod-{self.names}"
            self.platform.add(name)
            self.pool.pod_created(name, self.now)
        else:
            self.pool.create_failed(self.now)
        self.settle()

    @rule()
    def platform_catches_up(self) -> None:
        """Every create returns and every pending pod becomes ready, in one step."""
        while self.creates_sent > 0:
            self.create_returns(ok=True)
        for name in self.pods_in(PodState.PENDING):
            self.pool.pod_observed(self.ready(name), self.now)
            self.settle()

    @rule(data=st.data())
    def pod_becomes_ready(self, data: st.DataObject) -> None:
        pending = self.pods_in(PodState.PENDING)
        if pending:
            name = data.draw(st.sampled_from(pending))
            self.pool.pod_observed(self.ready(name), self.now)
            self.settle()

    @rule(data=st.data(), stuck=st.booleans())
    def pod_scheduling_news(self, data: st.DataObject, stuck: bool) -> None:
        """A pending pod turns out unschedulable (no node has room), or gets placed."""
        pending = self.pods_in(PodState.PENDING)
        if pending:
            name = data.draw(st.sampled_from(pending))
            detail = "0/3 nodes are available: 3 Insufficient cpu." if stuck else "pulling"
            status = PodStatus(name, PodPhase.PENDING, detail=detail, unschedulable=stuck)
            self.pool.pod_observed(status, self.now)
            self.settle()

    @precondition(lambda self: self.creates_sent == 0)
    @rule()
    def restart_with_a_new_template(self) -> None:
        """An upgrade: a new controller with a new pod template rebuilds from what the
        store recorded (live sessions promised to callers, pod rows) and what the
        platform has (recovery.restore); idle pods of the old template get replaced."""
        self.templates += 1
        old = self.pool
        sessions = [
            replace(s, requests=[])
            for s in old.sessions.values()
            if s.live and s.reply_deadline is None
        ]
        rows = [replace(p) for p in old.pods.values()]
        statuses = []
        for name in sorted(self.platform):
            pod = old.pods.get(name)
            serving = pod is not None and pod.state in (PodState.IDLE, PodState.ASSIGNED)
            # The platform keeps the session label set at assignment, whatever the rows say.
            labels = {LABEL_SESSION: "x"} if name in self.served_by else {}
            labels[LABEL_CREATE_ID] = name
            phase = PodPhase.READY if serving else PodPhase.PENDING
            statuses.append(
                PodStatus(name, phase, labels=labels, address="x:1" if serving else None)
            )
        self.pool = self.new_pool()
        self.claimed_pods.clear()
        self.refusals.clear()
        restore(self.pool, sessions, rows, statuses, self.now)
        for name, pod in self.pool.pods.items():
            if pod.route_lease_until > self.now:  # recovery assumes every routed pod leased
                self.leased_until[name] = max(
                    self.leased_until.get(name, 0.0), pod.route_lease_until
                )
        self.settle()

    @rule(data=st.data())
    def pod_fails(self, data: st.DataObject) -> None:
        alive = self.pods_in(PodState.PENDING, PodState.IDLE, PodState.ASSIGNED)
        if alive:
            name = data.draw(st.sampled_from(alive))
            self.pool.pod_observed(PodStatus(name, PodPhase.FAILED), self.now)
            self.settle()

    @rule(data=st.data())
    def pod_vanishes(self, data: st.DataObject) -> None:
        if self.platform:
            name = data.draw(st.sampled_from(sorted(self.platform)))
            self.platform.discard(name)
            self.deletes_sent.discard(name)
            self.pool.pod_gone(name, self.now)
            self.settle()

    @precondition(lambda self: bool(self.deletes_sent))
    @rule(data=st.data())
    def delete_completes(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.deletes_sent)))
        self.deletes_sent.discard(name)
        self.platform.discard(name)
        self.pool.pod_gone(name, self.now)
        self.settle()

    @precondition(lambda self: bool(self.claim_calls))
    @rule(data=st.data(), how=st.sampled_from(["accepted", "refused", "failed"]))
    def claim_hook_answers(self, data: st.DataObject, how: str) -> None:
        """A claim hook answers (accepts, refuses the payload with a 4xx, or fails),
        possibly late (its attempt given up, its session ended, even a restart since):
        the pool must ignore what is stale."""
        index = data.draw(st.integers(0, len(self.claim_calls) - 1))
        call = self.claim_calls.pop(index)
        failure = ClaimFailure(True, "HTTP 422: no") if how == "refused" else NO_ANSWER
        claim = self.pool.claims.get(call.session_id)
        if how == "refused" and claim is not None and claim.attempt == call.attempt:
            self.refusals[call.session_id] = self.refusals.get(call.session_id, 0) + 1
        self.pool.claim_answered(
            call.session_id, call.attempt, how == "accepted", self.now, failure
        )
        self.settle()

    # -- invariants

    @invariant()
    def a_claim_costs_at_most_max_claim_attempts_pods(self) -> None:
        for sid, pods in self.claimed_pods.items():
            assert len(pods) <= self.limits.max_claim_attempts, sid
            assert len(set(pods)) == len(pods), "one pod claimed twice"
            assert self.refusals.get(sid, 0) <= 2, "tried again after two refusals"
            session = self.pool.sessions.get(sid)
            if session is not None and session.end_reason is EndReason.CLAIM_REJECTED:
                given_up = self.refusals.get(sid, 0) >= 2
                assert given_up or len(pods) == self.limits.max_claim_attempts
                assert session.end_detail is not None and session.end_detail.claim_answer

    @invariant()
    def each_change_is_audited_once(self) -> None:
        seen: Counter[tuple[str | None, str]] = Counter()
        for event in self.audit:
            kind = "end" if event.action not in ("open", "claim") else event.action
            seen[event.session_id, kind] += 1
            assert event.caller == "controller"  # no command here names a caller
        assert max(seen.values(), default=0) <= 1, "a session audited twice for one change"
        for session in self.pool.sessions.values():
            if session.state is SessionState.ENDED:
                [ending] = [e for e in self.audit if e.session_id == session.id and e.reason == session.end_reason]  # fmt: skip
                assert ending.action == ending_action(EndReason(session.end_reason)).value
            if session.state is SessionState.READY:
                assert seen[session.id, "claim"] == 1, "ready without a claim event"

    @invariant()
    def pods_never_exceed_the_cap(self) -> None:
        assert self.pool.total_pods <= LIMITS.max_total_jobs
        assert len(self.platform) + self.creates_sent <= LIMITS.max_total_jobs

    @invariant()
    def no_user_above_the_limit(self) -> None:
        for user, sessions in self.pool.live_by_user.items():
            assert len(sessions) <= LIMITS.max_sessions_per_user, user

    @invariant()
    def a_pod_serves_one_session_in_its_life(self) -> None:
        for name, pod in self.pool.pods.items():
            if pod.session_id is not None:
                first = self.served_by.setdefault(name, pod.session_id)
                assert first == pod.session_id, f"{name} served {first} then {pod.session_id}"
            elif name in self.served_by and pod.state is not PodState.TERMINATING:
                raise AssertionError(f"{name} went back to the pool after serving a session")
        holders: dict[str, str] = {}
        for session in self.pool.sessions.values():
            if session.live and session.pod_name:
                assert session.pod_name not in holders, "two live sessions on one pod"
                holders[session.pod_name] = session.id

    @invariant()
    def state_is_consistent(self) -> None:
        for state in PodState:
            assert self.pool.counts[state] == len(self.pods_in(state))
        assert set(self.pool.idle) == set(self.pods_in(PodState.IDLE))
        pods = self.pool.pods
        stuck = {n for n in self.pods_in(PodState.PENDING) if pods[n].unschedulable}
        assert self.pool.inventory.unschedulable == stuck
        stale = {n for n in self.pool.idle if not self.pool.inventory.fresh(pods[n])}
        assert self.pool.inventory.stale_idle <= stale
        for sid in self.pool.waiting:
            assert self.pool.sessions[sid].state is SessionState.PROVISIONING
            assert sid not in self.pool.claims, "waiting and claiming at once"
        for session in self.pool.sessions.values():
            claim = self.pool.claims.get(session.id)
            if claim is not None:
                assert session.state is SessionState.PROVISIONING
                pod = self.pool.pods[claim.pod_name]
                assert pod.state is PodState.ASSIGNED and pod.session_id == session.id
                assert session.pod_name == claim.pod_name
            elif session.state is SessionState.PROVISIONING:
                assert session.id in self.pool.waiting, "a provisioning session stranded"
        for session in self.pool.sessions.values():
            if session.state is SessionState.READY:
                pod = self.pool.pods.get(session.pod_name or "")
                assert pod is not None and pod.state is PodState.ASSIGNED


TestPoolInvariants = PoolMachine.TestCase
TestPoolInvariants.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)


class ClaimingPoolMachine(PoolMachine):
    """The same, with the sandbox hooks on: every lease waits for a claim hook."""

    limits = replace(LIMITS, hooks=True, hook_timeout=2.0)


TestClaimingPoolInvariants = ClaimingPoolMachine.TestCase
TestClaimingPoolInvariants.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None
)


class HookedPoolMachine(PoolMachine):
    """The same invariants with the sandbox hooks on: an idle session's sandbox is asked
    before it ends or is reclaimed, and answers busy, not busy, or not at all."""

    # A shorter idle timeout (one clock jump), so that checks are often out.
    limits = replace(LIMITS, hooks=True, hook_timeout=2.0, idle_timeout=700)

    def __init__(self) -> None:
        self.sandboxes: dict[str, str] = {}  # pod -> how it answers, if it changed
        super().__init__()

    def answers(self, session_id: str) -> str:
        pod = self.pool.sessions[session_id].pod_name or ""
        default = ("not busy", "busy", "hung")[sum(map(ord, pod)) % 3]
        return self.sandboxes.get(pod, default)

    def settle(self) -> None:
        for pod in self.pool.pods.values():  # every pod of this version has a create id
            pod.create_id = pod.create_id or f"create-{pod.name}"
        super().settle()
        answered = False
        for sid in sorted(self.pool.busy.pending):  # each sandbox answers as it does
            how = self.answers(sid)
            if how != "hung":  # that one's check waits for its fallback deadline
                self.pool.busy_answer(sid, BusyAnswer(how == "busy", how, True), self.now)
                answered = True
        if answered:
            super().settle()

    @rule(data=st.data(), how=st.sampled_from(["busy", "not busy", "hung"]))
    def sandbox_changes_its_answer(self, data: st.DataObject, how: str) -> None:
        assigned = self.pods_in(PodState.ASSIGNED)
        if assigned:
            self.sandboxes[data.draw(st.sampled_from(assigned))] = how

    @rule(user=USERS, thread=THREADS)
    def open_after_asking_the_reclaimable(self, user: str, thread: str) -> None:
        """What Scheduler.open_session does at the user's limit: ask first, then open."""
        for check in self.pool.reclaim_checks(user, thread, self.now):
            how = self.answers(check.session_id)
            answer = BusyAnswer(how == "busy", how, how != "hung")
            self.pool.busy_answer(check.session_id, answer, self.now)
        self.open_session(user, thread, 5.0)

    @invariant()
    def no_check_outlives_its_fallback_deadline(self) -> None:
        assert all(due > self.now for due in self.pool.busy.pending.values())
        for sid in self.pool.busy.pending:
            assert self.pool.sessions[sid].state is SessionState.READY

    @invariant()
    def every_end_says_why(self) -> None:
        for session in self.pool.sessions.values():
            if session.state is SessionState.ENDED and session.ended_at == self.now:
                assert session.end_detail is not None
                assert session.end_detail.last_active_at == session.last_active_at


TestHookedPoolInvariants = HookedPoolMachine.TestCase
TestHookedPoolInvariants.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None
)


# Two orgs on two plans, beside sessions of no org (the deployment's defaults).
TEAM = Plan(
    "team", max_sessions_per_user=1, max_pods_per_org=3, warm_share=0.5, sessions_per_minute=4
)
PRO = Plan("pro", max_sessions_per_user=3, max_pods_per_org=5)
ORG_PLANS = {"acme": TEAM, "globex": PRO}


class OrgPoolMachine(PoolMachine):
    """The same invariants with two orgs on two plans, with hooks on (so reclaims ask
    first), and each org within its plan: its live sessions, its users' sessions and
    its new sessions per minute."""

    limits = replace(LIMITS, hooks=True, hook_timeout=2.0, plans=(TEAM, PRO))

    @rule(
        user=USERS,
        thread=THREADS,
        wait=st.sampled_from([0.0, 5.0, 60.0]),
        org=st.sampled_from(sorted(ORG_PLANS)),
    )
    def open_org_session(self, user: str, thread: str, wait: float, org: str) -> None:
        plan = ORG_PLANS[org].name
        rid = self.pool.next_request_id()
        self.pool.open_session(rid, user, thread, wait, self.now, org_id=org, plan=plan)
        self.settle()

    @rule(seconds=st.sampled_from([10.0, 30.0]))
    def a_little_time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.settle()

    @invariant()
    def no_user_above_the_limit(self) -> None:
        for (org, user), sessions in self.pool.live_by_user.items():
            plan = ORG_PLANS.get(org)
            limit = plan.max_sessions_per_user if plan else LIMITS.max_sessions_per_user
            assert len(sessions) <= (limit or 0), (org, user)

    @invariant()
    def no_org_above_its_caps(self) -> None:
        for org, plan in ORG_PLANS.items():
            live = [s for s in self.pool.sessions.values() if s.live and s.org_id == org]
            assert len(live) == len(self.pool.live_by_org.get(org, ()))
            assert len(live) <= (plan.max_pods_per_org or 0), org
            started = [
                s
                for s in self.pool.sessions.values()
                if s.org_id == org and s.created_mono > self.now - RATE_WINDOW
            ]
            assert len(started) <= (plan.sessions_per_minute or len(started)), org


TestOrgPoolInvariants = OrgPoolMachine.TestCase
TestOrgPoolInvariants.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)


class TemplatedPoolMachine(PoolMachine):
    """The same with two templates, each with its own warm pool under the one cap, and
    sessions of both (some asking resources of their own); an upgrade changes the
    first template only. Beyond every invariant above: when the cap binds, no
    template holds more warm pods than its share (shares.py) while another is short."""

    limits = replace(
        LIMITS,
        templates=(
            TemplateLimits("py", 3, max_resources=Resources("4", "8Gi")),
            TemplateLimits("node", 2),
        ),
    )

    def new_pool(self) -> Pool:
        hashes = {"py": f"py-{self.templates}", "node": "node-0"}
        return Pool(self.limits, "unused", new_id=self.new_id, template_hashes=hashes)

    @rule(
        user=USERS,
        thread=THREADS,
        wait=st.sampled_from([0.0, 5.0, 60.0]),
        shape=st.sampled_from([Shape("py"), Shape("node"), Shape("py", Resources("2"))]),
    )
    def open_templated(self, user: str, thread: str, wait: float, shape: Shape) -> None:
        self.pool.open_session(
            self.pool.next_request_id(), user, thread, wait, self.now, shape=shape
        )
        self.settle()

    @invariant()
    def no_template_starves_another(self) -> None:
        pool = self.pool
        if pool.waiting or pool.total_pods < self.limits.max_total_jobs:
            return  # the cap does not bind, or real demand comes first
        warm = {}
        for t in self.limits.templates:
            own = Shape(t.name)
            idle = len(pool.inventory.idle_by_shape.get(own) or ())
            pending = sum(
                1 for p in pool.pods.values() if p.state is PodState.PENDING and p.shape == own
            )
            warm[t.name] = idle + pending + pool.lifecycle.in_flight[own]
        held = pool.total_pods - pool.counts[PodState.TERMINATING] - sum(warm.values())
        budget = self.limits.max_total_jobs - held
        targets = {name: prewarm.current.target for name, prewarm in pool.prewarms.items()}
        shares = warm_shares(budget, targets)
        short = [name for name, have in warm.items() if have < shares[name]]
        if short:
            for name, have in warm.items():
                assert have <= shares[name], (
                    f"{name} holds {have} warm pods, above its share {shares[name]} of "
                    f"{budget}, while {short} are short"
                )


TestTemplatedPoolInvariants = TemplatedPoolMachine.TestCase
TestTemplatedPoolInvariants.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None
)


class TenantsAndTemplatesPoolMachine(TemplatedPoolMachine, OrgPoolMachine):
    """Issue 24 whole: two templates, two orgs on two plans and sessions of no org,
    under one cap, with hooks on. Every invariant of both machines holds at once: the
    cap, each org's caps and rate, each user's plan limit, and no template's warm pool
    above its share while another is short."""

    limits = replace(OrgPoolMachine.limits, templates=TemplatedPoolMachine.limits.templates)

    @rule(
        user=USERS,
        thread=THREADS,
        wait=st.sampled_from([0.0, 5.0, 60.0]),
        org=st.sampled_from(sorted(ORG_PLANS)),
        shape=st.sampled_from([Shape("py"), Shape("node"), Shape("py", Resources("2"))]),
    )
    def open_org_templated(
        self, user: str, thread: str, wait: float, org: str, shape: Shape
    ) -> None:
        rid = self.pool.next_request_id()
        plan = ORG_PLANS[org].name
        self.pool.open_session(
            rid, user, thread, wait, self.now, org_id=org, plan=plan, shape=shape
        )
        self.settle()


TestTenantsAndTemplatesPoolInvariants = TenantsAndTemplatesPoolMachine.TestCase
TestTenantsAndTemplatesPoolInvariants.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None
)
