"""Small helpers for tests that drive kubesim (kept in the package so any test tree,
and benchmarks, can import them without a conftest)."""

from __future__ import annotations

from typing import Any


def pod_body(
    name: str | None = None, labels: dict[str, str] | None = None, cpu: str = "1"
) -> dict[str, Any]:
    """A minimal pod: one container asking for ``cpu``."""
    meta: dict[str, Any] = {"labels": labels or {}}
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = "t-"
    container = {"name": "c", "image": "x", "resources": {"requests": {"cpu": cpu}}}
    return {"metadata": meta, "spec": {"containers": [container]}}
