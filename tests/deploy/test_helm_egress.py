"""The chart's egress (issue 19, README "Control what sandboxes reach"): the egress proxy's
Deployment and Service, the SANDBOX_EGRESS_* both processes get, the CA (generated, or a
Secret of the user's) and its certificate for sandboxes, and NetworkPolicies that leave
sandboxes only DNS and the egress proxy while egress is on."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from sandbox_controller.egress_ca import generate_ca, load_ca
from tests.deploy.deploytools import (
    NAMESPACE,
    Docs,
    Render,
    agent,
    container_env,
    find,
    render_against,
    tls_secret,
)

CA_TEMPLATE = "templates/egress-ca.yaml"

REGISTRIES = {
    "registry.npmjs.org",
    "pypi.org",
    "files.pythonhosted.org",
    "github.com",
    "codeload.github.com",
    "objects.githubusercontent.com",
}


def named(docs: Docs, kind: str, name: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]


def pod_labels(docs: Docs, suffix: str) -> dict[str, str]:
    labels: dict[str, str] = find(docs, "Deployment", suffix)["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


def test_egress_is_enforced_by_default_with_its_own_deployment(render: Render) -> None:
    docs = render()
    egress = find(docs, "Deployment", "-egress")
    controller = find(docs, "Deployment", "-controller")
    pod = egress["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["egress-proxy"]
    assert egress["spec"]["replicas"] == 2
    assert container["ports"] == [{"name": "http", "containerPort": 3128, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    # Hardened like the other Deployments, and no Kubernetes API identity.
    own = controller["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert container["securityContext"] == own
    assert pod["securityContext"] == controller["spec"]["template"]["spec"]["securityContext"]
    assert pod["automountServiceAccountToken"] is False

    env, controller_env = container_env(egress), container_env(controller)
    url = f"http://rel-agent-sandbox-egress.{NAMESPACE}.svc:3128"
    for e in (env, controller_env):
        assert e["SANDBOX_EGRESS"] == "enforce"
        assert set(e["SANDBOX_EGRESS_ALLOW"].split(",")) == REGISTRIES
        assert e["SANDBOX_EGRESS_GRANTABLE"] == ""
        assert e["SANDBOX_EGRESS_PROXY_URL"] == url
    # The controller names the CA's ConfigMap, which its sandbox pods mount.
    assert controller_env["SANDBOX_EGRESS_CA_CONFIGMAP"] == "rel-agent-sandbox-egress-ca"
    assert "SANDBOX_EGRESS_CA_CONFIGMAP" not in env
    assert env["SANDBOX_EGRESS_PROXY_HOST"] == "0.0.0.0"
    assert env["SANDBOX_CONTROLLER_URL"] == "http://rel-agent-sandbox-controller:8080"

    service = find(docs, "Service", "-egress")
    assert service["spec"]["selector"].items() <= pod_labels(docs, "-egress").items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 3128, "targetPort": "http", "protocol": "TCP"}
    ]
    # The editor proxy is untouched and apart: its own Deployment and selector.
    assert pod_labels(docs, "-proxy")["app.kubernetes.io/component"] == "proxy"


def test_lists_resolver_and_replicas_come_from_values(render: Render) -> None:
    docs = render(
        agent(
            egress={
                "mode": "audit",
                "allow": ["*.example.com", "api.example.org:8443"],
                "grantable": ["*.githubusercontent.com"],
                "denyCidrs": ["203.0.113.0/24"],
                "resolver": "10.96.0.10:53",
                "replicas": 3,
            }
        )
    )
    egress = find(docs, "Deployment", "-egress")
    assert egress["spec"]["replicas"] == 3
    env = container_env(egress)
    assert env["SANDBOX_EGRESS"] == "audit"
    assert env["SANDBOX_EGRESS_ALLOW"] == "*.example.com,api.example.org:8443"
    assert env["SANDBOX_EGRESS_GRANTABLE"] == "*.githubusercontent.com"
    assert env["SANDBOX_EGRESS_DENY_CIDRS"] == "203.0.113.0/24"
    assert env["SANDBOX_EGRESS_RESOLVER"] == "10.96.0.10:53"


def test_a_bad_mode_or_pattern_is_refused_naming_the_value(
    helm_template: Callable[[dict[str, Any] | None], subprocess.CompletedProcess[str]],
) -> None:
    bad_mode = helm_template(agent(egress={"mode": "strict"}))
    assert bad_mode.returncode != 0 and "agentSandbox.egress.mode" in bad_mode.stderr
    bad_host = helm_template(agent(egress={"allow": ["https://pypi.org/simple"]}))
    assert bad_host.returncode != 0 and "agentSandbox.egress.allow" in bad_host.stderr


def sandbox_policy(docs: Docs) -> dict[str, Any]:
    spec: dict[str, Any] = find(docs, "NetworkPolicy", "-sandbox")["spec"]
    return spec


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_with_egress_on_sandboxes_reach_only_dns_and_the_egress_proxy(
    render: Render, mode: str
) -> None:
    docs = render(agent(egress={"mode": mode}))
    spec = sandbox_policy(docs)
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    dns, proxy = spec["egress"]
    # DNS: the cluster resolver only (port 53 to anywhere would itself be a way out).
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    [peer] = proxy["to"]
    assert peer.keys() == {"podSelector"}
    egress_labels = pod_labels(docs, "-egress")
    assert peer["podSelector"]["matchLabels"].items() <= egress_labels.items()
    assert not peer["podSelector"]["matchLabels"].items() <= pod_labels(docs, "-proxy").items()
    assert proxy["ports"] == [{"port": 3128, "protocol": "TCP"}]
    assert "ipBlock" not in str(spec["egress"])
    # Ingress is today's either way: the proxy and the controller, on the sandbox port.
    assert spec["ingress"] == sandbox_policy(render(agent(egress={"mode": "off"})))["ingress"]


def test_with_egress_off_nothing_of_it_is_rendered(render: Render) -> None:
    docs = render(agent(egress={"mode": "off"}))
    names = {d["metadata"]["name"] for d in docs}
    assert not {n for n in names if "egress" in n}, names
    env = container_env(find(docs, "Deployment", "-controller"))
    assert env["SANDBOX_EGRESS"] == "off"
    assert not {n for n in env if n.startswith("SANDBOX_EGRESS_")}
    blocks = [p for rule in sandbox_policy(docs)["egress"] for p in rule.get("to", [])]
    assert blocks[0]["ipBlock"]["cidr"] == "0.0.0.0/0"


def test_the_egress_proxy_accepts_only_sandboxes_and_reaches_the_controller(
    render: Render,
) -> None:
    docs = render({"networkPolicy": {"metricsFrom": [{"namespaceSelector": {}}]}})
    spec = find(docs, "NetworkPolicy", "-egress")["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels(docs, "-egress").items()
    [ingress] = spec["ingress"]
    assert ingress["from"] == [
        {
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/managed-by": "agent-sandbox-controller"}
            }
        },
        {"namespaceSelector": {}},
    ]
    assert ingress["ports"] == [{"port": 3128, "protocol": "TCP"}]
    dns, controller, internet = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert controller["ports"] == [{"port": 8080, "protocol": "TCP"}]
    [peer] = controller["to"]
    assert peer["podSelector"]["matchLabels"].items() <= pod_labels(docs, "-controller").items()
    # The public internet on any port, not the private ranges or the metadata address.
    assert internet["to"][0]["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert "169.254.169.254/32" in internet["to"][0]["ipBlock"]["except"]
    # ...and the controller lets it in for /internal/egress/*.
    [ctl_ingress] = find(docs, "NetworkPolicy", "-controller")["spec"]["ingress"]
    assert peer not in ctl_ingress["from"]  # sanity: not the controller selecting itself
    assert any(
        p.get("podSelector", {}).get("matchLabels", {}).items()
        <= pod_labels(docs, "-egress").items()
        and p.get("podSelector", {}).get("matchLabels")
        for p in ctl_ingress["from"]
    )


def certificate(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def b64(text: str) -> str:
    return base64.b64decode(text).decode()


def test_a_ca_is_generated_and_its_certificate_given_to_sandboxes(
    render: Render, tmp_path: Path
) -> None:
    docs = render()
    [secret] = named(docs, "Secret", "rel-agent-sandbox-egress-ca")
    [config] = named(docs, "ConfigMap", "rel-agent-sandbox-egress-ca")
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    cert_pem, key_pem = b64(secret["data"]["tls.crt"]), b64(secret["data"]["tls.key"])
    assert config["data"] == {"ca.pem": cert_pem}  # the certificate only, never the key
    cert = certificate(cert_pem)
    assert cert.subject.rfc4514_string() == "CN=agent-sandbox egress CA"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # The pair loads as the egress proxy loads it (egress_ca.load_ca: matching, a CA).
    (tmp_path / "tls.crt").write_text(cert_pem)
    (tmp_path / "tls.key").write_text(key_pem)
    load_ca(tmp_path / "tls.crt", tmp_path / "tls.key")
    # The egress proxy mounts the pair and is told where; the controller gets neither.
    egress = find(docs, "Deployment", "-egress")
    volumes = {v["name"]: v for v in egress["spec"]["template"]["spec"]["volumes"]}
    assert volumes["egress-ca"]["secret"]["secretName"] == "rel-agent-sandbox-egress-ca"
    env = container_env(egress)
    assert env["SANDBOX_EGRESS_CA_CERT_FILE"] == "/etc/agent-sandbox-egress-ca/tls.crt"
    assert env["SANDBOX_EGRESS_CA_KEY_FILE"] == "/etc/agent-sandbox-egress-ca/tls.key"
    controller = find(docs, "Deployment", "-controller")
    assert "egress-ca" not in str(controller["spec"]["template"]["spec"]["volumes"])


def test_a_given_ca_secret_is_used_and_none_is_generated(render: Render) -> None:
    cert_pem = generate_ca()[0].decode()
    docs = render(agent(egress={"ca": {"existingSecret": "my-ca", "certificate": cert_pem}}))
    assert not named(docs, "Secret", "rel-agent-sandbox-egress-ca")
    [config] = named(docs, "ConfigMap", "rel-agent-sandbox-egress-ca")
    assert config["data"]["ca.pem"] == cert_pem
    egress = find(docs, "Deployment", "-egress")
    volumes = {v["name"]: v for v in egress["spec"]["template"]["spec"]["volumes"]}
    assert volumes["egress-ca"]["secret"]["secretName"] == "my-ca"


def test_a_given_ca_secret_helm_cannot_read_asks_for_its_certificate(
    helm_template: Callable[[dict[str, Any] | None], subprocess.CompletedProcess[str]],
) -> None:
    done = helm_template(agent(egress={"ca": {"existingSecret": "my-ca"}}))
    assert done.returncode != 0
    assert "agentSandbox.egress.ca.certificate" in done.stderr, done.stderr


def test_the_deployments_secrets_reach_the_controller_only(render: Render) -> None:
    docs = render(agent(egress={"secrets": {"existingSecret": "registry-tokens"}}))
    controller = find(docs, "Deployment", "-controller")
    env = container_env(controller)
    assert env["SANDBOX_EGRESS_SECRETS_FILE"] == "/etc/agent-sandbox-egress-secrets/secrets.yaml"
    volumes = {v["name"]: v for v in controller["spec"]["template"]["spec"]["volumes"]}
    assert volumes["egress-secrets"]["secret"] == {
        "secretName": "registry-tokens",
        "defaultMode": 0o440,
        "items": [{"key": "secrets.yaml", "path": "secrets.yaml"}],
    }
    assert "registry-tokens" not in str(find(docs, "Deployment", "-egress"))
    assert "registry-tokens" not in str(find(docs, "Deployment", "-proxy"))


def test_the_service_monitor_scrapes_the_egress_proxy(render: Render) -> None:
    monitor = find(render({"metrics": {"serviceMonitor": {"enabled": True}}}), "ServiceMonitor")
    [components] = [
        e["values"]
        for e in monitor["spec"]["selector"]["matchExpressions"]
        if e["key"] == "app.kubernetes.io/component"
    ]
    assert "egress" in components


def test_the_generated_ca_is_kept_on_upgrade(helm: str, tmp_path: Path) -> None:
    # A new CA on `helm upgrade` would break every sandbox that trusts the old one.
    cert_pem, key_pem = generate_ca()
    existing = tls_secret("rel-agent-sandbox-egress-ca", cert_pem, key_pem)
    path = f"/api/v1/namespaces/{NAMESPACE}/secrets/rel-agent-sandbox-egress-ca"
    docs = render_against(helm, tmp_path, {path: existing}, CA_TEMPLATE)
    [secret] = named(docs, "Secret", "rel-agent-sandbox-egress-ca")
    assert b64(secret["data"]["tls.crt"]) == cert_pem.decode()
    assert b64(secret["data"]["tls.key"]) == key_pem.decode()
    [config] = named(docs, "ConfigMap", "rel-agent-sandbox-egress-ca")
    assert config["data"]["ca.pem"] == cert_pem.decode()


def test_a_given_ca_secret_is_read_with_lookup_when_helm_can(helm: str, tmp_path: Path) -> None:
    cert_pem, key_pem = generate_ca()
    given = tls_secret("my-ca", cert_pem, key_pem)
    path = f"/api/v1/namespaces/{NAMESPACE}/secrets/my-ca"
    values = agent(egress={"ca": {"existingSecret": "my-ca"}})
    docs = render_against(helm, tmp_path, {path: given}, CA_TEMPLATE, values)
    assert not named(docs, "Secret", "rel-agent-sandbox-egress-ca")
    [config] = named(docs, "ConfigMap", "rel-agent-sandbox-egress-ca")
    assert config["data"]["ca.pem"] == cert_pem.decode()
