"""The store's egress records against SQLite and PostgreSQL: grants with the session
row, sealed secrets written with it and deleted with its ending, denials pruned to the
last N per session and purged with the session."""

from __future__ import annotations

import json

from sandbox_controller.egress_secrets import Sealer
from sandbox_controller.model import EndReason, SecretRef, SessionState
from sandbox_controller.store import Batch, Store

from .test_store import session, store  # noqa: F401  (the fixture)


def secret_row(sealer: Sealer, sid: str, name: str, value: str) -> dict[str, object]:
    return {
        "session_id": sid,
        "name": name,
        "sealed_value": sealer.seal(sid, name, value),
        "placeholder": "sbx_ph_" + "0" * 32,
        "hosts": json.dumps(["api.github.com"]),
        "header": "Authorization",
        "value_format": "Bearer {value}",
    }


async def test_grants_and_secrets_live_and_die_with_their_session(store: Store) -> None:  # noqa: F811
    sealer = Sealer([b"token-secret"])
    s1 = session("s1", "t1")
    s1.egress_allow = ("api.github.com", "*.x.github.com")
    s1.secrets = (SecretRef("GITHUB_TOKEN", ("api.github.com",), "Authorization"),)
    await store.write(
        Batch(sessions=[s1], secrets=[secret_row(sealer, "s1", "GITHUB_TOKEN", "ghp_v")]), None
    )
    [loaded], _ = await store.load()
    assert loaded.egress_allow == ("api.github.com", "*.x.github.com")
    assert loaded.secrets == s1.secrets
    [row] = await store.session_secrets("s1")
    assert b"ghp_v" not in row["sealed_value"]
    assert sealer.open("s1", "GITHUB_TOKEN", row["sealed_value"]) == "ghp_v"

    s1.state, s1.end_reason, s1.ended_at = SessionState.ENDED, EndReason.DELETED, 200.0
    await store.write(Batch(sessions=[s1]), None)
    assert await store.session_secrets("s1") == []
    ended = await store.get_session("s1")
    assert ended is not None and ended.egress_allow == s1.egress_allow


async def test_denials_keep_the_last_ones_and_go_with_the_session(store: Store) -> None:  # noqa: F811
    s1, s2 = session("s1", "t1"), session("s2", "t2")
    await store.write(Batch(sessions=[s1, s2]), None)
    rows = [
        {"session_id": sid, "at": float(i), "host": f"h{i}", "port": 443, "reason": "not_allowed"}
        for i in range(7)
        for sid in ("s1", "s2")
    ]
    await store.record_denials(rows[:8], keep=5)
    await store.record_denials(rows[8:], keep=5)
    found = await store.denials("s1", 100)
    assert [d["host"] for d in found] == ["h2", "h3", "h4", "h5", "h6"]
    assert found[-1] == {"at": 6.0, "host": "h6", "port": 443, "reason": "not_allowed"}
    assert [d["host"] for d in await store.denials("s2", 2)] == ["h5", "h6"]

    s1.state, s1.end_reason, s1.ended_at = SessionState.ENDED, EndReason.DELETED, 200.0
    await store.write(Batch(sessions=[s1]), None)
    assert len(await store.denials("s1", 100)) == 5  # readable after its end
    assert await store.delete_ended_before(300.0) == 1
    assert await store.denials("s1", 100) == [] and len(await store.denials("s2", 100)) == 5
