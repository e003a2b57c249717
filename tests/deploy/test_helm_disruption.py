"""The chart for node disruption and disk: the live sessions' budget, the sandboxes'
priority class, their disk limits, and no do-not-evict annotation on a warm pod."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from sandbox_controller.backends.base import LABEL_STATE, LabelState, pool_labels
from sandbox_controller.backends.kube_template import ASSIGNED_ANNOTATIONS, build_pod
from sandbox_controller.quantities import memory_bytes
from tests.deploy.deploytools import (
    CHART,
    NAMESPACE,
    Render,
    agent,
    container_env,
    failed_checks,
    find,
    pod_template,
    render_against,
    require_checkov,
    run_checkov,
)
from tests.deploy.test_helm_chart import K8S_VERSIONS

BUDGET = "rel-agent-sandbox-sandboxes"
GI = 2**30

DISK: dict[str, Any] = agent(
    priorityClassName="sandbox-live",
    job={
        "image": {"repository": "registry.example/sandbox", "tag": "1.2"},
        "tmpDirSizeLimit": "1.5Gi",
        "rootfsSizeLimit": "512Mi",
        "writablePaths": ["/tmp", "/home/agent"],
        "readOnlyRootFilesystem": True,
        "extraVolumes": [{"name": "tools", "configMap": {"name": "tools"}}],
        "extraVolumeMounts": [{"name": "tools", "mountPath": "/opt/tools", "readOnly": True}],
        # An operator who copied the old defaults: the chart leaves them off warm pods.
        "annotations": {"karpenter.sh/do-not-disrupt": "true", "team": "agents"},
    },
)


def validate(doc: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} on {version}: {exc}")


def test_the_budget_covers_assigned_sandboxes_only_and_the_controller_keeps_it(
    render: Render,
) -> None:
    docs = render()
    budget = find(docs, "PodDisruptionBudget", "-sandboxes")
    validate(budget)
    assert budget["metadata"]["name"] == BUDGET
    # An integer: a budget over pods without a controller takes nothing else.
    assert budget["spec"]["minAvailable"] == 0 and "maxUnavailable" not in budget["spec"]
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector[LABEL_STATE] == LabelState.ASSIGNED.value
    # It selects the sandboxes of this release once leased, and never a warm one.
    template_labels = pod_template(docs)["metadata"]["labels"]
    warm = {**template_labels, LABEL_STATE: LabelState.POOL.value}
    leased = {**template_labels, LABEL_STATE: LabelState.ASSIGNED.value}
    assert all(leased.get(k) == v for k, v in selector.items())
    assert not all(warm.get(k) == v for k, v in selector.items())

    controller = find(docs, "Deployment", "-controller")
    assert container_env(controller)["SANDBOX_KUBE_DISRUPTION_BUDGET"] == BUDGET
    rules = find(docs, "Role")["rules"]
    assert {
        "apiGroups": ["policy"],
        "resources": ["poddisruptionbudgets"],
        "resourceNames": [BUDGET],
        "verbs": ["get", "patch"],
    } in rules


def test_the_budget_can_be_turned_off(render: Render) -> None:
    docs = render(agent(job={"podDisruptionBudget": {"enabled": False}}))
    assert not [d for d in docs if d["metadata"]["name"] == BUDGET]
    controller = find(docs, "Deployment", "-controller")
    assert "SANDBOX_KUBE_DISRUPTION_BUDGET" not in container_env(controller)
    assert "poddisruptionbudgets" not in json.dumps(find(docs, "Role")["rules"])


def test_no_do_not_evict_annotation_on_a_warm_pod(render: Render) -> None:
    for values in ({}, DISK):
        annotations = pod_template(render(values))["metadata"].get("annotations") or {}
        assert not set(annotations) & set(ASSIGNED_ANNOTATIONS), annotations
    assert pod_template(render(DISK))["metadata"]["annotations"] == {"team": "agents"}


def test_priority_class_is_rendered_when_set(render: Render) -> None:
    assert "priorityClassName" not in pod_template(render())["spec"]
    assert pod_template(render(DISK))["spec"]["priorityClassName"] == "sandbox-live"
    # DESIGN's spelling, agentSandbox.job.priorityClassName, wins over the older one.
    both = agent(priorityClassName="old", job={"priorityClassName": "sandbox-live"})
    assert pod_template(render(both))["spec"]["priorityClassName"] == "sandbox-live"


def mounts(pod: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}


def test_default_disk_limits(render: Render) -> None:
    pod = pod_template(render())
    container = pod["spec"]["containers"][0]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    paths = mounts(pod)
    assert set(paths) == {"/tmp", "/workspace"}
    for name in paths.values():
        assert volumes[name]["emptyDir"] == {"sizeLimit": "20Gi"}
    resources = container["resources"]
    assert resources["limits"]["ephemeral-storage"] == "22Gi"  # tmpDirSizeLimit + rootfs
    assert resources["requests"]["ephemeral-storage"] == "2Gi"
    assert resources["requests"]["cpu"] == "1" and resources["limits"]["memory"] == "2Gi"
    # The devsandbox writes only to /tmp: its root is read-only.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    validate(pod | {"metadata": {**pod["metadata"], "name": "x", "namespace": NAMESPACE}})


def test_disk_values_volumes_and_an_image_of_your_own(render: Render) -> None:
    pod = pod_template(render(DISK))
    container = pod["spec"]["containers"][0]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    paths = mounts(pod)
    assert (
        paths["/opt/tools"] == "tools"
        and volumes["tools"] == DISK["agentSandbox"]["job"]["extraVolumes"][0]
    )
    for path in ("/tmp", "/home/agent"):
        assert volumes[paths[path]]["emptyDir"] == {"sizeLimit": "1.5Gi"}
    limit = container["resources"]["limits"]["ephemeral-storage"]
    assert memory_bytes(limit) == int(1.5 * GI) + 512 * 2**20
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    # An image of your own is writable unless you say it need not be.
    own = agent(job={"image": {"repository": "registry.example/sandbox"}})
    ctx = pod_template(render(own))["spec"]["containers"][0]["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is False
    # What resources say wins over the derived limits.
    given = agent(job={"resources": {"limits": {"ephemeral-storage": "50Gi", "memory": "4Gi"}}})
    limits = pod_template(render(given))["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"ephemeral-storage": "50Gi", "memory": "4Gi"}


@pytest.mark.parametrize("size", ["20GB", "lots", "-1Gi"])
def test_a_size_that_is_not_a_quantity_is_refused(helm_template: Any, size: str) -> None:
    proc = helm_template(agent(job={"tmpDirSizeLimit": size}))
    assert proc.returncode != 0
    assert "tmpDirSizeLimit" in proc.stderr


def test_checkov_passes_on_the_sandbox_pod(render: Render, tmp_path: Path) -> None:
    """checkov reads the rendered chart, where the sandbox pod is only text in a
    ConfigMap: here it reads the pod itself (read-only root, no escalation, limits)."""
    checkov = require_checkov()
    docs = render(DISK)
    # The warm pod the controller makes of the template (its labels and annotations too).
    pod = build_pod(pod_template(docs), pool_labels(), "0123456789")
    pod["metadata"] |= {"name": "sandbox", "namespace": NAMESPACE}
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    # The chart's skips (.checkov.yaml, each with its reason), and no liveness probe, by
    # design: a sandbox is never restarted in place.
    skips = [*yaml.safe_load((CHART / ".checkov.yaml").read_text())["skip-check"], "CKV_K8S_8"]
    results = run_checkov(checkov, [pod, *policies], tmp_path, "--skip-check", ",".join(skips))
    assert failed_checks(results) == []
    passed = {c["check_id"] for c in results["passed_checks"]}
    assert "CKV_K8S_22" in passed  # readOnlyRootFilesystem


def test_an_upgrade_keeps_the_minimum_the_controller_set(helm: str, tmp_path: Path) -> None:
    # An upgrade that wrote minAvailable 0 back would let a drain evict every live
    # session until the controller next writes it; the chart reads it back with lookup.
    live = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": BUDGET, "namespace": NAMESPACE},
        "spec": {"minAvailable": 7},
    }
    path = f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets/{BUDGET}"
    [budget] = render_against(helm, tmp_path, {path: live}, "templates/sandbox-pdb.yaml")
    assert budget["spec"]["minAvailable"] == 7
