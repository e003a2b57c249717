"""The chart routes controller traffic to the leader by a label the leader sets on its
own pod, while readiness means "fit to lead or stand by" (issue 10): so a rolling update
with maxUnavailable 0 can finish and a drain of the leader's node is allowed."""

from __future__ import annotations

from tests.deploy.deploytools import Render, agent, container_env, find

PG = {"url": "postgresql+asyncpg://u:p@pg:5432/s"}


def test_on_postgresql_the_service_follows_the_leader_label(render: Render) -> None:
    docs = render(agent(database=PG))
    service = find(docs, "Service", "-controller")
    deployment = find(docs, "Deployment", "-controller")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector["agent-sandbox/leader"] == "true"
    # Every other term matches the controller pods; the leader label is set at run time.
    assert {k: v for k, v in selector.items() if k != "agent-sandbox/leader"}.items() <= (
        pod_labels.items()
    )
    assert "agent-sandbox/leader" not in pod_labels
    assert "agent-sandbox/leader" not in deployment["spec"]["selector"]["matchLabels"]
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    [pod_name] = [e for e in env if e["name"] == "SANDBOX_POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/readyz?role=replica"


def test_with_sqlite_the_one_replica_is_selected_by_readiness(render: Render) -> None:
    docs = render()
    service = find(docs, "Service", "-controller")
    deployment = find(docs, "Deployment", "-controller")
    assert "agent-sandbox/leader" not in service["spec"]["selector"]
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/readyz"
    assert "SANDBOX_POD_NAME" in container_env(deployment)


def test_the_role_lets_the_leader_patch_its_own_pod(render: Render) -> None:
    role = find(render(agent(database=PG)), "Role")
    pod_verbs = {v for rule in role["rules"] if "pods" in rule["resources"] for v in rule["verbs"]}
    assert {"get", "list", "patch"} <= pod_verbs
