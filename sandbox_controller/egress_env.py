"""What a sandbox is given, with egress on, to leave through the egress proxy.

Set when its pod is made (so warm pods have it), by every backend: ``HTTP_PROXY``,
``HTTPS_PROXY`` and their lower-case twins, carrying the pod's own credentials (user =
its create id, password = sandbox_contract.egress_credential); ``NO_PROXY`` (loopback and
SANDBOX_EGRESS_NO_PROXY); the CA bundle variables when the sandbox has a bundle holding
the deployment CA (which signs the certificates of intercepted secret hosts); and a
placeholder for each of the deployment's secrets. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .egress_secrets import SecretSpec, deployment_placeholder
from .sandbox_contract import egress_credential

# Every TLS client a sandbox is likely to run reads one of these (OpenSSL and Go,
# Python requests, Node, pip, git).
CA_BUNDLE_VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "PIP_CERT",
    "GIT_SSL_CAINFO",
)
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
LOOPBACK_NO_PROXY = ("localhost", "127.0.0.1", "::1")

# Kubernetes (EGRESS.md seam 5): the ConfigMap with the CA certificate is mounted at
# KUBE_CA_DIR; an init container in the sandbox image writes the system store plus the
# CA to KUBE_BUNDLE, on an emptyDir every container of the pod mounts at KUBE_BUNDLE_DIR.
KUBE_CA_DIR = "/egress-ca"
KUBE_BUNDLE_DIR = "/egress"
KUBE_BUNDLE = f"{KUBE_BUNDLE_DIR}/bundle.pem"
KUBE_SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
KUBE_INIT_NAME = "egress-ca-bundle"

# Docker: the root is read-only and the socket proxy allows no bind mount, so the backend
# uploads the bundle (PUT /containers/{id}/archive) into an anonymous volume of the
# container at DOCKER_BUNDLE_DIR after create, before start (backends/docker_bundle.py).
BUNDLE_NAME = "bundle.pem"
DOCKER_BUNDLE_DIR = "/egress"
DOCKER_BUNDLE = f"{DOCKER_BUNDLE_DIR}/{BUNDLE_NAME}"


@dataclass(frozen=True)
class SandboxEgress:
    """The egress env of every sandbox one backend makes."""

    key: bytes = field(repr=False)  # the first hook key: credentials and placeholders
    proxy_url: str  # http://host:port, as sandboxes reach the egress proxy
    no_proxy: Sequence[str] = ()
    bundle_path: str | None = None  # the CA bundle, as the sandbox sees it
    secrets: Sequence[SecretSpec] = ()  # the deployment's: only names are used here
    # Kubernetes only: the ConfigMap holding the CA's certificate as ca.pem.
    ca_configmap: str | None = None
    # Docker only: the bundle itself (system roots + the CA), built once by the controller
    # and uploaded into each container at bundle_path before it starts.
    bundle_pem: bytes | None = field(default=None, repr=False)

    def fingerprint(self) -> dict[str, object]:
        """What a pod made with this egress env depends on, beyond its create id (a
        change makes new pods of another template hash)."""
        marks: dict[str, object] = {
            "proxy": self.proxy_url,
            "no_proxy": list(self.no_proxy),
            "bundle": self.bundle_path,
            "ca_configmap": self.ca_configmap,
            "secrets": [s.name for s in self.secrets],
        }
        if self.bundle_pem:  # a new CA makes new pods
            marks["bundle_sha256"] = hashlib.sha256(self.bundle_pem).hexdigest()[:16]
        return marks

    def proxy_with_credentials(self, create_id: str) -> str:
        parts = urlsplit(self.proxy_url)
        password = egress_credential(self.key, create_id)
        return f"http://{create_id}:{password}@{parts.netloc}"

    def env(self, create_id: str) -> dict[str, str]:
        proxy = self.proxy_with_credentials(create_id)
        env = dict.fromkeys(PROXY_VARIABLES, proxy)
        no_proxy = ",".join(dict.fromkeys([*LOOPBACK_NO_PROXY, *self.no_proxy]))
        env["NO_PROXY"] = env["no_proxy"] = no_proxy
        if self.bundle_path:
            env.update(dict.fromkeys(CA_BUNDLE_VARIABLES, self.bundle_path))
        for spec in self.secrets:
            env[spec.name] = deployment_placeholder(self.key, create_id, spec.name)
        return env


def with_egress_bundle(pod: dict[str, Any], configmap: str) -> None:
    """Give a pod (Kubernetes) the CA bundle: an init container in the sandbox's own
    image (it has the system store and a shell; same security context as the sandbox)
    writes it to an emptyDir that every container mounts read-only at KUBE_BUNDLE_DIR."""
    spec = pod["spec"]
    first = spec["containers"][0]
    init: dict[str, Any] = {
        "name": KUBE_INIT_NAME,
        "image": first["image"],
        "command": [
            "sh",
            "-c",
            f"cat {KUBE_SYSTEM_BUNDLE} {KUBE_CA_DIR}/ca.pem > {KUBE_BUNDLE}",
        ],
        "volumeMounts": [
            {"name": "egress-ca", "mountPath": KUBE_CA_DIR, "readOnly": True},
            {"name": "egress-bundle", "mountPath": KUBE_BUNDLE_DIR},
        ],
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "32Mi"},
        },
    }
    if first.get("securityContext"):
        init["securityContext"] = first["securityContext"]
    spec["initContainers"] = [*(spec.get("initContainers") or []), init]
    spec["volumes"] = [
        *(spec.get("volumes") or []),
        {"name": "egress-ca", "configMap": {"name": configmap}},
        {"name": "egress-bundle", "emptyDir": {"sizeLimit": "2Mi"}},
    ]
    for container in spec["containers"]:
        mount = {"name": "egress-bundle", "mountPath": KUBE_BUNDLE_DIR, "readOnly": True}
        container["volumeMounts"] = [*(container.get("volumeMounts") or []), mount]
