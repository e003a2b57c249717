"""A rebuild that finds many pods serving sessions the store does not know holds them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sandbox_controller.backends.base import (
    LABEL_SESSION,
    LABEL_STATE,
    LABEL_TEMPLATE_HASH,
    PodPhase,
    PodStatus,
    session_label,
)
from sandbox_controller.model import (
    ConditionType,
    Pod,
    PodState,
    RecoveryGuard,
    Session,
    SessionState,
)
from sandbox_controller.scheduler.lifecycle import ROUTE_LEASE
from sandbox_controller.scheduler.pool import Pool
from sandbox_controller.scheduler.recovery import restore

from .harness import limits_with

NOW = 5000.0
DEFAULT_GUARD = RecoveryGuard()


def assigned(name: str, session_id: str) -> PodStatus:
    labels = {
        LABEL_STATE: "assigned",
        LABEL_SESSION: session_label(session_id),
        LABEL_TEMPLATE_HASH: "tmpl",
    }
    return PodStatus(name, PodPhase.READY, labels, NOW - 60, f"10.0.{len(name)}.1:8080")


def warm(name: str) -> PodStatus:
    labels = {LABEL_STATE: "pool", LABEL_TEMPLATE_HASH: "tmpl"}
    return PodStatus(name, PodPhase.READY, labels, NOW - 60, "10.0.9.9:8080")


def rebuilt(
    orphans: int, warm_pods: int = 0, guard: RecoveryGuard = DEFAULT_GUARD, cap: int = 200
) -> Pool:
    """The store knows one live session (on pod "known"); the cluster also runs
    ``orphans`` pods of sessions opened after the store's copy was taken."""
    known = Session("s-known", "u", "t", SessionState.READY, 100.0, NOW - 5, pod_name="known")
    rows = [Pod("known", PodState.ASSIGNED, 90.0, "tmpl", ready_at=95.0, session_id="s-known")]
    pods = [assigned("known", "s-known")]
    pods += [assigned(f"lost-{i}", f"s-{i}") for i in range(orphans)]
    pods += [warm(f"warm-{i}") for i in range(warm_pods)]
    limits = limits_with(prewarm_pool_size=warm_pods, max_total_jobs=cap, recovery=guard)
    pool = Pool(limits, "tmpl")
    restore(pool, [known], rows, pods, NOW)
    return pool


def deleted_within(pool: Pool, seconds: float) -> list[str]:
    out: list[str] = []
    for step in (0.0, seconds):
        pool.tick(NOW + step)
        out += pool.take_outbox().deletes
    return out


def test_a_restored_older_database_deletes_no_live_sandbox_until_an_operator_confirms() -> None:
    pool = rebuilt(orphans=50, warm_pods=3)

    assert deleted_within(pool, 10 * ROUTE_LEASE) == []
    status = pool.status(NOW)
    assert status.held_pods == 50
    [condition] = status.conditions
    assert condition.type is ConditionType.RECOVERY_HELD
    assert "holding 50 of 54 pods" in condition.message
    assert "recover --confirm" in condition.message
    # The session the store knows keeps its pod; the warm pods are still handed out.
    assert pool.pods["known"].state is PodState.ASSIGNED
    assert len(pool.idle) == 3

    names = pool.release_orphans(NOW + 10 * ROUTE_LEASE)
    assert names == sorted(f"lost-{i}" for i in range(50))
    pool.tick(NOW + 10 * ROUTE_LEASE)
    assert sorted(pool.take_outbox().deletes) == names
    assert pool.status(NOW).conditions == ()
    assert pool.pods["known"].state is PodState.ASSIGNED


def test_held_pods_are_never_handed_out_and_count_against_the_cap() -> None:
    pool = rebuilt(orphans=8, cap=10)  # 9 pods exist: the known one and 8 held
    pool.open_session(1, "someone", "thread", 0.0, NOW)
    pool.tick(NOW)
    out = pool.take_outbox()

    assert out.creates == 1  # room for one more pod only, not for nine
    assert out.deletes == []
    assert all(pod.session_id != "someone" for pod in pool.orphans.held.values())
    assert pool.total_pods == 10


