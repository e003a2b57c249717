"""Drives a Pool the way the scheduler loop does, with a hand-set clock and a
pretend platform whose pods become ready, fail or vanish when the test says so."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from sandbox_controller.backends.base import LABEL_CREATE_ID, PodPhase, PodStatus
from sandbox_controller.config import Settings
from sandbox_controller.model import Limits, Outcome, PodState, SessionState, Shape
from sandbox_controller.scheduler.effects import (
    Answer,
    ClaimCall,
    Release,
    RestoreCall,
    SnapshotCall,
    StatusCheck,
)
from sandbox_controller.scheduler.pool import Pool

TEMPLATE = "tmpl-1"


def limits_with(**overrides: Any) -> Limits:
    """The operator defaults (Settings' own, not the environment's), with no activity
    lag and no sandbox hooks unless a test asks for them, and ``overrides``."""
    defaults = replace(Settings.model_construct().limits(), activity_lag=0.0, hooks=False)
    return replace(defaults, **overrides)


class Harness:
    def __init__(
        self,
        limits: Limits | None = None,
        now: float = 1000.0,
        *,
        accept_claims: bool = False,
        template_hashes: dict[str, str] | None = None,
    ) -> None:
        self.now = now
        # Every sandbox's claim hook accepts at once (for tests about what comes after).
        self.accept_claims = accept_claims
        self.pool = Pool(limits or limits_with(), TEMPLATE, template_hashes=template_hashes)
        self.answers: dict[int, Answer] = {}
        self.deleted: list[str] = []
        self.created: list[str] = []
        self.claims: list[ClaimCall] = []  # claim hook calls asked for, in order
        self.payloads_done: list[int] = []
        self.claim_failures = 0
        self.status_checks: list[StatusCheck] = []  # asked for, in order
        self.releases: dict[str, Release] = {}  # pod -> the release sent with its delete
        self.snapshots: list[SnapshotCall] = []  # snapshot hook calls asked for, in order
        self.restores: list[RestoreCall] = []
        self.archive_deletes: list[str] = []
        self._names = itertools.count(1)

    # -- time and effects

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.tick()

    def tick(self) -> None:
        self.pool.tick(self.now)
        self.drain()

    def drain(self) -> None:
        out = self.pool.take_outbox()
        for answer in out.answers:
            self.answers[answer.request_id] = answer
        self.deleted.extend(out.deletes)
        self.claims.extend(out.claims)
        self.payloads_done.extend(out.payloads_done)
        self.claim_failures += out.claim_failures
        self.status_checks.extend(out.status_checks)
        self.releases.update(out.releases)
        self.snapshots.extend(out.snapshots)
        self.restores.extend(out.restores)
        self.archive_deletes.extend(out.archive_deletes)
        self._pending_creates = getattr(self, "_pending_creates", 0) + out.creates
        if self.accept_claims and out.claims:
            for call in out.claims:
                self.pool.claim_answered(call.session_id, call.attempt, True, self.now)
            self.pool.tick(self.now)
            self.drain()

    def complete_creates(self) -> list[str]:
        """The platform answers every create call sent so far."""
        names = []
        while getattr(self, "_pending_creates", 0) > 0:
            self._pending_creates -= 1
            name = f"pod-{next(self._names)}"
            self.pool.pod_created(name, self.now)
            names.append(name)
        self.created.extend(names)
        self.tick()
        return names

    def ready(self, *names: str, claimable: bool = False) -> None:
        """Pods turn ready; ``claimable`` ones carry a create id (hook calls)."""
        for name in names:
            labels = {LABEL_CREATE_ID: f"cid-{name}"} if claimable else {}
            address = f"127.0.0.1:{9000 + len(name)}"
            self.pool.pod_observed(PodStatus(name, PodPhase.READY, labels, 0.0, address), self.now)
        self.tick()

    def fail(self, name: str) -> None:
        self.pool.pod_observed(PodStatus(name, PodPhase.FAILED), self.now)
        self.tick()

    def gone(self, name: str) -> None:
        self.pool.pod_gone(name, self.now)
        self.tick()

    def confirm_deletes(self) -> None:
        """The platform finishes every delete asked for so far."""
        for name in self.deleted:
            self.pool.pod_gone(name, self.now)
        self.deleted.clear()
        self.tick()

    def fill_pool(self, *, claimable: bool = False) -> None:
        """Create and ready pods until nothing more is asked for."""
        for _ in range(100):
            names = self.complete_creates()
            pending = [n for n, p in self.pool.pods.items() if p.state is PodState.PENDING]
            if not names and not pending:
                return
            self.ready(*pending, claimable=claimable)
        raise AssertionError("pool never settled")

    # -- requests

    def open(
        self,
        user: str,
        thread: str,
        wait: float = 30.0,
        shape: Shape | None = None,
        *,
        org: str = "",
        plan: str | None = None,
    ) -> int:
        rid = self.pool.next_request_id()
        self.pool.open_session(
            rid, user, thread, wait, self.now, org_id=org, plan=plan, shape=shape
        )
        self.tick()
        return rid

    def answer_claim(self, call: ClaimCall, accepted: bool = True) -> None:
        self.pool.claim_answered(call.session_id, call.attempt, accepted, self.now)
        self.tick()

    def answer(self, rid: int) -> Answer | None:
        return self.answers.get(rid)

    def session_of(self, rid: int) -> str:
        answer = self.answers[rid]
        assert answer.session_id is not None, answer
        return answer.session_id

    def state(self, session_id: str) -> SessionState:
        return self.pool.sessions[session_id].state

    def outcome(self, rid: int) -> Outcome | None:
        answer = self.answers.get(rid)
        return answer.outcome if answer else None
