"""Split-brain drill (issue 10): a leader paused past its lease must not touch a pod.

SIGSTOP stands for a long GC pause, a frozen node or a partition from the database.
The witness is kubesim's call log, where each replica's calls carry its own name.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

from .harness import HA, database_activity, writes_by

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ROUNDS = 5


async def test_a_paused_leader_never_writes_after_its_lease_ended(ha: HA) -> None:
    assert ha.kubesim is not None
    max_total = int(ha.env["SANDBOX_MAX_TOTAL_JOBS"])
    problems: list[str] = []
    for round_ in range(ROUNDS):
        old = await ha.leader()
        new = next(r for r in ha.replicas if r is not old)
        await ha.wait_idle(old, 2)
        # Work in flight when the pause hits: the leader is mid-claim and mid-refill.
        early = [
            asyncio.create_task(old.open(f"early{round_}-{i}", f"te{round_}-{i}", wait=2))
            for i in range(2)
        ]
        await asyncio.sleep(0.05)
        old.signal(signal.SIGSTOP)
        paused_at = time.time()
        try:
            try:
                await ha.leader([new], limit=ha.ttl + 5)
            except AssertionError:
                activity = await database_activity(ha.database_url)
                problems.append(
                    f"round {round_}: {new.name} did not take over while {old.name} was "
                    f"stopped; database connections:\n  " + "\n  ".join(activity)
                )
                continue
            answered: list[dict[str, Any]] = []
            refused: list[str] = []
            for i in range(3):
                response = await new.open(f"new{round_}-{i}", f"tn{round_}-{i}", wait=8)
                if response.status_code == 201 and response.json()["state"] == "ready":
                    answered.append(response.json())
                else:
                    refused.append(f"{response.status_code} {response.text[:120]}")
            # Still paused past its lease: the new leader owns the cluster now.
            await asyncio.sleep(max(0.0, paused_at + ha.ttl + 1.0 - time.time()))
        finally:
            old.signal(signal.SIGCONT)
            for task in early:
                task.cancel()
            await asyncio.gather(*early, return_exceptions=True)
        await asyncio.sleep(2.5)  # room for the woken leader to do its damage
        lease_ended_by = paused_at + ha.ttl  # it could not renew while stopped

        late = writes_by(await ha.kubesim.calls(ha.http), old.name, after=lease_ended_by)
        if late:
            shown = [(c["verb"], c["path"].split("?")[0], c["status"]) for c in late[:5]]
            problems.append(f"round {round_}: {len(late)} writes from deposed {old.name}: {shown}")
        pods = await ha.kubesim.pods(ha.http)
        leader = await ha.leader()
        for session in answered:
            got = (await leader.client.get(f"/sessions/{session['id']}")).json()
            pod = pods.get(session["pod"])
            if (got["state"], got["pod"]) != ("ready", session["pod"]) or pod is None:
                problems.append(
                    f"round {round_}: session {session['id']} answered 201 on {session['pod']} "
                    f"is now {got['state']}/{got.get('end_reason')} on {got['pod']}"
                )
        if len(answered) < 2:
            problems.append(
                f"round {round_}: the new leader answered {len(answered)} of 3: {refused}"
            )
        # Free the slots for the next round: the sessions answered, and those the
        # early requests opened (their answers were cut off by the pause).
        ended = [s["id"] for s in answered]
        for i in range(2):
            listed = await leader.client.get("/sessions", params={"user_id": f"early{round_}-{i}"})
            ended += [s["id"] for s in listed.json()["sessions"] if s["state"] != "ended"]
        for session_id in ended:
            await leader.client.delete(f"/sessions/{session_id}")
    stats = await ha.kubesim.stats(ha.http)
    if stats["max_pods_seen"] > max_total:
        problems.append(f"kubesim held {stats['max_pods_seen']} pods, maxTotalJobs {max_total}")
    assert not problems, "\n".join(problems)
