"""Which namespace the Kubernetes backend manages, when the settings do not say."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_controller.backends.base import BackendError
from sandbox_controller.backends.kube_config import resolve_namespace

KUBECONFIG = """
apiVersion: v1
kind: Config
current-context: dev
contexts:
- name: dev
  context: {cluster: c, user: u, namespace: sandboxes}
clusters:
- name: c
  cluster: {server: "http://127.0.0.1:1"}
users:
- name: u
  user: {}
"""


@pytest.fixture
def outside_a_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return tmp_path / "no-service-account" / "namespace"


def test_the_setting_wins(tmp_path: Path) -> None:
    assert resolve_namespace("mine", None, service_account_namespace=tmp_path / "x") == "mine"


def test_in_a_cluster_the_pods_own_namespace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    path = tmp_path / "namespace"
    path.write_text("agent-sandbox\n")
    assert resolve_namespace(None, None, service_account_namespace=path) == "agent-sandbox"


@pytest.mark.parametrize("content", [None, "  \n"])
def test_in_a_cluster_an_unreadable_namespace_is_an_error_not_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str | None
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    path = tmp_path / "namespace"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BackendError, match="SANDBOX_NAMESPACE") as refused:
        resolve_namespace(None, None, service_account_namespace=path)
    assert not refused.value.retryable


def test_outside_a_cluster_the_kubeconfig_context(outside_a_cluster: Path, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    found = resolve_namespace(None, str(kubeconfig), service_account_namespace=outside_a_cluster)
    assert found == "sandboxes"


def test_outside_a_cluster_without_a_kubeconfig_default(
    outside_a_cluster: Path, tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing-kubeconfig")
    assert resolve_namespace(None, missing, service_account_namespace=outside_a_cluster) == (
        "default"
    )


def test_a_named_kubeconfig_is_not_in_cluster_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A controller in one cluster managing another through a kubeconfig.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    absent = tmp_path / "no-service-account" / "namespace"
    found = resolve_namespace(None, str(kubeconfig), service_account_namespace=absent)
    assert found == "sandboxes"
