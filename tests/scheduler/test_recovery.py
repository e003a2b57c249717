"""Rebuilding the pool after a restart, on a hand-set clock."""

from __future__ import annotations

import pytest

from sandbox_controller.backends.base import (
    LABEL_SESSION,
    LABEL_STATE,
    LABEL_TEMPLATE_HASH,
    PodPhase,
    PodStatus,
)
from sandbox_controller.model import EndReason, Pod, PodState, Session, SessionState
from sandbox_controller.scheduler.lifecycle import ROUTE_LEASE
from sandbox_controller.scheduler.pool import Pool
from sandbox_controller.scheduler.recovery import restore

from .harness import limits_with

NOW = 5000.0


def restored(sessions: list[Session], rows: list[Pod], pods: list[PodStatus]) -> Pool:
    pool = Pool(limits_with(prewarm_pool_size=0), "tmpl")
    restore(pool, sessions, rows, pods, NOW)
    return pool


def test_a_pod_that_served_a_session_is_deleted_only_when_any_route_lease_has_ended() -> None:
    # The previous leader's route leases died with it: a proxy may still route to the
    # pod of a session that ended meanwhile, so its address must stay taken.
    ended = Session("s1", "u", "t1", SessionState.ENDED, 100.0, 100.0, pod_name="p1")
    ended.end_reason, ended.ended_at = EndReason.DELETED, 4990.0
    row = Pod("p1", PodState.ASSIGNED, 90.0, "tmpl", session_id="s1")
    unknown_pool_pod = PodStatus("p2", PodPhase.READY, address="10.0.0.2:8080")
    pool = restored([ended], [row], [PodStatus("p1", PodPhase.READY), unknown_pool_pod])

    pool.tick(NOW)
    assert pool.take_outbox().deletes == ["p2"]  # never served anyone: at once
    pool.pod_gone("p2", NOW)
    pool.tick(NOW + ROUTE_LEASE - 0.1)
    assert pool.take_outbox().deletes == []
    pool.tick(NOW + ROUTE_LEASE)
    assert pool.take_outbox().deletes == ["p1"]


def test_an_adopted_pod_keeps_a_lease_from_the_restart_if_its_session_ends_at_once() -> None:
    live = Session("s1", "u", "t1", SessionState.READY, 100.0, 4900.0, pod_name="p1")
    row = Pod("p1", PodState.ASSIGNED, 90.0, "tmpl", ready_at=95.0, session_id="s1")
    pool = restored([live], [row], [PodStatus("p1", PodPhase.READY, address="10.0.0.1:8080")])
    assert pool.pods["p1"].state is PodState.ASSIGNED

    pool.end_session("s1", EndReason.DELETED, NOW + 1.0)
    pool.tick(NOW + 1.0)
    assert pool.take_outbox().deletes == []
    pool.tick(NOW + ROUTE_LEASE)
    assert pool.take_outbox().deletes == ["p1"]


def test_after_an_upgrade_idle_pods_of_the_old_template_are_replaced_assigned_ones_kept() -> None:
    # A new controller with a new pod template takes over the old one's pods.
    live = Session("s1", "u", "t1", SessionState.READY, 100.0, 4900.0, pod_name="held")
    rows = [
        Pod("held", PodState.ASSIGNED, 90.0, "old", ready_at=95.0, session_id="s1"),
        Pod("warm", PodState.IDLE, 90.0, "old", ready_at=95.0),
    ]
    pods = [
        PodStatus("held", PodPhase.READY, address="10.0.0.1:8080"),
        PodStatus("warm", PodPhase.READY, address="10.0.0.2:8080"),
    ]
    pool = Pool(limits_with(prewarm_pool_size=1), "new")
    restore(pool, [live], rows, pods, NOW)
    pool.tick(NOW)
    out = pool.take_outbox()

    assert pool.pods["warm"].state is PodState.TERMINATING
    assert out.deletes == ["warm"]
    assert pool.pods["held"].state is PodState.ASSIGNED
    assert pool.sessions["s1"].state is SessionState.READY
    assert out.creates == 1  # a fresh pod of the new template refills the pool


