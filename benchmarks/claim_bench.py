"""Warm-path POST /sessions against two ceilings of the same app, over SQLite and PostgreSQL.

    python benchmarks/claim_bench.py [--seconds 4] [--pool 8000] [--databases sqlite,postgres]
        [--console off|on] [--console-streams 20] [--endpoints noop,insert,sessions]

For each database: kubesim (the in-repo fake Kubernetes API) and the controller run as
separate processes; the controller fills a warm pool of --pool pods, with maxTotalJobs
equal to the pool so no refill runs during the measurement. wrk (Debian package `wrk`)
then drives, at 1 and at 32 connections:
  noop      POST /bench/noop     same body validation, no work: HTTP + FastAPI alone
  insert    POST /bench/insert   one single-row INSERT and COMMIT per request
  sessions  POST /sessions       the real warm claim (a new user and thread each time)
Results go to stdout as a Markdown table and to benchmarks/results/claims.json.

The operator console's cost (issue 23): ``--console off`` runs with SANDBOX_CONSOLE=false;
``--console-streams N`` keeps N consoles open on the sessions page during the runs
(benchmarks/console_clients.py: each holds the live stream for its page, which carries
the page's live part on every change, as console.js does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.bench_app import bench_rows  # noqa: E402
from benchmarks.common import (  # noqa: E402
    TOKEN,
    TOKEN_SECRET,
    Kubesim,
    drop_database,
    free_port,
    fresh_database,
    run_wrk,
    stop,
)
from sandbox_controller.store import Store  # noqa: E402


async def create_bench_table(url: str) -> None:
    store = Store.open(url)
    try:
        await store.run(lambda conn: bench_rows.create(conn, checkfirst=True))
    finally:
        await store.close()


def start_controller(
    url: str, kubeconfig: str, pool: int, port: int, console: bool = True
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SANDBOX_DATABASE_URL": url,
        "SANDBOX_BACKEND": "kubernetes",
        "SANDBOX_KUBECONFIG": kubeconfig,
        "SANDBOX_NAMESPACE": "default",
        "SANDBOX_PREWARM_POOL_SIZE": str(pool),
        "SANDBOX_MAX_TOTAL_JOBS": str(pool),
        "SANDBOX_MAX_CONCURRENT_CREATES": "20",
        "SANDBOX_KUBE_QPS": "5000",
        "SANDBOX_KUBE_BURST": "5000",
        "SANDBOX_API_TOKEN": TOKEN,
        "SANDBOX_TOKEN_SECRET": TOKEN_SECRET,
        # kubesim runs no workload here (nothing on the pods' port): no claim hook.
        "SANDBOX_HOOKS": "false",
        "SANDBOX_LOG_LEVEL": "warning",
        "SANDBOX_CONSOLE": "true" if console else "false",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "benchmarks.bench_app:build",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        cwd=ROOT,
    )


async def wait_pool(base: str, idle: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        while time.monotonic() < deadline:
            try:
                pool = (await c.get("/pool")).json()
                if pool["pods"]["idle"] >= idle:
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"pool never reached {idle} idle pods")


def outcomes(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics").text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'sandbox_session_requests_total\{outcome="(\w+)"\} ([\d.e+]+)', text)
    }


def start_consoles(base: str, count: int) -> subprocess.Popen[bytes]:
    """The consoles' browsers, at the lowest CPU priority: on this one machine they
    stand in for browsers elsewhere, so the controller and wrk go first."""
    script = str(ROOT / "benchmarks" / "console_clients.py")
    return subprocess.Popen(
        [sys.executable, script, base, TOKEN, "--consoles", str(count)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        preexec_fn=lambda: os.nice(19),
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench_database(
    kind: str,
    seconds: float,
    pool: int,
    *,
    console: bool = True,
    streams: int = 0,
    endpoints: tuple[str, ...] = ("noop", "insert", "sessions"),
) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        url = fresh_database(kind, tmp)
        kubesim = Kubesim(
            tmp,
            nodes=1,
            node_cpu="100000",
            node_memory="1000000Gi",
            startup_delay=0,
            termination_delay=0,
        )
        kubeconfig = kubesim.kubeconfig
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        controller = start_controller(url, kubeconfig, pool, port, console)
        consoles = None
        try:
            await create_bench_table(url)
            started = time.monotonic()
            await wait_pool(base, pool)
            print(
                f"[{kind}] warm pool of {pool} ready in {time.monotonic() - started:.1f}s",
                file=sys.stderr,
            )
            if streams:
                consoles = start_consoles(base, streams)
                await asyncio.sleep(2.0)  # signed in, streams open
            paths = {"noop": "/bench/noop", "insert": "/bench/insert", "sessions": "/sessions"}
            for conns in (1, 32):
                for name in endpoints:
                    cpu_before = cpu_seconds(controller.pid)
                    result = run_wrk(base, paths[name], conns, seconds, f"{kind}{conns}{name}")
                    # The controller's own CPU per request: what a request costs it,
                    # whatever else the shared machine is doing meanwhile.
                    cpu = cpu_seconds(controller.pid) - cpu_before
                    result["controller_cpu_ms_per_request"] = 1000 * cpu / result["requests"]
                    result.update(
                        database=kind,
                        endpoint=name,
                        connections=conns,
                        console=console,
                        console_streams=streams,
                    )
                    rows.append(result)
                    print(
                        f"[{kind}] {name:8} c={conns:<3} {result['rps']:8.0f} req/s  "
                        f"p50 {result['p50_us'] / 1000:6.2f} ms  p99 {result['p99_us'] / 1000:6.2f} ms"
                        f"  non2xx {result['non2xx']}  controller CPU "
                        f"{result['controller_cpu_ms_per_request']:.3f} ms/request",
                        file=sys.stderr,
                    )
            counts = outcomes(base)
            for row in rows:
                row["warm_claims_total"] = counts.get("warm", 0)
                row["non_warm_claims_total"] = sum(v for k, v in counts.items() if k != "warm")
            if consoles is not None:
                consoles.terminate()
                out, _ = consoles.communicate(timeout=30)
                print(f"[{kind}] consoles: {out.decode().strip()}", file=sys.stderr)
                consoles = None
        finally:
            if consoles is not None:
                consoles.kill()
            stop(controller)
            kubesim.stop()
            drop_database(url)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| database | connections | endpoint | req/s | p50 ms | p99 ms | vs insert ceiling | non-2xx |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ceiling = next(
            (
                r
                for r in rows
                if r["database"] == row["database"]
                and r["connections"] == row["connections"]
                and r["endpoint"] == "insert"
            ),
            None,
        )
        ratio = f"{row['rps'] / ceiling['rps']:.2f}x" if ceiling else "-"
        lines.append(
            f"| {row['database']} | {row['connections']} | {row['endpoint']} | "
            f"{row['rps']:.0f} | {row['p50_us'] / 1000:.2f} | {row['p99_us'] / 1000:.2f} | "
            f"{ratio} | {row['non2xx']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    # Large enough that every claim of both runs is warm: the script reports otherwise.
    parser.add_argument("--pool", type=int, default=8000)
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--console", choices=("on", "off"), default="on")
    parser.add_argument("--console-streams", type=int, default=0)
    parser.add_argument("--endpoints", default="noop,insert,sessions")
    parser.add_argument("--results", default="claims.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("claim_bench: needs wrk (apt-get install wrk)")
    rows = []
    for kind in args.databases.split(","):
        rows += asyncio.run(
            bench_database(
                kind,
                args.seconds,
                args.pool,
                console=args.console == "on",
                streams=args.console_streams,
                endpoints=tuple(args.endpoints.split(",")),
            )
        )
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / args.results).write_text(json.dumps(rows, indent=2))
    print(table(rows))
    warm = {r["database"]: (r["warm_claims_total"], r["non_warm_claims_total"]) for r in rows}
    print("\nclaims served warm / not warm, per database:", warm)


if __name__ == "__main__":
    main()
