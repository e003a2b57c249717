from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config

from sandbox_controller.kubesim import KubeSim


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[KubeSim]:
    async with KubeSim(
        kubeconfig=tmp_path / "kubeconfig",
        startup_delay=0.05,
        termination_delay=0.05,
        bookmark_interval=0.2,
        seed=7,
    ) as running:
        yield running


@pytest.fixture
async def core(sim: KubeSim) -> AsyncIterator[client.CoreV1Api]:
    """The real kubernetes-asyncio client, configured from kubesim's kubeconfig."""
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(sim.kubeconfig_path), client_configuration=configuration
    )
    async with client.ApiClient(configuration) as api:
        yield client.CoreV1Api(api)
