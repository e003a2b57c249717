"""The sandbox pod template: loaded once, hashed, and stamped into each new pod."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..model import Resources
from ..sandbox_contract import HEALTH_PATH, POD_PORT
from ..templates import Template
from .base import LABEL_MANAGED_BY, LABEL_TEMPLATE_HASH, MANAGED_BY, POD_NAME_PREFIX

Obj = dict[str, Any]

# On a pod leased to a session (the backend's patch at the lease): the autoscalers
# (cluster-autoscaler, Karpenter) must not take its node to pack or consolidate.
ASSIGNED_ANNOTATIONS = {
    "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
    "karpenter.sh/do-not-disrupt": "true",
}
# On a warm pod: the cluster-autoscaler keeps any node holding a pod without a
# controller unless the pod says it may go, and a warm pod may (a new one is made).
WARM_ANNOTATIONS = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "true"}

DEFAULT_TEMPLATE: Obj = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {},
    "spec": {
        # A sandbox serves one session; a crash ends it rather than restarting in place.
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 5,
        "containers": [
            {
                "name": "sandbox",
                "image": "python:3.11-slim",
                "command": [
                    "python",
                    "-m",
                    "sandbox_controller.devsandbox",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    str(POD_PORT),
                ],
                "ports": [{"name": "http", "containerPort": POD_PORT}],
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
                "readinessProbe": {
                    "httpGet": {"path": HEALTH_PATH, "port": POD_PORT},
                    "periodSeconds": 2,
                },
            }
        ],
    },
}


WRITABLE_PATHS = ("/tmp", "/workspace")


def default_template(tmp_dir_size_limit: int, rootfs_size_limit: int) -> Obj:
    """The built-in template with the disk limits the chart renders into its own: a
    read-only root, an emptyDir of at most ``tmp_dir_size_limit`` bytes per writable
    path, and an ephemeral-storage limit of both sizes (the kubelet evicts past it)."""
    pod = copy.deepcopy(DEFAULT_TEMPLATE)
    spec = pod["spec"]
    names = [f"writable-{p.strip('/')}" for p in WRITABLE_PATHS]
    spec["volumes"] = [
        {"name": n, "emptyDir": {"sizeLimit": str(tmp_dir_size_limit)}} for n in names
    ]
    container = spec["containers"][0]
    container["volumeMounts"] = [
        {"name": n, "mountPath": p} for n, p in zip(names, WRITABLE_PATHS, strict=True)
    ]
    container["securityContext"] = {"readOnlyRootFilesystem": True}
    resources = container["resources"]
    resources["requests"]["ephemeral-storage"] = str(rootfs_size_limit)
    resources["limits"] = {"ephemeral-storage": str(tmp_dir_size_limit + rootfs_size_limit)}
    return pod


def load_template(path: str | Path | None) -> Obj:
    """A Pod manifest from YAML holding a Pod, or only a pod spec."""
    if path is None:
        return copy.deepcopy(DEFAULT_TEMPLATE)
    doc = yaml.safe_load(Path(path).read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: the pod template must be a YAML mapping")
    if doc.get("kind") == "Pod" or "spec" in doc:
        pod = copy.deepcopy(doc)
    elif "containers" in doc:
        pod = {"spec": copy.deepcopy(doc)}
    else:
        raise ValueError(f"{path}: expected a Pod or a pod spec with containers")
    pod["apiVersion"], pod["kind"] = "v1", "Pod"
    pod.setdefault("metadata", {})
    if not pod.get("spec", {}).get("containers"):
        raise ValueError(f"{path}: the pod template has no containers")
    return pod


def template_hash(template: Mapping[str, Any]) -> str:
    """Short and stable: key order and YAML formatting do not change it."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def pod_port(template: Mapping[str, Any]) -> int:
    for container in template.get("spec", {}).get("containers", []):
        for port in container.get("ports") or []:
            return int(port["containerPort"])
    return POD_PORT


def build_pod(
    template: Mapping[str, Any],
    labels: Mapping[str, str],
    hash_: str,
    owner: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Obj:
    """A pod to create from the template: our labels, and ``env`` (the claim secret)
    on each of its containers, replacing any entry of the same name in the template."""
    pod = copy.deepcopy(dict(template))
    meta = pod.setdefault("metadata", {})
    meta.pop("name", None)
    meta["generateName"] = POD_NAME_PREFIX
    meta["labels"] = {
        **(meta.get("labels") or {}),
        **labels,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_TEMPLATE_HASH: hash_,
    }
    # Every pod starts warm: whatever the template says, it carries no do-not-evict
    # annotation until it is leased (the backend's patch then adds them).
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k not in ASSIGNED_ANNOTATIONS
    }
    meta["annotations"] = {**annotations, **WARM_ANNOTATIONS}
    if owner is not None:
        meta["ownerReferences"] = [dict(owner)]
    if env:
        for container in pod.get("spec", {}).get("containers", []):
            kept = [e for e in container.get("env") or [] if e.get("name") not in env]
            container["env"] = kept + [{"name": k, "value": v} for k, v in env.items()]
    return pod


def for_template(base: Obj, template: Template) -> Obj:
    """A template's pod template: its own file, else the base one, with its image,
    resources and env on the first container. A template that sets none of these is
    the base itself (same hash: adding templates rolls no pod)."""
    pod = load_template(template.pod_template) if template.pod_template else copy.deepcopy(base)
    container = pod["spec"]["containers"][0]
    if template.image:
        container["image"] = template.image
    with_resources(pod, template.resources)
    if template.env:
        kept = [e for e in container.get("env") or [] if e.get("name") not in template.env]
        container["env"] = kept + [{"name": k, "value": v} for k, v in template.env.items()]
    return pod


def with_resources(pod: Obj, resources: Resources) -> None:
    """Set the first container's requests (and its limits, where the template limits
    that resource) to ``resources``."""
    container = pod["spec"]["containers"][0]
    wanted = resources.as_dict()
    if not wanted:
        return
    spec = container.setdefault("resources", {})
    spec.setdefault("requests", {}).update(wanted)
    limits = spec.get("limits") or {}
    for kind, value in wanted.items():
        if kind in limits:
            limits[kind] = value
