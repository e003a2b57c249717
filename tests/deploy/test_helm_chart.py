"""The Helm chart as an operator installs it: lint, valid manifests, and the DESIGN contract."""

from __future__ import annotations

import base64
import copy
import secrets
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from sandbox_controller.egress_ca import generate_ca
from tests.deploy.deploytools import (
    CHART,
    NAMESPACE,
    Render,
    agent,
    container_env,
    find,
    pod_template,
    render_against,
)

# The oldest Kubernetes still in upstream support when this was written, and the newest
# that the installed kubernetes-validate knows.
K8S_VERSIONS = ["1.31.0", kubernetes_validate.latest_version()]
# Prometheus Operator CRDs have no schema in kubernetes-validate; test_observability.py
# checks them structurally instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

# A certificate for the given-CA scenario (its key is never needed by the chart).
EGRESS_CA_PEM = generate_ca()[0].decode()
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "existing-secrets": agent(
        database={"existingSecret": "pg", "existingSecretKey": "uri"},
        apiToken={"existingSecret": "api"},
        tokenSecret={"existingSecret": "signing", "existingSecretKey": "key"},
        proxyToken={"existingSecret": "proxies"},
    ),
    "monitoring": {
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
    },
    "hardened-sandbox": agent(
        job={
            "image": {"repository": "registry.example/sandbox", "tag": "1.2"},
            "runtimeClassName": "gvisor",
            "nodeSelector": {"pool": "sandboxes"},
            "tolerations": [{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}],
        }
    ),
    "disk-and-priority": agent(
        priorityClassName="sandbox-live",
        job={
            "tmpDirSizeLimit": "5Gi",
            "rootfsSizeLimit": "512Mi",
            "extraVolumes": [{"name": "tools", "configMap": {"name": "tools"}}],
            "extraVolumeMounts": [{"name": "tools", "mountPath": "/opt/tools"}],
        },
    ),
    "two-controllers": agent(
        controller={"replicas": 2}, database={"url": "postgresql+asyncpg://u:p@pg:5432/s"}
    ),
    "ingress": agent(
        proxy={"ingress": {"enabled": True, "host": "sbx.example.com", "tlsSecretName": "tls"}}
    ),
    "egress-off": agent(egress={"mode": "off"}),
    "egress-audit-own-ca": agent(
        egress={
            "mode": "audit",
            "ca": {"existingSecret": "my-ca", "certificate": EGRESS_CA_PEM},
            "secrets": {"existingSecret": "registry-tokens"},
        }
    ),
    "console": agent(
        console={
            "readOnlyToken": {"value": "look-but-do-not-touch"},
            "ingress": {"enabled": True, "host": "ops.example.com", "tlsSecretName": "ops"},
        }
    ),
}

EXPECTED_RULES = {
    ("", "pods"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "events"): {"get", "list", "watch", "create"},
    ("", "configmaps"): {"get"},
    ("policy", "poddisruptionbudgets"): {"get", "patch"},
}


@pytest.mark.parametrize(
    "scenario",
    [
        "defaults",
        "monitoring",
        "hardened-sandbox",
        "ingress",
        "existing-secrets",
        "console",
        "disk-and-priority",
    ],
)
def test_lint_strict(helm: str, tmp_path: Path, scenario: str) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(SCENARIOS[scenario]))
    proc = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, "-f", str(values)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_is_valid_kubernetes(render: Render, scenario: str) -> None:
    docs = render(SCENARIOS[scenario])
    checked = [*docs, pod_template(docs)]
    for doc in checked:
        if doc["kind"] in CRD_KINDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']} {doc['metadata'].get('name')} on {version}: {exc}")


