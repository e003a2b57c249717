"""Helpers shared by the deploy tests: paths, the metric contract, manifest lookups, and
the two outside tools run on a render (server-side `helm template`, checkov)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.fake_kube_api import fake_kube_api

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


def render_against(
    helm: str,
    tmp_path: Path,
    objects: dict[str, Any],
    show_only: str,
    values: dict[str, Any] | None = None,
) -> Docs:
    """`helm template --dry-run=server` of one template against a fake API server
    holding `objects` (API path -> object), so the chart's `lookup` reads them as it
    would on an upgrade."""
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values or {}))
    with fake_kube_api(objects, tmp_path / "kubeconfig") as kubeconfig:
        proc = subprocess.run(
            [
                helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                "--dry-run=server", "--kubeconfig", str(kubeconfig), "-f", str(path),
                "--show-only", show_only,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def tls_secret(name: str, cert_pem: bytes, key_pem: bytes) -> dict[str, Any]:
    """A `kubernetes.io/tls` Secret as the API server would hand it to `lookup`."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(cert_pem).decode(),
            "tls.key": base64.b64encode(key_pem).decode(),
        },
    }


def require_checkov() -> str:
    checkov = shutil.which("checkov")
    if checkov is None:
        pytest.fail("checkov is missing: it is in the test extra (pip install -e '.[test]')")
    return checkov


def run_checkov(checkov: str, docs: Docs, tmp_path: Path, *options: str) -> dict[str, Any]:
    """checkov's results on `docs`, offline (no guideline download): by default with
    the chart's own config (its skips, each with its reason); `options` replace that."""
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    chosen = options or ("--config-file", str(CHART / ".checkov.yaml"))
    proc = subprocess.run(
        [checkov, "-f", str(rendered), "--framework", "kubernetes", *chosen, "--output", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report = json.loads(proc.stdout)
    results: dict[str, Any] = (
        report[0]["results"] if isinstance(report, list) else report["results"]
    )
    results["returncode"] = proc.returncode
    return results


def failed_checks(results: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
