"""Each backend says what kind of failure a refused call was: permanent when nothing
changes until someone fixes something (RBAC, an invalid pod, no such image, no such
command), temporary when a later attempt may pass (overload, a conflict)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest

from sandbox_controller.backends.base import LABEL_STATE, BackendError, ErrorKind
from sandbox_controller.backends.docker import error_kind as docker_kind
from sandbox_controller.backends.kubernetes import KubernetesBackend
from sandbox_controller.backends.local import LocalBackend
from sandbox_controller.kubesim import KubeSim

from .test_kubernetes import make_backend, make_sim


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[KubeSim]:
    async with make_sim(tmp_path) as running:
        yield running


@pytest.fixture
async def backend(sim: KubeSim, tmp_path: Path) -> AsyncIterator[KubernetesBackend]:
    b = await make_backend(sim, tmp_path)
    yield b
    await b.close()


@pytest.mark.parametrize(("status", "words"), [(403, "forbidden"), (422, "is invalid")])
async def test_kubernetes_refusals_are_permanent_and_not_retried(
    sim: KubeSim, backend: KubernetesBackend, status: int, words: str
) -> None:
    sim.set_faults(refuse_pod_creates=status)
    with pytest.raises(BackendError) as raised:
        await backend.create_pod({LABEL_STATE: "pool"})
    assert raised.value.kind is ErrorKind.PERMANENT
    assert f"kubernetes API {status}" in str(raised.value) and words in str(raised.value)
    assert sim.count_calls("create", "pods") == 1  # asked once: a retry cannot help


async def test_kubernetes_overload_is_temporary(sim: KubeSim, backend: KubernetesBackend) -> None:
    sim.set_faults(error_rate=1.0, error_codes=[503], verbs=["create"])
    with pytest.raises(BackendError) as raised:
        await backend.create_pod({LABEL_STATE: "pool"})
    assert raised.value.kind is ErrorKind.TEMPORARY
    sim.set_faults(error_rate=0.0)
    assert await backend.create_pod({LABEL_STATE: "pool"})  # and it passes later


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (404, ErrorKind.PERMANENT),  # no such image: the Engine API never pulls on create
        (400, ErrorKind.PERMANENT),  # a config the Engine refuses
        (409, ErrorKind.TEMPORARY),  # a name taken, a removal in progress
        (500, ErrorKind.TEMPORARY),
        (503, ErrorKind.TEMPORARY),
    ],
)
def test_docker_errors_by_status(status: int, kind: ErrorKind) -> None:
    assert docker_kind(aiodocker.DockerError(status, {"message": "no"})) is kind


@pytest.mark.parametrize("problem", ["missing", "not executable"])
async def test_local_spawn_without_a_runnable_command_is_permanent(
    tmp_path: Path, problem: str
) -> None:
    command = tmp_path / "sandbox-python"
    if problem == "not executable":
        command.write_text("#!/bin/sh\n")
        command.chmod(0o644)
    backend = LocalBackend(tmp_path / "state", python=str(command))
    await backend.start()
    try:
        with pytest.raises(BackendError) as raised:
            await backend.create_pod({LABEL_STATE: "pool"})
        assert raised.value.kind is ErrorKind.PERMANENT
        assert await backend.resync() == []
    finally:
        await backend.close()


async def test_local_spawn_of_a_runnable_command_succeeds(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "state", python=sys.executable, stop_on_close=True)
    await backend.start()
    try:
        assert await backend.create_pod({LABEL_STATE: "pool"})
    finally:
        await backend.close()
