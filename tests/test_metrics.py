"""The metrics collector shows the scheduler's PoolStatus, the same one GET /pool shows."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import generate_latest

from sandbox_controller.backends.base import ErrorKind
from sandbox_controller.config import Settings
from sandbox_controller.metrics import ControllerMetrics
from sandbox_controller.model import (
    ConditionType,
    EndReason,
    PodState,
    PoolCondition,
    PoolStatus,
    SessionActivity,
)


def scrape(metrics: ControllerMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_pool_gauges_come_from_the_snapshot() -> None:
    status = PoolStatus(
        pods={PodState.PENDING: 1, PodState.IDLE: 3, PodState.ASSIGNED: 4, PodState.TERMINATING: 2},
        creating=1,
        waiters=2,
        capacity_blocked=True,
        cap_reached=True,
        sessions={
            SessionActivity.ACTIVE: 3,
            SessionActivity.IDLE: 1,
            SessionActivity.PROVISIONING: 2,
        },
        limits=replace(
            Settings.model_construct().limits(),
            max_total_jobs=11,
            prewarm_pool_size=3,
            max_sessions_per_user=4,
        ),
    )
    text = scrape(ControllerMetrics(lambda: status, lambda: True))
    for line in [
        'sandbox_pool_pods{state="idle"} 3.0',
        'sandbox_pool_pods{state="terminating"} 2.0',
        'sandbox_sessions{state="active"} 3.0',
        'sandbox_sessions{state="provisioning"} 2.0',
        "sandbox_pod_creates_in_flight 1.0",
        "sandbox_waiters 2.0",
        "sandbox_capacity_blocked 1.0",
        "sandbox_cap_reached 1.0",
        "sandbox_max_total_jobs 11.0",
        "sandbox_max_sessions_per_user 4.0",
        "sandbox_is_leader 1.0",
    ]:
        assert line in text, line


def test_a_standby_shows_no_pool_and_is_not_leader() -> None:
    text = scrape(ControllerMetrics(lambda: None, lambda: False))
    assert "sandbox_is_leader 0.0" in text
    assert "sandbox_pool_pods{" not in text


def test_the_observer_side_counts_what_the_loop_reports() -> None:
    metrics = ControllerMetrics(lambda: None, lambda: True)
    metrics.session_ended(EndReason.IDLE_TIMEOUT)
    metrics.session_ended(EndReason.DELETED)
    metrics.backend_failed("create", ErrorKind.PERMANENT)
    metrics.backend_failed("delete", ErrorKind.TEMPORARY)
    metrics.store_failed()
    text = scrape(metrics)
    assert 'sandbox_reclaims_total{reason="idle_timeout"} 1.0' in text
    assert 'sandbox_sessions_ended_total{reason="deleted"} 1.0' in text
    assert 'sandbox_backend_errors_total{kind="permanent",operation="create"} 1.0' in text
    assert 'sandbox_backend_errors_total{kind="temporary",operation="delete"} 1.0' in text
    assert "sandbox_store_errors_total 1.0" in text


def test_the_condition_gauge_is_one_while_a_condition_holds() -> None:
    clear = PoolStatus.empty(Settings.model_construct().limits())
    rejected = replace(
        clear,
        conditions=(PoolCondition(ConditionType.CREATE_REJECTED, "pods is forbidden", 5.0),),
    )
    assert 'sandbox_pool_condition{type="CreateRejected"} 0.0' in scrape(
        ControllerMetrics(lambda: clear, lambda: True)
    )
    assert 'sandbox_pool_condition{type="CreateRejected"} 1.0' in scrape(
        ControllerMetrics(lambda: rejected, lambda: True)
    )


def test_each_sessions_pod_is_shown_with_its_labels_as_kube_pod_labels_names_them() -> None:
    pods = [
        ("sandbox-a", {"agent-sandbox/template": "py", "agent-sandbox/org": "acme"}),
        ("sandbox-b", {"agent-sandbox/template": "node", "agent-sandbox/meta-cost-center": "7"}),
    ]
    text = scrape(ControllerMetrics(lambda: None, lambda: True, pod_labels=lambda: pods))
    assert (
        'sandbox_pod_labels{label_agent_sandbox_meta_cost_center="",'
        'label_agent_sandbox_org="acme",label_agent_sandbox_template="py",pod="sandbox-a"} 1.0'
    ) in text
    assert (
        'sandbox_pod_labels{label_agent_sandbox_meta_cost_center="7",'
        'label_agent_sandbox_org="",label_agent_sandbox_template="node",pod="sandbox-b"} 1.0'
    ) in text
    empty = scrape(ControllerMetrics(lambda: None, lambda: True, pod_labels=lambda: []))
    assert "sandbox_pod_labels{" not in empty
