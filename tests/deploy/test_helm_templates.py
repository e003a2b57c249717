"""The chart's agentSandbox.templates reach the controller as SANDBOX_TEMPLATES_FILE
(in the pod template's ConfigMap), and the controller accepts what the chart renders;
without templates, today's values render as before."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandbox_controller.config import load_settings
from tests.deploy.deploytools import Render, agent, container_env, find

Template = Callable[[dict[str, Any] | None], subprocess.CompletedProcess[str]]

TEMPLATES = [
    {
        "name": "python",
        "default": True,
        "image": "registry.example/python:1",
        "resources": {"cpu": "1", "memory": "2Gi"},
        "maxResources": {"cpu": "4", "memory": "8Gi"},
        "env": {"LANG": "C.UTF-8"},
        "prewarm": {"policy": "static", "size": 3},
    },
    {"name": "node", "prewarm": {"policy": "adaptive", "min": 1, "max": 5}},
]


def test_without_templates_nothing_changes(render: Render) -> None:
    docs = render()
    env = container_env(find(docs, "Deployment", "-controller"))
    assert "SANDBOX_TEMPLATES_FILE" not in env
    assert "SANDBOX_POD_LABEL_METADATA_KEYS" not in env
    configmap = find(docs, "ConfigMap", "-pod-template")
    assert set(configmap["data"]) == {"pod-template.yaml"}


def test_templates_are_rendered_to_a_file_the_controller_accepts(
    render: Render, tmp_path: Path
) -> None:
    docs = render(agent(templates=TEMPLATES, podLabelMetadataKeys=["team", "cost-center"]))
    env = container_env(find(docs, "Deployment", "-controller"))
    assert env["SANDBOX_TEMPLATES_FILE"] == "/etc/agent-sandbox/templates.yaml"
    assert env["SANDBOX_POD_LABEL_METADATA_KEYS"] == "team,cost-center"
    text = find(docs, "ConfigMap", "-pod-template")["data"]["templates.yaml"]
    path = tmp_path / "templates.yaml"
    path.write_text(text)
    settings = load_settings(
        templates_file=str(path), pod_label_metadata_keys=env["SANDBOX_POD_LABEL_METADATA_KEYS"]
    )
    limits = settings.limits()
    assert [t.name for t in limits.templates] == ["python", "node"]
    assert limits.templates[0].prewarm_pool_size == 3
    assert limits.label_metadata_keys == ("team", "cost-center")
    (python, _) = settings.templates()
    assert python.image == "registry.example/python:1" and python.env == {"LANG": "C.UTF-8"}


def test_a_change_to_the_templates_rolls_the_controller(render: Render) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = find(render(values), "Deployment", "-controller")
        annotations: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
        return annotations["checksum/templates"]

    first = checksum(agent(templates=TEMPLATES))
    changed = [dict(TEMPLATES[0], image="registry.example/python:2"), TEMPLATES[1]]
    assert checksum(agent(templates=changed)) != first


def test_the_schema_refuses_a_misspelled_template(helm_template: Template) -> None:
    proc = helm_template(agent(templates=[{"name": "python", "imgae": "x:1"}]))
    assert proc.returncode != 0
    assert "imgae" in proc.stderr
    proc = helm_template(agent(templates=[{"name": "Python"}]))
    assert proc.returncode != 0
