"""The sandbox contract, said once: the derivation every leader must agree on, and the
one module every part takes the contract's names from."""

from __future__ import annotations

import ast
from pathlib import Path

import httpx

from sandbox_controller import sandbox_contract
from sandbox_controller.devsandbox import build_app
from sandbox_controller.sandbox_contract import (
    CLAIM_PATH,
    ENV_CLAIM_SECRET,
    HEALTH_PATH,
    RELEASE_PATH,
    STATUS_PATH,
    claim_env,
    claim_secret,
    hook_key,
)

PACKAGE = Path(sandbox_contract.__file__).parent


def test_the_claim_secret_derivation_is_the_one_running_pods_were_given() -> None:
    # A pod made before an upgrade is claimed after it: the new leader must derive the
    # very secret the old one put in the pod's env, from the token secret and the label.
    key = hook_key(b"test-token-secret")
    assert claim_secret(key, "c0ffee") == (
        "68dd3f296dc712ad71a88ac2b8e3c1575de9bc566c76b28000604f6ec45b39a1"
    )
    assert claim_secret(key, "c0ffef") != claim_secret(key, "c0ffee")
    assert claim_secret(hook_key(b"another secret"), "c0ffee") != claim_secret(key, "c0ffee")


def test_claim_env_hands_the_secret_only_with_a_key() -> None:
    key = hook_key(b"k")
    assert claim_env(key, "id") == {ENV_CLAIM_SECRET: claim_secret(key, "id")}
    assert claim_env(None, "id") == {}


async def test_devsandbox_serves_the_contract_paths_behind_the_derived_secret() -> None:
    secret = claim_secret(hook_key(b"k"), "id")
    transport = httpx.ASGITransport(app=build_app(secret))
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as http:
        assert (await http.get(HEALTH_PATH)).status_code == 200
        auth = {"authorization": f"Bearer {secret}"}
        assert (await http.get(STATUS_PATH, headers=auth)).status_code == 200
        assert (await http.get(STATUS_PATH)).status_code == 401
        body = {"session_id": "s", "user_id": "u", "thread_id": "t"}
        assert (await http.post(CLAIM_PATH, json=body, headers=auth)).is_success
        released = await http.post(RELEASE_PATH, json={"session_id": "s"}, headers=auth)
        assert released.is_success


def test_the_contract_module_is_pure() -> None:
    tree = ast.parse((PACKAGE / "sandbox_contract.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert imported <= {"__future__", "hashlib", "hmac"}


def test_no_other_module_spells_the_contract_out() -> None:
    # The literal names live in sandbox_contract.py alone; everyone else imports them.
    spelled = [
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if path.name != "sandbox_contract.py"
        and any(
            literal in path.read_text()
            for literal in ('"SANDBOX_CLAIM_SECRET"', '"/_sandbox/', 'b"agent-sandbox claim')
        )
    ]
    assert spelled == []
