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
