"""Docker for the tests: a running dockerd (in CI a missing one fails, never skips), the
images built offline and cached (scripts/build-images.sh), and the test network with
the egress guard on it. Tests that use it carry the ``docker`` marker."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from sandbox_controller.backends.base import LABEL_INSTANCE
from sandbox_controller.backends.docker_spec import bridge_name
from sandbox_controller.config import DockerOptions

REPO = Path(__file__).resolve().parent.parent
NETWORK = "agent-sandbox-test"
MIB = 2**20


def require_docker() -> str:
    """The sandbox image, once dockerd answers and the images are built; else skip
    (locally, with a one-line reason) or fail (in CI, where scripts/test.sh installs
    docker.io and debootstrap and starts dockerd)."""
    skip_or_fail(_problem(), os.environ)
    return _prepared()


def in_ci(environ: Mapping[str, str]) -> bool:
    return environ.get("CI", "").lower() not in ("", "0", "false")


def skip_or_fail(problem: str | None, environ: Mapping[str, str]) -> None:
    if problem is None:
        return
    if in_ci(environ):
        pytest.fail(f"{problem}: scripts/test.sh installs docker.io and debootstrap in CI")
    pytest.skip(problem)


@functools.cache
def _problem() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed"
    done = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    if done.returncode != 0:
        return "dockerd is not running"
    printed = subprocess.run(
        ["bash", str(REPO / "scripts/build-images.sh"), "--print-base"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    base, tarball = printed.stdout.split()
    return unbuildable(base, Path(tarball), shutil.which("debootstrap"))


def unbuildable(base: str, tarball: Path, debootstrap: str | None) -> str | None:
    """Why scripts/build-images.sh cannot build the test images here, if it cannot: no
    base image, no cached root filesystem to import, and no debootstrap to make one."""
    if debootstrap is not None or tarball.is_file():
        return None
    if shutil.which("docker") is not None:
        found = subprocess.run(["docker", "image", "inspect", base], capture_output=True)
        if found.returncode == 0:
            return None
    return (
        f"the test images are not built ({base}) and debootstrap is missing: "
        "apt-get install debootstrap, then bash scripts/build-images.sh"
    )


@functools.cache
def _prepared() -> str:
    built = subprocess.run(
        ["bash", str(REPO / "scripts/build-images.sh")],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    image = built.stdout.strip().splitlines()[-1]
    if docker("network", "ls", "-q", "--filter", f"name=^{NETWORK}$", check=True).strip() == "":
        docker(
            "network",
            "create",
            "--opt",
            f"com.docker.network.bridge.name={bridge_name(NETWORK)}",
            NETWORK,
        )
    guard = REPO / "deploy/docker/egress-guard.sh"
    subprocess.run(["sh", str(guard), bridge_name(NETWORK)], check=True, capture_output=True)
    return image


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def inspect(name: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(docker("inspect", name))
    return data[0]


def new_instance() -> str:
    """A label of its own per test, so tests (and people) sharing a dockerd never see
    each other's containers."""
    return f"test-{uuid.uuid4().hex[:10]}"


def containers(instance: str) -> set[str]:
    """Names of the instance's containers, as dockerd itself lists them."""
    out = docker(
        "ps", "-a", "--filter", f"label={LABEL_INSTANCE}={instance}", "--format", "{{.Names}}"
    )
    return {line for line in out.split() if line}


def remove_all(instance: str) -> None:
    names = containers(instance)
    if names:
        docker("rm", "-f", "-v", *names, check=False)


def options(image: str, instance: str, **overrides: Any) -> DockerOptions:
    values: dict[str, Any] = {
        "url": None,
        "image": image,
        "cpus": 0.5,
        "memory": 256 * MIB,
        "runtime": None,
        "network": NETWORK,
        "publish": True,
        "instance": instance,
        "reserved_memory": 1024 * MIB,
        "workspace_size": 64 * MIB,
        "user": "10001:10001",
        "max_concurrent_creates": 3,
        "stop_grace": 1.0,
        "retry_base": 0.05,
        "retry_cap": 0.5,
    }
    values.update(overrides)
    return DockerOptions(**values)


def settings_overrides(image: str, instance: str) -> dict[str, Any]:
    """SANDBOX_DOCKER_* for a whole controller, as the tests run it."""
    return {
        "backend": "docker",
        "docker_image": image,
        "docker_instance": instance,
        "docker_network": NETWORK,
        "docker_publish": True,
        "docker_cpus": 0.5,
        "docker_memory": "256Mi",
        "tmp_dir_size_limit": "64Mi",
    }
