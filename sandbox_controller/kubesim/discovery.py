"""Discovery documents: what kubectl reads before it dares to ``get pods``."""

from __future__ import annotations

from typing import Any

_RW = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def version_info() -> dict[str, str]:
    return {
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-kubesim",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions(host: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
    }


def _resource(
    name: str, kind: str, namespaced: bool, short: list[str], verbs: list[str] | None = None
) -> dict[str, Any]:
    singular = kind.lower()
    return {
        "name": name,
        "singularName": singular,
        "namespaced": namespaced,
        "kind": kind,
        "verbs": verbs or _RW,
        "shortNames": short,
        **({"categories": ["all"]} if name == "pods" else {}),
    }


def api_resources() -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            _resource("pods", "Pod", True, ["po"]),
            _resource("pods/status", "Pod", True, [], ["get"]) | {"singularName": ""},
            _resource("events", "Event", True, ["ev"]),
            _resource("configmaps", "ConfigMap", True, ["cm"]),
            _resource("nodes", "Node", False, ["no"]),
            # kubectl drain looks here for the Eviction API before it evicts.
            {
                "name": "pods/eviction",
                "singularName": "",
                "namespaced": True,
                "group": "policy",
                "version": "v1",
                "kind": "Eviction",
                "verbs": ["create"],
            },
        ],
    }


_POLICY = {"groupVersion": "policy/v1", "version": "v1"}


def policy_group() -> dict[str, Any]:
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": "policy",
        "versions": [_POLICY],
        "preferredVersion": _POLICY,
    }


def api_groups() -> dict[str, Any]:
    group = policy_group()
    group.pop("kind")
    group.pop("apiVersion")
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}


def policy_resources() -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "policy/v1",
        "resources": [_resource("poddisruptionbudgets", "PodDisruptionBudget", True, ["pdb"])],
    }
