"""The chart's console values: on through the controller's Service by default, a
read-only token from a Secret, and an Ingress for /console alone, off by default."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

from tests.deploy.deploytools import Render, agent, container_env, find

from .test_helm_chart import secret_data, secret_files

Template = Callable[[dict[str, Any] | None], subprocess.CompletedProcess[str]]


def test_by_default_the_console_is_on_behind_the_controller_service_only(
    render: Render,
) -> None:
    docs = render()
    controller = find(docs, "Deployment", "-controller")
    assert container_env(controller)["SANDBOX_CONSOLE"] == "true"
    assert "sandbox_console_token" not in secret_files(controller)
    assert "console-token" not in secret_data(docs)
    assert not [d for d in docs if d["kind"] == "Ingress"]
    services = [d for d in docs if d["kind"] == "Service"]
    assert all(s["spec"]["type"] == "ClusterIP" for s in services)


def test_read_only_token_and_ingress_for_the_console_path_alone(render: Render) -> None:
    docs = render(
        agent(
            console={
                "readOnlyToken": {"value": "look-only"},
                "ingress": {"enabled": True, "host": "ops.example.com", "className": "nginx"},
            }
        )
    )
    controller = find(docs, "Deployment", "-controller")
    assert secret_files(controller)["sandbox_console_token"] == (
        "rel-agent-sandbox",
        "console-token",
    )
    assert secret_data(docs)["console-token"] == "look-only"
    ingress = find(docs, "Ingress", "-console")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "ops.example.com"
    paths = [(p["path"], p["backend"]["service"]["name"]) for p in rule["http"]["paths"]]
    assert paths == [("/console", "rel-agent-sandbox-controller")]
    # The ingress controller (networkPolicy.proxy.ingressFrom) may now reach the controller.
    policy = find(docs, "NetworkPolicy", "-controller")
    peers = policy["spec"]["ingress"][0]["from"]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
    } in peers


def test_an_existing_secret_for_the_read_only_token(render: Render) -> None:
    docs = render(agent(console={"readOnlyToken": {"existingSecret": "ops-tokens"}}))
    files = secret_files(find(docs, "Deployment", "-controller"))
    assert files["sandbox_console_token"] == ("ops-tokens", "console-token")
    assert "console-token" not in secret_data(docs)


def test_console_off_turns_off_its_ingress_too(render: Render) -> None:
    docs = render(agent(console={"enabled": False, "ingress": {"enabled": True, "host": "x.y"}}))
    assert container_env(find(docs, "Deployment", "-controller"))["SANDBOX_CONSOLE"] == "false"
    assert not [d for d in docs if d["kind"] == "Ingress"]


def test_bad_console_values_are_refused(helm_template: Template) -> None:
    no_host = helm_template(agent(console={"ingress": {"enabled": True}}))
    assert no_host.returncode != 0
    assert "agentSandbox.console.ingress.host must be set" in no_host.stderr
    wrong_type = helm_template(agent(console={"enabled": "yes"}))
    assert wrong_type.returncode != 0 and "enabled: Invalid type" in wrong_type.stderr
    unknown = helm_template(agent(console={"readOnlyToken": {"valu": "typo"}}))
    assert unknown.returncode != 0
