"""ServiceMonitor, PrometheusRule and the Grafana dashboard read only the DESIGN metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploytools import (
    CONTROLLER_METRICS,
    DASHBOARD,
    DESIGN_METRICS,
    NAMESPACE,
    PROXY_METRICS,
    Render,
    dashboard_expressions,
    find,
    metric_names,
    rule_expressions,
)

MONITORING = {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}
ALERTS = {
    "AgentSandboxCapReached",
    "AgentSandboxPoolEmpty",
    "AgentSandboxCapacityBlocked",
    "AgentSandboxCreateRejected",
    "AgentSandboxNoLeader",
    "AgentSandboxProxyErrors",
    # Egress on (the chart's default): a surge of denials, any leak attempt.
    "AgentSandboxEgressDenialSurge",
    "AgentSandboxEgressLeakAttempt",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool is missing: apt-get install prometheus")
    return found


def check_rules(groups: list[dict[str, Any]], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )


def test_monitoring_is_off_by_default(render: Render) -> None:
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}


def test_service_monitor_scrapes_controller_and_proxy(render: Render) -> None:
    docs = render(MONITORING)
    monitor = find(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    requirements = monitor["spec"]["selector"]["matchExpressions"]

    def selected(labels: dict[str, str]) -> bool:
        return all(
            r["operator"] == "In" and labels.get(r["key"]) in r["values"] for r in requirements
        )

    services = [d for d in docs if d["kind"] == "Service"]
    assert sorted(s["metadata"]["name"] for s in services if selected(s["metadata"]["labels"])) == [
        "rel-agent-sandbox-controller",
        "rel-agent-sandbox-egress",
        "rel-agent-sandbox-proxy",
    ]
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    for service in services:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_prometheus_rule_has_the_alerts_and_passes_promtool(render: Render, tmp_path: Path) -> None:
    rule = find(render(MONITORING), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    alerts = {r["alert"] for g in groups for r in g["rules"]}
    assert alerts == ALERTS
    for r in (r for g in groups for r in g["rules"]):
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert r["annotations"]["summary"]
    proc = check_rules(groups, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts)} rules found" in proc.stdout


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    # Guards the test above: promtool must really parse the expressions.
    proc = check_rules([{"name": "g", "rules": [{"alert": "A", "expr": "sum(("}]}], tmp_path)
    assert proc.returncode != 0


def test_alerts_select_this_release(render: Render) -> None:
    # Without these matchers a second install in another namespace would fire our alerts.
    for expr in rule_expressions(render(MONITORING)):
        for selector in re.findall(r"sandbox_[a-z_]+\{([^}]*)\}", expr):
            assert f'namespace="{NAMESPACE}"' in selector
            assert re.search(r'job="rel-agent-sandbox-(controller|proxy|egress)"', selector)


def test_rules_use_only_design_metrics(render: Render) -> None:
    used = set().union(*map(metric_names, rule_expressions(render(MONITORING))))
    assert used, "no metric found in the rules"
    assert used <= DESIGN_METRICS, f"not in the DESIGN contract: {used - DESIGN_METRICS}"


def test_dashboard_uses_only_design_metrics_and_shows_them_all() -> None:
    used = set().union(*map(metric_names, dashboard_expressions()))
    assert used <= DESIGN_METRICS, f"not in the DESIGN contract: {used - DESIGN_METRICS}"
    assert DESIGN_METRICS <= used, f"no panel shows {DESIGN_METRICS - used}"


def test_metric_name_parsing() -> None:
    expr = (
        "histogram_quantile(0.9, sum by (le) (rate(sandbox_session_assign_seconds_bucket[5m])))"
        " / sandbox_session_requests_total + sandbox_proxy_upstream_seconds_count"
    )
    assert metric_names(expr) == {
        "sandbox_session_assign_seconds",
        "sandbox_session_requests_total",
        "sandbox_proxy_upstream_seconds",
    }
    assert CONTROLLER_METRICS.isdisjoint(PROXY_METRICS)


def test_dashboard_panels(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = {p["title"] for p in panels}
    for wanted in (
        "Pool pods by state",
        "Sessions by state",
        "Claim latency, warm vs cold",
        "Session requests by outcome",
        "Reclaims by reason",
        "Capacity blocked",
        "Pool conditions",
        "Backend errors by operation and kind",
        "Leader",
        "Proxy requests by code",
        "Proxy upstream latency",
        "Proxy open WebSockets",
        "Suspended sessions",
        "Snapshots and restores by outcome",
        "Suspend and resume time",
        "Archive size",
    ):
        assert wanted in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "Grafana keeps only one of two panels with the same id"
    claim = next(p for p in panels if p["title"] == "Claim latency, warm vs cold")
    assert all("by (le, path)" in t["expr"] for t in claim["targets"])
    assert all(p["targets"] for p in panels)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses rule files only, so each query becomes a recording rule, with the
    # Grafana variables replaced by what Grafana would put there.
    rules = []
    for i, expr in enumerate(dashboard_expressions()):
        if expr.startswith("label_values("):
            continue
        promql = expr.replace("$__rate_interval", "5m").replace("$namespace", "sbx")
        assert "$" not in promql, f"unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": promql})
    proc = check_rules([{"name": "dashboard", "rules": rules}], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_create_rejected_alert_fires_while_the_condition_holds(
    render: Render, tmp_path: Path
) -> None:
    rule = find(render(MONITORING), "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    [alert] = [
        r
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        if r.get("alert") == "AgentSandboxCreateRejected"
    ]
    words = alert["annotations"]
    series = (
        f'sandbox_pool_condition{{namespace="{NAMESPACE}", job="rel-agent-sandbox-controller",'
        ' type="CreateRejected"}'
    )
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                # Refused for 10 minutes, then a create succeeds.
                "input_series": [{"series": series, "values": "1x10 0x10"}],
                "alert_rule_test": [
                    {
                        "eval_time": "3m",
                        "alertname": "AgentSandboxCreateRejected",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "8m",
                        "alertname": "AgentSandboxCreateRejected",
                        "exp_alerts": [
                            {"exp_labels": {"severity": "critical"}, "exp_annotations": words}
                        ],
                    },
                    {
                        "eval_time": "18m",
                        "alertname": "AgentSandboxCreateRejected",
                        "exp_alerts": [],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    proc = subprocess.run(
        [promtool(), "test", "rules", "tests.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
