"""The chart hardens the edge: NetworkPolicies for the controller and the proxy, a
wildcard host for subdomain mode, and checkov clean but for the skips it lists."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.deploy.deploytools import (
    CHART,
    NAMESPACE,
    Render,
    agent,
    container_env,
    failed_checks,
    find,
    require_checkov,
    run_checkov,
)

ALL_ON: dict[str, Any] = {
    **agent(
        proxy={
            "sessionDomain": "s.example.com",
            "allowedOrigins": ["https://editor.example.com"],
            "ingress": {
                "enabled": True,
                "host": "sbx.example.com",
                "tlsSecretName": "tls",
                "wildcardTlsSecretName": "wildcard-tls",
            },
        },
        database={"url": "postgresql+asyncpg://u:p@pg:5432/s"},
    ),
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
}


def labels_of(docs: list[dict[str, Any]], suffix: str) -> dict[str, str]:
    labels: dict[str, str] = find(docs, "Deployment", suffix)["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


def selects(peer: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = peer.get("podSelector", {}).get("matchLabels")
    return wanted is not None and wanted.items() <= labels.items()


def test_the_proxy_and_controller_accept_only_their_callers(render: Render) -> None:
    docs = render(ALL_ON)
    proxy_labels, controller_labels = labels_of(docs, "-proxy"), labels_of(docs, "-controller")

    proxy = find(docs, "NetworkPolicy", "-proxy")["spec"]
    assert proxy["podSelector"]["matchLabels"].items() <= proxy_labels.items()
    [ingress] = proxy["ingress"]
    assert ingress["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    assert ingress["ports"] == [{"port": 8081, "protocol": "TCP"}]
    # Egress: DNS, the controller, the sandboxes; nothing else (no API server, no internet).
    peers = [peer for rule in proxy["egress"] for peer in rule.get("to", [])]
    assert len(peers) == 2 and not any("ipBlock" in p for p in peers)
    assert any(selects(p, controller_labels) for p in peers)

    controller = find(docs, "NetworkPolicy", "-controller")["spec"]
    assert controller["podSelector"]["matchLabels"].items() <= controller_labels.items()
    [ingress] = controller["ingress"]
    assert selects(ingress["from"][0], proxy_labels)
    # The egress proxy, for /internal/egress/* (egress is on by default).
    assert selects(ingress["from"][1], labels_of(docs, "-egress"))
    assert ingress["from"][2:] == [{"podSelector": {}}]  # the editor backend's, configurable
    ports = {p["port"] for rule in controller["egress"] for p in rule["ports"]}
    assert ports == {53, 443, 6443, 5432, 8080}


def test_subdomain_mode_gets_a_wildcard_host_with_its_certificate(render: Render) -> None:
    docs = render(ALL_ON)
    ingress = find(docs, "Ingress")["spec"]
    hosts = {rule["host"]: rule["http"]["paths"][0]["path"] for rule in ingress["rules"]}
    assert hosts == {"sbx.example.com": "/s/", "*.s.example.com": "/"}
    assert {"hosts": ["*.s.example.com"], "secretName": "wildcard-tls"} in ingress["tls"]
    for suffix in ("-proxy", "-controller"):  # the controller renders connect.url with it
        env = container_env(find(docs, "Deployment", suffix))
        assert env["SANDBOX_PROXY_SESSION_DOMAIN"] == "s.example.com"
    proxy_env = container_env(find(docs, "Deployment", "-proxy"))
    assert proxy_env["SANDBOX_PROXY_ALLOWED_ORIGINS"] == "https://editor.example.com"
    assert proxy_env["SANDBOX_PROXY_PUBLIC_URL"] == "https://sbx.example.com"


def test_the_controller_mounts_its_api_token_explicitly_and_the_proxy_none(
    render: Render,
) -> None:
    docs = render(ALL_ON)
    controller = find(docs, "Deployment", "-controller")["spec"]["template"]["spec"]
    assert controller["automountServiceAccountToken"] is False
    mounts = {m["mountPath"] for m in controller["containers"][0]["volumeMounts"]}
    assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts
    proxy = find(docs, "Deployment", "-proxy")["spec"]["template"]["spec"]
    assert proxy["automountServiceAccountToken"] is False
    volumes = json.dumps(proxy["volumes"])
    assert "serviceAccountToken" not in volumes


def test_checkov_passes_on_the_rendered_chart(render: Render, tmp_path: Path) -> None:
    checkov = require_checkov()
    started = time.monotonic()
    results = run_checkov(checkov, render(ALL_ON), tmp_path)
    print(f"checkov took {time.monotonic() - started:.1f} s in namespace {NAMESPACE}")
    assert failed_checks(results) == []
    assert results["returncode"] == 0
    # Each skip in the file carries its reason, on the comment lines above it.
    lines = (CHART / ".checkov.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- CKV"):
            assert lines[i - 1].strip().startswith("#"), f"{line.strip()} has no reason"
