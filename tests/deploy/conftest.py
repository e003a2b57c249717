"""Fixtures for the deploy bundle: a real helm binary and charts rendered with it.
Everything under tests/deploy is marked ``deploy`` (helm, kubectl, promtool, built images)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploytools import CHART, NAMESPACE, RELEASE, REPO, Docs, Render

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The hook sees the whole session's items; mark only this folder's.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.deploy)


@pytest.fixture(scope="session")
def helm() -> str:
    """A real helm 3: on PATH, cached under .cache/tools, or fetched by scripts/fetch-tools.sh."""
    found = shutil.which("helm")
    if found:
        return found
    cached = REPO / ".cache" / "tools" / "helm"
    if not (cached.is_file() and os.access(cached, os.X_OK)):
        proc = subprocess.run(
            ["bash", str(REPO / "scripts" / "fetch-tools.sh")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            pytest.fail(f"scripts/fetch-tools.sh could not provide helm:\n{proc.stderr}")
    return str(cached)


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="session")
def helm_template(
    helm: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[dict[str, Any] | None], subprocess.CompletedProcess[str]]:
    """`helm template` with a values mapping; returns the finished process, pass or fail."""
    tmp = tmp_path_factory.mktemp("values")
    cache: dict[str, subprocess.CompletedProcess[str]] = {}

    def template(values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        key = json.dumps(values or {}, sort_keys=True)
        if key not in cache:
            path = tmp / f"values-{len(cache)}.yaml"
            path.write_text(yaml.safe_dump(values or {}))
            cache[key] = run_helm(
                helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(path)
            )
        return cache[key]

    return template


@pytest.fixture(scope="session")
def render(
    helm_template: Callable[[dict[str, Any] | None], subprocess.CompletedProcess[str]],
) -> Render:
    """The manifests `helm template` renders for some values; fails the test if helm does."""

    def rendered(values: dict[str, Any] | None = None) -> Docs:
        proc = helm_template(values)
        assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    return rendered
