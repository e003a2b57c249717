"""Prometheus metrics of the controller. Names are part of the contract (DESIGN §4).

Each controller gets its own registry (tests run several in one process). Gauges of
pool state are read from the scheduler's snapshot at scrape time (the same PoolStatus
GET /pool shows), so they can never drift from it. ControllerMetrics is also the
scheduler loop's observer (scheduler/ports.py LoopObserver); nothing here imports the
scheduler.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import OrgRateLimited, OrgSessionLimit, SandboxError
from .model import ConditionType, EndReason, Outcome, PodState, PoolStatus, SessionActivity

ASSIGN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Each session's pod and its attribution labels (label key -> value).
PodLabels = list[tuple[str, dict[str, str]]]
STARTUP_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
# Archives from a few KB (an empty workspace) to the 1 GiB default limit.
SNAPSHOT_BYTES_BUCKETS = tuple(float(2**n) for n in range(10, 31, 2))
SUSPEND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# How sandbox_snapshots_total counts: a suspend kept ("ok") or why not, and a resume.
SNAPSHOT_OUTCOMES = (
    "ok",
    "not_supported",
    "hook_error",
    "timeout",
    "too_large",
    "store_unavailable",
    "restore_failed",
    "restored",
)


class _PoolCollector(Collector):
    def __init__(
        self, status: Callable[[], PoolStatus | None], is_leader: Callable[[], bool]
    ) -> None:
        self._status = status
        self._is_leader = is_leader

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        pods = GaugeMetricFamily("sandbox_pool_pods", "Sandbox pods by state", labels=["state"])
        sessions = GaugeMetricFamily(
            "sandbox_sessions", "Live sessions by activity", labels=["state"]
        )
        creating = GaugeMetricFamily(
            "sandbox_pod_creates_in_flight",
            "Pod creates sent and not yet answered (count toward the cap)",
        )
        waiters = GaugeMetricFamily("sandbox_waiters", "Session requests waiting for a pod")
        blocked = GaugeMetricFamily(
            "sandbox_capacity_blocked",
            "1 when demand is refused or stalled by maxTotalJobs or by a cluster without room",
        )
        cap_reached = GaugeMetricFamily(
            "sandbox_cap_reached", "1 when pods (incl. in-flight creates) equal maxTotalJobs"
        )
        max_total = GaugeMetricFamily("sandbox_max_total_jobs", "The maxTotalJobs cap")
        prewarm = GaugeMetricFamily("sandbox_prewarm_pool_size", "Target of ready, unassigned pods")
        prewarm_target = GaugeMetricFamily(
            "sandbox_prewarm_target",
            "Warm pods the prewarm policy wants now (static: prewarmPoolSize)",
        )
        per_user = GaugeMetricFamily(
            "sandbox_max_sessions_per_user", "The per-user limit of live sessions"
        )
        condition = GaugeMetricFamily(
            "sandbox_pool_condition",
            "1 while the pool condition holds (GET /pool conditions), by type",
            labels=["type"],
        )
        # Each template's part (the families above stay totals, for existing dashboards).
        template_pods = GaugeMetricFamily(
            "sandbox_template_pods",
            "Sandbox pods by template and state",
            labels=["template", "state"],
        )
        template_target = GaugeMetricFamily(
            "sandbox_template_prewarm_target",
            "Warm pods each template's prewarm policy wants now",
            labels=["template"],
        )
        template_waiters = GaugeMetricFamily(
            "sandbox_template_waiters",
            "Session requests waiting for a pod, by template",
            labels=["template"],
        )
        held = GaugeMetricFamily(
            "sandbox_recovery_held_pods",
            "Pods that served sessions the store does not know, held until an operator "
            "confirms (sandbox-controller recover --confirm)",
        )
        leader = GaugeMetricFamily("sandbox_is_leader", "1 on the replica that schedules")
        leader.add_metric([], 1.0 if self._is_leader() else 0.0)
        if status is not None:
            for state in PodState:
                pods.add_metric([state.value], status.pods[state])
            creating.add_metric([], status.creating)
            for activity in SessionActivity:
                sessions.add_metric([activity.value], status.sessions.get(activity, 0))
            waiters.add_metric([], status.waiters)
            blocked.add_metric([], 1.0 if status.capacity_blocked else 0.0)
            cap_reached.add_metric([], 1.0 if status.cap_reached else 0.0)
            max_total.add_metric([], status.limits.max_total_jobs)
            prewarm.add_metric([], status.limits.prewarm_pool_size)
            if status.prewarm is not None:
                prewarm_target.add_metric([], status.prewarm.target)
            per_user.add_metric([], status.limits.max_sessions_per_user)
            held.add_metric([], status.held_pods)
            holding = {c.type for c in status.conditions}
            for kind in ConditionType:
                condition.add_metric([kind.value], 1.0 if kind in holding else 0.0)
            for part in status.templates:
                for state in PodState:
                    template_pods.add_metric([part.name, state.value], part.pods[state])
                template_target.add_metric([part.name], part.prewarm.target)
                template_waiters.add_metric([part.name], part.waiters)
        yield from (
            pods,
            creating,
            sessions,
            waiters,
            blocked,
            cap_reached,
            max_total,
            prewarm,
            prewarm_target,
            per_user,
            condition,
            template_pods,
            template_target,
            template_waiters,
            held,
        )
        yield leader


def kube_label_name(key: str) -> str:
    """A pod label key as kube-state-metrics names it in kube_pod_labels."""
    return "label_" + _NOT_IN_NAME.sub("_", key)


_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_]")


class _PodLabelsCollector(Collector):
    """``sandbox_pod_labels``: 1 per pod held by a live session, with the labels that
    pod carries on Kubernetes, named as kube-state-metrics' ``kube_pod_labels`` names
    them. On Docker a container's labels are fixed when it is made (a warm one before
    any session), so this is where its org and metadata are found: join container
    metrics (cAdvisor's ``name``) on ``pod`` (README "Cost attribution")."""

    def __init__(self, pod_labels: Callable[[], PodLabels]) -> None:
        self._pod_labels = pod_labels

    def collect(self) -> Iterator[Metric]:
        pods = self._pod_labels()
        keys = sorted({key for _, labels in pods for key in labels})
        family = GaugeMetricFamily(
            "sandbox_pod_labels",
            "1 per pod held by a live session, with its template, size, org and "
            "allow-listed metadata labels (as kube_pod_labels names them); for cost "
            "attribution where pod labels cannot be changed (Docker)",
            labels=["pod", *(kube_label_name(key) for key in keys)],
        )
        for pod, labels in pods:
            family.add_metric([pod, *(labels.get(key, "") for key in keys)], 1.0)
        yield family


class ControllerMetrics:
    def __init__(
        self,
        status: Callable[[], PoolStatus | None],
        is_leader: Callable[[], bool],
        *,
        pod_labels: Callable[[], PodLabels] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sandbox_session_requests",
            "POST /sessions by outcome",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in Outcome:
            self.requests.labels(outcome.value)
        self.assign_seconds = Histogram(
            "sandbox_session_assign_seconds",
            "Time from POST /sessions to a sandbox, by path (warm pool or cold start)",
            ["path"],
            buckets=ASSIGN_BUCKETS,
            registry=self.registry,
        )
        self.startup_seconds = Histogram(
            "sandbox_pod_startup_seconds",
            "Time from pod creation to ready",
            buckets=STARTUP_BUCKETS,
            registry=self.registry,
        )
        self.reclaims = Counter(
            "sandbox_reclaims",
            "Sessions ended by policy or failure, by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in EndReason:
            if reason is not EndReason.DELETED:
                self.reclaims.labels(reason.value)
        self.sessions_ended = Counter(
            "sandbox_sessions_ended",
            "Sessions ended, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "sandbox_webhook_deliveries",
            "Webhook attempts and deliveries by outcome: delivered, failed (one attempt), "
            "given_up (every attempt failed), dropped (the queue was full)",
            ["outcome"],
            registry=self.registry,
        )
        for result in ("delivered", "failed", "given_up", "dropped"):
            self.webhook_deliveries.labels(result)
        self.status_checks = Counter(
            "sandbox_status_checks",
            "Sandbox status hook calls before an idle timeout or a reclaim, by answer "
            "(busy keeps the session; not_busy and no_answer let it end; unauthorized, "
            "a 401 to every claim secret, keeps it)",
            ["answer"],
            registry=self.registry,
        )
        for answer in ("busy", "not_busy", "no_answer", "unauthorized"):
            self.status_checks.labels(answer)
        self.backend_errors = Counter(
            "sandbox_backend_errors",
            "Backend calls that failed, by operation and kind (temporary: may pass "
            "later; permanent: refused until someone fixes something)",
            ["operation", "kind"],
            registry=self.registry,
        )
        self.store_errors = Counter(
            "sandbox_store_errors", "Store transactions that failed", registry=self.registry
        )
        self.claim_hook_failures = Counter(
            "sandbox_claim_hook_failures",
            "Claim hooks that failed or timed out (the pod is deleted, another tried)",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "sandbox_scheduler_batch_commands",
            "Commands decided per scheduler round (one commit each)",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=self.registry,
        )
        # Refusals by an org's plan (README "Orgs and plans"), by plan: a bounded label,
        # where an org id would not be.
        self.org_limit_refusals = Counter(
            "sandbox_org_limit_refusals",
            "POST /sessions refused 429 org_session_limit: the org holds its plan's "
            "maxPodsPerOrg live sessions, by plan",
            ["plan"],
            registry=self.registry,
        )
        self.org_rate_refusals = Counter(
            "sandbox_org_rate_refusals",
            "POST /sessions refused 429 org_rate_limited: the org opened its plan's "
            "sessionsPerMinute in the last minute, by plan",
            ["plan"],
            registry=self.registry,
        )
        self.snapshots = Counter(
            "sandbox_snapshots",
            "Snapshots and restores by outcome: ok (suspended), not_supported, hook_error, "
            "timeout, too_large, store_unavailable (not suspended: ended), restored "
            "(resumed), restore_failed (suspended again)",
            ["outcome"],
            registry=self.registry,
        )
        for name in SNAPSHOT_OUTCOMES:
            self.snapshots.labels(name)
        self.snapshot_bytes = Histogram(
            "sandbox_snapshot_bytes",
            "Size of each archive kept",
            buckets=SNAPSHOT_BYTES_BUCKETS,
            registry=self.registry,
        )
        self.suspend_seconds = Histogram(
            "sandbox_suspend_seconds",
            "Time from a snapshot's start to the session suspended",
            buckets=SUSPEND_BUCKETS,
            registry=self.registry,
        )
        self.resume_seconds = Histogram(
            "sandbox_resume_seconds",
            "Time from a resume asked for to the session ready with its archive",
            buckets=SUSPEND_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_PoolCollector(status, is_leader))
        if pod_labels is not None:
            self.registry.register(_PodLabelsCollector(pod_labels))

    def refused(self, error: SandboxError) -> None:
        """A POST /sessions refused with this domain error."""
        self.requests.labels(error.outcome.value).inc()
        if isinstance(error, OrgSessionLimit):
            self.org_limit_refusals.labels(error.plan).inc()
        elif isinstance(error, OrgRateLimited):
            self.org_rate_refusals.labels(error.plan).inc()

    # -- the scheduler loop's observer (scheduler/ports.py LoopObserver)

    def round_committed(self, commands: int) -> None:
        self.batch_size.observe(commands)

    def store_failed(self) -> None:
        self.store_errors.inc()

    def backend_failed(self, operation: str, kind: str) -> None:
        self.backend_errors.labels(operation, str(kind)).inc()

    def pod_started(self, seconds: float) -> None:
        self.startup_seconds.observe(seconds)

    def claim_hook_failed(self) -> None:
        self.claim_hook_failures.inc()

    def status_answered(self, answer: str) -> None:
        self.status_checks.labels(answer).inc()

    def snapshot_outcome(self, outcome: str) -> None:
        self.snapshots.labels(outcome).inc()

    def snapshot_stored(self, size: int) -> None:
        self.snapshot_bytes.observe(size)

    def suspended(self, seconds: float) -> None:
        self.suspend_seconds.observe(seconds)

    def resumed(self, seconds: float) -> None:
        self.resume_seconds.observe(seconds)

    def webhook(self, outcome: str) -> None:
        self.webhook_deliveries.labels(outcome).inc()

    def session_ended(self, reason: EndReason) -> None:
        self.sessions_ended.labels(reason.value).inc()
        if reason is not EndReason.DELETED:
            self.reclaims.labels(reason.value).inc()
