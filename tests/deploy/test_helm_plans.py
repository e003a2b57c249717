"""agentSandbox.plans reaches the controller as SANDBOX_PLANS_FILE, a file the
controller's own loader accepts, and a change of plans restarts the controller."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox_controller.config import load_settings
from sandbox_controller.model import Plan
from tests.deploy.deploytools import Render, agent, container_env, find

Template = Callable[[dict[str, Any] | None], subprocess.CompletedProcess[str]]

PLANS = [
    {
        "name": "starter",
        "maxSessionsPerUser": 2,
        "maxPodsPerOrg": 10,
        "warmShare": 0.25,
        "sessionsPerMinute": 30,
    },
    {"name": "enterprise", "maxSessionsPerUser": 10},
]


def test_no_plans_means_no_file_and_the_deployment_limits(render: Render) -> None:
    docs = render()
    assert not [d for d in docs if d["metadata"]["name"].endswith("-plans")]
    deployment = find(docs, "Deployment", "-controller")
    assert "SANDBOX_PLANS_FILE" not in container_env(deployment)
    assert "checksum/plans" not in deployment["spec"]["template"]["metadata"]["annotations"]


def test_plans_reach_the_controller_as_a_file_it_accepts(render: Render, tmp_path: Path) -> None:
    docs = render(agent(plans=PLANS))
    deployment = find(docs, "Deployment", "-controller")
    path = container_env(deployment)["SANDBOX_PLANS_FILE"]
    pod = deployment["spec"]["template"]["spec"]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "plans"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "plans"]
    config_map = find(docs, "ConfigMap", "-plans")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert path == f"{mount['mountPath']}/plans.yaml"
    local = tmp_path / "plans.yaml"
    local.write_text(config_map["data"]["plans.yaml"])
    limits = load_settings(plans_file=str(local)).limits()
    assert limits.plans == (Plan("starter", 2, 10, 0.25, 30), Plan("enterprise", 10))


def test_a_change_of_plans_rolls_the_controller(render: Render) -> None:
    def checksum(plans: list[dict[str, Any]]) -> str:
        deployment = find(render(agent(plans=plans)), "Deployment", "-controller")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/plans"])

    changed = [{**PLANS[0], "maxPodsPerOrg": 11}, PLANS[1]]
    assert checksum(PLANS) != checksum(changed)


@pytest.mark.parametrize(
    ("plans", "message"),
    [
        ([{"name": "Gold"}], "plans.0.name: Does not match pattern"),
        ([{"name": "a", "warmShare": 1.5}], "Must be less than or equal to 1"),
        ([{"name": "a", "maxPods": 3}], "Additional property maxPods is not allowed"),
        ([{"maxPodsPerOrg": 3}], "plans.0: name is required"),
    ],
    ids=["bad name", "share above 1", "unknown key", "no name"],
)
def test_bad_plans_are_refused_by_the_chart(
    helm_template: Template, plans: list[dict[str, Any]], message: str
) -> None:
    proc = helm_template(agent(plans=plans))
    assert proc.returncode != 0, "helm accepted plans it should refuse"
    assert message in proc.stderr
