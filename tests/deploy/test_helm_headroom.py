"""Cold starts made rarer by the chart: the image prepuller DaemonSet on the sandboxes'
nodes, and headroom placeholders of the sandbox's size below the sandboxes' priority."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.deploy.deploytools import (
    Docs,
    Render,
    agent,
    failed_checks,
    find,
    pod_template,
    require_checkov,
    run_checkov,
)

PLACEMENT: dict[str, Any] = {
    "nodeSelector": {"pool": "sandboxes"},
    "tolerations": [{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        },
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 10,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {
                            "matchLabels": {"app.kubernetes.io/component": "sandbox"}
                        },
                    },
                }
            ]
        },
    },
}
SANDBOX_IMAGE = {"repository": "registry.example/sandbox", "tag": "1.2"}
PLACED = agent(
    job={"image": SANDBOX_IMAGE, "runtimeClassName": "gvisor", **PLACEMENT},
    headroom={"pods": 3},
)


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def prepuller(docs: Docs) -> dict[str, Any]:
    return pod_spec(find(docs, "DaemonSet", "-prepuller"))


def placeholders(docs: Docs) -> dict[str, Any]:
    return pod_spec(find(docs, "Deployment", "-headroom"))


def test_the_prepuller_is_on_by_default_and_pulls_the_sandbox_image(render: Render) -> None:
    docs = render()
    spec = prepuller(docs)
    [sandbox] = pod_template(docs)["spec"]["containers"]
    [pull] = spec["initContainers"]
    assert (pull["image"], pull["imagePullPolicy"]) == (
        sandbox["image"],
        sandbox["imagePullPolicy"],
    )
    # Then sleeps in that same image: nothing else to pull, and the image stays in use.
    [sleeper] = spec["containers"]
    assert sleeper["image"] == sandbox["image"]
    assert sleeper["command"] == ["sleep", "infinity"]
    assert sleeper["resources"]["requests"] == {"cpu": "1m", "memory": "16Mi"}


def test_the_prepuller_can_be_turned_off(render: Render) -> None:
    docs = render(agent(prepuller={"enabled": False}))
    assert not [d for d in docs if d["kind"] == "DaemonSet"]
    assert not [d for d in docs if d["metadata"]["name"].endswith("-prepuller")]


def test_the_prepuller_runs_where_sandboxes_may_run(render: Render) -> None:
    spec = prepuller(render(PLACED))
    assert spec["nodeSelector"] == PLACEMENT["nodeSelector"]
    assert spec["tolerations"] == PLACEMENT["tolerations"]
    # Node affinity picks nodes; the sandboxes' pod anti-affinity spreads sandboxes
    # among themselves and would only keep the prepuller off nodes.
    assert spec["affinity"] == {"nodeAffinity": PLACEMENT["affinity"]["nodeAffinity"]}
    assert [c["image"] for c in spec["initContainers"]] == ["registry.example/sandbox:1.2"]


def test_a_new_sandbox_image_rolls_the_prepuller(render: Render) -> None:
    before = find(render(PLACED), "DaemonSet", "-prepuller")["spec"]["template"]
    newer = agent(job={"image": {**SANDBOX_IMAGE, "tag": "1.3"}, **PLACEMENT}, headroom={"pods": 3})
    after = find(render(newer), "DaemonSet", "-prepuller")["spec"]["template"]
    assert before != after  # the DaemonSet controller rolls its pods on any template change
    assert [c["image"] for c in after["spec"]["initContainers"]] == ["registry.example/sandbox:1.3"]
    assert after["spec"]["containers"][0]["image"] == "registry.example/sandbox:1.3"


def test_no_headroom_by_default(render: Render) -> None:
    docs = render()
    assert not [d for d in docs if d["kind"] == "PriorityClass"]
    assert not [d for d in docs if d["metadata"]["name"].endswith("-headroom")]


def test_placeholders_hold_a_sandboxs_room_where_a_sandbox_would_land(render: Render) -> None:
    docs = render(PLACED)
    sandbox = pod_template(docs)["spec"]
    deployment = find(docs, "Deployment", "-headroom")
    assert deployment["spec"]["replicas"] == 3
    spec = pod_spec(deployment)
    [placeholder] = spec["containers"]
    assert placeholder["resources"] == sandbox["containers"][0]["resources"]
    requests = placeholder["resources"]["requests"]
    assert (requests["cpu"], requests["memory"]) == ("1", "2Gi")
    assert requests["ephemeral-storage"] == "2Gi"  # the sandbox's disk too (rootfsSizeLimit)
    for key in ("nodeSelector", "tolerations", "affinity", "runtimeClassName"):
        assert spec[key] == sandbox[key], key
    assert placeholder["image"] == sandbox["containers"][0]["image"]


def test_the_headroom_priority_class_is_below_the_sandboxes(render: Render) -> None:
    docs = render(PLACED)
    sandbox = pod_template(docs)["spec"]
    # Without a priorityClassName (and no global default) a sandbox has priority 0.
    assert "priorityClassName" not in sandbox and "priority" not in sandbox
    priority_class = find(docs, "PriorityClass", "-headroom")
    assert priority_class["value"] < 0
    assert priority_class["globalDefault"] is False
    assert priority_class["preemptionPolicy"] == "Never"  # it never evicts anything itself
    assert placeholders(docs)["priorityClassName"] == priority_class["metadata"]["name"]
    deeper = render(agent(headroom={"pods": 1, "priority": -10}))
    assert find(deeper, "PriorityClass", "-headroom")["value"] == -10


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (agent(headroom={"pods": 1, "priority": 0}), "priority: Must be less than or equal to -1"),
        (agent(headroom={"pods": -1}), "pods: Must be greater than or equal to 0"),
        (agent(prepuller={"command": []}), "command: Array must have at least 1 items"),
        (agent(prepuller={"colour": "blue"}), "Additional property colour is not allowed"),
    ],
    ids=["priority-not-below-sandboxes", "negative-pods", "no-command", "unknown-key"],
)
def test_bad_values_are_refused_with_a_message(
    helm_template: Any, values: dict[str, Any], message: str
) -> None:
    proc = helm_template(values)
    assert proc.returncode != 0, "helm accepted values it should refuse"
    assert message in proc.stderr


def idle_manifests(docs: Docs) -> Docs:
    return [
        d
        for d in docs
        if d["metadata"]["name"].endswith(("-prepuller", "-headroom"))
        or d["kind"] == "PriorityClass"
    ]


@pytest.mark.parametrize("version", ["1.31.0", kubernetes_validate.latest_version()])
def test_prepuller_and_headroom_are_valid_kubernetes(render: Render, version: str) -> None:
    docs = idle_manifests(render(PLACED))
    assert sorted(d["kind"] for d in docs) == [
        "DaemonSet",
        "Deployment",
        "NetworkPolicy",
        "NetworkPolicy",
        "PriorityClass",
    ]
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_prepuller_and_headroom_pass_checkov(render: Render, tmp_path: Path) -> None:
    checkov = require_checkov()
    docs = idle_manifests(render(PLACED))
    results = run_checkov(checkov, docs, tmp_path)
    assert failed_checks(results) == []
    # The checks run on these resources at all (a render checkov skipped would pass too).
    checked = {c["resource"].split(".")[0] for c in results["passed_checks"]}
    assert {"DaemonSet", "Deployment"} <= checked
    assert results["returncode"] == 0
