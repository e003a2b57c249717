from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ...conftest import fresh_postgres
from .harness import HA, OwnPostgres

REPLICAS = ("replica-a", "replica-b")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: real processes end to end (the HA drills)")


@pytest.fixture
async def ha(tmp_path: Path) -> AsyncIterator[HA]:
    """kubesim and two `serve` replicas on a fresh database of the shared server; the
    first started leads."""
    async with fresh_postgres() as url:
        harness = HA(tmp_path, url)
        try:
            await harness.start_kubesim(*REPLICAS)
            first = await harness.start_replica(REPLICAS[0])
            await harness.leader([first])
            await harness.start_replica(REPLICAS[1])
            yield harness
        finally:
            await harness.close()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    cluster = OwnPostgres()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