def test_validator_rejects_an_unknown_field(render: Render) -> None:
    # Guards the test above: a validator that accepts anything would pass it too.
    deployment = copy.deepcopy(find(render(), "Deployment", "-controller"))
    deployment["spec"]["template"]["spec"]["containers"][0]["envv"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_default_render_passes_the_kubernetes_validate_cli(render: Render, tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump_all(render()))
    proc = subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", "-k", K8S_VERSIONS[0], str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def secret_files(deployment: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """File name -> (Secret, key) of the projected "secrets" volume, checked to be mounted
    where SANDBOX_SECRETS_DIR says."""
    spec = deployment["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "secrets")
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "secrets")
    assert container_env(deployment)["SANDBOX_SECRETS_DIR"] == mount["mountPath"]
    return {
        item["path"]: (source["secret"]["name"], item["key"])
        for source in volume["projected"]["sources"]
        for item in source["secret"]["items"]
    }


def test_seed_values_reach_the_controller_under_design_names(render: Render) -> None:
    docs = render()
    controller = find(docs, "Deployment", "-controller")
    env = container_env(controller)
    expected = {
        "SANDBOX_PREWARM_POOL_SIZE": "5",
        "SANDBOX_MAX_TOTAL_JOBS": "50",
        "SANDBOX_MAX_SESSIONS_PER_USER": "5",
        "SANDBOX_MAX_CONCURRENT_CREATES": "3",
        "SANDBOX_IDLE_TIMEOUT": "2h30m",
        "SANDBOX_IDLE_AFTER": "5m",
        "SANDBOX_MAX_LIFETIME": "0",
        "SANDBOX_STARTUP_TIMEOUT": "5m",
        "SANDBOX_MAX_CLAIM_ATTEMPTS": "3",
        "SANDBOX_BACKEND": "kubernetes",
        "SANDBOX_HOST": "0.0.0.0",
        "SANDBOX_PORT": "8080",
        "SANDBOX_POD_TEMPLATE_PATH": "/etc/agent-sandbox/pod-template.yaml",
        "SANDBOX_PROXY_PUBLIC_URL": f"http://rel-agent-sandbox-proxy.{NAMESPACE}.svc:8081",
    }
    assert {name: env.get(name) for name in expected} == expected
    assert env["SANDBOX_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    files = secret_files(controller)
    for name in ("SANDBOX_API_TOKEN", "SANDBOX_TOKEN_SECRET", "SANDBOX_PROXY_TOKEN"):
        # From a Secret, as a file (checkov CKV_K8S_35): never a literal, never the env.
        assert name not in env and name.lower() in files, name
    assert env["SANDBOX_DATABASE_URL"].startswith("sqlite+aiosqlite:////")


def test_overrides_change_the_controller_environment(render: Render) -> None:
    values = agent(
        controller={
            "scaling": {
                "prewarmPoolSize": 10,
                "maxTotalJobs": 200,
                "maxSessionsPerUser": 2,
                "maxConcurrentCreates": 8,
            },
            "idleTimeout": "45m",
            "idleAfter": "90s",
            "maxLifetime": "12h",
            "startupTimeout": "10m",
            "maxClaimAttempts": 5,
            "proxyPublicUrl": "https://editor.example.com/sandbox/",
        }
    )
    env = container_env(find(render(values), "Deployment", "-controller"))
    assert env["SANDBOX_PREWARM_POOL_SIZE"] == "10"
    assert env["SANDBOX_MAX_TOTAL_JOBS"] == "200"
    assert env["SANDBOX_MAX_SESSIONS_PER_USER"] == "2"
    assert env["SANDBOX_MAX_CONCURRENT_CREATES"] == "8"
    assert env["SANDBOX_IDLE_TIMEOUT"] == "45m"
    assert env["SANDBOX_IDLE_AFTER"] == "90s"
    assert env["SANDBOX_MAX_LIFETIME"] == "12h"
    assert env["SANDBOX_STARTUP_TIMEOUT"] == "10m"
    assert env["SANDBOX_MAX_CLAIM_ATTEMPTS"] == "5"
    assert env["SANDBOX_PROXY_PUBLIC_URL"] == "https://editor.example.com/sandbox"


def test_ingress_host_becomes_the_public_url(render: Render) -> None:
    docs = render(SCENARIOS["ingress"])
    env = container_env(find(docs, "Deployment", "-controller"))
    assert env["SANDBOX_PROXY_PUBLIC_URL"] == "https://sbx.example.com"
    backend = find(docs, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend["service"]["name"] == find(docs, "Service", "-proxy")["metadata"]["name"]


def test_controller_mounts_the_pod_template_it_is_told_about(render: Render) -> None:
    docs = render()
    deployment = find(docs, "Deployment", "-controller")
    configmap = find(docs, "ConfigMap", "-pod-template")
    env = container_env(deployment)
    assert env["SANDBOX_POD_TEMPLATE_CONFIGMAP"] == configmap["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert env["SANDBOX_POD_TEMPLATE_PATH"] == f"{mount['mountPath']}/pod-template.yaml"
    assert "pod-template.yaml" in configmap["data"]


def controller_budgets(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"].endswith("-controller")
    ]


def test_controller_command_probes_and_strategy(render: Render) -> None:
    deployment = find(render(), "Deployment", "-controller")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["serve"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The defaults have no database: SQLite, one writer, so one replica replaced by Recreate.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not controller_budgets(render())


def test_proxy_is_wired_to_the_controller(render: Render) -> None:
    docs = render()
    proxy = find(docs, "Deployment", "-proxy")
    container = proxy["spec"]["template"]["spec"]["containers"][0]
    env = container_env(proxy)
    controller_svc = find(docs, "Service", "-controller")
    assert env["SANDBOX_CONTROLLER_URL"] == f"http://{controller_svc['metadata']['name']}:8080"
    assert env["SANDBOX_PROXY_HOST"] == "0.0.0.0"
    assert env["SANDBOX_PROXY_PORT"] == "8081"
    controller_files = secret_files(find(docs, "Deployment", "-controller"))
    # The proxy's one secret is its own credential, the same the controller accepts; it
    # never holds the token secret (it could sign session tokens) or the API token.
    assert secret_files(proxy) == {"sandbox_proxy_token": controller_files["sandbox_proxy_token"]}
    assert not {"SANDBOX_API_TOKEN", "SANDBOX_TOKEN_SECRET"} & env.keys()
    assert container["args"] == ["proxy"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert proxy["spec"]["replicas"] == 2
    assert proxy["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    pdb = find(docs, "PodDisruptionBudget", "-proxy")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        proxy["spec"]["template"]["metadata"]["labels"].items()
    )


def test_services_select_their_pods_on_the_design_ports(render: Render) -> None:
    docs = render()
    for component, port in (("controller", 8080), ("proxy", 8081)):
        service = find(docs, "Service", f"-{component}")
        pod = find(docs, "Deployment", f"-{component}")["spec"]["template"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert [p["port"] for p in service["spec"]["ports"]] == [port]
        container_ports = {
            p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]
        }
        assert container_ports[service["spec"]["ports"][0]["targetPort"]] == port


def test_role_grants_exactly_the_design_list(render: Render) -> None:
    for scenario in SCENARIOS.values():
        docs = render(scenario)
        kinds = {d["kind"] for d in docs}
        assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
        role = find(docs, "Role")
        granted: dict[tuple[str, str], set[str]] = {}
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
        assert granted == EXPECTED_RULES
        assert all("*" not in str(v) for rule in role["rules"] for v in rule.values())
        binding = find(docs, "RoleBinding")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        controller = find(docs, "Deployment", "-controller")["spec"]["template"]["spec"]
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": controller["serviceAccountName"],
                "namespace": NAMESPACE,
            }
        ]


def test_sandbox_pods_are_locked_down(render: Render) -> None:
    for scenario in SCENARIOS.values():
        pod = pod_template(render(scenario))
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert spec.get("hostNetwork") is not True
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]
            assert "add" not in ctx["capabilities"]
            assert ctx.get("privileged") is not True


def test_sandbox_template_defaults(render: Render) -> None:
    container = pod_template(render())["spec"]["containers"][0]
    assert container["resources"]["requests"] == {
        "cpu": "1",
        "memory": "2Gi",
        "ephemeral-storage": "2Gi",
    }
    assert {"containerPort": 8080, "name": "http", "protocol": "TCP"} in container["ports"]


def test_sandbox_runtime_and_placement_overrides(render: Render) -> None:
    spec = pod_template(render(SCENARIOS["hardened-sandbox"]))["spec"]
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["nodeSelector"] == {"pool": "sandboxes"}
    assert spec["tolerations"] == [{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}]
    container = spec["containers"][0]
    assert container["image"] == "registry.example/sandbox:1.2"
    # The operator's image brings its own entrypoint; the devsandbox command must not stick.
    assert "command" not in container


def test_pod_template_change_restarts_the_controller(render: Render) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = find(render(values), "Deployment", "-controller")
        return str(
            deployment["spec"]["template"]["metadata"]["annotations"]["checksum/pod-template"]
        )

    assert checksum({}) != checksum(SCENARIOS["hardened-sandbox"])


def test_network_policy_isolates_sandboxes_with_egress_off(render: Render) -> None:
    # Egress off: today's policy (the public internet minus private ranges). With egress
    # on (the default) sandboxes reach only DNS and the egress proxy: test_helm_egress.py.
    docs = render(agent(egress={"mode": "off"}))
    policy = find(docs, "NetworkPolicy", "-sandbox")
    spec = policy["spec"]
    assert spec["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/managed-by": "agent-sandbox-controller"}
    }
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    proxy_labels = find(docs, "Deployment", "-proxy")["spec"]["template"]["metadata"]["labels"]
    controller = find(docs, "Deployment", "-controller")
    controller_labels = controller["spec"]["template"]["metadata"]["labels"]
    # The proxy, and the controller for the sandbox hooks: nobody else, on the port only.
    [ingress] = spec["ingress"]
    [from_proxy, from_controller] = ingress["from"]
    assert from_proxy.keys() == from_controller.keys() == {"podSelector"}
    assert from_proxy["podSelector"]["matchLabels"].items() <= proxy_labels.items()
    assert from_controller["podSelector"]["matchLabels"].items() <= controller_labels.items()
    assert not from_controller["podSelector"]["matchLabels"].items() <= proxy_labels.items()
    assert ingress["ports"] == [{"port": 8080, "protocol": "TCP"}]
    # ... and the controller's own policy lets it out to the sandboxes' port.
    own = find(docs, "NetworkPolicy", "-controller")["spec"]
    assert {
        "to": [{"podSelector": spec["podSelector"]}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    } in own["egress"]
    blocks = [
        peer["ipBlock"]
        for rule in spec["egress"]
        for peer in rule.get("to", [])
        if "ipBlock" in peer
    ]
    assert blocks == [
        {
            "cidr": "0.0.0.0/0",
            "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.169.254/32"],
        }
    ]
    dns = [rule for rule in spec["egress"] if "to" not in rule]
    assert dns and {(p["port"], p["protocol"]) for p in dns[0]["ports"]} == {
        (53, "UDP"),
        (53, "TCP"),
    }


def test_network_policy_can_be_turned_off(render: Render) -> None:
    assert "NetworkPolicy" not in {d["kind"] for d in render({"networkPolicy": {"enabled": False}})}


def test_labels_follow_the_kubernetes_conventions(render: Render) -> None:
    expected = {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
        "app.kubernetes.io/component",
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/part-of",
        "helm.sh/chart",
    }
    for doc in render(SCENARIOS["monitoring"]):
        missing = expected - doc["metadata"]["labels"].keys()
        assert not missing, f"{doc['kind']} {doc['metadata']['name']} lacks {missing}"


def secret_data(docs: list[dict[str, Any]]) -> dict[str, str]:
    secret = find(docs, "Secret", "-agent-sandbox")
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_tokens_are_generated_when_not_given(render: Render) -> None:
    data = secret_data(render())
    assert len(data["api-token"]) >= 32
    assert len(data["token-secret"]) >= 32
    assert len(data["proxy-token"]) >= 32
    assert len({data["api-token"], data["token-secret"], data["proxy-token"]}) == 3


def test_given_tokens_and_database_url_are_stored(render: Render) -> None:
    url = "postgresql+asyncpg://u:p@pg:5432/s"
    api, signing, proxies = (secrets.token_urlsafe(24) for _ in range(3))
    docs = render(
        agent(
            apiToken={"value": api},
            tokenSecret={"value": signing},
            proxyToken={"value": proxies},
            database={"url": url},
        )
    )
    assert secret_data(docs) == {
        "api-token": api,
        "token-secret": signing,
        "proxy-token": proxies,
        "database-url": url,
    }
    files = secret_files(find(docs, "Deployment", "-controller"))
    assert files["sandbox_database_url"][1] == "database-url"
    # No SQLite volume once a real database is configured.
    volumes = find(docs, "Deployment", "-controller")["spec"]["template"]["spec"]["volumes"]
    assert "data" not in {v["name"] for v in volumes}


def test_existing_secrets_are_referenced_and_none_is_created(render: Render) -> None:
    docs = render(SCENARIOS["existing-secrets"])
    # Only the egress CA's own Secret (test_helm_egress.py) is the chart's.
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == [
        "rel-agent-sandbox-egress-ca"
    ]
    files = secret_files(find(docs, "Deployment", "-controller"))
    assert files["sandbox_database_url"] == ("pg", "uri")
    assert files["sandbox_api_token"] == ("api", "api-token")
    assert files["sandbox_token_secret"] == ("signing", "key")
    assert files["sandbox_proxy_token"] == ("proxies", "proxy-token")
    proxy_files = secret_files(find(docs, "Deployment", "-proxy"))
    assert proxy_files == {"sandbox_proxy_token": ("proxies", "proxy-token")}


def test_generated_secrets_are_kept_on_upgrade(helm: str, tmp_path: Path) -> None:
    # A new token on every `helm upgrade` would log every editor out and lock the editor
    # backend out of the API. The chart reads the release's Secret back with `lookup`;
    # a fake API server holding that Secret stands in for the cluster.
    existing = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "rel-agent-sandbox", "namespace": NAMESPACE},
        "data": {
            "api-token": base64.b64encode(b"kept-api-token").decode(),
            "token-secret": base64.b64encode(b"kept-signing-secret").decode(),
            "proxy-token": base64.b64encode(b"kept-proxy-token").decode(),
        },
    }
    path = f"/api/v1/namespaces/{NAMESPACE}/secrets/rel-agent-sandbox"
    docs = render_against(helm, tmp_path, {path: existing}, "templates/secret.yaml")
    assert secret_data(docs) == {
        "api-token": "kept-api-token",
        "token-secret": "kept-signing-secret",
        "proxy-token": "kept-proxy-token",
    }


PG = {"url": "postgresql+asyncpg://u:p@pg:5432/s"}


@pytest.mark.parametrize(
    "database", [PG, {"existingSecret": "pg", "existingSecretKey": "uri"}], ids=["url", "secret"]
)
def test_with_postgresql_two_controllers_roll_without_a_gap(
    render: Render, database: dict[str, str]
) -> None:
    """Issue 10: a leader and a standby by default, a new replica before an old one goes,
    and a drain that takes one controller at a time."""
    docs = render(agent(database=database))
    deployment = find(docs, "Deployment", "-controller")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # Ready = fit to lead or stand by, so a new standby lets the rollout and a drain go on.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz?role=replica"
    pdb = find(docs, "PodDisruptionBudget", "-controller")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_one_controller_on_postgresql_has_no_disruption_budget(render: Render) -> None:
    """A budget over a single replica would block every node drain."""
    docs = render(agent(controller={"replicas": 1}, database=PG))
    assert find(docs, "Deployment", "-controller")["spec"]["replicas"] == 1
    assert find(docs, "Deployment", "-controller")["spec"]["strategy"]["type"] == "RollingUpdate"
    assert not controller_budgets(docs)


def test_second_controller_replica_is_a_standby_on_a_shared_database(render: Render) -> None:
    docs = render(SCENARIOS["two-controllers"])
    deployment = find(docs, "Deployment", "-controller")
    assert deployment["spec"]["replicas"] == 2
    assert "sandbox_database_url" in secret_files(deployment)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("apiToken", "change-me-too"),
        ("tokenSecret", "short"),
        ("proxyToken", "changeme-please-123"),
    ],
)
def test_placeholder_and_short_secrets_are_refused_by_the_schema(
    helm: str, tmp_path: Path, setting: str, value: str
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(agent(**{setting: {"value": value}})))
    proc = subprocess.run(
        [helm, "template", "rel", str(CHART), "--namespace", NAMESPACE, "-f", str(values)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and f"{setting}.value" in proc.stderr, proc.stderr