def pool_labels(template: str = "tmpl", **more: str) -> dict[str, str]:
    return {LABEL_STATE: "pool", LABEL_TEMPLATE_HASH: template, **more}


def test_a_takeover_keeps_warm_pods_whose_rows_were_not_written_yet() -> None:
    # Pool pod rows go out up to a second late: a new leader finds pods without them.
    pods = [
        PodStatus("warm", PodPhase.READY, pool_labels(), NOW - 3, "10.0.0.1:8080"),
        PodStatus("starting", PodPhase.PENDING, pool_labels(), NOW - 1),
    ]
    pool = restored([], [], pods)
    pool.tick(NOW)

    assert pool.pods["warm"].state is PodState.IDLE
    assert pool.pods["starting"].state is PodState.PENDING
    assert pool.take_outbox().deletes == []


@pytest.mark.parametrize(
    "status",
    [
        PodStatus("claimed", PodPhase.READY, pool_labels(**{LABEL_SESSION: "abc"})),
        PodStatus("labelled-assigned", PodPhase.READY, {**pool_labels(), LABEL_STATE: "assigned"}),
        PodStatus("old-template", PodPhase.READY, pool_labels(template="old")),
        PodStatus("failed", PodPhase.FAILED, pool_labels()),
        PodStatus("going", PodPhase.READY, pool_labels(), terminating=True),
        PodStatus("unlabelled", PodPhase.READY, {}),
    ],
    ids=lambda s: s.name,
)
def test_a_pod_without_a_row_that_may_have_served_or_will_not_serve_is_not_adopted(
    status: PodStatus,
) -> None:
    pool = restored([], [], [status])
    pool.tick(NOW + ROUTE_LEASE)

    assert pool.pods[status.name].state is PodState.TERMINATING
    assert status.name in pool.take_outbox().deletes or status.terminating


def test_stored_wall_times_become_deadlines_as_far_off_as_the_wall_clock_now_says() -> None:
    # Across a restart the stored wall times are the only truth; the new process's
    # monotonic clock (NOW) has nothing to do with the wall clock's reading (wall).
    wall = 2_000_000_000.0
    limits = limits_with(prewarm_pool_size=0, idle_timeout=600.0, max_lifetime=1000.0)
    quiet = Session("s1", "u1", "t1", SessionState.READY, wall - 800, wall - 500, pod_name="p1")
    busy = Session("s2", "u2", "t2", SessionState.READY, wall - 800, wall - 10, pod_name="p2")
    waiting = Session("s3", "u3", "t3", SessionState.PROVISIONING, wall - 100, wall - 100)
    rows = [
        Pod(p, PodState.ASSIGNED, wall - 900, "tmpl", session_id=s)
        for p, s in [("p1", "s1"), ("p2", "s2")]
    ]
    pods = [
        PodStatus(p, PodPhase.READY, address=f"10.0.0.{i}:8080") for i, p in enumerate(["p1", "p2"])
    ]
    pool = Pool(limits, "tmpl")
    pool.wall_offset = wall - NOW
    restore(pool, [quiet, busy, waiting], rows, pods, NOW)

    def states(at: float) -> list[SessionState]:
        pool.tick(at)
        return [pool.sessions[s].state for s in ("s1", "s2", "s3")]

    ready, provisioning, ended = SessionState.READY, SessionState.PROVISIONING, SessionState.ENDED
    assert states(NOW + 99.9) == [ready, ready, provisioning]
    assert states(NOW + 100.0) == [ended, ready, provisioning]  # idle 600 s since wall - 500
    assert pool.sessions["s1"].end_reason is EndReason.IDLE_TIMEOUT
    assert pool.sessions["s1"].ended_at == wall + 100.0
    assert states(NOW + 199.9) == [ended, ready, provisioning]
    # Its lifetime (1000 s since wall - 800) and the start-up timeout (300 s since wall - 100).
    assert states(NOW + 200.0) == [ended, ended, ended]
    assert pool.sessions["s2"].end_reason is EndReason.MAX_LIFETIME
    assert pool.sessions["s3"].end_reason is EndReason.STARTUP_TIMEOUT