def test_events_about_held_pods_neither_delete_nor_adopt_them() -> None:
    pool = rebuilt(orphans=8)
    pool.pod_observed(assigned("lost-1", "s-1"), NOW + 1)
    pool.pod_gone("lost-2", NOW + 1)  # someone else deleted it: one fewer to hold
    pool.tick(NOW + 1)

    assert pool.take_outbox().deletes == []
    assert "lost-1" not in pool.pods and "lost-1" in pool.orphans.held
    assert pool.status(NOW).held_pods == 7


@pytest.mark.parametrize(
    ("orphans", "warm_pods", "held"),
    [
        (5, 0, False),  # never more than 5: a crash's few, deleted as before
        (6, 23, False),  # 6 of 30 pods: 20%, not more
        (6, 22, True),  # 6 of 29: more than 20% and more than 5
        (50, 0, True),
    ],
)
def test_the_hold_needs_more_than_the_fraction_and_more_than_the_count(
    orphans: int, warm_pods: int, held: bool
) -> None:
    pool = rebuilt(orphans, warm_pods)
    deleted = deleted_within(pool, ROUTE_LEASE)

    lost = {f"lost-{i}" for i in range(orphans)}
    assert (pool.status(NOW).held_pods == orphans) is held
    assert lost.issubset(deleted) is not held


def test_the_thresholds_are_settings_and_a_confirmed_start_deletes_them_all() -> None:
    strict = rebuilt(orphans=2, guard=RecoveryGuard(max_fraction=0.0, max_pods=1))
    assert strict.status(NOW).held_pods == 2

    confirmed = rebuilt(orphans=50, guard=RecoveryGuard(confirmed=True))
    assert len(deleted_within(confirmed, ROUTE_LEASE)) == 50
    assert confirmed.status(NOW).conditions == ()


def test_pods_whose_rows_name_their_session_are_not_orphans_nor_warm_pods() -> None:
    # A store that knows which session a pod served knows that session ended.
    rows = [
        Pod(f"ended-{i}", PodState.ASSIGNED, 90.0, "tmpl", session_id=f"e{i}") for i in range(9)
    ]
    pods = [assigned(f"ended-{i}", f"e{i}") for i in range(9)]
    pool = Pool(limits_with(prewarm_pool_size=0), "tmpl")
    restore(pool, [], rows, pods, NOW)
    assert pool.status(NOW).held_pods == 0
    assert len(deleted_within(pool, ROUTE_LEASE)) == 9


def test_a_pod_an_older_row_calls_warm_but_whose_labels_say_assigned_is_never_handed_out() -> None:
    # The backup was taken while the pod was warm; a session got it afterwards.
    row = Pod("was-warm", PodState.IDLE, 90.0, "tmpl", ready_at=95.0)
    pool = Pool(limits_with(prewarm_pool_size=1), "tmpl")
    restore(pool, [], [row], [assigned("was-warm", "s-later")], NOW)
    pool.open_session(1, "someone", "thread", 0.0, NOW)
    pool.tick(NOW)

    assert "was-warm" not in pool.idle
    assert pool.pods["was-warm"].state is PodState.TERMINATING


def test_a_confirmation_survives_a_rebuild_within_the_term() -> None:
    first = rebuilt(orphans=8)
    names = set(first.release_orphans(NOW))
    # The rebuild after a failed commit finds the same pods, not yet gone.
    known = Session("s-known", "u", "t", SessionState.READY, 100.0, NOW - 5, pod_name="known")
    pods = [assigned("known", "s-known")] + [assigned(n, n) for n in names]
    again = Pool(replace(limits_with(), prewarm_pool_size=0), "tmpl")
    restore(again, [known], [], pods, NOW, confirmed=names)
    assert again.status(NOW).held_pods == 0
    assert set(deleted_within(again, ROUTE_LEASE)) == names
