"""``sandbox-controller usage``: pod-seconds per org and template, from the store."""

from __future__ import annotations

import asyncio
import csv
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from sandbox_controller.cli import main
from sandbox_controller.model import EndReason, Session, SessionState
from sandbox_controller.store import Store
from sandbox_controller.store.db import Batch
from sandbox_controller.store.tables import sessions


def stored(
    sid: str, template: str, created_ago: float, ended_ago: float | None, now: float
) -> Session:
    state = SessionState.ENDED if ended_ago is not None else SessionState.READY
    session = Session(sid, "u", sid, state, now - created_ago, now - created_ago)
    session.template = template
    if ended_ago is not None:
        session.end_reason, session.ended_at = EndReason.DELETED, now - ended_ago
    return session


async def fill(url: str, now: float) -> None:
    store = Store.open(url)
    await store.migrate()
    rows = [
        stored("a", "py", 3600, 0 + 1800, now),  # 1800 s
        stored("b", "py", 20 * 86400, 20 * 86400 - 60, now),  # before the window
        stored("c", "node", 600, None, now),  # live: 600 s so far
        stored("d", "py", 8 * 86400, 7 * 86400 - 100, now),  # 100 s inside the window
    ]
    await store.write(Batch(sessions=rows), None)
    orgs = {"a": "acme", "c": "acme", "d": "globex"}

    def set_orgs(conn: sa.Connection) -> None:
        for sid, org in orgs.items():
            conn.execute(sa.update(sessions).where(sessions.c.id == sid).values(org_id=org))

    await store.run(set_orgs)
    await store.close()


def test_usage_sums_pod_seconds_per_org_and_template(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/sandbox.db"
    now = time.time()
    asyncio.run(fill(url, now))
    out = tmp_path / "usage.csv"
    assert main(["usage", "--since", "7d", "--database-url", url, "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    got = {(r["org"], r["template"]): (int(r["sessions"]), float(r["pod_seconds"])) for r in rows}
    assert set(got) == {("acme", "py"), ("acme", "node"), ("globex", "py")}
    assert got[("acme", "py")] == (1, 1800)
    assert got[("acme", "node")][0] == 1 and 600 <= got[("acme", "node")][1] <= 700
    assert got[("globex", "py")][0] == 1 and 90 <= got[("globex", "py")][1] <= 110


def test_usage_pseudonymizes_org_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/sandbox.db"
    asyncio.run(fill(url, time.time()))
    assert main(["usage", "--database-url", url, "--pseudonymize"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    orgs = {r["org"] for r in rows}
    assert "acme" not in orgs and "globex" not in orgs
    assert len(orgs) == 2 and all(o.startswith("o-") for o in orgs)


def test_usage_refuses_a_bad_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/sandbox.db"
    assert main(["usage", "--since", "soon", "--database-url", url]) == 2
    assert "usage: error" in capsys.readouterr().err
