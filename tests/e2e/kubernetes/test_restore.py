"""The restore drill: the database is put back to an older backup while 50 sandboxes
opened since then live on. The restarted controller must not delete them on its own:
it holds them, says so (GET /pool, the metric, `sandbox-controller recover`), and
deletes them only when an operator confirms. kubesim's call log is the outside witness.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from sandbox_controller.clock import ManualClock
from sandbox_controller.scheduler.conditions import DELETE_RETRY
from sandbox_controller.scheduler.lifecycle import ROUTE_LEASE

from ...conftest import API_TOKEN
from ...eventually import eventually
from .conftest import Kube, live_pods

LOST = 50  # sessions opened after the backup


class Backups:
    """A real backup and restore of the controller's database: pg_dump and psql for
    PostgreSQL, SQLite's online backup API and a file copy for SQLite."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp = url, tmp
        self.sqlite = url.startswith("sqlite")

    async def take(self) -> None:
        if self.sqlite:
            with sqlite3.connect(self._path()) as live, sqlite3.connect(self._copy()) as copy:
                live.backup(copy)
            return
        await run("pg_dump", "--clean", "--if-exists", "-f", str(self._copy()), self._libpq())

    async def restore(self) -> None:
        """With every controller stopped, as the README's procedure says."""
        if self.sqlite:
            for suffix in ("-wal", "-shm"):
                Path(str(self._path()) + suffix).unlink(missing_ok=True)
            shutil.copyfile(self._copy(), self._path())
            return
        await run("psql", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(self._copy()), self._libpq())

    def _path(self) -> Path:
        return Path(self.url.split(":///", 1)[1])

    def _copy(self) -> Path:
        return self.tmp / ("backup.db" if self.sqlite else "backup.sql")

    def _libpq(self) -> str:
        return self.url.replace("postgresql+asyncpg://", "postgresql://")


async def run(*command: str, env: dict[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"{command[0]}: {err.decode()}"
    return out.decode()


def deleted(sim_calls: list[object], names: set[str]) -> set[str]:
    """Pods whose delete kubesim was asked for, in these calls."""
    found = set()
    for call in sim_calls:
        path = str(getattr(call, "path", "")).split("?")[0]
        if getattr(call, "verb", "") == "delete" and path.rsplit("/", 1)[-1] in names:
            found.add(path.rsplit("/", 1)[-1])
    return found


@pytest.mark.parametrize("engine", ["postgres", "sqlite"])
async def test_a_restored_older_database_deletes_no_sandbox_until_an_operator_confirms(
    postgres_url: str, kube: Kube, tmp_path: Path, engine: str
) -> None:
    if True:
        url = postgres_url if engine == "postgres" else f"sqlite+aiosqlite:///{tmp_path}/s.db"
        backups = Backups(url, tmp_path)
        sim = await kube.sim(node_cpu="64", node_memory="256Gi")  # room for 60 pods
        options = {"database_url": url, "prewarm_pool_size": 5, "max_total_jobs": 80}
        first = await kube.controller(sim, **options)
        await first.wait_idle_pods(5)
        known = [(await first.open(f"old-{i}", f"old-{i}")).json() for i in range(2)]
        await first.settle()
        await backups.take()
        lost = [(await first.open(f"new-{i}", f"new-{i}")).json() for i in range(LOST)]
        assert all(s.get("state") == "ready" for s in known + lost), known + lost
        lost_pods = {s["pod"] for s in lost}
        await first.stop()
        await backups.restore()

        calls_before = len(sim.calls)
        clock = ManualClock(start=time.time())
        second = await kube.controller(sim, clock=clock, **options)
        # The backup's lease row names the old controller: it runs out within its TTL.
        clock.advance(15)

        async def leads() -> bool:
            return bool((await second.pool())["leader"])

        await eventually(leads, within=15, what="the restarted controller to lead")
        pool = await second.pool()
        [held] = [c for c in pool["conditions"] if c["type"] == "RecoveryHeld"]
        assert f"holding {LOST} of" in held["message"]
        metrics = (await second.client.get("/metrics")).text
        assert f"sandbox_recovery_held_pods {LOST}.0" in metrics
        assert 'sandbox_pool_condition{type="RecoveryHeld"} 1.0' in metrics

        # Time passes well beyond any route lease and delete retry: still nothing goes,
        # and the pool keeps serving (the sessions the old database knows keep their
        # pods; a new session gets a warm pod).
        clock.advance(3 * (ROUTE_LEASE + DELETE_RETRY))
        await second.settle()
        newcomer = await second.open("newcomer", "newcomer")
        assert newcomer.status_code == 201 and newcomer.json()["pod"] not in lost_pods
        for s in known:
            again = (await second.client.get(f"/sessions/{s['id']}")).json()
            assert (again["state"], again["pod"]) == ("ready", s["pod"])
        await second.settle()
        assert deleted(sim.calls[calls_before:], lost_pods) == set()
        assert lost_pods <= {p["metadata"]["name"] for p in live_pods(sim)}

        env = {
            **os.environ,
            "SANDBOX_CONTROLLER_URL": second.url,
            "SANDBOX_API_TOKEN": API_TOKEN,
            "SANDBOX_DATABASE_URL": url,
        }
        cli = [sys.executable, "-m", "sandbox_controller.cli", "recover"]
        shown = await run(*cli, env=env)
        assert "RecoveryHeld" in shown and "recover --confirm" in shown
        assert deleted(sim.calls[calls_before:], lost_pods) == set()

        confirmed = await run(*cli, "--confirm", env=env)
        assert f"deleting {LOST} held pods" in confirmed

        def orphans_gone() -> bool:
            names = {p["metadata"]["name"] for p in live_pods(sim)}
            return not lost_pods & names

        await eventually(orphans_gone, within=30, what="the confirmed orphans deleted")
        assert deleted(sim.calls[calls_before:], lost_pods) == lost_pods
        assert deleted(sim.calls[calls_before:], {s["pod"] for s in known}) == set()
        pool = await second.pool()
        assert pool["conditions"] == [] and pool["pods"]["assigned"] == len(known) + 1
        assert "recovery holds no pods" in await run(*cli, env=env)
