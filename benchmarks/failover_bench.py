"""Failover of the controller: how long the API is without a leader, and what a standby
costs in memory over time (issue 10).

    python benchmarks/failover_bench.py [--runs 3] [--churn-minutes 3] [--ttl 4s]

Real processes, as in the drills (tests/e2e/ha): kubesim, two `sandbox-controller serve`
replicas on one fresh PostgreSQL database (127.0.0.1:5432), lease TTL --ttl renewed
every --renew.

1. Failover time: the leader is sent SIGKILL (or SIGTERM); the time until the other
   replica answers POST /sessions 201 (polled every 50 ms, wait_seconds 5). A new
   standby is started after each run. Median and range of --runs runs each.
2. Standby memory under churn: sessions opened and ended as fast as the leader serves
   them for --churn-minutes, so every pod is created, made ready, claimed and deleted
   (several watch events each, which the standby receives too); the standby's RSS at
   the start, the end and its peak, and the event rate (kubesim resourceVersions / s).

Writes a Markdown table to stdout and to benchmarks/results/failover.md.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import drop_database, fresh_database, rss_mib  # noqa: E402
from tests.e2e.ha.harness import HA, Replica  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


async def served_after(replica: Replica, since: float, limit: float = 60.0) -> float:
    """Seconds from ``since`` until ``replica`` answers POST /sessions 201."""
    n = 0
    while time.monotonic() - since < limit:
        n += 1
        try:
            response = await replica.open(f"fo{n}", f"fo{time.time_ns()}", wait=5)
            if response.status_code == 201:
                took = time.monotonic() - since
                await replica.client.delete(f"/sessions/{response.json()['id']}")
                return took
        except Exception:  # connection refused while it starts: keep polling
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{replica.name} served nothing within {limit}s")


async def failover_times(ha: HA, sig: signal.Signals, runs: int) -> list[float]:
    times = []
    for i in range(runs):
        leader = await ha.leader()
        standby = next(r for r in ha.replicas if r is not leader and r.proc.poll() is None)
        await ha.wait_idle(leader, 3)
        await asyncio.sleep(1.0)  # the standby has seen the pool's events
        leader.signal(sig)
        since = time.monotonic()
        times.append(await served_after(standby, since))
        await asyncio.to_thread(leader.proc.wait, 30)
        ha.replicas.remove(leader)
        await leader.client.aclose()
        await ha.start_replica(f"{leader.name}-{sig.name.lower()}{i}")
    return times


async def churn(ha: HA, minutes: float) -> dict[str, float]:
    assert ha.kubesim is not None
    leader = await ha.leader()
    standby = next(r for r in ha.replicas if r is not leader)
    await ha.wait_idle(leader, 3)
    start_rss = rss_mib(standby.pid)[0]
    start_rv = (await ha.kubesim.stats(ha.http))["resource_version"]
    started = time.monotonic()
    sessions = peak = 0.0
    while time.monotonic() - started < minutes * 60:
        response = await leader.open(f"c{int(sessions) % 4}", f"c{time.time_ns()}", wait=5)
        if response.status_code == 201:
            sessions += 1
            await leader.client.delete(f"/sessions/{response.json()['id']}")
        peak = max(peak, rss_mib(standby.pid)[0])
    elapsed = time.monotonic() - started
    end_rv = (await ha.kubesim.stats(ha.http))["resource_version"]
    return {
        "minutes": elapsed / 60,
        "sessions": sessions,
        "events_per_s": (end_rv - start_rv) / elapsed,
        "rss_start": start_rss,
        "rss_end": rss_mib(standby.pid)[0],
        "rss_peak": peak,
    }


def fmt(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} s ({min(times):.2f}-{max(times):.2f})"


async def run(args: argparse.Namespace) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="failover-bench-"))
    url = fresh_database("postgres", tmp, prefix="failover")
    ha = HA(tmp, url, ttl=args.ttl, renew=args.renew)
    try:
        names = [f"replica-{c}" for c in "ab"]
        names += [
            f"replica-{c}-{s}{i}"
            for c in "ab"
            for s in ("sigkill", "sigterm")
            for i in range(args.runs)
        ]
        await ha.start_kubesim(*names)
        await ha.start_replica("replica-a")
        await ha.leader()
        await ha.start_replica("replica-b")
        killed = await failover_times(ha, signal.SIGKILL, args.runs)
        termed = await failover_times(ha, signal.SIGTERM, args.runs)
        memory = await churn(ha, args.churn_minutes)
    finally:
        await ha.close()
        drop_database(url)
    return "\n".join(
        [
            f"Lease TTL {args.ttl:g} s, renewed every {args.renew:g} s; {args.runs} runs each;"
            " time until the other replica answers POST /sessions 201.",
            "",
            "| measure | result |",
            "|---|---|",
            f"| failover after SIGKILL of the leader, median (range) | {fmt(killed)} |",
            f"| failover after SIGTERM of the leader, median (range) | {fmt(termed)} |",
            f"| churn: sessions opened and ended | {memory['sessions']:.0f} in "
            f"{memory['minutes']:.1f} min ({memory['events_per_s']:.0f} cluster changes/s) |",
            f"| standby RSS: start / end / peak | {memory['rss_start']:.1f} / "
            f"{memory['rss_end']:.1f} / {memory['rss_peak']:.1f} MiB |",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--churn-minutes", type=float, default=3.0)
    p.add_argument("--ttl", type=float, default=4.0, help="lease TTL, seconds")
    p.add_argument("--renew", type=float, default=1.0, help="lease renew interval, seconds")
    table = asyncio.run(run(p.parse_args(argv)))
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "failover.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
