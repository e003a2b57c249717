"""The chart's suspend-and-resume values (agentSandbox.snapshots): off until a store is
set; a PVC mounted into the controller or S3 with keys from a Secret; the controller
accepts what the chart renders; values that cannot work are refused with a message."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from sandbox_controller.config import Settings, load_settings
from tests.deploy.deploytools import (
    Docs,
    Render,
    agent,
    container_env,
    failed_checks,
    find,
    require_checkov,
    run_checkov,
)

PVC = agent(snapshots={"pvc": {"enabled": True, "size": "50Gi", "storageClassName": "fast"}})
S3 = agent(
    snapshots={
        "s3": {
            "bucket": "sandbox-archives",
            "prefix": "/prod/",
            "endpointUrl": "http://minio.storage:9000",
            "region": "eu-west-1",
            "existingSecret": "archive-keys",
        },
        "retention": "3d",
        "maxBytes": "2Gi",
    },
    proxy={"resumeWait": "45s"},
)
POSTGRES = {"database": {"url": "postgresql+asyncpg://u:p@db/agent"}}


def controller(docs: Docs) -> dict[str, Any]:
    return find(docs, "Deployment", "-controller")


def pod(docs: Docs) -> dict[str, Any]:
    spec: dict[str, Any] = controller(docs)["spec"]["template"]["spec"]
    return spec


def settings_of(
    docs: Docs, monkeypatch: pytest.MonkeyPatch, secrets: dict[str, str] | None = None
) -> Settings:
    """The settings the controller would start with from this Deployment's plain env
    (secrets, which the chart mounts as files, given as ``secrets``)."""
    for name in list(os.environ):
        if name.startswith("SANDBOX_"):
            monkeypatch.delenv(name)
    for name, value in container_env(controller(docs)).items():
        if isinstance(value, str) and name != "SANDBOX_SECRETS_DIR":
            monkeypatch.setenv(name, value)
    overrides: dict[str, object] = {"api_token": "x" * 32, "token_secret": "y" * 32}
    overrides.update(secrets or {})
    return load_settings(**overrides)


def test_suspension_is_off_until_a_store_is_set(render: Render, monkeypatch: Any) -> None:
    docs = render()
    env = container_env(controller(docs))
    assert env["SANDBOX_IDLE_ACTION"] == "end"
    assert "SANDBOX_SNAPSHOT_STORE" not in env
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    settings = settings_of(docs, monkeypatch)
    assert (settings.idle_action, settings.snapshot_store) == ("end", None)


def test_a_pvc_store_is_mounted_where_the_file_store_points(
    render: Render, monkeypatch: Any
) -> None:
    docs = render(PVC)
    claim = find(docs, "PersistentVolumeClaim", "-snapshots")
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    # Uninstalling the release must not delete the suspended sessions' work.
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    spec = pod(docs)
    [volume] = [v for v in spec["volumes"] if v["name"] == "snapshots"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "snapshots"]
    settings = settings_of(docs, monkeypatch)
    assert settings.snapshot_store == "file://" + mount["mountPath"]
    assert settings.idle_action == "suspend"  # a store set: the idle timeout suspends
    assert settings.snapshot_max_bytes == 1024**3
    assert settings.snapshot_retention == 7 * 86400


def test_an_existing_claim_is_used_and_none_is_created(render: Render) -> None:
    docs = render(agent(snapshots={"pvc": {"enabled": True, "existingClaim": "mine"}}))
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    [volume] = [v for v in pod(docs)["volumes"] if v["name"] == "snapshots"]
    assert volume["persistentVolumeClaim"]["claimName"] == "mine"


def test_an_s3_store_takes_its_keys_from_the_secret_as_files(
    render: Render, monkeypatch: Any
) -> None:
    docs = render(S3)
    projected = [
        source["secret"]
        for volume in pod(docs)["volumes"]
        if volume["name"] == "secrets"
        for source in volume["projected"]["sources"]
        if source["secret"]["name"] == "archive-keys"
    ]
    items = {item["path"]: item["key"] for secret in projected for item in secret["items"]}
    assert items == {
        "sandbox_snapshot_s3_access_key_id": "access-key-id",
        "sandbox_snapshot_s3_secret_access_key": "secret-access-key",
    }
    env = container_env(controller(docs))
    assert not any("ACCESS_KEY" in name for name in env)  # keys never in the env
    settings = settings_of(
        docs,
        monkeypatch,
        {"snapshot_s3_access_key_id": "AKIA", "snapshot_s3_secret_access_key": "s3cret"},
    )
    assert settings.snapshot_store == "s3://sandbox-archives/prod"
    assert settings.snapshot_s3_endpoint_url == "http://minio.storage:9000"
    assert settings.snapshot_s3_region == "eu-west-1"
    assert (settings.snapshot_max_bytes, settings.snapshot_retention) == (2 * 1024**3, 3 * 86400)
    assert settings.idle_action == "suspend"
    proxy_env = container_env(find(docs, "Deployment", "-proxy"))
    assert proxy_env["SANDBOX_PROXY_RESUME_WAIT"] == "45s"


def test_idle_action_end_keeps_the_store_for_explicit_suspends(render: Render) -> None:
    docs = render(agent(snapshots={"idleAction": "end", "pvc": {"enabled": True}}))
    env = container_env(controller(docs))
    assert env["SANDBOX_IDLE_ACTION"] == "end"
    assert env["SANDBOX_SNAPSHOT_STORE"].startswith("file:///")


def test_ha_replicas_on_a_read_write_many_claim(render: Render) -> None:
    values = agent(
        snapshots={"pvc": {"enabled": True, "accessModes": ["ReadWriteMany"]}}, **POSTGRES
    )
    docs = render(values)
    assert controller(docs)["spec"]["replicas"] == 2
    claim = find(docs, "PersistentVolumeClaim", "-snapshots")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            agent(snapshots={"pvc": {"enabled": True}, "s3": {"bucket": "b-1"}}),
            "set pvc.enabled or s3.bucket, not both",
        ),
        (agent(snapshots={"idleAction": "suspend"}), "idleAction=suspend needs a store"),
        (
            agent(snapshots={"pvc": {"enabled": True}}, **POSTGRES),
            "accessModes must include ReadWriteMany with 2 controller replicas",
        ),
        (agent(snapshots={"retention": "a week"}), "retention: Does not match pattern"),
        (agent(snapshots={"idleAction": "pause"}), "idleAction: agentSandbox.snapshots"),
        (agent(snapshots={"s3": {"bucket": "Not_A_Bucket"}}), "bucket: Does not match"),
        (agent(snapshots={"colour": "blue"}), "Additional property colour is not allowed"),
    ],
    ids=[
        "two-stores",
        "suspend-without-store",
        "rwo-claim-with-ha",
        "bad-duration",
        "bad-idle-action",
        "bad-bucket",
        "unknown-key",
    ],
)
def test_bad_values_are_refused_with_a_message(
    helm_template: Any, values: dict[str, Any], message: str
) -> None:
    proc = helm_template(values)
    assert proc.returncode != 0, "helm accepted values it should refuse"
    assert message in proc.stderr


def snapshot_manifests(docs: Docs) -> Docs:
    return [d for d in docs if d["kind"] == "PersistentVolumeClaim"] + [controller(docs)]


@pytest.mark.parametrize("version", ["1.31.0", kubernetes_validate.latest_version()])
def test_the_store_manifests_are_valid_kubernetes(render: Render, version: str) -> None:
    for values in (PVC, S3):
        for doc in snapshot_manifests(render(values)):
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_store_manifests_pass_checkov(render: Render, tmp_path: Path) -> None:
    checkov = require_checkov()
    everything = render(PVC)
    # With the NetworkPolicies, which checkov wants to see beside any pod.
    docs = snapshot_manifests(everything) + [d for d in everything if d["kind"] == "NetworkPolicy"]
    results = run_checkov(checkov, docs, tmp_path)
    assert failed_checks(results) == []
    checked = {c["resource"].split(".")[0] for c in results["passed_checks"]}
    assert "Deployment" in checked
    assert results["returncode"] == 0
