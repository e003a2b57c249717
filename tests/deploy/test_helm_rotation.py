"""The chart's rotation values (README "Rotating credentials"): each optional setting
becomes a file in the controller's secrets volume only when given, and a changed value
rolls the controller (its pod template's checksum changes)."""

from __future__ import annotations

import base64
from typing import Any

from tests.deploy.deploytools import Render, container_env, find

ROTATION = {
    "apiTokens": {"value": "backend-2027:the-next-api-token-value"},
    "tokenSecretPrevious": {"value": "the-previous-token-secret-value"},
    "hookSecret": {"value": "the-hook-secret-of-this-release"},
}


def controller(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = find(docs, "Deployment", "-controller")["spec"]["template"]
    return spec


def secret_files(docs: list[dict[str, Any]]) -> set[str]:
    volume = next(v for v in controller(docs)["spec"]["volumes"] if v["name"] == "secrets")
    return {i["path"] for s in volume["projected"]["sources"] for i in s["secret"]["items"]}


def test_rotation_settings_are_files_only_when_given(render: Render) -> None:
    plain = render({})
    assert not secret_files(plain) & {"sandbox_api_tokens", "sandbox_hook_secret"}
    docs = render({"agentSandbox": ROTATION})
    assert {
        "sandbox_api_tokens",
        "sandbox_token_secret_previous",
        "sandbox_hook_secret",
    } <= secret_files(docs)
    assert "sandbox_hook_secret_previous" not in secret_files(docs)
    data = find(docs, "Secret", "-agent-sandbox")["data"]
    assert base64.b64decode(data["api-tokens"]) == b"backend-2027:the-next-api-token-value"
    assert base64.b64decode(data["hook-secret"]) == b"the-hook-secret-of-this-release"


def test_an_existing_secret_is_mounted_and_not_copied(render: Render) -> None:
    docs = render({"agentSandbox": {"hookSecretPrevious": {"existingSecret": "hooks-2026"}}})
    volume = next(v for v in controller(docs)["spec"]["volumes"] if v["name"] == "secrets")
    sources = [s["secret"] for s in volume["projected"]["sources"]]
    assert {"name": "hooks-2026", "items": [
        {"key": "hook-secret-previous", "path": "sandbox_hook_secret_previous"}
    ]} in sources  # fmt: skip
    assert "hook-secret-previous" not in find(docs, "Secret", "-agent-sandbox")["data"]


def test_a_changed_secret_value_rolls_the_controller(render: Render) -> None:
    def checksum(values: dict[str, Any]) -> str:
        annotations = controller(render({"agentSandbox": values}))["metadata"]["annotations"]
        return str(annotations["checksum/secrets"])

    before = checksum(ROTATION)
    assert checksum({**ROTATION, "tokenSecretPrevious": {"value": "x" * 32}}) != before
    assert checksum(dict(ROTATION)) == before


def test_token_review_users_set_the_setting_and_bind_auth_delegator_only_then(
    render: Render,
) -> None:
    plain = render({})
    assert not {d["kind"] for d in plain} & {"ClusterRoleBinding"}
    users = ["system:serviceaccount:editors:backend", "system:serviceaccount:editors:ci"]
    docs = render({"agentSandbox": {"controller": {"tokenReviewUsers": users}}})
    env = container_env(find(docs, "Deployment", "-controller"))
    assert env["SANDBOX_TOKEN_REVIEW_USERS"] == ",".join(users)
    binding = find(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    assert [s["kind"] for s in binding["subjects"]] == ["ServiceAccount"]
