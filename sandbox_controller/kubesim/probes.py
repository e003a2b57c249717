"""The kubelet's readiness probe as kubesim models it, read from the pod spec.

A pod whose containers declare a readinessProbe turns Ready only at a probe tick after
its app answers: the first tick ``initialDelaySeconds`` after the container runs, then
one every ``periodSeconds``; ``successThreshold`` answers in a row make it Ready,
``failureThreshold`` failures in a row make a Ready pod not Ready again. Kubernetes'
defaults apply to what the spec leaves out. A pod without a probe is Ready as soon as
its containers run, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..sandbox_contract import POD_PORT

Obj = dict[str, Any]

# What the real kubelet sends; the pod's app can tell the kubelet's probes from others.
KUBE_PROBE_AGENT = "kube-probe/1.31"


@dataclass(frozen=True)
class ReadinessProbe:
    path: str | None  # httpGet's path; None: an exec, tcpSocket or grpc probe
    port: int
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int


@dataclass(frozen=True)
class ProbeTick:
    """One probe the simulated kubelet ran (the cluster's log of them)."""

    pod: str
    at: float  # the cluster's clock, monotonic
    ok: bool
    ready: bool  # the pod's Ready condition after this tick


def _seconds(spec: Obj, key: str, default: float, least: float) -> float:
    value = spec.get(key)
    return max(least, float(value)) if isinstance(value, int | float) else default


def _port(value: Any, container: Obj) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    for port in container.get("ports") or []:
        if port.get("name") == value:
            return int(port["containerPort"])
    return POD_PORT


def readiness_probe(pod: Obj) -> ReadinessProbe | None:
    """The first container's readinessProbe that has one, with Kubernetes' defaults."""
    for container in pod.get("spec", {}).get("containers", []):
        spec = container.get("readinessProbe")
        if not isinstance(spec, dict):
            continue
        http = spec.get("httpGet") if isinstance(spec.get("httpGet"), dict) else None
        return ReadinessProbe(
            path=str(http.get("path") or "/") if http else None,
            port=_port(http.get("port"), container) if http else POD_PORT,
            initial_delay=_seconds(spec, "initialDelaySeconds", 0.0, 0.0),
            period=_seconds(spec, "periodSeconds", 10.0, 1.0),
            timeout=_seconds(spec, "timeoutSeconds", 1.0, 1.0),
            success_threshold=int(_seconds(spec, "successThreshold", 1, 1)),
            failure_threshold=int(_seconds(spec, "failureThreshold", 3, 1)),
        )
    return None
