"""Helpers shared by the deploy tests: paths, the metric contract, manifest lookups."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "agent-sandbox"
DASHBOARD = REPO / "deploy" / "grafana" / "agent-sandbox.json"
RELEASE = "rel"
NAMESPACE = "sbx"

# DESIGN §4 "Metrics": the names other teams' dashboards and alerts may rely on.
CONTROLLER_METRICS = frozenset(
    {
        "sandbox_pool_pods",
        "sandbox_sessions",
        "sandbox_session_requests_total",
        "sandbox_session_assign_seconds",
        "sandbox_pod_startup_seconds",
        "sandbox_reclaims_total",
        "sandbox_max_total_jobs",
        "sandbox_prewarm_pool_size",
        "sandbox_capacity_blocked",
        "sandbox_is_leader",
        "sandbox_backend_errors_total",
        "sandbox_pool_condition",
        "sandbox_snapshots_total",
        "sandbox_snapshot_bytes",
        "sandbox_suspend_seconds",
        "sandbox_resume_seconds",
    }
)
PROXY_METRICS = frozenset(
    {
        "sandbox_proxy_requests_total",
        "sandbox_proxy_upstream_seconds",
        "sandbox_proxy_websockets_open",
    }
)
# Issue 19: the egress proxy's own /metrics (its own job).
EGRESS_METRICS = frozenset(
    {
        "sandbox_egress_connections_total",
        "sandbox_egress_bytes_total",
        "sandbox_egress_secret_swaps_total",
        "sandbox_egress_leak_attempts_total",
    }
)
DESIGN_METRICS = CONTROLLER_METRICS | PROXY_METRICS | EGRESS_METRICS
HISTOGRAMS = frozenset(
    {
        "sandbox_session_assign_seconds",
        "sandbox_pod_startup_seconds",
        "sandbox_proxy_upstream_seconds",
        "sandbox_snapshot_bytes",
        "sandbox_suspend_seconds",
        "sandbox_resume_seconds",
    }
)

Docs = list[dict[str, Any]]
Render = Callable[..., Docs]


def metric_names(expr: str) -> set[str]:
    """Metric families an expression reads: histogram series map back to the histogram."""
    names = set()
    for name in re.findall(r"\bsandbox_[a-z_]+", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(base if base in HISTOGRAMS else name)
    return names


def find(docs: Docs, kind: str, name_suffix: str = "") -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, f"expected one {kind} *{name_suffix}, got {len(matches)}"
    return matches[0]


def container_env(deployment: dict[str, Any]) -> dict[str, Any]:
    """Name -> value (a string, or the valueFrom mapping) of the first container."""
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env}


def pod_template(docs: Docs) -> dict[str, Any]:
    cm = find(docs, "ConfigMap", "-pod-template")
    template: dict[str, Any] = yaml.safe_load(cm["data"]["pod-template.yaml"])
    return template


def rule_expressions(docs: Docs) -> list[str]:
    rule = find(docs, "PrometheusRule")
    return [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard_expressions() -> list[str]:
    def walk(panels: Iterable[dict[str, Any]]) -> Iterable[str]:
        for panel in panels:
            yield from (t["expr"] for t in panel.get("targets", []))
            yield from walk(panel.get("panels", []))

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(walk(dashboard["panels"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


def agent(**controller_and_more: Any) -> dict[str, Any]:
    """Values nested under agentSandbox, for short test parameters."""
    return {"agentSandbox": controller_and_more}
